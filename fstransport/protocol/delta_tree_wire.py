"""The wire forms of a directory delta (`fstransport.protocol.delta_tree`): a receiver's tree
offer and a sender's request for base extents, checked as a peer's (`InvalidRequest`).  See
``docs/delta.md`` (Directory snapshots)."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from itertools import pairwise
from sys import byteorder

from fstransport.errors import InvalidRequest
from fstransport.messages import Buffer
from fstransport.protocol.delta import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from fstransport.protocol.delta_tree import MAX_TREE_OFFER_FILES, TreeMap
from fstransport.protocol.delta_wire import decode_map, encode_map

__all__ = ["decode_tree_offer", "decode_want", "encode_tree_offer", "encode_want", "is_want"]

_MAGIC = b"FSTDTRE2"
"""Version 2: a file's tag is derived from its BLAKE3 digest (`file_tag`).  Version 1 (an older
peer's, whose tag was SHA-256 of the bytes) is refused, so the two never compare tags: the
older sender gets a full transfer, as this one does from an older receiver."""
_OLDER = (b"FSTDTRE1",)
_HEAD = struct.Struct("<8sBBHIQQ")  # magic, mode, 0, 0, block size, file count, map length
_MODES = {"blocks": 1, "cdc": 2}
_BY_CODE = {code: mode for mode, code in _MODES.items()}
_WANT = b"FSTDWNT1"


def _u32(values: array[int]) -> bytes:
    out = array("I", values)
    if byteorder == "big":
        out.byteswap()
    return out.tobytes()


def _u64(values: array[int]) -> bytes:
    out = array("Q", values)
    if byteorder == "big":
        out.byteswap()
    return out.tobytes()


def _column(raw: bytes, code: str) -> array[int]:
    out = array(code)
    out.frombytes(raw)
    if byteorder == "big":
        out.byteswap()
    return out


def encode_tree_offer(tree: TreeMap) -> bytes:
    """The offer's map bytes for a tree base: a 32-byte header (``FSTDTRE2``, mode, block size,
    file count, extent map length), the files' sizes (u64), CRC32Cs (u32), tags (u64) and
    whether their extents are blocks or chunks (u8), then the extent map in `encode_map`'s
    form."""
    extents = encode_map(tree.extents)
    head = _HEAD.pack(
        _MAGIC, _MODES[tree.mode], 0, 0, tree.block_size, len(tree.sizes), len(extents)
    )
    columns = _u64(tree.sizes) + _u32(tree.crcs) + _u64(tree.tags) + bytes(tree.mapped)
    return head + columns + extents


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"tree delta offer: {message}", field="delta_map")


def decode_tree_offer(raw: Buffer, *, max_size: int) -> TreeMap:
    """A receiver's tree offer, checked as a peer's: known format, a base stream of at most
    `max_size` bytes and `MAX_TREE_OFFER_FILES` files, no empty file, files that add up to the
    extent map's size, and no extent straddling two files.  `InvalidRequest` otherwise."""
    raw = bytes(raw)
    if len(raw) < _HEAD.size:
        raise _bad("shorter than its header")
    magic, code, zero1, zero2, block, count, map_length = _HEAD.unpack_from(raw)
    if magic in _OLDER:
        raise _bad("an older peer's (its file tags are of another kind)")
    mode = _BY_CODE.get(code)
    if magic != _MAGIC or mode is None or zero1 or zero2:
        raise _bad("not of a known format")
    if mode == "blocks" and (not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE or block & (block - 1)):
        raise _bad(f"bad block size {block}")
    if mode == "cdc" and block:
        raise _bad("a CDC offer names no block size")
    if count > MAX_TREE_OFFER_FILES or count > max_size:
        raise _bad(f"{count} files are too many")
    columns = _HEAD.size + 21 * count
    if len(raw) != columns + map_length:
        raise _bad("its length does not hold its files and map")
    at = _HEAD.size
    sizes = _column(raw[at : at + 8 * count], "Q")
    crcs = _column(raw[at + 8 * count : at + 12 * count], "I")
    tags = _column(raw[at + 12 * count : at + 20 * count], "Q")
    mapped = array("B", raw[at + 20 * count : columns])
    extents = decode_map(raw[columns:], max_size=max_size)
    if extents.mode != "cdc" or (count and (min(sizes) == 0 or max(mapped) > 1)):
        raise _bad("its extents are not listed, a file is empty, or a flag is not 0 or 1")
    if sum(sizes) != extents.size:
        raise _bad("its files do not add up to its extents")
    tree = TreeMap(mode, block if mode == "blocks" else 0, extents, sizes, crcs, tags, mapped)
    tree.file_extents()  # every file ends where an extent ends
    return tree


def encode_want(numbers: Sequence[int]) -> bytes:
    """A sender's request for the extents of the base files `numbers` (indexes into the offer's
    files, increasing): ``FSTDWNT1``, a u64 count, u32 indexes.  It travels as a delta
    request's recipe; the answer is a new offer."""
    return _WANT + len(numbers).to_bytes(8, "little") + _u32(array("I", numbers))


def is_want(raw: bytes) -> bool:
    """Whether a delta request's recipe is a request for base extents (`encode_want`)."""
    return raw[:8] == _WANT


def decode_want(raw: Buffer, files: int) -> list[int]:
    """A sender's `encode_want`, checked against an offer of `files` files: `InvalidRequest`
    (field ``delta_recipe``) unless the indexes are increasing and below `files`."""
    raw = bytes(raw)
    count = int.from_bytes(raw[8:16], "little") if len(raw) >= 16 else -1
    if not is_want(raw) or not 0 <= count <= files or len(raw) != 16 + 4 * count:
        raise InvalidRequest("malformed request for base extents", field="delta_recipe")
    numbers = list(_column(raw[16:], "I"))
    if any(b <= a for a, b in pairwise(numbers)) or (numbers and numbers[-1] >= files):
        raise InvalidRequest("base files asked for out of order or range", field="delta_recipe")
    return numbers
