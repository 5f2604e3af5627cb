"""A resumed partial is never trusted over its bytes: damaged, truncated or over-claimed partial
data (and S3 upload state) is re-verified, the bad ranges are sent again, the intact ones are
not, and the installed snapshot is exact (issue #11, "Broken 1")."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import (
    Chunked,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LoopbackNetwork,
    Receiver,
    ReplicationClosed,
    Snapshot,
    SnapshotMeta,
    TransferOptions,
    Vote,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.options import KiB
from fstransport.protocol.ranges import RangeSet
from fstransport.storage import journal
from tests.conftest import payload

V = Vote(1, 0)
ID = "snap"


@pytest.fixture(autouse=True)
def journal_commits_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit local journals after every chunk (not once a second), so that what a test's
    first receiver acknowledged is recorded when the second one starts."""
    monkeypatch.setattr(journal, "SYNC_INTERVAL", 0.0)


class Counting:
    """Loopback that counts the bytes it delivers, by range, and can stop after `stop_after`
    acknowledged chunks (the sender dies without a word)."""

    def __init__(self, receiver: Receiver, stop_after: int | None = None) -> None:
        self.inner = LoopbackNetwork(receiver)
        self.bytes = 0
        self.sent = RangeSet()
        self.acks = 0
        self.stop_after = stop_after
        self.stopped = asyncio.Event()

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        if self.stopped.is_set():
            await asyncio.Event().wait()
        self.bytes += len(req.data)
        self.sent.add(req.offset, req.offset + len(req.data))
        answer = await self.inner.install_snapshot(req, option)
        self.acks += 1
        if self.stop_after is not None and self.acks >= self.stop_after:
            self.stopped.set()
        return answer


def meta_for(data: bytes) -> SnapshotMeta:
    return SnapshotMeta(ID, size=len(data), checksum=format_checksum(chunk_crc(data)))


async def interrupted(receiver: Receiver, data: bytes, options: TransferOptions, acks: int) -> None:
    net = Counting(receiver, stop_after=acks)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(
            net, V, Snapshot(meta_for(data), io.BytesIO(data)), net.stopped.wait(), options
        )


async def resend(receiver: Receiver, data: bytes, options: TransferOptions) -> Counting:
    net = Counting(receiver)
    await Chunked.send_snapshot(net, V, Snapshot(meta_for(data), io.BytesIO(data)), None, options)
    return net


CHUNK = 64 * KiB
OPTIONS = TransferOptions(chunk_size=CHUNK, max_in_flight=1)
SIZE = 32 * CHUNK + 17
ACKS = 20  # chunks [0, 20) held when the first sender dies


def _local_partial(root: Path) -> Path:
    return root / ".fstransport" / "partial" / ID


def _memory_partial(url: str) -> Any:
    fs = fsspec.filesystem("memory")
    path = url.removeprefix("memory://").rstrip("/") + f"/.fstransport/partial/{ID}"
    return fs.store["/" + path.lstrip("/")]


Damage = Callable[[bytearray], bytearray]


def flip(offset: int) -> Damage:
    def damage(data: bytearray) -> bytearray:
        data[offset] ^= 0x40
        return data

    return damage


def truncate(length: int) -> Damage:
    return lambda data: data[:length]


DAMAGES: dict[str, tuple[Damage, tuple[int, int]]] = {
    # what is done to the partial file, and the bytes that must be sent again for it
    "flip": (flip(5 * CHUNK + 100), (5 * CHUNK, 6 * CHUNK)),
    "truncate": (truncate(12 * CHUNK + 5), (12 * CHUNK, ACKS * CHUNK)),
}


def damage_local(root: Path, damage: Damage) -> None:
    path = _local_partial(root)
    path.write_bytes(bytes(damage(bytearray(path.read_bytes()))))


def damage_memory(url: str, damage: Damage) -> None:
    entry = _memory_partial(url)
    damaged = bytes(damage(bytearray(entry.getvalue())))
    entry.seek(0)
    entry.truncate(0)
    entry.write(damaged)


