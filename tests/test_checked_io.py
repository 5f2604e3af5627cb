"""Checked I/O: reads and writes that compute each chunk's CRC32C on the way (mapped source
chunks, sinks that checksum while they copy, writes that overlap) give exactly the data's CRC
and bytes, and the bookkeeping around them fails cleanly."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fstransport import (
    ChecksumMismatch,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    InvalidRequest,
    LoopbackNetwork,
    Receiver,
    SnapshotMeta,
    StorageError,
    TransferOptions,
    Vote,
    ship,
)
from fstransport.checksum import _multiply, _shift_operator, chunk_crc, combine, format_checksum
from fstransport.sender import send_source
from fstransport.storage import BufferSource, PreadSource
from fstransport.storage import source as source_module
from fstransport.storage.sink import CHECK_BLOCK, MemorySink, PwriteSink, write_checked
from fstransport.storage.source import map_range, read_checked
from fstransport.testing import MockNetwork
from tests.conftest import payload

V1 = Vote(1, 1)
DATA = payload(3 * CHECK_BLOCK + 12_345, seed=11)


def meta(size: int, snapshot_id: str = "snap") -> SnapshotMeta:
    return SnapshotMeta(snapshot_id, size=size)


# -- the source ----------------------------------------------------------------------------------


def test_map_range_views_any_range_and_stops_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in [(0, 1), (1, 4096), (4095, 70_000), (len(DATA) - 3, 3)]:
            assert bytes(map_range(fd, offset, length)) == DATA[offset : offset + length]
        assert bytes(map_range(fd, len(DATA) - 10, 100)) == DATA[-10:]  # never past the end
        assert len(map_range(fd, len(DATA), 10)) == 0
        assert len(map_range(fd, len(DATA) + 4096, 10)) == 0
    finally:
        os.close(fd)


async def test_mapped_chunks_outlive_the_source(tmp_path: Path) -> None:
    """A view handed out stays valid after the source is closed (nothing is reused)."""
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    source = await PreadSource.open(str(path))
    views = [await source.read(offset, 5000) for offset in range(0, 50_000, 5000)]
    await source.close()
    assert b"".join(bytes(v) for v in views) == DATA[:50_000]


async def test_pread_is_used_where_a_file_cannot_be_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)

    def refuse(fd: int, offset: int, length: int) -> memoryview:
        raise OSError("cannot map")

    monkeypatch.setattr(source_module, "map_range", refuse)
    source = await PreadSource.open(str(path))
    try:
        data, crc = await read_checked(source, 100, 10_000)
        assert bytes(data) == DATA[100:10_100]
        assert crc == chunk_crc(DATA[100:10_100])
        assert isinstance(await source.read(0, 10), bytes)
    finally:
        await source.close()


async def test_map_files_false_reads_without_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TransferOptions(map_files=False)`` reaches the source: a copy never maps the file."""
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    mapped: list[int] = []
    real_map_range = source_module.map_range

    def counting(fd: int, offset: int, length: int) -> memoryview:
        mapped.append(offset)
        return real_map_range(fd, offset, length)

    monkeypatch.setattr(source_module, "map_range", counting)
    options = TransferOptions(chunk_size=CHECK_BLOCK, map_files=False)
    await ship(str(path), str(tmp_path / "copy.bin"), options=options)
    assert (tmp_path / "copy.bin").read_bytes() == DATA
    assert mapped == []
    await ship(
        str(path), str(tmp_path / "mapped.bin"), options=TransferOptions(chunk_size=CHECK_BLOCK)
    )
    assert len(mapped) == 4  # the default maps every chunk


async def test_unmapped_source_truncated_while_shipped_is_a_storage_error(
    tmp_path: Path,
) -> None:
    """A file cut short in place mid-transfer: with ``map_files=False`` a short read is a
    typed error and nothing is installed (with mapping it would be SIGBUS: see map_range)."""
    path = tmp_path / "data.bin"
    path.write_bytes(payload(4 * 1024 * 1024, seed=3))
    options = TransferOptions(chunk_size=256 * 1024, max_in_flight=1, map_files=False)
    acknowledged = 0

    def cut_after_the_first_mebibyte(size: int) -> None:
        nonlocal acknowledged
        acknowledged += size
        if acknowledged >= 1024 * 1024 and path.stat().st_size > 1024 * 1024:
            os.truncate(path, 1024 * 1024)  # between two chunks, as a careless writer would

    with pytest.raises(StorageError, match=r"data\.bin"):
        await ship(
            str(path), str(tmp_path / "copy.bin"), options=options,
            progress=cut_after_the_first_mebibyte,
        )  # fmt: skip
    assert acknowledged == 1024 * 1024
    assert not (tmp_path / "copy.bin").exists()


