"""Resuming: a restarted sender or receiver continues a transfer instead of starting over."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fstransport import (
    Chunked,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Receiver,
    ReplicationClosed,
    Snapshot,
    SnapshotMeta,
    TransferOptions,
    Vote,
    ship,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.options import KiB, MiB
from fstransport.storage.backends.local import journal
from fstransport.testing.mock import MockNetwork, deliver_to, hang
from tests.conftest import payload

V = Vote(1, 0)


@pytest.fixture(autouse=True)
def quick_journal_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit local journals every 50 ms (not once a second): these tests restart a receiver
    a moment after the first one stopped, and expect what it acknowledged to be recorded."""
    monkeypatch.setattr(journal, "SYNC_INTERVAL", 0.05)


def counting(receiver: Receiver) -> MockNetwork:
    """Delivers to `receiver` and records every request (see `sent_bytes`)."""
    return MockNetwork(deliver_to(receiver, interleave=False))


def sent_bytes(net: MockNetwork) -> int:
    return sum(length for _, length, _ in net.seen)


def dying(receiver: Receiver, acks: int) -> tuple[MockNetwork, asyncio.Event]:
    """Delivers to `receiver` until `acks` chunks are acknowledged; then the sender is gone: the
    event is set (the sender's cancel) and nothing more arrives."""
    deliver = deliver_to(receiver, interleave=False)
    stopped = asyncio.Event()
    answered = 0

    async def handler(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        nonlocal answered
        if stopped.is_set():
            return await hang(req)
        answer = await deliver(req)
        answered += 1
        if answered >= acks:
            stopped.set()
        return answer

    return MockNetwork(handler), stopped


def meta_for(data: bytes, snapshot_id: str = "snap") -> SnapshotMeta:
    return SnapshotMeta(snapshot_id, size=len(data), checksum=format_checksum(chunk_crc(data)))


async def interrupted_send(
    receiver: Receiver, data: bytes, options: TransferOptions, acks: int
) -> None:
    """A sender that dies after `acks` acknowledged chunks, without telling anyone."""
    net, stopped = dying(receiver, acks)
    snapshot = Snapshot(meta_for(data), io.BytesIO(data))
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(net, V, snapshot, stopped.wait(), options)


def make_store(kind: str, tmp_path: Path, s3: dict[str, Any] | None = None) -> FsspecSnapshotStore:
    if kind == "memory":
        return FsspecSnapshotStore("memory://resume")
    if kind == "local":
        return FsspecSnapshotStore(str(tmp_path / "resume"))
    assert s3 is not None
    return FsspecSnapshotStore(s3["url"], part_size=5 * MiB, **s3["options"])


@pytest.fixture(params=["memory", "local", pytest.param("s3", marks=pytest.mark.s3)])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def s3_target(request: pytest.FixtureRequest, store_kind: str) -> dict[str, Any] | None:
    if store_kind != "s3":
        return None
    bucket = request.getfixturevalue("s3_bucket")
    options = request.getfixturevalue("s3_storage_options")
    return {"url": f"s3://{bucket}/resume", "options": options, "bucket": bucket}


async def read_installed(store: FsspecSnapshotStore, snapshot_id: str = "snap") -> bytes:
    with await store.open(snapshot_id) as f:
        data: bytes = f.read()
    return data


async def test_restarted_sender_skips_what_the_receiver_holds(
    store_kind: str, tmp_path: Path, s3_target: dict[str, Any] | None
) -> None:
    data = payload(24 * MiB + 123, seed=1)
    chunk, window = MiB, 4
    options = TransferOptions(chunk_size=chunk, max_in_flight=window)
    async with make_store(store_kind, tmp_path, s3_target) as store:
        receiver = Receiver(store)
        await interrupted_send(receiver, data, options, acks=16)
        net = counting(receiver)
        snapshot = Snapshot(meta_for(data), io.BytesIO(data))
        await Chunked.send_snapshot(net, V, snapshot, None, options)
        assert await read_installed(store) == data
    assert net.offsets[0] == 0, "no extra round trip: the first request is the chunk at 0"
    resent = sent_bytes(net) - (len(data) - 16 * chunk)
    # chunk 0 again, plus at most about a window beyond what was acknowledged (on S3, the part
    # being filled when the sender died is sent again: its bytes were only in memory)
    allowance = chunk + window * chunk + (5 * MiB if store_kind == "s3" else 0)
    assert resent <= allowance, f"re-sent {resent} bytes"


async def test_restarted_receiver_resumes_from_its_journal(
    store_kind: str, tmp_path: Path, s3_target: dict[str, Any] | None
) -> None:
    data = payload(24 * MiB + 5, seed=2)
    options = TransferOptions(chunk_size=MiB, max_in_flight=4)
    async with make_store(store_kind, tmp_path, s3_target) as first:
        await interrupted_send(Receiver(first), data, options, acks=17)
        await asyncio.sleep(1.0)  # the receiver dies a little later: its part uploads landed
    # a new store object and receiver: what a restarted receiver process has
    async with make_store(store_kind, tmp_path, s3_target) as store:
        receiver = Receiver(store)
        net = counting(receiver)
        snapshot = Snapshot(meta_for(data), io.BytesIO(data))
        await Chunked.send_snapshot(net, V, snapshot, None, options)
        assert await read_installed(store) == data
        assert not await store.has_partial("snap")
    assert sent_bytes(net) < len(data) - 10 * MiB, (
        f"sent {sent_bytes(net)} of {len(data)} bytes again"
    )


async def test_a_different_snapshot_under_the_same_id_discards_the_stale_partial(
    tmp_path: Path,
) -> None:
    old, new = payload(4 * MiB, seed=3), payload(4 * MiB, seed=4)  # same size, other bytes
    options = TransferOptions(chunk_size=256 * KiB)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    await interrupted_send(Receiver(store), old, options, acks=8)
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path / "r")))
    net = counting(receiver)
    await Chunked.send_snapshot(net, V, Snapshot(meta_for(new), io.BytesIO(new)), None, options)
    assert sent_bytes(net) == len(new), "nothing of the other snapshot may be reused"
    assert (tmp_path / "r" / "snap").read_bytes() == new


