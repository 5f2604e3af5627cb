"""Delta transfer, sans I/O: maps of what a base holds, and the recipe that builds a new snapshot
from a base plus the bytes that differ.  See ``docs/delta.md``.

A **map** describes a base (or a source) as extents that tile ``[0, size)``, each identified by
``(length, crc32c, tag)``: the CRC32C lets a receiver combine the whole snapshot's CRC32C without
re-reading reused bytes; the ``tag`` is the first 4 bytes of a BLAKE2b keyed with the map's random
``key``, so that a reused extent is never chosen on a CRC32C match alone (a CRC is linear:
collisions are easy to make and happen by chance once in 2**32 changed extents).  Modes:

* ``"blocks"``: fixed blocks at fixed offsets (page files); lengths are implicit, 8 bytes a block.
* ``"cdc"``: content-defined chunks (FastCDC via ``pyfastcdc``) for content that shifts, cut
  afresh at every segment start given (the files of a packed tree), so whole files match.

A **recipe** (sender -> receiver) lists the target's ranges in order, each copied from the base at
an offset or sent.  Maps and recipes come from peers: `decode_map` and `decode_recipe` check every
field and raise `InvalidRequest` for anything malformed.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from sys import byteorder

from fstransport.checksum import chunk_crc, combine
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import Buffer

__all__ = [
    "CDC_AVG",
    "CDC_MAX",
    "CDC_MIN",
    "DELTA_MODES",
    "MAX_BLOCKS",
    "MIN_BLOCK_SIZE",
    "SEND",
    "DeltaMap",
    "Recipe",
    "apply_recipe",
    "build_map",
    "choose_block_size",
    "decode_map",
    "decode_recipe",
    "encode_map",
    "encode_recipe",
    "plan_recipe",
]

DELTA_MODES = ("blocks", "cdc", "off")
MIN_BLOCK_SIZE = 4096
"""Smallest block: a database page; 8 map bytes per 4 KiB block are 0.2% of the content."""
MAX_BLOCK_SIZE = 16 * 1024 * 1024
MAX_BLOCKS = 1 << 20
"""Blocks grow past 4 KiB only above 4 GiB, so that a map stays at most 8 MiB."""
CDC_MIN, CDC_AVG, CDC_MAX = 8 * 1024, 16 * 1024, 64 * 1024
"""FastCDC sizes; pyfastcdc's real mean is about ``CDC_AVG + CDC_MIN`` (24 KiB): 0.05% map."""
TAG_SIZE = 4
KEY_SIZE = 16
SEND = (1 << 64) - 1
"""The base offset of a recipe range that is sent rather than copied."""

_MODE_CODES = {"blocks": 1, "cdc": 2}
_MODES_BY_CODE = {code: mode for mode, code in _MODE_CODES.items()}
_MAP_MAGIC = b"FSTDMAP1"
_MAP_HEADER = struct.Struct("<8sBBHIQQ16s")  # magic mode flags 0 block_size size count key
_ZLIB = 1
_RECIPE_MAGIC = b"FSTDRCP1"
_RECIPE_HEADER = struct.Struct("<8sQQQ")  # magic size base_size count
_RECIPE_ENTRY = struct.Struct("<QQ")  # length, base offset (SEND: sent)
MAX_RECIPE_ENTRIES = 1 << 24


def _bad(message: str, what: str) -> InvalidRequest:
    return InvalidRequest(message, field=what)


