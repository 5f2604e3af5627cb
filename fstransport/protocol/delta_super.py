"""Two-level block maps, sans I/O: a sender hashes its source by super-blocks first and by blocks
only where a super-block differs from the base's.  See ``docs/delta.md`` (the map's cost).

A base's block map carries a second level (`SuperLevel`: a CRC32C and a keyed tag per
super-block of ``block_size << SUPER_SHIFT`` bytes, 64 KiB of 4 KiB blocks), made with the same
digest and tag rules as its blocks (`fstransport.protocol.delta_tags`).  The sender first makes
a `Sketch` of its source: the same second level alone, one CRC32C and one BLAKE3 call per
super-block (near the hash's bulk speed), which also gives the source's whole
CRC32C.  A super-block whose length, CRC32C and tag equal the base's at the same index is copied
whole; inside any other (`Sketch.differing`) the sender hashes its blocks (`refine`) and matches
them one by one, as a one-level map would.  With 1% of the 4 KiB pages changed at random about
15% of the super-blocks differ, so the source's blocks are hashed for ~15% of its bytes.

A super-block is reused only on a keyed tag of its BLAKE3 digest, exactly as a block is: the
argument of ``docs/delta.md`` (never install wrong bytes) holds for it unchanged.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import crc32c

from fstransport.checksum import combine, combine_equal
from fstransport.errors import ConfigurationError
from fstransport.messages import Buffer
from fstransport.protocol.delta import KEY_SIZE, SUPER_SHIFT, DeltaMap
from fstransport.protocol.delta_recipe import SEND, Recipe, coalesce
from fstransport.protocol.delta_tags import EXTENT_HASH, derive_tags, hash_pieces

__all__ = ["Sketch", "SketchBuilder", "plan_two_level", "refine", "two_level"]


def two_level(base: DeltaMap) -> bool:
    """Whether a sender can plan against `base` with a `Sketch` (a file's block map with this
    version's second level)."""
    return base.mode == "blocks" and base.supers is not None and base.supers.shift == SUPER_SHIFT


@dataclass(frozen=True)
class Sketch:
    """A source's super-blocks: CRC32Cs, tags keyed by `key`, and their digests."""

    size: int
    key: bytes
    block_size: int
    crcs: array[int] = field(repr=False)
    tags: array[int] = field(repr=False)

    @property
    def unit(self) -> int:
        """Bytes per super-block."""
        return self.block_size << SUPER_SHIFT

    def whole_crc(self) -> int:
        """The CRC32C of the whole source."""
        if not self.crcs:
            return 0
        last = self.size - self.unit * (len(self.crcs) - 1)
        return combine(combine_equal(0, self.crcs[:-1], self.unit), self.crcs[-1], last)

    def differing(self, base: DeltaMap) -> list[int]:
        """The super-blocks to match block by block: each that some base block overlaps and
        whose length, CRC32C or tag the base's second level does not have at its index."""
        if not two_level(base) or base.block_size != self.block_size or base.key != self.key:
            raise ConfigurationError("the base map must be two-level, with this key and blocks")
        assert base.supers is not None
        unit, out = self.unit, []
        theirs, count = base.supers, -(-base.size // self.unit)
        for i in range(min(len(self.crcs), count)):
            length = min(unit, self.size - i * unit)
            same = length == min(unit, base.size - i * unit) and (
                theirs.crcs[i] == self.crcs[i] and theirs.tags[i] == self.tags[i]
            )
            if not same:
                out.append(i)
        return out


class SketchBuilder:
    """Builds a `Sketch` from content fed in pieces of any size (at most one super-block is
    kept between pieces)."""

    def __init__(self, *, key: bytes, block_size: int) -> None:
        if len(key) != KEY_SIZE:
            raise ConfigurationError(f"a map key is {KEY_SIZE} bytes")
        self.key, self.block_size = bytes(key), block_size
        self.unit = block_size << SUPER_SHIFT
        self.size = 0
        self._crcs, self._digests = array("I"), bytearray()
        self._tail = bytearray()

    def _hash(self, view: Buffer) -> None:
        crcs, digests = hash_pieces(view, self.unit)
        self._crcs.extend(crcs)
        self._digests += digests

    def update(self, data: Buffer) -> None:
        """Feed the next bytes of the content."""
        view = memoryview(data).cast("B")
        self.size += len(view)
        if self._tail:
            take = min(len(view), self.unit - len(self._tail))
            self._tail += view[:take]
            view = view[take:]
            if len(self._tail) < self.unit:
                return
            self._hash(self._tail)
            self._tail = bytearray()
        whole = len(view) - len(view) % self.unit
        self._hash(view[:whole])
        self._tail += view[whole:]

    def finish(self) -> Sketch:
        """The sketch of everything fed."""
        if self._tail:
            self._hash(self._tail)
            self._tail = bytearray()
        tags = derive_tags(self.key, bytes(self._digests))
        return Sketch(self.size, self.key, self.block_size, self._crcs, tags)


def refine(
    key: bytes, block_size: int, pieces: Iterable[tuple[int, Buffer]]
) -> dict[int, tuple[array[int], array[int]]]:
    """The blocks' CRC32Cs and tags (keyed by `key`) of each super-block ``(index, bytes)``."""
    counts, crcs, digests = [], array("I"), bytearray()
    crc, digest = crc32c.crc32c, EXTENT_HASH
    for index, data in pieces:
        view = memoryview(data).cast("B")
        for at in range(0, len(view), block_size):
            piece = view[at : at + block_size]
            crcs.append(crc(piece))
            digests += digest(piece).digest()
        counts.append((index, -(-len(view) // block_size)))
    tags = derive_tags(key, bytes(digests))
    out, at = {}, 0
    for index, count in counts:
        out[index] = (crcs[at : at + count], tags[at : at + count])
        at += count
    return out


def plan_two_level(
    base: DeltaMap, sketch: Sketch, refined: Mapping[int, tuple[array[int], array[int]]]
) -> Recipe:
    """The recipe of `sketch`'s source against `base` (two-level, same key and blocks): equal
    super-blocks copied whole, `refined` ones matched block by block at the same offsets (a
    block is copied when its length, CRC32C and tag equal the base block's), the rest sent."""
    if not two_level(base) or (base.key, base.block_size) != (sketch.key, sketch.block_size):
        raise ConfigurationError("the base map must be two-level, with this key and blocks")
    assert base.supers is not None
    unit, block, supers = sketch.unit, sketch.block_size, base.supers
    base_supers = -(-base.size // unit)
    pieces: list[tuple[int, int]] = []
    for i in range(len(sketch.crcs)):
        start = i * unit
        length = min(unit, sketch.size - start)
        found = refined.get(i)
        if found is None:
            same = (
                i < base_supers
                and length == min(unit, base.size - start)
                and (supers.crcs[i], supers.tags[i]) == (sketch.crcs[i], sketch.tags[i])
            )
            pieces.append((length, start if same else SEND))
            continue
        crcs, tags = found
        first = start // block
        for k in range(len(crcs)):
            j, at = first + k, start + k * block
            n = min(block, sketch.size - at)
            same = j < len(base) and (base.lengths[j], base.crcs[j], base.tags[j]) == (
                n,
                crcs[k],
                tags[k],
            )
            pieces.append((n, at if same else SEND))
    return Recipe(sketch.size, base.size, coalesce(pieces))
