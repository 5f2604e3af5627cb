"""Delta transfer for directory snapshots, sans I/O: what a receiver offers of a base tree, and
the recipe that builds a new packed tree from it.  See ``docs/delta.md`` (Directory snapshots).

The base of a tree is addressed as its **base stream**: the bytes of its non-empty files joined
in the order the receiver lists them (no header, no table).  A `TreeMap` describes such a stream:

* per file, a strong identity ``(size, crc32c, tag)``: the tag is 8 bytes of SHA-256 keyed like
  the block tags (`fstransport.protocol.delta`: the transfer's random key, zero-padded to one
  block) over the file's extents' lengths, CRC32Cs and tags, so a file matches whole only if
  every extent would (each a 64-bit identity a snapshot's content cannot aim at);
* the extents themselves, cut afresh at every file's first byte: fixed blocks from the file's
  start (``"blocks"``) or FastCDC chunks (``"cdc"``).  No extent straddles two files.

The sender's recipe (`plan_tree_recipe`) covers the packed stream it sends: the header and table
are always sent; a file whose identity the base holds (under any name: renamed and moved files
too) is one range copied from that base file; any other file is matched extent by extent against
the base's extents by ``(length, crc32c, tag)``, anywhere in the base.  The recipe, its checks,
the ledger and assembly's CRC check are the file delta's own (`fstransport.protocol.delta_wire`,
`fstransport.protocol.delta_session`).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from sys import byteorder

from fstransport.checksum import chunk_crc, combine, format_checksum
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import Buffer, DeltaOffer
from fstransport.protocol.delta import (
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    SEND,
    DeltaMap,
    MapBuilder,
    Recipe,
    _coalesce,
    _keyed,
)
from fstransport.protocol.delta_session import MAX_OFFER_FACTOR, ReceiverDelta, max_map_bytes
from fstransport.protocol.delta_wire import decode_map, encode_map

__all__ = [
    "MAX_TREE_OFFER_FILES",
    "FileIdentity",
    "TreeMap",
    "TreeMapBuilder",
    "TreeReceiverDelta",
    "decode_tree_offer",
    "encode_tree_offer",
    "max_tree_offer_bytes",
    "plan_tree_recipe",
    "whole_matches",
    "whole_tree_crc",
]

MAX_TREE_OFFER_FILES = 1 << 20
"""Most files a tree offer may list (a receiver's trees hold at most 100,000 by default)."""
_MAGIC = b"FSTDTRE1"
_HEAD = struct.Struct("<8sBBHIQQ")  # magic, mode, 0, 0, block size, file count, map length
_MODES = {"blocks": 1, "cdc": 2}
_BY_CODE = {code: mode for mode, code in _MODES.items()}
_FILE_TAG = b"fstransport-tree-file\0"


def max_tree_offer_bytes(size: int) -> int:
    """The longest tree offer either end uses for a packed tree of `size` bytes: what a file's
    offer of the largest base may take (so an HTTP answer's cap holds it too)."""
    return max_map_bytes(max(MAX_OFFER_FACTOR * size, 64 * 1024 * 1024))


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


@dataclass(frozen=True)
class TreeMap:
    """A base stream's map: `extents` (a `DeltaMap` in the ``"cdc"`` form, whose lengths are
    explicit) and, per non-empty file in order, ``sizes``, ``crcs`` and ``tags`` (u64/u32/u64).
    `mode` and `block_size` say how the extents were cut."""

    mode: str
    block_size: int
    extents: DeltaMap
    sizes: array[int] = field(repr=False)
    crcs: array[int] = field(repr=False)
    tags: array[int] = field(repr=False)

    @property
    def size(self) -> int:
        return self.extents.size

    @property
    def key(self) -> bytes:
        return self.extents.key

    def file_offsets(self) -> list[int]:
        """Where each file begins in the base stream."""
        out, at = [], 0
        for size in self.sizes:
            out.append(at)
            at += size
        return out


@dataclass
class TreeReceiverDelta(ReceiverDelta):
    """A receiver's delta whose base is a tree: `files` are ``(path, stream offset, size)`` of
    the base stream's files, found under `root` (a local folder, or an object store's
    generation prefix)."""

    files: tuple[tuple[str, int, int], ...] = ()
    root: str = ""
    stream_crc: int = 0
    """The base stream's CRC32C, combined from its files' (not from every extent's)."""

    def offer(self, encoded_map: bytes) -> DeltaOffer:
        return DeltaOffer(self.base_id, format_checksum(self.stream_crc), self.size, encoded_map)


class FileIdentity:
    """A file's strong identity fed in pieces: its size, its CRC32C, and 8 bytes of SHA-256
    over the transfer's key (padded to one block, as for the block tags), a domain prefix and
    the file's bytes.  One pass at hashing speed (large pieces, not one call per block)."""

    def __init__(self, key: bytes) -> None:
        self._hasher = _keyed(key).copy()
        self._hasher.update(_FILE_TAG)
        self.size = self.crc = 0

    def update(self, data: Buffer) -> None:
        self._hasher.update(data)
        self.crc = chunk_crc(data, self.crc)
        self.size += memoryview(data).nbytes

    def identity(self) -> tuple[int, int, int]:
        """``(size, crc32c, tag)``."""
        return self.size, self.crc, int.from_bytes(self._hasher.digest()[:8], "little")


class TreeMapBuilder:
    """Builds a `TreeMap` from files fed one after another (`update` pieces of any size, then
    `end_file`), each cut afresh from its first byte.  Empty files are left out."""

    def __init__(self, mode: str, *, key: bytes, block_size: int) -> None:
        self.mode, self.key, self.block_size = mode, key, block_size if mode == "blocks" else 0
        self._lengths, self._crcs, self._tags = array("I"), array("I"), array("I")
        self._sizes, self._file_crcs, self._file_tags = array("Q"), array("I"), array("Q")
        self._file, self._ident = self.file_builder(), FileIdentity(key)

    def file_builder(self) -> MapBuilder:
        """A `MapBuilder` for one file's extents, cut as this builder cuts them."""
        return MapBuilder(self.mode, key=self.key, block_size=self.block_size or MIN_BLOCK_SIZE)

    def update(self, data: Buffer) -> None:
        """Feed the next bytes of the current file."""
        self._file.update(data)
        self._ident.update(data)

    def end_file(self) -> None:
        """The current file is complete; the next bytes begin another."""
        part, (size, crc, tag) = self._file.finish(), self._ident.identity()
        self._file, self._ident = self.file_builder(), FileIdentity(self.key)
        if not size:
            return
        self._lengths.extend(part.lengths)
        self._crcs.extend(part.crcs)
        self._tags.extend(part.tags)
        self._sizes.append(size)
        self._file_crcs.append(crc)
        self._file_tags.append(tag)

    def finish(self) -> TreeMap:
        extents = DeltaMap(
            "cdc", sum(self._sizes), self.key, 0, self._lengths, self._crcs, self._tags
        )
        return TreeMap(
            self.mode, self.block_size, extents, self._sizes, self._file_crcs, self._file_tags
        )


def encode_tree_offer(tree: TreeMap) -> bytes:
    """The offer's map bytes for a tree base: a 32-byte header (``FSTDTRE1``, mode, block size,
    file count, extent map length), the files' sizes (u64), CRC32Cs (u32) and tags (u64), then
    the extent map in `encode_map`'s form."""
    extents = encode_map(tree.extents)
    head = _HEAD.pack(
        _MAGIC, _MODES[tree.mode], 0, 0, tree.block_size, len(tree.sizes), len(extents)
    )
    return head + _u64(tree.sizes) + _u32(tree.crcs) + _u64(tree.tags) + extents


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
    mode = _BY_CODE.get(code)
    if magic != _MAGIC or mode is None or zero1 or zero2:
        raise _bad("not of a known format")
    if mode == "blocks" and (not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE or block & (block - 1)):
        raise _bad(f"bad block size {block}")
    if mode == "cdc" and block:
        raise _bad("a CDC offer names no block size")
    if count > MAX_TREE_OFFER_FILES or count > max_size:
        raise _bad(f"{count} files are too many")
    columns = _HEAD.size + 20 * count
    if len(raw) != columns + map_length:
        raise _bad("its length does not hold its files and map")
    at = _HEAD.size
    sizes = _column(raw[at : at + 8 * count], "Q")
    crcs = _column(raw[at + 8 * count : at + 12 * count], "I")
    tags = _column(raw[at + 12 * count : columns], "Q")
    extents = decode_map(raw[columns:], max_size=max_size)
    if extents.mode != "cdc" or (count and min(sizes) == 0):
        raise _bad("its extents are not listed, or a file is empty")
    if sum(sizes) != extents.size:
        raise _bad("its files do not add up to its extents")
    tree = TreeMap(mode, block if mode == "blocks" else 0, extents, sizes, crcs, tags)
    index, lengths = 0, extents.lengths
    for size in sizes:  # every file ends where an extent ends
        covered = 0
        while covered < size:
            covered += lengths[index]
            index += 1
        if covered != size:
            raise _bad("an extent straddles two files")
    return tree


def whole_matches(base: TreeMap) -> dict[tuple[int, int, int], int]:
    """Where each of `base`'s file identities begins in its base stream (the first one)."""
    whole: dict[tuple[int, int, int], int] = {}
    for ident, at in zip(
        zip(base.sizes, base.crcs, base.tags, strict=True), base.file_offsets(), strict=True
    ):
        whole.setdefault(ident, at)
    return whole


def plan_tree_recipe(
    base: TreeMap,
    files: Sequence[tuple[int, int, int]],
    extents: Mapping[int, DeltaMap],
    body_offset: int,
) -> Recipe:
    """The recipe of a packed tree whose header and table take `body_offset` bytes, whose files
    have the identities `files` (`FileIdentity`, under `base`'s key) in the table's order, and
    `extents` the maps of some of them (by index; cut with `TreeMapBuilder.file_builder` under
    `base`'s mode, key and block size): a file whose identity `base` holds is copied whole, one
    with a map is matched extent by extent, any other is sent."""
    whole = whole_matches(base)
    parts: dict[tuple[int, int, int], int] = {}
    if extents:
        b = base.extents
        for at, ident in zip(b.offsets(), zip(b.lengths, b.crcs, b.tags, strict=True), strict=True):
            parts.setdefault(ident, at)
    pieces: list[tuple[int, int]] = [(body_offset, SEND)] if body_offset else []
    total = body_offset
    for number, ident in enumerate(files):
        total += ident[0]
        found = whole.get(ident)
        part = extents.get(number)
        if not ident[0]:
            continue
        if found is not None:
            pieces.append((ident[0], found))
        elif part is None:
            pieces.append((ident[0], SEND))
        else:
            if (part.mode, part.key, part.block_size) != (base.mode, base.key, base.block_size):
                raise ConfigurationError("a file's map must use the base map's key and blocks")
            for length, crc, tag in zip(part.lengths, part.crcs, part.tags, strict=True):
                pieces.append((length, parts.get((length, crc, tag), SEND)))
    return Recipe(total, base.size, _coalesce(pieces))


def whole_tree_crc(header_crc: int, files: Sequence[tuple[int, int, int]]) -> int:
    """The packed stream's CRC32C from its header's and its files' identities."""
    crc = header_crc
    for size, part, _ in files:
        crc = combine(crc, part, size)
    return crc