def assert_resent_only(net: Counting, bad: tuple[int, int]) -> None:
    """The damaged range was sent again; of the intact held ranges, nothing but chunk 0 (a new
    sender always sends it) and the last chunk the dead sender had in flight."""
    resent = RangeSet(list(net.sent))
    for start, end in [(CHUNK, bad[0]), (bad[1], (ACKS - 1) * CHUNK)]:
        if end > start:
            held = RangeSet([(start, end)])
            for s, e in resent:
                held.remove(s, e)
            assert held.total() == end - start, f"intact [{start}, {end}) was sent again"
    for offset in range(bad[0], bad[1], CHUNK):
        assert offset in resent, f"damaged chunk at {offset} was not sent again"


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_a_damaged_partial_is_never_installed(kind: str, damage: str, tmp_path: Path) -> None:
    data = payload(SIZE, seed=11)
    change, bad = DAMAGES[damage]
    url = str(tmp_path / "r") if kind == "local" else "memory://damaged"
    first = FsspecSnapshotStore(url)
    await interrupted(Receiver(first), data, OPTIONS, acks=ACKS)
    if kind == "local":
        damage_local(tmp_path / "r", change)
    else:
        damage_memory(url, change)
    store = FsspecSnapshotStore(url)  # a restarted receiver over the same root
    net = await resend(Receiver(store), data, OPTIONS)
    with await store.open(ID) as f:
        assert f.read() == data
    assert_resent_only(net, bad)
    await first.abort(ID)  # (closes the first receiver's descriptors)


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_a_journal_claiming_more_than_the_partial_holds(kind: str, tmp_path: Path) -> None:
    """Journal lines for chunks whose bytes never reached the file (a power loss between the
    two, or a journal written ahead of its data) are not believed."""
    data = payload(SIZE, seed=12)
    url = str(tmp_path / "r") if kind == "local" else "memory://claims"
    first = FsspecSnapshotStore(url)
    await interrupted(Receiver(first), data, OPTIONS, acks=ACKS)
    lines = [
        f"{offset} {CHUNK} {chunk_crc(data[offset : offset + CHUNK])}\n"
        for offset in range(ACKS * CHUNK, 28 * CHUNK, CHUNK)
    ]  # right CRCs, bytes never written
    lines.append(f"{30 * CHUNK} {CHUNK} 12345\n")  # a wrong CRC for bytes never written
    journal = first.journal_path(ID)
    if kind == "local":
        with Path(journal).open("a") as f:  # noqa: ASYNC230 (a test's own small file)
            f.write("".join(lines))
    else:
        entry = fsspec.filesystem("memory").store[journal]
        entry.seek(0, 2)
        entry.write("".join(lines).encode())
    store = FsspecSnapshotStore(url)
    net = await resend(Receiver(store), data, OPTIONS)
    with await store.open(ID) as f:
        assert f.read() == data
    for offset in range(ACKS * CHUNK, 28 * CHUNK, CHUNK):
        assert offset in net.sent, f"chunk at {offset} was claimed, not held, and not sent"
    await first.abort(ID)


async def test_a_live_receiver_reverifies_what_it_holds_for_a_new_sender(tmp_path: Path) -> None:
    """The sender dies, the receiver lives on (a `fstransport serve`), the partial is damaged
    meanwhile: the next sender's transfer continues the live stream, which re-reads its bytes."""
    data = payload(SIZE, seed=13)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    receiver = Receiver(store)
    await interrupted(receiver, data, OPTIONS, acks=ACKS)
    damage_local(tmp_path / "r", flip(7 * CHUNK + 3))
    net = await resend(receiver, data, OPTIONS)
    assert (tmp_path / "r" / ID).read_bytes() == data
    assert_resent_only(net, (7 * CHUNK, 8 * CHUNK))
