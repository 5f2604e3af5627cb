"""The wire forms of delta maps and recipes, and their checks: both come from a peer, so every
field is checked and anything malformed is `InvalidRequest`.  See ``docs/delta.md``."""

from __future__ import annotations

import struct
import zlib
from array import array
from sys import byteorder

from fstransport.errors import InvalidRequest
from fstransport.messages import Buffer
from fstransport.protocol.delta import (
    MAX_BLOCK_SIZE,
    MAX_BLOCKS,
    MIN_BLOCK_SIZE,
    SEND,
    SUPER_SHIFT,
    DeltaMap,
    Recipe,
    SuperLevel,
)
from fstransport.protocol.delta_tags import TAG_SIZE as _TAG_SIZE

__all__ = [
    "MAX_RECIPE_ENTRIES",
    "decode_map",
    "decode_recipe",
    "encode_map",
    "encode_recipe",
    "u32_from_le",
    "u32_le",
    "u64_from_le",
    "u64_le",
]

_MODE_CODES = {"blocks": 1, "cdc": 2}
_MODES_BY_CODE = {code: mode for mode, code in _MODE_CODES.items()}
_MAP_MAGIC = b"FSTDMAP3"  # (2: 32-bit tags; 1: SHA-256 digests, no second level; refused)
_MAP_HEADER = struct.Struct("<8sBBHIQQ16s")  # magic mode flags shift block_size size count key
_ZLIB = 1
_RECIPE_MAGIC = b"FSTDRCP1"
_RECIPE_HEADER = struct.Struct("<8sQQQ")  # magic size base_size count
_RECIPE_ENTRY = struct.Struct("<QQ")  # length, base offset (SEND: sent)
MAX_RECIPE_ENTRIES = 1 << 24


def _bad(message: str, what: str) -> InvalidRequest:
    return InvalidRequest(message, field=what)


def _le(values: array[int], code: str) -> bytes:
    """`values` as little-endian `code` items, whatever this machine's byte order."""
    if values.typecode != code or byteorder == "big":
        values = array(code, values)
        if byteorder == "big":
            values.byteswap()
    return values.tobytes()


def _from_le(raw: Buffer, code: str) -> array[int]:
    """Little-endian `code` items `raw` as an array in this machine's byte order."""
    values = array(code)
    values.frombytes(raw)
    if byteorder == "big":
        values.byteswap()
    return values


def u32_le(values: array[int]) -> bytes:
    """`values` (u32) as little-endian bytes, whatever this machine's byte order."""
    return _le(values, "I")


def u32_from_le(raw: Buffer) -> array[int]:
    """Little-endian u32 `raw` as an array in this machine's byte order."""
    return _from_le(raw, "I")


def u64_le(values: array[int]) -> bytes:
    """`values` (u64: tags) as little-endian bytes, whatever this machine's byte order."""
    return _le(values, "Q")


def u64_from_le(raw: Buffer) -> array[int]:
    """Little-endian u64 `raw` as an array in this machine's byte order."""
    return _from_le(raw, "Q")


def encode_map(delta_map: DeltaMap) -> bytes:
    """The map's wire form: a 48-byte header, then little-endian columns (lengths for CDC, u32;
    CRCs, u32; tags, u64; then a block map's super-block CRCs and tags), deflated when that is
    smaller (repeated blocks, such as zero pages).  The header's shift is 0 for a map without a
    second level.  Peers of an older version refuse the magic, never misread the columns."""
    columns = [u32_le(delta_map.crcs), u64_le(delta_map.tags)]
    if delta_map.mode == "cdc":
        columns.insert(0, u32_le(delta_map.lengths))
    supers = delta_map.supers
    if supers is not None:
        columns += [u32_le(supers.crcs), u64_le(supers.tags)]
    payload = b"".join(columns)
    flags = 0
    packed = zlib.compress(payload, 1)
    if len(packed) < len(payload) * 9 // 10:
        payload, flags = packed, _ZLIB
    header = _MAP_HEADER.pack(
        _MAP_MAGIC,
        _MODE_CODES[delta_map.mode],
        flags,
        0 if supers is None else supers.shift,
        delta_map.block_size,
        delta_map.size,
        len(delta_map),
        delta_map.key,
    )
    return header + payload


