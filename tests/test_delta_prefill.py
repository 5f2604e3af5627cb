"""A block-mode base copied into the partial file while the sender plans (`Prefill`), the
write-back started during the assembly, and the pieces they rest on (`RangeSet.gaps`, a block
map's range CRCs from its second level, the two-thread read of a result's CRC32C).

The rule under test: received bytes always win over the base's copy, the assembly trusts only
what the prefill left at the same offsets, and what is installed is exactly the new content,
however the copy and the chunks interleave.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport import TransferOptions, TransferReport
from fstransport.checksum import chunk_crc
from fstransport.delta.local import file_crc
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB, MiB
from fstransport.protocol.delta import MapBuilder, new_key
from fstransport.protocol.ranges import RangeSet
from fstransport.receiver import Receiver
from fstransport.storage.backends.local import prefill as prefill_module
from fstransport.storage.backends.local.delta import LocalDelta
from fstransport.storage.backends.local.prefill import PREFILL_PIECE, Prefill
from fstransport.storage.backends.local.sink import PwriteSink
from fstransport.storage.backends.local.writeback import Writeback, start_writeback
from fstransport.storage.base import MappedBase
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import ship

# -- the pieces -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 20)), max_size=8),
    st.integers(0, 100),
    st.integers(0, 40),
)
def test_gaps_are_exactly_the_bytes_not_in_the_set(
    ranges: list[tuple[int, int]], start: int, length: int
) -> None:
    held = RangeSet((at, at + n) for at, n in ranges)
    end = start + length
    gaps = held.gaps(start, end)
    covered = {b for at, n in ranges for b in range(at, at + n)}
    assert [b for lo, hi in gaps for b in range(lo, hi)] == [
        b for b in range(start, end) if b not in covered
    ]
    assert all(hi > lo for lo, hi in gaps)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(gaps))  # apart, in order


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9 * 16 * 4096 + 4095), st.data())
def test_a_block_maps_range_crcs_from_its_second_level_are_the_bytes_crcs(
    size: int, data: st.DataObject
) -> None:
    content = random.Random(size).randbytes(size)
    builder = MapBuilder("blocks", key=new_key(), block_size=4096, supers=True)
    builder.update(content)
    made = builder.finish()
    count = len(made)
    first = data.draw(st.integers(0, count - 1))
    end = data.draw(st.integers(first + 1, count))
    start, stop = first * 4096, min(end * 4096, size)
    assert made.crc_of(start, stop - start) == chunk_crc(content[start:stop])
    assert made.whole_crc() == chunk_crc(content)


def test_a_long_files_crc_read_by_two_threads_is_its_crc(tmp_path: Path) -> None:
    content = random.Random(1).randbytes(64 * MiB + 12345)
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert file_crc(fd, len(content)) == chunk_crc(content)
        assert file_crc(fd, 1000) == chunk_crc(content[:1000])
        with pytest.raises(EOFError):
            file_crc(fd, len(content) + 1)
    finally:
        os.close(fd)


def test_writeback_is_only_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (20 * MiB))
    fd = os.open(path, os.O_RDWR)
    try:
        noted = Writeback(fd)
        for at in (0, 4 * MiB, 8 * MiB, 2 * MiB, 12 * MiB):  # forward, then a jump back
            noted.wrote(at, 4 * MiB)
        noted.flush()
        noted.flush()
    finally:
        os.close(fd)
    start_writeback(fd, 0, 10)  # a closed descriptor: the hint is lost, nothing raised
    assert path.read_bytes() == b"x" * (20 * MiB)


# -- Prefill alone --------------------------------------------------------------------------


def _files(tmp_path: Path, size: int) -> tuple[Path, Path, bytes]:
    base = random.Random(size).randbytes(size)
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "partial").write_bytes(b"")
    return tmp_path / "base", tmp_path / "partial", base


def _held_bytes_are_the_bases(target: Path, base: bytes, held: RangeSet) -> None:
    got = target.read_bytes()
    for lo, hi in held:
        assert got[lo:hi] == base[lo:hi]


def test_a_prefill_copies_the_base_at_the_same_offsets(tmp_path: Path) -> None:
    base_path, target, base = _files(tmp_path, 3 * PREFILL_PIECE + 5)
    job = Prefill(str(base_path), str(target), len(base) - 100, len(base))
    job.recipe = True
    job.start()
    held = job.stop()
    # stop may come before the copy ends: whatever it says is held is the base's
    _held_bytes_are_the_bases(target, base, held)
    again = Prefill(str(base_path), str(target), len(base) - 100, len(base))
    again.recipe = True
    again.start()
    again._thread.join()  # let this one run to its end
    assert list(again.stop()) == [(0, len(base) - 100)]
    assert target.read_bytes() == base[: len(base) - 100]


def test_received_bytes_always_win_over_the_copy(tmp_path: Path) -> None:
    base_path, target, base = _files(tmp_path, 4 * PREFILL_PIECE)
    job = Prefill(str(base_path), str(target), len(base), len(base))
    job.recipe = True
    job.start()
    received = {}
    fd = os.open(target, os.O_WRONLY)
    try:
        rng = random.Random(2)
        for _ in range(40):  # claims racing the copy, some inside the piece being copied
            at = rng.randrange(0, len(base) - 5000)
            data = rng.randbytes(rng.randrange(1, 5000))
            job.claim(at, len(data))
            os.pwrite(fd, data, at)
            for k, byte in enumerate(data):
                received[at + k] = byte
    finally:
        os.close(fd)
    held = job.stop()
    got = target.read_bytes()
    assert all(got[at] == byte for at, byte in received.items())
    assert not any(at in held for at in received)
    _held_bytes_are_the_bases(target, base, held)


def test_a_received_byte_before_any_recipe_stops_the_copy(tmp_path: Path) -> None:
    base_path, target, base = _files(tmp_path, 4 * PREFILL_PIECE)
    job = Prefill(str(base_path), str(target), len(base), len(base))
    job.start()
    job.claim(0, 10)  # a sender that sends everything: the copy would be wasted
    job._thread.join(timeout=30)
    assert not job._thread.is_alive()
    held = job.stop()
    assert 0 not in held
    _held_bytes_are_the_bases(target, base, held)


def test_a_base_of_another_size_is_not_copied(tmp_path: Path) -> None:
    base_path, target, base = _files(tmp_path, PREFILL_PIECE)
    job = Prefill(str(base_path), str(target), len(base), len(base) + 1)
    job.recipe = True
    job.start()
    assert not job.stop()
    assert target.read_bytes() == b""


def test_a_missing_base_or_target_ends_the_copy_quietly(tmp_path: Path) -> None:
    job = Prefill(str(tmp_path / "none"), str(tmp_path / "nor"), 10, 10)
    job.start()
    assert not job.stop()


async def test_an_aborted_sink_stops_its_prefill_first(tmp_path: Path) -> None:
    base_path, _, base = _files(tmp_path, 2 * PREFILL_PIECE)
    sink = await PwriteSink.create(str(tmp_path / "p2"))
    job = Prefill(str(base_path), sink.path, len(base), len(base))
    job.recipe = True
    sink.prefill = job
    job.start()
    await sink.abort()
    assert not job._thread.is_alive()
    assert sink.prefill is None
    assert not (tmp_path / "p2").exists()


# -- through ship() ---------------------------------------------------------------------------

SIZE = 4 * MiB
OPTIONS = TransferOptions(chunk_size=256 * KiB, delta="blocks")


def _pages(base: bytes, count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(base)
    for page in rng.sample(range(len(base) // 4096), count):
        out[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    return bytes(out)


class Spy:
    """Records what each `Prefill.stop` said was held."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held: list[int] = []
        self.started = 0
        real_stop, real_start = Prefill.stop, Prefill.start

        def stop(job: Prefill) -> RangeSet:
            found = real_stop(job)
            self.held.append(found.total())
            return found

        def start(job: Prefill) -> None:
            self.started += 1
            real_start(job)

        monkeypatch.setattr(prefill_module.Prefill, "stop", stop)
        monkeypatch.setattr(prefill_module.Prefill, "start", start)