async def test_read_checked_gives_the_crc_of_every_kind_of_source(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    local = await PreadSource.open(str(path))
    try:
        for source in (local, BufferSource(DATA)):
            for offset, length in [(0, 0), (0, 1), (5, CHECK_BLOCK + 7)]:
                data, crc = await read_checked(source, offset, length)
                assert bytes(data) == DATA[offset : offset + length]
                assert crc == chunk_crc(DATA[offset : offset + length])
    finally:
        await local.close()


# -- sinks ---------------------------------------------------------------------------------------


async def test_write_checked_writes_and_returns_the_crc(tmp_path: Path) -> None:
    local = await PwriteSink.create(str(tmp_path / "out.bin"))
    memory = FsspecSnapshotStore("memory://one-pass")
    mem_sink = MemorySink(memory.fs, "/one-pass/out.bin")
    for sink in (local, mem_sink):
        first = DATA[:CHECK_BLOCK]
        rest = DATA[CHECK_BLOCK:]
        lost, crc = await write_checked(sink, CHECK_BLOCK, memoryview(rest))
        assert (list(lost), crc) == ([], chunk_crc(rest))
        lost, crc = await write_checked(sink, 0, first)
        assert crc == chunk_crc(first)
        await sink.finish()
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert memory.fs.cat_file("/one-pass/out.bin") == DATA


async def test_write_checked_falls_back_to_crc_then_write() -> None:
    class PlainSink:
        path = "plain"

        def __init__(self) -> None:
            self.writes: list[tuple[int, bytes, int]] = []

        async def write(self, offset: int, data: bytes, crc: int) -> list[tuple[int, int]]:
            self.writes.append((offset, bytes(data), crc))
            return []

    sink = PlainSink()
    lost, crc = await write_checked(sink, 3, b"abc")  # type: ignore[arg-type]
    assert (list(lost), crc, sink.writes) == ([], chunk_crc(b"abc"), [(3, b"abc", crc)])


async def test_pwrite_sink_abort_waits_for_a_write_still_in_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled write keeps running in its thread: the descriptor is closed only after it."""
    sink = await PwriteSink.create(str(tmp_path / "out.bin"))
    started, release = threading.Event(), threading.Event()
    finished: list[float] = []
    pwrite = os.pwrite

    def slow_pwrite(fd: int, data: memoryview, offset: int) -> int:
        started.set()
        release.wait(5)
        written = pwrite(fd, data, offset)
        finished.append(time.monotonic())
        return written

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    write = asyncio.ensure_future(sink.write(0, b"x" * 10, chunk_crc(b"x" * 10)))
    await asyncio.to_thread(started.wait, 5)
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    abort = asyncio.ensure_future(sink.abort())
    await asyncio.sleep(0.05)
    assert not abort.done()  # still waiting for the write in the thread
    release.set()
    await abort
    assert finished
    assert not (tmp_path / "out.bin").exists()


# -- the receiver and the sender ------------------------------------------------------------------


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FsspecSnapshotStore:
    if request.param == "memory":
        return FsspecSnapshotStore("memory://recv")
    return FsspecSnapshotStore(str(tmp_path / "recv"))


async def handle_trusted(
    receiver: Receiver, req: InstallSnapshotRequest
) -> tuple[InstallSnapshotResponse, int]:
    """`Receiver.handle` as a trusting `LoopbackNetwork` calls it; the answer's CRC with it."""
    response = await receiver.handle(req, trust_crc=True)
    assert response.crc32c is not None
    return response, response.crc32c


async def test_the_answer_to_a_trusted_chunk_without_crc_carries_its_crc(
    store: FsspecSnapshotStore,
) -> None:
    receiver = Receiver(store)
    step = CHECK_BLOCK + 1000
    cuts = list(range(0, len(DATA), step))
    for offset in cuts:
        chunk = DATA[offset : offset + step]
        done = offset == cuts[-1]
        request = InstallSnapshotRequest(V1, meta(len(DATA)), offset, chunk, done, None)
        response, crc = await handle_trusted(receiver, request)
        assert crc == chunk_crc(chunk)
        assert response.vote == V1
    with await store.open("snap") as f:
        assert f.read() == DATA


async def test_a_trusted_chunk_not_written_again_still_gets_its_crc(
    store: FsspecSnapshotStore,
) -> None:
    """A snapshot named by its checksum skips a chunk it holds (no write, so no sink computed
    the CRC): the answer names it all the same, and a lower vote's answer names none."""
    receiver = Receiver(store)
    named = replace(meta(len(DATA)), checksum=format_checksum(chunk_crc(DATA)))
    chunk = DATA[:1000]
    first = await receiver.handle(
        InstallSnapshotRequest(V1, named, 0, chunk, False), trust_crc=True
    )
    again = await receiver.handle(
        InstallSnapshotRequest(V1, named, 0, chunk, False), trust_crc=True
    )
    assert first.crc32c == again.crc32c == chunk_crc(chunk)
    assert again.held == ((0, 1000),)
    higher = Vote(2, 1)
    await receiver.handle(InstallSnapshotRequest(higher, named, 1000, DATA[1000:2000], False))
    stale = InstallSnapshotRequest(V1, named, 2000, DATA[2000:3000], False)
    refused = await receiver.handle(stale, trust_crc=True)
    assert refused.vote == higher
    assert refused.crc32c is None


async def test_an_untrusted_crc_is_checked_and_named_in_the_answer(
    store: FsspecSnapshotStore,
) -> None:
    receiver = Receiver(store)
    chunk = DATA[:1000]
    wrong = InstallSnapshotRequest(V1, meta(len(DATA)), 0, chunk, False, chunk_crc(chunk) ^ 1)
    with pytest.raises(ChecksumMismatch):
        await receiver.handle(wrong)
    assert receiver.receiving == []  # nothing was written
    right = InstallSnapshotRequest(V1, meta(len(DATA)), 0, chunk, False, chunk_crc(chunk))
    assert (await receiver.handle(right)).crc32c == chunk_crc(chunk)
    again = InstallSnapshotRequest(V1, meta(len(DATA)), 1000, DATA[1000:2000], False)
    assert (await receiver.handle(again)).crc32c == chunk_crc(DATA[1000:2000])  # computed
    with pytest.raises(InvalidRequest):
        await receiver.handle(object(), trust_crc=True)  # type: ignore[arg-type]


async def test_trusted_chunks_without_crc_are_written_at_once_and_installed(
    store: FsspecSnapshotStore,
) -> None:
    receiver = Receiver(store)
    step = 10_000
    await handle_trusted(
        receiver, InstallSnapshotRequest(V1, meta(len(DATA)), 0, DATA[:step], False)
    )
    middle = list(range(step, len(DATA) - step, step))
    random.Random(3).shuffle(middle)
    answers = await asyncio.gather(
        *(
            handle_trusted(
                receiver, InstallSnapshotRequest(V1, meta(len(DATA)), o, DATA[o : o + step], False)
            )
            for o in middle
        )
    )
    assert [crc for _, crc in answers] == [chunk_crc(DATA[o : o + step]) for o in middle]
    last = max(middle) + step
    final = InstallSnapshotRequest(V1, meta(len(DATA)), last, DATA[last:], True)
    await receiver.handle(final)
    with await store.open("snap") as f:
        assert f.read() == DATA


async def test_a_chunk_written_while_its_stream_is_dropped_fails(tmp_path: Path) -> None:
    """The write runs outside the stream's lock (local sinks): the abort waits for it to end,
    and the chunk is not recorded in the stream that is gone."""
    store = FsspecSnapshotStore(str(tmp_path / "recv"))
    receiver = Receiver(store)
    size = 3 * CHECK_BLOCK
    await handle_trusted(receiver, InstallSnapshotRequest(V1, meta(size), 0, DATA[:10], False))
    write = asyncio.ensure_future(
        handle_trusted(receiver, InstallSnapshotRequest(V1, meta(size), 10, DATA[10:size], False))
    )
    await asyncio.sleep(0)
    await receiver.abort("snap")
    with pytest.raises(StorageError):
        await write
    assert receiver.receiving == []


async def test_ship_in_process_reports_the_crc_of_the_data(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(DATA)
    for chunk in (4096, CHECK_BLOCK, 1 << 20):
        target = tmp_path / f"out-{chunk}.bin"
        options = TransferOptions(chunk_size=chunk, max_in_flight=3)
        report = await ship(str(source), str(target), options=options)
        assert report.checksum == format_checksum(chunk_crc(DATA))
        assert target.read_bytes() == DATA


# -- checksums -----------------------------------------------------------------------------------


def test_combine_with_tables_equals_the_polynomial_product() -> None:
    rng = random.Random(9)
    for length in [1, 2, 7, 4096, 65_536, 8 << 20, 1_234_567]:
        for _ in range(20):  # past the point where the length gets its tables
            a, b = rng.getrandbits(32), rng.getrandbits(32)
            assert combine(a, b, length) == _multiply(_shift_operator(length), a) ^ b
    left, right = payload(1000, seed=1), payload(70_000, seed=2)
    for _ in range(10):
        assert combine(chunk_crc(left), chunk_crc(right), len(right)) == chunk_crc(left + right)


def test_only_a_network_that_itself_declares_trust_gets_chunks_without_crc() -> None:
    from fstransport.network.base import trusts_checksums

    receiver = Receiver(FsspecSnapshotStore("memory://recv"))
    trusting = LoopbackNetwork(receiver, trust_checksums=True)

    class Forwarding:
        def __getattr__(self, name: str) -> object:
            return getattr(trusting, name)

    assert not trusts_checksums(LoopbackNetwork(receiver))
    assert trusts_checksums(trusting)
    assert Forwarding().trust_checksums is True
    assert not trusts_checksums(Forwarding())


async def test_a_trusting_loopback_gets_chunks_but_the_last_without_crc(
    store: FsspecSnapshotStore,
) -> None:
    seen: list[int | None] = []
    answered: list[int | None] = []

    class Recording(Receiver):
        async def handle(
            self, req: InstallSnapshotRequest, *, trust_crc: bool = False
        ) -> InstallSnapshotResponse:
            response = await super().handle(req, trust_crc=trust_crc)
            if req.delta is None:  # (the data-less request asking for a delta base aside)
                seen.append(req.crc32c)
                answered.append(response.crc32c)
            return response

    net = LoopbackNetwork(Recording(store), trust_checksums=True)
    options = TransferOptions(chunk_size=CHECK_BLOCK, max_in_flight=2)
    result = await send_source(net, V1, meta(len(DATA)), BufferSource(DATA), option=options)
    assert seen == [None, None, None, chunk_crc(DATA[3 * CHECK_BLOCK :])]
    assert sorted(a for a in answered if a is not None) == sorted(
        chunk_crc(DATA[o : o + CHECK_BLOCK]) for o in range(0, len(DATA), CHECK_BLOCK)
    )
    assert result.checksum == format_checksum(chunk_crc(DATA))


async def test_a_crc_an_untrusted_peer_reports_is_never_used(store: FsspecSnapshotStore) -> None:
    """A hostile peer's answer naming wrong CRCs changes nothing: the sender computed its own."""
    inner = LoopbackNetwork(Receiver(store))
    options = TransferOptions(chunk_size=CHECK_BLOCK, max_in_flight=2)

    async def lie(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        assert req.crc32c is not None
        response = await inner.install_snapshot(req, options)
        return replace(response, crc32c=(req.crc32c + 1) % 2**32)

    lying = MockNetwork(lie)
    result = await send_source(lying, V1, meta(len(DATA)), BufferSource(DATA), option=options)
    assert result.completed
    assert result.checksum == format_checksum(chunk_crc(DATA))
    assert lying.calls >= len(DATA) // CHECK_BLOCK


async def test_a_failed_concurrent_write_ends_its_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "recv"))
    receiver = Receiver(store)
    size = 3 * CHECK_BLOCK
    await handle_trusted(receiver, InstallSnapshotRequest(V1, meta(size), 0, DATA[:10], False))

    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StorageError):
        await handle_trusted(
            receiver, InstallSnapshotRequest(V1, meta(size), 10, DATA[10:size], False)
        )
    assert receiver.receiving == []
    assert not (tmp_path / "recv" / "snap").exists()


async def test_a_wrapper_around_a_trusting_loopback_sees_every_crc(
    store: FsspecSnapshotStore,
) -> None:
    """Only a `LoopbackNetwork` itself takes the checked fast path: a wrapper that forwards
    attributes to one still gets every request with its CRC (a fault injector must)."""
    inner = LoopbackNetwork(Receiver(store), trust_checksums=True)
    seen: list[int | None] = []

    class Forwarding:
        def __getattr__(self, name: str) -> object:
            return getattr(inner, name)

        async def install_snapshot(
            self, req: InstallSnapshotRequest, option: TransferOptions
        ) -> InstallSnapshotResponse:
            seen.append(req.crc32c)
            return await inner.install_snapshot(req, option)

    options = TransferOptions(chunk_size=CHECK_BLOCK, max_in_flight=2)
    await send_source(Forwarding(), V1, meta(len(DATA)), BufferSource(DATA), option=options)
    assert len(seen) == 4
    assert None not in seen
    with await store.open("snap") as f:
        assert f.read() == DATA
