"""`Pieces`: chunk data kept in the pieces it arrived in, from the server's body to ``pwritev``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import fsspec
import pytest

from fstransport import InstallSnapshotRequest, InvalidRequest, Pieces, SnapshotMeta, Vote
from fstransport.checksum import chunk_crc
from fstransport.errors import StorageError
from fstransport.http.incoming import SMALL_PIECE, read_body
from fstransport.messages import contiguous
from fstransport.protocol.receiver import ReceiverLimits, validate_request
from fstransport.storage import sink as sink_module
from fstransport.storage.sink import (
    CheckedSink,
    MemorySink,
    PiecesSink,
    PwriteSink,
    is_checked_sink,
    is_pieces_sink,
)
from fstransport.storage.source import BufferSource, CheckedSource, PreadSource, is_checked_source
from tests.conftest import payload


def split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """`data` cut into pieces of the given sizes, cycling through them."""
    parts, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        parts.append(data[at : at + size])
        at += size
        i += 1
    return parts


def test_pieces_measure_join_and_checksum_like_the_joined_bytes() -> None:
    data = payload(100_000, seed=1)
    pieces = Pieces(split(data, [1, 0, 4096, 33_333]))
    assert len(pieces) == len(data)
    assert pieces.join() == data
    assert contiguous(pieces) == data
    assert chunk_crc(pieces) == chunk_crc(data)
    assert chunk_crc(pieces, 7) == chunk_crc(data, 7)
    assert repr(pieces) == f"Pieces(count={pieces.count}, len={len(data)})"
    assert contiguous(data) is data


def request(data: Pieces) -> InstallSnapshotRequest:
    return InstallSnapshotRequest(Vote(1, 0), SnapshotMeta("s"), 0, data, False)


def test_pieces_are_made_of_byte_buffers_only() -> None:
    for bad in ["text", [1, 2]]:
        with pytest.raises(TypeError):
            Pieces([b"ok", bad])  # type: ignore[list-item]
    flat_only = memoryview(bytes(8)).cast("B", (2, 4))  # a buffer, but two-dimensional
    with pytest.raises(InvalidRequest) as caught:
        validate_request(request(Pieces([b"ok", flat_only])), ReceiverLimits())
    assert caught.value.field == "data"


def test_pieces_count_whole_against_the_chunk_limit() -> None:
    pieces = Pieces([b"x" * 600, b"y" * 600])
    with pytest.raises(InvalidRequest, match="exceeds the receiver's limit of 1000"):
        validate_request(request(pieces), ReceiverLimits(max_chunk_size=1000))
    assert validate_request(request(pieces), ReceiverLimits(max_chunk_size=1200)) == chunk_crc(
        pieces
    )


async def write_pieces(path: Path, data: bytes, sizes: Sequence[int], offset: int = 0) -> None:
    sink = await PwriteSink.create(str(path))
    try:
        await sink.write_pieces(offset, Pieces(split(data, sizes)), chunk_crc(data))
    finally:
        await sink.finish()


async def test_more_pieces_than_one_pwritev_takes(tmp_path: Path) -> None:
    data = payload(3 * sink_module.IOV_MAX + 5, seed=2)
    await write_pieces(tmp_path / "f", data, [1], offset=10)
    assert (tmp_path / "f").read_bytes() == bytes(10) + data


async def test_short_pwritev_writes_resume_where_they_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwritev
    lengths: list[int] = []

    def short(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        lengths.append(sum(b.nbytes for b in buffers))
        limit = 777 + len(lengths)  # cuts pieces anywhere, never at the same place twice
        taken: list[memoryview] = []
        for b in buffers:
            taken.append(b[: limit - sum(t.nbytes for t in taken)])
        return real(fd, taken, offset)

    monkeypatch.setattr(os, "pwritev", short)
    data = payload(50_000, seed=3)
    await write_pieces(tmp_path / "f", data, [3000, 1, 9000])
    assert (tmp_path / "f").read_bytes() == data
    assert len(lengths) > 10  # it really took many short writes


async def test_without_pwritev_each_piece_is_written_with_pwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pwritev")
    data = payload(40_000, seed=5)
    await write_pieces(tmp_path / "f", data, [7, 0, 12_345], offset=3)
    assert (tmp_path / "f").read_bytes() == bytes(3) + data


async def test_a_pwritev_that_writes_nothing_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: 0)
    with pytest.raises(StorageError, match="pwritev wrote nothing"):
        await write_pieces(tmp_path / "f", b"abc", [1])


class Trickle:
    """A request body's stream that hands over the given pieces one at a time, like aiohttp's."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def readchunk(self) -> tuple[bytes, bool]:
        return (self.parts.pop(0), False) if self.parts else (b"", True)


async def test_a_trickled_body_is_gathered_into_few_pieces() -> None:
    data = payload(20 * SMALL_PIECE + 7, seed=4)
    parts = split(data, [1, 100, SMALL_PIECE + 5, 3])
    body, crc = await read_body(Trickle(parts), len(data), 5.0)  # type: ignore[arg-type]
    assert body.join() == data
    assert crc == chunk_crc(data)
    assert body.count <= 2 * len(data) // SMALL_PIECE + 2  # not one per trickle
    assert len(parts) == 0


@pytest.mark.parametrize(("sent", "declared"), [(10, 11), (12, 11)], ids=["short", "long"])
async def test_a_body_that_disagrees_with_its_length_is_refused(sent: int, declared: int) -> None:
    with pytest.raises(InvalidRequest, match="body") as caught:
        await read_body(Trickle([b"x" * sent]), declared, 5.0)  # type: ignore[arg-type]
    assert caught.value.field == "data"


def test_the_optional_capabilities_are_found_where_they_are_implemented(tmp_path: Path) -> None:
    """The annotations make mypy check each class against its protocol's signatures; the
    asserts check that the guards the receiver and the sender use find them (and only them)."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        pwrite: PiecesSink = PwriteSink(str(tmp_path / "f"), fd, fsync=False)
        assert is_pieces_sink(pwrite)
        assert is_checked_sink(pwrite)
    finally:
        os.close(fd)
    memory: CheckedSink = MemorySink(fsspec.filesystem("memory"), "/cap.bin")
    assert is_checked_sink(memory)
    assert not is_pieces_sink(memory)  # gets pieces joined
    fd = os.open(os.devnull, os.O_RDONLY)
    pread: CheckedSource = PreadSource(fd, 0, "null", owns_fd=False, map_file=False)
    try:
        assert is_checked_source(pread)
    finally:
        os.close(fd)
    assert not is_checked_source(BufferSource(b"abc"))  # its caller computes the CRC
