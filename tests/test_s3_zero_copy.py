"""Parts without copies: adopted immutable chunks, recycled part buffers, and `PartBody`."""

from __future__ import annotations

import io
import mmap
import os
from pathlib import Path

import pytest

from fstransport.checksum import chunk_crc
from fstransport.errors import SnapshotMismatch
from fstransport.http.body import SLICE
from fstransport.protocol.parts import HandedOver, PartAssembler, immutable
from fstransport.storage.backends.s3.multipart import PartBody


def test_immutable_data() -> None:
    assert immutable(b"abc")
    assert immutable(memoryview(b"abcdef")[2:])
    assert immutable(HandedOver(b"abc"))
    assert immutable(memoryview(HandedOver(b"abcdef"))[1:])
    assert not immutable(bytearray(b"abc"))
    assert not immutable(memoryview(bytearray(b"abc")))
    assert not immutable(memoryview(bytearray(b"abc")).toreadonly())


def test_immutable_mappings(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * mmap.ALLOCATIONGRANULARITY)
    with open(path, "r+b") as fh:
        readonly = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        writable = mmap.mmap(fh.fileno(), 0)
    assert immutable(memoryview(readonly)[10:])
    assert not immutable(memoryview(writable).toreadonly())
    readonly.close()
    writable.close()


def test_a_chunk_that_is_a_part_is_taken_as_it_is() -> None:
    assembler = PartAssembler("s", 24, 8)
    chunk = bytes(range(8, 16))
    done = assembler.write(8, chunk, crc=chunk_crc(chunk)).completed
    assert [(p.number, bytes(p.data), p.crc) for p in done] == [(2, chunk, chunk_crc(chunk))]
    assert isinstance(done[0].data, memoryview)
    assert done[0].data.obj is chunk
    assert assembler.copied_parts == 0
    assert assembler.completed == {2}


def test_a_chunk_of_whole_parts_is_split_without_copies() -> None:
    assembler = PartAssembler("s", 20, 8, max_open_parts=1)
    data = bytes(range(20))
    done = assembler.write(0, data, crc=chunk_crc(data)).completed
    # every part adopted (never open, so max_open_parts=1 does not refuse them); no CRC is
    # known for a slice of the chunk
    assert [(p.number, bytes(p.data), p.crc) for p in done] == [
        (1, data[:8], None),
        (2, data[8:16], None),
        (3, data[16:], None),
    ]
    assert assembler.copied_parts == 0
    assert assembler.first_missing() is None


def test_mutable_chunks_are_copied() -> None:
    assembler = PartAssembler("s", 16, 8)
    chunk = bytearray(b"A" * 8)
    (part,) = assembler.write(0, chunk, crc=chunk_crc(chunk)).completed
    chunk[:] = b"B" * 8  # the sender's buffer changes later: the part must not
    assert bytes(part.data) == b"A" * 8
    assert part.crc is None
    assert assembler.copied_parts == 1


def test_an_adopted_part_sent_again_replaces_the_earlier_one() -> None:
    assembler = PartAssembler("s", 16, 8)
    assembler.write(0, b"A" * 8)
    (again,) = assembler.write(0, b"B" * 8).completed
    assert bytes(again.data) == b"B" * 8
    assert assembler.completed == {1}
    with pytest.raises(SnapshotMismatch, match="expect"):
        assembler.write(4, b"C" * 4)  # the middle of a completed part: refused


def test_recycled_buffers_are_reused_and_fully_overwritten() -> None:
    assembler = PartAssembler("s", 32, 8, max_open_parts=2)
    (first,) = assembler.write(0, bytearray(b"A" * 8)).completed
    assembler.recycle(first)
    assembler.recycle(first.__class__(9, 0, b"not ours"))  # adopted data is never kept
    half = assembler.write(8, bytearray(b"B" * 4))
    assert not half.completed
    (second,) = assembler.write(12, bytearray(b"C" * 4)).completed
    assert second.data is first.data  # the same buffer, refilled
    assert bytes(second.data) == b"BBBBCCCC"
    assembler.recycle(second)
    assembler.recycle(second)  # kept once only: two parts must never share a buffer
    a = assembler.write(16, bytearray(b"D" * 4))
    b = assembler.write(24, bytearray(b"E" * 4))
    assert not a.completed
    assert not b.completed
    (third,) = assembler.write(20, bytearray(b"F" * 4)).completed
    (fourth,) = assembler.write(28, bytearray(b"G" * 4)).completed
    assert third.data is not fourth.data
    assert (bytes(third.data), bytes(fourth.data)) == (b"DDDDFFFF", b"EEEEGGGG")
    assert assembler.copied_parts == 4


class _Writer:
    """Records what a payload writes (aiohttp's StreamWriter, reduced to what we call)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.headers_sent = False

    def send_headers(self) -> None:
        self.headers_sent = True

    async def write(self, chunk: memoryview) -> None:
        assert self.headers_sent
        self.pieces.append(bytes(chunk))


async def test_part_body_writes_its_buffer_in_slices() -> None:
    data = os.urandom(2 * SLICE + 5)
    body = PartBody(memoryview(data))
    assert len(body) == body.size == len(data)
    writer = _Writer()
    await body.write_with_length(writer, None)  # type: ignore[arg-type]
    assert [len(p) for p in writer.pieces] == [SLICE, SLICE, 5]
    assert b"".join(writer.pieces) == data
    again = _Writer()
    await body.write(again)  # type: ignore[arg-type]
    assert b"".join(again.pieces) == data  # a body can be sent again (a retry)
    short = _Writer()
    await body.write_with_length(short, 10)  # type: ignore[arg-type]
    assert b"".join(short.pieces) == data[:10]


def test_part_body_is_a_file_for_botocore() -> None:
    body = PartBody(b"0123456789")
    assert body.read(4) == b"0123"
    assert body.tell() == 4
    assert body.read() == b"456789"
    assert body.read(3) == b""
    assert body.seek(0) == 0
    assert body.read(2) == b"01"
    assert body.seek(-3, io.SEEK_END) == 7
    assert body.read() == b"789"
    assert body.seek(1, io.SEEK_CUR) == 11
    assert body.read() == b""
    assert body.decode() == "0123456789"
    assert not PartBody(b"")  # botocore: an empty body has length 0
