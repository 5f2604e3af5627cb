"""The block map a relay stages with each chunk (its *trailer*), and a receiver's plan of the
chunk against its base, sans I/O.  See ``docs/relay.md`` ("Delta and the relay").

A staged object is the chunk's bytes followed by its trailer: a 28-byte header (`MAGIC`, mode,
block size, the chunk's length, the extent count), the extents' lengths (``"cdc"`` only; u32
little-endian) and each extent's digest (32 bytes, `extent_digest`: BLAKE3), computed with the
public map API (`MapBuilder`).  The SHA-256 of the whole trailer is part of the object's name
(`fstransport.storage.staging.chunk_name`), so it crosses the inner network inside the
reference: whoever can write the bucket cannot make a receiver take a trailer the sender did
not stage, and, digests being collision-resistant, a block whose digest equals a base block's
is that block.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from sys import byteorder

from fstransport.errors import InvalidRequest
from fstransport.messages import Buffer, SnapshotMeta
from fstransport.protocol.delta import MIN_BLOCK_SIZE, DeltaMap, MapBuilder, choose_block_size
from fstransport.protocol.delta_tags import DIGEST_SIZE

__all__ = [
    "MAGIC",
    "Trailer",
    "build_trailer",
    "decode_trailer",
    "max_trailer_bytes",
    "plan_chunk",
    "trailer_digest",
    "trailer_mode",
]

MAGIC = b"FSTRTRL1"
_HEADER = struct.Struct("<8sBxxxIQI")  # magic, mode, block size, chunk length, extent count
_MODES = {"blocks": 1, "cdc": 2}
_KEY = bytes(16)  # (MapBuilder wants a key; a trailer carries digests, never tags)


@dataclass(frozen=True)
class Trailer:
    """A chunk's extents: ``lengths[i]`` bytes whose digest is ``digests[32 i : 32 i + 32]``."""

    mode: str
    block_size: int  # 0 for "cdc"
    length: int
    lengths: array[int]
    digests: bytes

    def extents(self) -> Iterator[tuple[int, int, bytes]]:
        """``(start in the chunk, length, digest)`` of each extent, in order."""
        at = 0
        for i, length in enumerate(self.lengths):
            yield at, length, self.digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]
            at += length


def trailer_mode(delta: str, meta: SnapshotMeta, offset: int) -> tuple[str, int] | None:
    """The mode and block size of the trailer of the chunk at `offset` of `meta`'s snapshot
    sent with ``TransferOptions(delta=delta)``; None: no trailer (delta off, a directory
    snapshot, or fixed blocks that would not line up with a base's blocks)."""
    if delta not in _MODES or meta.kind == "tree":
        return None
    block = choose_block_size(meta.size) if meta.size else MIN_BLOCK_SIZE
    if delta == "blocks" and offset % block:
        return None
    return delta, (block if delta == "blocks" else 0)


def build_trailer(mode: str, block_size: int, data: Buffer) -> bytes:
    """The trailer of the chunk `data` (blocking: one hashing pass over it)."""
    builder = MapBuilder(mode, key=_KEY, block_size=block_size or MIN_BLOCK_SIZE)
    builder.update(data)
    built = builder.finish()
    header = _HEADER.pack(MAGIC, _MODES[mode], built.block_size, built.size, len(built))
    lengths = b"" if mode == "blocks" else _u32(built.lengths)
    return header + lengths + built.digests


def trailer_digest(raw: Buffer) -> str:
    """The hex SHA-256 of a trailer, as its object's name carries it."""
    return hashlib.sha256(raw).hexdigest()


def max_trailer_bytes(length: int) -> int:
    """An upper bound of the trailer of a `length`-byte chunk (extents are at least 4 KiB,
    but a chunk's last)."""
    return _HEADER.size + (length // MIN_BLOCK_SIZE + 1) * (4 + DIGEST_SIZE)


def decode_trailer(raw: Buffer, length: int) -> Trailer:
    """The trailer `raw` of a `length`-byte chunk; `InvalidRequest` (field ``staged``) unless it
    is well formed and its extents tile the chunk exactly."""
    view = memoryview(raw).cast("B")

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"malformed staged block map: {why}", field="staged")

    if len(view) < _HEADER.size:
        raise bad("too short")
    magic, mode_id, block, size, count = _HEADER.unpack_from(view)
    modes = {v: k for k, v in _MODES.items()}
    if magic != MAGIC or mode_id not in modes:
        raise bad("unknown magic or mode")
    mode = modes[mode_id]
    if size != length or not 0 < count <= length // MIN_BLOCK_SIZE + 1:
        raise bad("its length or extent count does not fit the chunk")
    if mode == "blocks" and (block < MIN_BLOCK_SIZE or block & (block - 1)):
        raise bad("the block size is not a power of two of at least 4 KiB")
    column = 0 if mode == "blocks" else 4 * count
    if len(view) != _HEADER.size + column + count * DIGEST_SIZE:
        raise bad("its size does not match its extent count")
    if mode == "blocks":
        if -(-length // block) != count:
            raise bad("its blocks do not tile the chunk")
        lengths = array("I", [block] * (count - 1) + [length - block * (count - 1)])
    else:
        lengths = array("I")
        lengths.frombytes(view[_HEADER.size : _HEADER.size + column])
        if byteorder == "big":
            lengths.byteswap()
        if 0 in lengths or sum(lengths) != length:
            raise bad("its extents do not tile the chunk")
    digests = bytes(view[_HEADER.size + column :])
    return Trailer(mode, block if mode == "blocks" else 0, length, lengths, digests)


def plan_chunk(
    trailer: Trailer, offset: int, base: DeltaMap, index: dict[bytes, int] | None = None
) -> list[tuple[int, int, int | None]]:
    """The chunk at `offset` as ``(start in the chunk, length, base offset or None: fetch)``,
    neighbours coalesced.  Fixed blocks match the base's block at the same place (same block
    size); CDC extents match any base extent with the same digest (`index`, from `digest_index`
    of the base map: digest -> offset)."""
    pieces: list[tuple[int, int, int | None]] = []
    digests = base.digests
    regular = trailer.mode == "blocks" and base.mode == "blocks"
    if regular and (base.block_size != trailer.block_size or offset % trailer.block_size):
        return [(0, trailer.length, None)]
    first = offset // trailer.block_size if regular else 0
    for i, (at, length, digest) in enumerate(trailer.extents()):
        where: int | None = None
        if regular:
            b = first + i
            found = digests[b * DIGEST_SIZE : (b + 1) * DIGEST_SIZE]
            if b < len(base) and base.lengths[b] == length and found == digest:
                where = b * trailer.block_size
        elif index is not None:
            where = index.get(digest)
        if pieces:
            p_at, p_len, p_base = pieces[-1]
            joined = (p_base is None and where is None) or (
                p_base is not None and where is not None and p_base + p_len == where
            )
            if joined:
                pieces[-1] = (p_at, p_len + length, p_base)
                continue
        pieces.append((at, length, where))
    return pieces


def digest_index(base: DeltaMap) -> dict[bytes, int]:
    """Each digest of `base` -> the offset of its first extent (for CDC trailers).  Extents of
    other lengths with one digest cannot exist (BLAKE3 is collision-resistant)."""
    index: dict[bytes, int] = {}
    digests = base.digests
    for i, start in enumerate(base.offsets()):
        index.setdefault(digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE], start)
    return index


def _u32(values: array[int]) -> bytes:
    out = array("I", values)
    if byteorder == "big":
        out.byteswap()
    return out.tobytes()
