"""`Receiver(idle_timeout=..., clock=...)`: abandoned transfers give back their slots, their
open files and their buffers, and keep their partial data for a later resume (a fake clock:
no test here waits).  The server process drives the same expiry: see test_server_hardening."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import (
    ConfigurationError,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    Receiver,
    ReceiverLimits,
    SnapshotMeta,
    TooManyTransfers,
    Vote,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.messages import ChunkData
from tests.conftest import payload

VOTE = Vote(1, 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chunk(snapshot_id: str, data: bytes, offset: int, length: int) -> InstallSnapshotRequest:
    meta = SnapshotMeta(snapshot_id, size=len(data), checksum=format_checksum(chunk_crc(data)))
    piece: ChunkData = data[offset : offset + length]
    done = offset + length == len(data)
    return InstallSnapshotRequest(VOTE, meta, offset, piece, done, chunk_crc(piece))


def open_under(path: Path) -> list[str]:
    """Files under `path` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FsspecSnapshotStore:
    if request.param == "local":
        return FsspecSnapshotStore(str(tmp_path / "root"))
    root = f"memory://{tmp_path.name}"  # unique per test
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)
    return FsspecSnapshotStore(root)


async def test_an_idle_transfer_gives_back_its_slot_and_resumes_later(
    store: FsspecSnapshotStore, tmp_path: Path
) -> None:
    clock = FakeClock()
    limits = ReceiverLimits(max_transfers=2)
    receiver = Receiver(store, limits=limits, idle_timeout=30, clock=clock)
    a, b, c = (payload(4000, seed=i) for i in range(3))
    await receiver.handle(chunk("a", a, 0, 2000))
    await receiver.handle(chunk("b", b, 0, 2000))
    with pytest.raises(TooManyTransfers):  # both slots taken, neither idle long enough
        await receiver.handle(chunk("c", c, 0, 2000))
    clock.now += 29
    assert await receiver.expire_idle() == []
    await receiver.handle(chunk("b", b, 2000, 1000))  # b is alive: its clock starts again

    clock.now += 2  # a has been idle for 31 s, b for 2 s
    await receiver.handle(chunk("c", c, 0, 2000))  # takes a's slot at once
    assert receiver.receiving == ["b", "c"]
    assert not [f for f in open_under(tmp_path / "root") if f.endswith("/a")]  # a's closed

    clock.now += 100  # everyone idle: the periodic sweep lets both go
    assert sorted(await receiver.expire_idle()) == ["b", "c"]
    assert receiver.receiving == []
    assert open_under(tmp_path) == []

    # every partial resumes where it stopped: the second halves complete them
    answer = await receiver.handle(chunk("a", a, 2000, 2000))
    assert answer.vote == VOTE
    await receiver.handle(chunk("b", b, 3000, 1000))
    await receiver.handle(chunk("c", c, 2000, 2000))
    for snapshot_id, data in (("a", a), ("b", b), ("c", c)):
        with await store.open(snapshot_id) as f:
            assert f.read() == data, snapshot_id


async def test_a_transfer_with_a_request_under_way_is_not_expired(tmp_path: Path) -> None:
    clock = FakeClock()
    store = FsspecSnapshotStore(str(tmp_path / "root"))
    receiver = Receiver(store, idle_timeout=5, clock=clock)
    data = payload(3000)
    await receiver.handle(chunk("x", data, 0, 1000))
    with receiver.in_use("x"):  # as while the server receives a slow chunk of it
        clock.now += 60
        assert await receiver.expire_idle() == []
    assert await receiver.expire_idle() == []  # leaving counted as activity
    clock.now += 6
    assert await receiver.expire_idle() == ["x"]


async def test_without_an_idle_timeout_nothing_expires(tmp_path: Path) -> None:
    clock = FakeClock()
    store = FsspecSnapshotStore(str(tmp_path / "root"))
    receiver = Receiver(store, limits=ReceiverLimits(max_transfers=1), clock=clock)
    await receiver.handle(chunk("x", payload(100), 0, 50))
    clock.now += 10**9
    assert await receiver.expire_idle() == []
    with pytest.raises(TooManyTransfers):
        await receiver.handle(chunk("y", payload(100), 0, 50))


class StoreWithoutRelease:
    """A store that only has what `SnapshotStore` requires: expiry falls back to abort."""

    def __init__(self, inner: FsspecSnapshotStore) -> None:
        self.inner = inner
        self.begin = inner.begin
        self.resume = inner.resume
        self.finish = inner.finish
        self.install = inner.install
        self.abort = inner.abort


async def test_a_store_without_release_discards_the_expired_partial(tmp_path: Path) -> None:
    clock = FakeClock()
    inner = FsspecSnapshotStore(str(tmp_path / "root"))
    receiver = Receiver(StoreWithoutRelease(inner), idle_timeout=1, clock=clock)
    await receiver.handle(chunk("x", payload(100), 0, 50))
    clock.now += 2
    assert await receiver.expire_idle() == ["x"]
    assert not await inner.has_partial("x")
    assert open_under(tmp_path) == []


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_idle_timeout_must_be_positive(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        Receiver(FsspecSnapshotStore(str(tmp_path)), idle_timeout=bad)
