"""Delta transfer, sans I/O: maps of what a base holds, and the recipe that builds a new snapshot
from a base plus the bytes that differ.  See ``docs/delta.md``.

A **map** describes a base (or a source) as extents that tile ``[0, size)``, each identified by
``(length, crc32c, tag)``: the CRC32C lets a receiver combine the whole snapshot's CRC32C without
re-reading reused bytes; the ``tag`` is a keyed function of the extent's BLAKE3 digest with the
map's random ``key`` (`fstransport.protocol.delta_tags`), so that a reused extent is never chosen
on a CRC32C match alone (CRCs are linear: collisions are easy to make).  A map built here keeps
the digests (not sent): the same content's map under another key is `DeltaMap.rekeyed`.
Modes: ``"blocks"``, fixed blocks at fixed offsets (page files; 12 bytes a block); ``"cdc"``,
content-defined chunks (FastCDC via ``pyfastcdc``) for content that shifts, cut afresh at every
segment start given (the files of a packed tree), so whole files match.

A **recipe** (sender -> receiver) lists the target's ranges in order, each copied from the base at
an offset or sent.  Their wire forms, checked as a peer's, are in `fstransport.protocol.delta_wire`.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise, repeat
from typing import Any

import crc32c

from fstransport.checksum import chunk_crc, combine, combine_equal
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import Buffer
from fstransport.protocol.delta_recipe import SEND, Recipe, apply_recipe, copied_crcs
from fstransport.protocol.delta_recipe import coalesce as _coalesce
from fstransport.protocol.delta_tags import (
    DIGEST_SIZE,
    EXTENT_HASH,
    derive_tags,
    extent_digest,
)

__all__ = [
    "CDC_AVG",
    "CDC_MAX",
    "CDC_MIN",
    "DELTA_MODES",
    "MAX_BLOCKS",
    "MIN_BLOCK_SIZE",
    "SEND",
    "SUPER_SHIFT",
    "DeltaMap",
    "MapBuilder",
    "Recipe",
    "SuperLevel",
    "apply_recipe",
    "build_map",
    "choose_block_size",
    "copied_crcs",
    "new_key",
    "plan_recipe",
]

DELTA_MODES = ("blocks", "cdc", "off")
MIN_BLOCK_SIZE = 4096
"""Smallest block: a database page; 12 map bytes per 4 KiB block (CRC32C and 64-bit tag), with
the super-blocks' 12.75, are 0.31% of the content."""
MAX_BLOCK_SIZE = 16 * 1024 * 1024
MAX_BLOCKS = 1 << 20
"""Blocks grow past 4 KiB only above 4 GiB, so that a map stays at most 12.75 MiB."""
CDC_MIN, CDC_AVG, CDC_MAX = 8 * 1024, 16 * 1024, 64 * 1024
"""FastCDC sizes; pyfastcdc's real mean is about ``CDC_AVG + CDC_MIN`` (24 KiB): 0.07% map."""
KEY_SIZE = 16
SUPER_SHIFT = 4
"""A block map's second level: super-blocks of ``block_size << SUPER_SHIFT`` bytes (64 KiB of
4 KiB blocks), each hashed in one call; a sender hashes its blocks only inside the super-blocks
that differ (`fstransport.protocol.delta_super`)."""


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
class SuperLevel:
    """A block map's super-blocks (`SUPER_SHIFT`): CRC32Cs (u32) and tags (u64 arrays), and for
    a map built from the content the joined digests they are derived from (`DIGEST_SIZE` each)."""

    shift: int
    crcs: array[int] = field(repr=False)
    tags: array[int] = field(repr=False)
    digests: bytes = field(default=b"", repr=False)

    def rekeyed(self, key: bytes) -> SuperLevel:
        """The same super-blocks with tags keyed by `key`."""
        if len(self.digests) != DIGEST_SIZE * len(self.crcs):
            raise ConfigurationError("only a map with its digests can be keyed anew")
        return SuperLevel(self.shift, self.crcs, derive_tags(key, self.digests), self.digests)