def decode_map(raw: Buffer, *, max_size: int, max_entries: int = 4 * MAX_BLOCKS) -> DeltaMap:
    """A peer's map, checked: `InvalidRequest` (``field="delta_map"``) for anything malformed,
    for a content larger than `max_size`, or more than `max_entries` extents."""
    what = "delta_map"
    raw = bytes(raw)
    if len(raw) < _MAP_HEADER.size:
        raise _bad("the delta map is shorter than its header", what)
    magic, code, flags, shift, block, size, count, key = _MAP_HEADER.unpack_from(raw)
    mode = _MODES_BY_CODE.get(code)
    if magic != _MAP_MAGIC or mode is None or shift not in (0, SUPER_SHIFT) or flags & ~_ZLIB:
        raise _bad("not a delta map of a known format", what)
    if size > max_size or count > max_entries:
        raise _bad(f"the delta map is too large ({size} bytes, {count} extents)", what)
    if mode == "blocks":
        if not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE or block & (block - 1):
            raise _bad(f"bad block size {block}", what)
        if count != -(-size // block):
            raise _bad(f"{count} blocks do not tile {size} bytes of {block}-byte blocks", what)
    elif block != 0 or shift:
        raise _bad("a CDC map names no block size and no super-blocks", what)
    supers = -(-size // (block << shift)) if shift else 0
    if shift and supers < 2:
        raise _bad("a map of one super-block has no second level", what)
    u32s = 2 if mode == "cdc" else 1  # (lengths and) CRCs; then the u64 tags
    per = 4 * u32s + _TAG_SIZE
    expected = per * count + (4 + _TAG_SIZE) * supers
    payload = raw[_MAP_HEADER.size :]
    if flags & _ZLIB:
        if expected == 0:  # (zlib reads a limit of 0 as no limit at all)
            raise _bad("an empty delta map is never deflated", what)
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(payload, expected)
        except zlib.error as exc:
            raise _bad(f"the delta map does not inflate: {exc}", what) from exc
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise _bad("the delta map inflates to more or less than its extents", what)
    if len(payload) != expected:
        raise _bad(f"the delta map holds {len(payload)} bytes, not {expected}", what)
    col = [u32_from_le(payload[i * 4 * count : (i + 1) * 4 * count]) for i in range(u32s)]
    tags = u64_from_le(payload[4 * u32s * count : per * count])
    second = None
    if supers:
        at = per * count
        super_crcs = u32_from_le(payload[at : at + 4 * supers])
        second = SuperLevel(shift, super_crcs, u64_from_le(payload[at + 4 * supers :]))
    if mode == "cdc":
        lengths = col.pop(0)
        if sum(lengths) != size or (count and min(lengths) == 0):
            raise _bad("the delta map's extents do not tile its content", what)
    else:
        lengths = array("I", [block] * count)
        if count:
            lengths[-1] = size - block * (count - 1)
    return DeltaMap(mode, size, key, block, lengths, col[0], tags, supers=second)


def encode_recipe(recipe: Recipe) -> bytes:
    """The recipe's wire form: a 32-byte header, then 16 bytes a range."""
    head = _RECIPE_HEADER.pack(_RECIPE_MAGIC, recipe.size, recipe.base_size, len(recipe.ranges))
    return head + b"".join(_RECIPE_ENTRY.pack(n, base) for n, base in recipe.ranges)


def decode_recipe(raw: Buffer, *, size: int, base_size: int) -> Recipe:
    """A peer's recipe for a `size`-byte target from a `base_size`-byte base, checked:
    `InvalidRequest` (``field="delta_recipe"``) for anything malformed."""
    what = "delta_recipe"
    raw = bytes(raw)
    if len(raw) < _RECIPE_HEADER.size:
        raise _bad("the delta recipe is shorter than its header", what)
    magic, said_size, said_base, count = _RECIPE_HEADER.unpack_from(raw)
    if magic != _RECIPE_MAGIC or (said_size, said_base) != (size, base_size):
        raise _bad("the delta recipe is not for this snapshot and base", what)
    if count > MAX_RECIPE_ENTRIES or len(raw) != _RECIPE_HEADER.size + count * 16:
        raise _bad(f"the delta recipe's length does not hold {count} ranges", what)
    ranges = tuple(_RECIPE_ENTRY.iter_unpack(raw[_RECIPE_HEADER.size :]))
    total = 0
    for length, base in ranges:
        if length == 0 or (base != SEND and base + length > base_size):
            raise _bad("a delta recipe range is empty or outside the base", what)
        total += length
    if total != size:
        raise _bad(f"the delta recipe covers {total} bytes, not {size}", what)
    return Recipe(size, base_size, ranges)