async def _ship(
    new: bytes, tmp_path: Path, *, prefill: bool = True
) -> tuple[bytes, TransferReport]:
    source = tmp_path / "new.bin"
    source.write_bytes(new)
    store = FsspecSnapshotStore(str(tmp_path / "received"), prefill=prefill)
    network = LoopbackNetwork(Receiver(store))
    target = str(tmp_path / "received" / "snap.bin")
    report = await ship(str(source), target, options=OPTIONS, network=network)
    await store.close()
    return await asyncio.to_thread(Path(target).read_bytes), report


async def test_a_delta_with_prefill_installs_the_new_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = random.Random(3).randbytes(SIZE)
    (tmp_path / "received").mkdir()
    (tmp_path / "received" / "snap.bin").write_bytes(base)
    spy = Spy(monkeypatch)
    new = _pages(base, 10, seed=4)
    got, report = await _ship(new, tmp_path)
    assert got == new
    assert spy.started == 1
    assert report.bytes_reused > SIZE // 2
    assert report.bytes_sent < SIZE // 4
    # the same once more, with the store's prefill off: same bytes, nothing started
    newer = _pages(new, 10, seed=5)
    got, report = await _ship(newer, tmp_path, prefill=False)
    assert got == newer
    assert spy.started == 1
    assert report.bytes_reused > SIZE // 2