@dataclass(frozen=True)
class DeltaMap:
    """Extents tiling ``[0, size)``: ``lengths[i]``, ``crcs[i]`` (u32), ``tags[i]`` (u64), and
    for a map built from the content (not one decoded from a peer) the joined key-independent
    `digests` of its extents (`DIGEST_SIZE` bytes each), from which `rekeyed` derives tags."""

    mode: str
    size: int
    key: bytes
    block_size: int  # 0 for "cdc"
    lengths: array[int] = field(repr=False)
    crcs: array[int] = field(repr=False)
    tags: array[int] = field(repr=False)
    digests: bytes = field(default=b"", repr=False, compare=False)
    supers: SuperLevel | None = field(default=None, repr=False, compare=False)
    """The second level of a file's block map (more than one super-block), else None."""

    def __len__(self) -> int:
        return len(self.crcs)

    @cached_property
    def _regular(self) -> bool:
        """Every extent `block_size` long but the last (a file's; a tree's restart per file)."""
        if self.mode != "blocks" or self.block_size <= 0 or not len(self):
            return False
        head = self.lengths[:-1]
        return head.count(self.block_size) == len(head)

    @cached_property
    def _starts(self) -> array[int]:
        out, at = array("Q"), 0
        for length in self.lengths:
            out.append(at)
            at += length
        return out

    def rekeyed(self, key: bytes) -> DeltaMap:
        """The same map with tags keyed by `key`, derived from the digests (no read of the
        content); `ConfigurationError` for a map without them (one decoded from a peer)."""
        if len(self.digests) != DIGEST_SIZE * len(self) or len(key) != KEY_SIZE:
            raise ConfigurationError("only a map with its digests can be keyed anew")
        tags = derive_tags(key, self.digests)
        supers = None if self.supers is None else self.supers.rekeyed(key)
        return DeltaMap(
            self.mode,
            self.size,
            key,
            self.block_size,
            self.lengths,
            self.crcs,
            tags,
            self.digests,
            supers,
        )

    def offsets(self) -> array[int]:
        """Where each extent starts."""
        return self._starts

    def whole_crc(self) -> int:
        """The CRC32C of the whole content, combined from the extents'."""
        if self._regular:
            return self._blocks_crc(0, len(self))
        crc = 0
        for length, part in zip(self.lengths, self.crcs, strict=True):
            crc = combine(crc, part, length)
        return crc

    def _blocks_crc(self, first: int, end: int) -> int:
        """The CRC32C of blocks ``[first, end)`` (all full but maybe the map's last); whole
        super-blocks before the last block from the second level (a sixteenth of the steps)."""
        crc, block, last, per = 0, self.block_size, end - 1, 1 << SUPER_SHIFT
        if self.supers is not None and last // per - -(-first // per) > 1:
            lo, hi = -(-first // per), last // per
            crc = combine_equal(0, self.crcs[first : lo * per], block)
            crc = combine_equal(crc, self.supers.crcs[lo:hi], block * per)
            first = hi * per
        if end <= first:
            return 0
        crc = combine_equal(crc, self.crcs[first:last], block)
        return combine(crc, self.crcs[last], self.lengths[last])

    def crc_of(self, start: int, length: int) -> int:
        """The CRC32C of ``[start, start + length)``, which must be whole extents (as a recipe's
        copied ranges are); `InvalidRequest` otherwise."""
        bad = InvalidRequest("a copied range does not fall on the base's extents", field="delta")
        if self._regular:
            block, stop = self.block_size, start + length
            end = -(-stop // block)
            if start % block or end > len(self) or stop not in (end * block, self.size):
                raise bad
            return self._blocks_crc(start // block, end)
        offsets = self.offsets()
        i = bisect_left(offsets, start)
        crc, at = 0, start
        while at < start + length:
            if i >= len(offsets) or offsets[i] != at or at + self.lengths[i] > start + length:
                raise bad
            crc = combine(crc, self.crcs[i], self.lengths[i])
            at += self.lengths[i]
            i += 1
        return crc


class MapBuilder:
    """Builds a map from content fed in pieces of any size (`update`), so that nothing needs the
    whole content in memory: at most one block (a super-block with `supers`) or one CDC chunk
    (64 KiB either) is kept between pieces.

    `segment` marks where CDC starts afresh (a file body of a packed tree); `finish` returns the
    map.  `supers`: a block map also gets its second level (`SuperLevel`: each super-block
    hashed in one call), if it has more than one super-block.  CDC cut points depend only on
    the bytes from a chunk's start, so the last chunk of a piece is cut again with the next
    piece: the chunks are those of the content cut whole.
    """

    def __init__(self, mode: str, *, key: bytes, block_size: int, supers: bool = False) -> None:
        if mode not in ("blocks", "cdc"):
            raise ConfigurationError(
                f"delta mode must be 'blocks' or 'cdc' for a map, got {mode!r}"
            )
        if len(key) != KEY_SIZE:
            raise ConfigurationError(f"a map key is {KEY_SIZE} bytes")
        if mode == "blocks" and not (
            MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE and block_size & (block_size - 1) == 0
        ):
            raise ConfigurationError(f"a block is a power of two, 4 KiB..16 MiB, not {block_size}")
        self.mode, self.key = mode, bytes(key)
        self.block_size = block_size if mode == "blocks" else 0
        self.size = 0
        self._lengths, self._crcs, self._digests = array("I"), array("I"), bytearray()
        self._supers = supers and mode == "blocks"
        self._unit = self.block_size << SUPER_SHIFT if self._supers else self.block_size
        self._super_crcs, self._super_digests = array("I"), bytearray()
        self._tail = bytearray()  # an unfinished block (super-block), or the last CDC chunk
        self._chunker: Any = None
        if mode == "cdc":
            from pyfastcdc import FastCDC  # imported here: only a CDC transfer needs it

            self._chunker = FastCDC(CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX)

    def _add(self, piece: memoryview) -> None:
        self._lengths.append(len(piece))
        self._crcs.append(chunk_crc(piece))
        self._digests += extent_digest(piece)

    def update(self, data: Buffer) -> None:
        """Feed the next bytes of the content."""
        view = memoryview(data).cast("B")
        self.size += len(view)
        if self.mode == "blocks":
            unit = self._unit
            if self._tail:
                take = min(len(view), unit - len(self._tail))
                self._tail += view[:take]
                view = view[take:]
                if len(self._tail) < unit:
                    return
                self._blocks(memoryview(self._tail))
                self._tail = bytearray()
            whole = len(view) - len(view) % unit
            self._blocks(view[:whole])
            self._tail += view[whole:]
            return
        buffer = memoryview(self._tail + view if self._tail else view)
        chunks = [(c.offset, c.length) for c in self._chunker.cut_buf(buffer)]
        for offset, length in chunks[:-1]:
            self._add(buffer[offset : offset + length])
        self._tail = bytearray(buffer[chunks[-1][0] :]) if chunks else bytearray()

    def _blocks(self, view: memoryview) -> None:
        """Map `view`: whole super-blocks (or blocks), or at the end the short last one.  Each
        super-block is hashed just before its blocks, while its bytes are in the CPU's cache."""
        block, unit = self.block_size, self._unit
        crc, digest, add_crc = crc32c.crc32c, EXTENT_HASH, self._crcs.append
        digests = self._digests  # (the loop of `_add`, unrolled: a call less per block)
        add_super, super_digests = self._super_crcs.append, self._super_digests
        for start in range(0, len(view), unit):
            whole = view[start : start + unit]
            if self._supers:
                add_super(crc(whole))
                super_digests += digest(whole).digest()
            for at in range(0, len(whole), block):
                piece = whole[at : at + block]
                add_crc(crc(piece))
                digests += digest(piece).digest()
        self._lengths.extend(repeat(block, len(view) // block))
        if len(view) % block:
            self._lengths.append(len(view) % block)

    def segment(self) -> None:
        """End the current segment: the next bytes start a new chunk (CDC only)."""
        if self.mode == "cdc" and self._tail:
            for chunk in self._chunker.cut_buf(self._tail):
                self._add(chunk.data)
            self._tail = bytearray()

    def finish(self) -> DeltaMap:
        """The map of everything fed."""
        if self.mode == "cdc":
            self.segment()
        elif self._tail:
            self._blocks(memoryview(self._tail))
            self._tail = bytearray()
        digests = bytes(self._digests)
        tags = derive_tags(self.key, digests)
        supers = None
        if len(self._super_crcs) > 1:
            own = bytes(self._super_digests)
            supers = SuperLevel(SUPER_SHIFT, self._super_crcs, derive_tags(self.key, own), own)
        return DeltaMap(
            self.mode,
            self.size,
            self.key,
            self.block_size,
            self._lengths,
            self._crcs,
            tags,
            digests,
            supers,
        )


def build_map(
    mode: str,
    data: Buffer,
    *,
    key: bytes,
    block_size: int | None = None,
    segments: Sequence[int] = (),
    supers: bool = True,
) -> DeltaMap:
    """The map of `data` in `mode` with tags keyed by `key` (`new_key`, or the base map's);
    `block_size` defaults to `choose_block_size`.  `segments` are offsets where CDC starts
    afresh (the file bodies of a packed tree); `supers`: see `MapBuilder`."""
    view = memoryview(data).cast("B")
    block = block_size or choose_block_size(len(view))
    builder = MapBuilder(mode, key=key, block_size=block, supers=supers)
    bounds = sorted({0, len(view), *(s for s in segments if 0 < s < len(view))})
    for start, end in pairwise(bounds):
        builder.update(view[start:end])
        builder.segment()
    return builder.finish()


_RUN = 1024  # blocks compared at once (array slices compare in C)


def _plan_blocks(base: DeltaMap, source: DeltaMap) -> list[tuple[int, int]]:
    """Blocks at the same offset: whole runs of `_RUN` equal blocks are found by comparing
    array slices, and only runs with a difference are looked at block by block."""
    pieces: list[tuple[int, int]] = []
    block, common = base.block_size, min(len(base), len(source))
    if common and base.lengths[common - 1] != source.lengths[common - 1]:
        common -= 1  # a last partial block of another length never matches
    for run in range(0, common, _RUN):
        end = min(run + _RUN, common)
        if (
            base.crcs[run:end] == source.crcs[run:end]
            and base.tags[run:end] == source.tags[run:end]
        ):
            pieces.append((sum(source.lengths[run:end]), run * block))
            continue
        for i in range(run, end):
            same = base.crcs[i] == source.crcs[i] and base.tags[i] == source.tags[i]
            pieces.append((source.lengths[i], i * block if same else SEND))
    pieces.extend((source.lengths[i], SEND) for i in range(common, len(source)))
    return pieces


def plan_recipe(base: DeltaMap, source: DeltaMap) -> Recipe:
    """What to copy from `base` and what to send to build `source`'s content.

    Extents match only when length, CRC32C and keyed tag all agree; `source` must have been
    built with `base`'s mode, key and block size.
    """
    if (source.mode, source.key, source.block_size) != (base.mode, base.key, base.block_size):
        raise ConfigurationError("the source map must use the base map's mode, key and block size")
    pieces: list[tuple[int, int]] = []
    if base.mode == "blocks" and base._regular and source._regular:
        pieces = _plan_blocks(base, source)
    else:  # content-defined, or extents cut per file: an equal extent anywhere in the base
        known: dict[tuple[int, int, int], int] = {}
        for at, ident in zip(
            base.offsets(), zip(base.lengths, base.crcs, base.tags, strict=True), strict=True
        ):
            known.setdefault(ident, at)
        for ident in zip(source.lengths, source.crcs, source.tags, strict=True):
            pieces.append((ident[0], known.get(ident, SEND)))
    return Recipe(source.size, base.size, _coalesce(pieces))