def choose_block_size(size: int) -> int:
    """The block size for a `size`-byte snapshot: 4 KiB, doubled while it would need more than
    `MAX_BLOCKS` blocks."""
    block = MIN_BLOCK_SIZE
    while -(-size // block) > MAX_BLOCKS and block < MAX_BLOCK_SIZE:
        block *= 2
    return block


def new_key() -> bytes:
    """A fresh random key for the tags of a map."""
    return os.urandom(KEY_SIZE)


@dataclass(frozen=True)
class DeltaMap:
    """Extents tiling ``[0, size)``: ``lengths[i]``, ``crcs[i]``, ``tags[i]`` (u32 arrays)."""

    mode: str
    size: int
    key: bytes
    block_size: int  # 0 for "cdc"
    lengths: array[int] = field(repr=False)
    crcs: array[int] = field(repr=False)
    tags: array[int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.crcs)

    def offsets(self) -> list[int]:
        """Where each extent starts."""
        out, at = [], 0
        for length in self.lengths:
            out.append(at)
            at += length
        return out

    def whole_crc(self) -> int:
        """The CRC32C of the whole content, combined from the extents'."""
        crc = 0
        for length, part in zip(self.lengths, self.crcs, strict=True):
            crc = combine(crc, part, length)
        return crc

    def crc_of(self, start: int, length: int) -> int:
        """The CRC32C of ``[start, start + length)``, which must be whole extents (as a recipe's
        copied ranges are); `InvalidRequest` otherwise."""
        offsets = self.offsets()
        i = bisect_left(offsets, start)
        crc, at = 0, start
        while at < start + length:
            if i >= len(offsets) or offsets[i] != at or at + self.lengths[i] > start + length:
                raise InvalidRequest(
                    "a copied range does not fall on the base's extents", field="delta"
                )
            crc = combine(crc, self.crcs[i], self.lengths[i])
            at += self.lengths[i]
            i += 1
        return crc


def _tag(key: bytes, piece: Buffer) -> int:
    digest = hashlib.blake2b(piece, digest_size=TAG_SIZE, key=key).digest()
    return int.from_bytes(digest, "little")


def _cuts(mode: str, view: memoryview, block_size: int, segments: Sequence[int]) -> list[int]:
    """Extent lengths tiling `view`."""
    if mode == "blocks":
        size = len(view)
        return [min(block_size, size - o) for o in range(0, size, block_size)]
    from pyfastcdc import FastCDC  # imported here: only a CDC transfer needs it

    chunker = FastCDC(CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX)
    bounds = sorted({0, len(view), *(s for s in segments if 0 < s < len(view))})
    lengths: list[int] = []
    for start, end in pairwise(bounds):
        lengths.extend(chunk.length for chunk in chunker.cut_buf(view[start:end]))
    return lengths


def build_map(
    mode: str,
    data: Buffer,
    *,
    key: bytes,
    block_size: int | None = None,
    segments: Sequence[int] = (),
) -> DeltaMap:
    """The map of `data` in `mode` with tags keyed by `key` (`new_key`, or the base map's).

    `segments` are offsets where CDC starts afresh (the file bodies of a packed tree).
    """
    if mode not in _MODE_CODES:
        raise ConfigurationError(f"delta mode must be 'blocks' or 'cdc' for a map, got {mode!r}")
    if len(key) != KEY_SIZE:
        raise ConfigurationError(f"a map key is {KEY_SIZE} bytes")
    view = memoryview(data).cast("B")
    size = len(view)
    block = (block_size or choose_block_size(size)) if mode == "blocks" else 0
    lengths = array("I", _cuts(mode, view, block, segments))
    crcs, tags = array("I"), array("I")
    at = 0
    for length in lengths:
        piece = view[at : at + length]
        crcs.append(chunk_crc(piece))
        tags.append(_tag(key, piece))
        at += length
    return DeltaMap(mode, size, bytes(key), block, lengths, crcs, tags)


# -- the map on the wire ------------------------------------------------------------------------


def _le(values: array[int]) -> bytes:
    if byteorder == "big":
        values = array("I", values)
        values.byteswap()
    return values.tobytes()


def _from_le(raw: bytes) -> array[int]:
    values = array("I")
    values.frombytes(raw)
    if byteorder == "big":
        values.byteswap()
    return values


def encode_map(delta_map: DeltaMap) -> bytes:
    """The map's wire form: a 48-byte header, then u32 little-endian columns (lengths for CDC,
    CRCs, tags), deflated when that is smaller (repeated blocks, such as zero pages)."""
    columns = [delta_map.crcs, delta_map.tags]
    if delta_map.mode == "cdc":
        columns.insert(0, delta_map.lengths)
    payload = b"".join(_le(c) for c in columns)
    flags = 0
    packed = zlib.compress(payload, 1)
    if len(packed) < len(payload) * 9 // 10:
        payload, flags = packed, _ZLIB
    header = _MAP_HEADER.pack(
        _MAP_MAGIC,
        _MODE_CODES[delta_map.mode],
        flags,
        0,
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
    magic, code, flags, zero, block, size, count, key = _MAP_HEADER.unpack_from(raw)
    mode = _MODES_BY_CODE.get(code)
    if magic != _MAP_MAGIC or mode is None or zero != 0 or flags & ~_ZLIB:
        raise _bad("not a delta map of a known format", what)
    if size > max_size or count > max_entries:
        raise _bad(f"the delta map is too large ({size} bytes, {count} extents)", what)
    if mode == "blocks":
        if not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE or block & (block - 1):
            raise _bad(f"bad block size {block}", what)
        if count != -(-size // block):
            raise _bad(f"{count} blocks do not tile {size} bytes of {block}-byte blocks", what)
    elif block != 0:
        raise _bad("a CDC map names no block size", what)
    columns = 3 if mode == "cdc" else 2
    expected = 4 * columns * count
    payload = raw[_MAP_HEADER.size :]
    if flags & _ZLIB:
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(payload, expected)
        except zlib.error as exc:
            raise _bad(f"the delta map does not inflate: {exc}", what) from exc
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise _bad("the delta map inflates to more or less than its extents", what)
    if len(payload) != expected:
        raise _bad(f"the delta map holds {len(payload)} bytes, not {expected}", what)
    col = [_from_le(payload[i * 4 * count : (i + 1) * 4 * count]) for i in range(columns)]
    if mode == "cdc":
        lengths = col.pop(0)
        if sum(lengths) != size or (count and min(lengths) == 0):
            raise _bad("the delta map's extents do not tile its content", what)
    else:
        lengths = array("I", [block] * count)
        if count:
            lengths[-1] = size - block * (count - 1)
    return DeltaMap(mode, size, key, block, lengths, col[0], col[1])


# -- the recipe ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """The target, in order: ``(length, base_offset)``, `SEND` for bytes that are sent."""

    size: int
    base_size: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def reused(self) -> int:
        """Bytes copied from the base."""
        return sum(n for n, base in self.ranges if base != SEND)

    @property
    def sent(self) -> int:
        """Bytes the sender sends."""
        return self.size - self.reused

    def targets(self) -> list[tuple[int, int, int]]:
        """``(target_offset, length, base_offset)`` of each range."""
        out, at = [], 0
        for length, base in self.ranges:
            out.append((at, length, base))
            at += length
        return out

    def sends(self) -> list[tuple[int, int]]:
        """The target ranges ``(start, end)`` the sender sends."""
        return [(t, t + n) for t, n, base in self.targets() if base == SEND]


def _coalesce(pieces: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for length, base in pieces:
        if out:
            last_length, last_base = out[-1]
            sends = base == SEND and last_base == SEND
            if sends or (base != SEND and last_base != SEND and last_base + last_length == base):
                out[-1] = (last_length + length, last_base)
                continue
        out.append((length, base))
    return tuple(out)


def plan_recipe(base: DeltaMap, source: DeltaMap) -> Recipe:
    """What to copy from `base` and what to send to build `source`'s content.

    Extents match only when length, CRC32C and keyed tag all agree; `source` must have been
    built with `base`'s mode, key and block size.
    """
    if (source.mode, source.key, source.block_size) != (base.mode, base.key, base.block_size):
        raise ConfigurationError("the source map must use the base map's mode, key and block size")
    pieces: list[tuple[int, int]] = []
    if base.mode == "blocks":
        for i, length in enumerate(source.lengths):
            same = (
                i < len(base)
                and base.lengths[i] == length
                and base.crcs[i] == source.crcs[i]
                and base.tags[i] == source.tags[i]
            )
            pieces.append((length, i * base.block_size if same else SEND))
    else:
        known: dict[tuple[int, int, int], int] = {}
        for at, ident in zip(
            base.offsets(), zip(base.lengths, base.crcs, base.tags, strict=True), strict=True
        ):
            known.setdefault(ident, at)
        for ident in zip(source.lengths, source.crcs, source.tags, strict=True):
            pieces.append((ident[0], known.get(ident, SEND)))
    return Recipe(source.size, base.size, _coalesce(pieces))


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


def apply_recipe(recipe: Recipe, base: Buffer, sent: Buffer) -> bytes:
    """The target built in memory: base ranges and `sent` (the sent ranges, in order, joined)."""
    base_view, sent_view = memoryview(base).cast("B"), memoryview(sent).cast("B")
    if len(base_view) != recipe.base_size or len(sent_view) != recipe.sent:
        raise InvalidRequest("the base or the sent bytes do not fit the recipe", field="delta")
    out = bytearray()
    at = 0
    for length, base_at in recipe.ranges:
        if base_at == SEND:
            out += sent_view[at : at + length]
            at += length
        else:
            out += base_view[base_at : base_at + length]
    return bytes(out)