async def test_a_full_transfer_after_an_offer_installs_the_new_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content that shares nothing with the base: the sender asks for an offer, sends no
    recipe, and sends every byte; the prefill must not leave one base byte behind."""
    base = random.Random(6).randbytes(SIZE)
    (tmp_path / "received").mkdir()
    (tmp_path / "received" / "snap.bin").write_bytes(base)
    spy = Spy(monkeypatch)
    new = random.Random(7).randbytes(SIZE - 4096)
    got, report = await _ship(new, tmp_path)
    assert got == new
    assert report.bytes_reused == 0
    assert spy.started == 1


async def test_only_one_prefill_runs_at_a_time_per_store(tmp_path: Path) -> None:
    from fstransport.storage.backends.local.delta import _PREFILLING, LocalDelta
    from fstransport.storage.base import MappedBase

    base_path, _, base = _files(tmp_path, 2 * PREFILL_PIECE)
    store = FsspecSnapshotStore(str(tmp_path / "store"))
    builder = MapBuilder("blocks", key=new_key(), block_size=4096, supers=True)
    builder.update(base)
    mapped = MappedBase("base", builder.finish(), str(base_path))
    bases = LocalDelta(store)
    gate = _PREFILLING.setdefault(store.root, threading.Semaphore(1))
    assert gate.acquire(blocking=False)  # as if another stream's copy were running
    first = await PwriteSink.create(str(tmp_path / "a"))
    await bases.prefill(first, mapped, len(base))
    assert first.prefill is None
    gate.release()
    second = await PwriteSink.create(str(tmp_path / "b"))
    await bases.prefill(second, mapped, len(base))
    assert second.prefill is not None
    await second.abort()
    await first.abort()
    assert gate.acquire(blocking=False)  # released when the copy ended
    gate.release()


def test_the_store_checks_its_prefill_option(tmp_path: Path) -> None:
    from fstransport.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        FsspecSnapshotStore(str(tmp_path), prefill="yes")  # type: ignore[arg-type]


class ChangeBase:
    """Delivers to `inner`; rewrites the receiver's base (same size, other bytes) right after
    the answer to the request `when` picks (the offer or the recipe), while the copy may be
    running."""

    carries_delta = True

    def __init__(self, inner: LoopbackNetwork, path: Path, when: str) -> None:
        self.inner, self.path, self.when = inner, path, when
        self.changed = 0

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await self.inner.install_snapshot(req, option)
        hit = req.recipe is not None if self.when == "recipe" else req.delta is not None
        if hit and not self.changed:
            old = await asyncio.to_thread(self.path.read_bytes)
            flipped = (
                bytes(b ^ 0xFF for b in old[: 3 * PREFILL_PIECE // 8])
                + old[3 * PREFILL_PIECE // 8 :]
            )
            await asyncio.to_thread(self.path.write_bytes, flipped)
            self.changed += 1
        return answer


@pytest.mark.parametrize("when", ["offer", "recipe"])
async def test_a_base_changed_while_it_is_copied_never_installs_wrong_bytes(
    tmp_path: Path, when: str
) -> None:
    """Whether the copy took the base's bytes before or after the change, what is installed is
    the new content: the assembly reads the result back and a copy of changed bytes fails its
    CRC32C (the stream starts over, sent in full)."""
    base = random.Random(8).randbytes(SIZE)
    root = tmp_path / "received"
    root.mkdir()
    (root / "snap.bin").write_bytes(base)
    new = _pages(base, 10, seed=9)
    (tmp_path / "new.bin").write_bytes(new)
    store = FsspecSnapshotStore(str(root))
    net = ChangeBase(LoopbackNetwork(Receiver(store)), root / "snap.bin", when)
    report = await ship(
        str(tmp_path / "new.bin"), str(root / "snap.bin"), options=OPTIONS, network=net
    )
    await store.close()
    assert net.changed == 1
    assert await asyncio.to_thread((root / "snap.bin").read_bytes) == new
    assert report.bytes_reused > SIZE // 2 or report.bytes_sent >= len(new)


# -- a stream's later offers, a base replaced, a sink let go, a failed sketch ----------------


async def _two_bases(tmp_path: Path) -> tuple[FsspecSnapshotStore, bytes, bytes]:
    root = tmp_path / "store"
    root.mkdir()
    a, b = random.Random(11).randbytes(SIZE), random.Random(12).randbytes(SIZE)
    await asyncio.to_thread((root / "A").write_bytes, a)
    await asyncio.to_thread((root / "B").write_bytes, b)
    return FsspecSnapshotStore(str(root)), a, b


async def test_a_later_offer_of_another_base_replaces_the_copy(tmp_path: Path) -> None:
    """An exchange run again on the same stream offers base B after A: A's copy is stopped and
    forgotten, B's is what the assembly trusts (no false mismatch, B's bytes installed)."""
    from fstransport.protocol.delta import Recipe
    from fstransport.storage.backends.local.delta import LocalDelta

    store, _, b = await _two_bases(tmp_path)
    sink = await store.begin(SnapshotMeta("new", size=SIZE))
    bases, key = LocalDelta(store), new_key()
    first, second = (
        await bases.map_base("A", "blocks", key),
        await bases.map_base("B", "blocks", key),
    )
    assert first is not None
    assert second is not None
    await bases.prefill(sink, first, SIZE)
    bases.accepted(sink)
    assert isinstance(sink, PwriteSink)
    assert sink.prefill is not None
    await asyncio.to_thread(sink.prefill._thread.join)  # A copied whole
    await bases.prefill(sink, second, SIZE)
    assert sink.prefill is not None
    assert sink.prefill.base == second.pin
    crc, reused = await bases.assemble(sink, second, Recipe(SIZE, SIZE, ((SIZE, 0),)), chunk_crc(b))
    assert (crc, reused) == (chunk_crc(b), SIZE)
    assert await asyncio.to_thread(Path(sink.path).read_bytes) == b
    await store.abort("new")
    await store.close()


async def _prefilling_a(
    store: FsspecSnapshotStore,
) -> tuple[PwriteSink, LocalDelta, MappedBase]:
    """A stream "new" whose sink is being prefilled from base "A" (blocks mode)."""
    sink = await store.begin(SnapshotMeta("new", size=SIZE))
    bases = LocalDelta(store)
    mapped = await bases.map_base("A", "blocks", new_key())
    assert mapped is not None
    assert isinstance(sink, PwriteSink)
    await bases.prefill(sink, mapped, SIZE)
    return sink, bases, mapped


async def test_a_base_replaced_under_the_same_name_is_copied_again(tmp_path: Path) -> None:
    """The base file is replaced (another inode, same size) after its copy: the copy is not
    trusted, the assembly copies from the file as it is now, and the read-back says whether
    that is the content (here it is: the new file holds the content the recipe expects)."""
    from fstransport.protocol.delta import Recipe

    store, a, b = await _two_bases(tmp_path)
    sink, bases, mapped = await _prefilling_a(store)
    bases.accepted(sink)
    assert sink.prefill is not None
    await asyncio.to_thread(sink.prefill._thread.join)
    os.replace(tmp_path / "store" / "B", tmp_path / "store" / "A")  # A is now B's bytes
    crc, _ = await bases.assemble(sink, mapped, Recipe(SIZE, SIZE, ((SIZE, 0),)), chunk_crc(b))
    assert crc == chunk_crc(b)  # copied again from the file as it is, not trusted from before
    assert await asyncio.to_thread(Path(sink.path).read_bytes) != a
    await store.abort("new")
    await store.close()


async def test_a_sink_let_go_with_only_a_bases_copy_keeps_nothing(tmp_path: Path) -> None:

    store, _, _ = await _two_bases(tmp_path)
    sink, _, _ = await _prefilling_a(store)
    path = Path(sink.path)
    await store.release("new")
    assert not await asyncio.to_thread(path.exists), (
        "a partial holding only the base's copy has nothing to resume"
    )
    await store.close()


async def test_opening_the_file_again_waits_for_an_earlier_copy_into_it(tmp_path: Path) -> None:
    base_path, target, base = _files(tmp_path, 4 * PREFILL_PIECE)
    job = Prefill(str(base_path), str(target), len(base), len(base))
    job.recipe = True
    job.start()
    again = await PwriteSink.create(str(target), resume=True)  # settles the copy first
    assert not job._thread.is_alive()
    await again.abort()


async def test_a_failed_sketch_stops_reading_the_source() -> None:
    from fstransport.delta.source_map import HASH_WORKERS, sketch_source

    class Short:
        description, size = "short", 64 * MiB

        def __init__(self) -> None:
            self.reads = 0

        async def read(self, at: int, length: int) -> bytes:
            self.reads += 1
            await asyncio.sleep(0.01)
            return bytes(length - 1 if at == 0 else length)  # shorter than it says

    source = Short()
    with pytest.raises(EOFError):
        await sketch_source(source, key=new_key(), block_size=4096, piece=MiB)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert source.reads <= 2 * HASH_WORKERS, "pieces went on being read after the failure"