async def test_sender_without_checksum_never_resumes(tmp_path: Path) -> None:
    data = payload(2 * MiB, seed=5)
    options = TransferOptions(chunk_size=256 * KiB)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    net, stopped = dying(Receiver(store), acks=4)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(
            net, V, Snapshot(SnapshotMeta("snap"), io.BytesIO(data)), stopped.wait(), options
        )
    net = counting(Receiver(FsspecSnapshotStore(str(tmp_path / "r"))))
    await Chunked.send_snapshot(
        net, V, Snapshot(SnapshotMeta("snap"), io.BytesIO(data)), None, options
    )
    assert sent_bytes(net) == len(data)


async def test_repeated_final_chunk_of_an_installed_snapshot_is_acknowledged() -> None:
    store = FsspecSnapshotStore("memory://done")
    receiver = Receiver(store)
    data = b"abcdef"
    meta = meta_for(data)
    await receiver.handle(InstallSnapshotRequest(V, meta, 0, data[:3], False))
    final = InstallSnapshotRequest(V, meta, 3, data[3:], True)
    await receiver.handle(final)
    answer = await receiver.handle(final)  # its answer was lost; the sender sends it again
    assert answer.vote == V
    assert await read_installed(store) == data


SHIP_SCRIPT = """
import asyncio, sys
from fstransport import TransferOptions, ship
from fstransport.network.loopback import LoopbackNetwork
from fstransport.storage.backends.local import journal

journal.SYNC_INTERVAL = 0.0  # every chunk's line is committed before it is acknowledged

async def main() -> None:
    options = TransferOptions(chunk_size=256 * 1024, max_in_flight=2)
    await ship(sys.argv[1], sys.argv[2], options=options, progress=lambda n: print(n, flush=True))

asyncio.run(main())
"""


async def test_ship_killed_halfway_resumes_in_the_next_call(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    data = payload(96 * MiB, seed=6)
    source.write_bytes(data)
    target = tmp_path / "out" / "big.bin"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SHIP_SCRIPT, str(source), str(target), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    acked = 0
    deadline = time.monotonic() + 60
    while acked < 20 * MiB and time.monotonic() < deadline:
        line = await child.stdout.readline()
        if not line:
            break
        acked += int(line)
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert 0 < acked < len(data), "the copy must be killed halfway"
    assert not target.exists()
    report = await ship(str(source), str(target), options=TransferOptions(chunk_size=256 * KiB))
    assert target.read_bytes() == data
    # Journal lines are committed in groups, each after an fdatasync of the data it names, so
    # the chunks written during the last commit before the kill are sent again (how many
    # depends on the disk); what was recorded is skipped.
    assert 0 < report.bytes_skipped <= acked + 2 * 256 * KiB
    assert report.bytes_sent <= len(data) - report.bytes_skipped + 256 * KiB
