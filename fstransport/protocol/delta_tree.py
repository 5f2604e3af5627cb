"""Delta transfer for directory snapshots, sans I/O: what a receiver offers of a base tree, and
the recipe that builds a new packed tree from it.  See ``docs/delta.md`` (Directory snapshots).

The base of a tree is addressed as its **base stream**: the bytes of its non-empty files joined
in the order the receiver lists them (no header, no table).  A `TreeMap` describes such a stream:

* per file, a strong identity ``(size, crc32c, tag)`` (`FileIdentity`): the tag is 8 bytes of
  SHA-256 keyed like the block tags (the transfer's random key, zero-padded to one block) over
  a domain prefix, the file's size and its BLAKE3 digest, which a receiver may have recorded at
  install (`fstransport.protocol.delta_tree_ident`);
* extents that tile it: for a file only identified, its pieces of up to `PIECE` bytes (so a whole
  file is whole extents for the receiver's ledger); for a file cut (``mapped``), fixed blocks
  from its start (``"blocks"``) or FastCDC chunks (``"cdc"``).  No extent straddles two files.

The receiver first offers identities only; a sender whose tree has files without a whole match
asks for the extents of the base files nothing matched (`TreeMap.subset` answers it,
`TreeMap.with_maps` merges it).  The recipe (`plan_tree_recipe`) covers the packed stream the
sender sends: the header and table are sent; a file whose identity the base holds (under any
name: renamed and moved files too) is one range copied from that base file; a cut file is matched
extent by extent against the base's cut extents by ``(length, crc32c, tag)``, anywhere in the
base; the rest is sent.  The recipe, its checks, the ledger and assembly's CRC check are the file
delta's own (`fstransport.protocol.delta_wire`, `fstransport.protocol.delta_session`); the tree's
wire forms are in `fstransport.protocol.delta_tree_wire`.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fstransport.checksum import combine, format_checksum
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import Buffer, DeltaOffer
from fstransport.protocol.delta import (
    MIN_BLOCK_SIZE,
    SEND,
    DeltaMap,
    MapBuilder,
    Recipe,
)
from fstransport.protocol.delta_recipe import coalesce as _coalesce
from fstransport.protocol.delta_session import ReceiverDelta, max_map_bytes, max_offer_size
from fstransport.protocol.delta_tree_ident import PIECE, FileIdentity, file_tag

__all__ = [
    "MAX_TREE_OFFER_FILES",
    "PIECE",
    "FileIdentity",
    "TreeMap",
    "TreeMapBuilder",
    "TreeReceiverDelta",
    "max_tree_offer_bytes",
    "plan_tree_recipe",
    "whole_matches",
    "whole_tree_crc",
]

MAX_TREE_OFFER_FILES = 1 << 20
"""Most files a tree offer may list (a receiver's trees hold at most 100,000 by default)."""


def max_tree_offer_bytes(size: int) -> int:
    """The longest tree offer either end uses for a packed tree of `size` bytes: what a file's
    offer of the largest base may take (so an HTTP answer's cap holds it too)."""
    return max_map_bytes(max_offer_size(size))


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
    mapped: array[int] = field(repr=False)
    """Per file, 1 when its extents are its blocks or chunks (matched one by one), 0 when they
    are only its pieces of up to `PIECE` bytes (the file is matched whole or not at all)."""

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

    def file_extents(self) -> list[tuple[int, int]]:
        """Per file, its first extent's index and its extent count; `InvalidRequest` when an
        extent straddles two files."""
        out, index, lengths = [], 0, self.extents.lengths
        for size in self.sizes:
            first, covered = index, 0
            while covered < size and index < len(lengths):
                covered += lengths[index]
                index += 1
            if covered != size:
                raise InvalidRequest(
                    "tree delta offer: an extent straddles two files", field="delta_map"
                )
            out.append((first, index - first))
        return out

    def subset(self, numbers: Sequence[int]) -> TreeMap:
        """The map of the files `numbers` (indexes, in that order) alone, with their extents."""
        lengths, crcs, tags = array("I"), array("I"), array("Q")
        e, spans = self.extents, self.file_extents()
        for number in numbers:
            first, count = spans[number]
            lengths.extend(e.lengths[first : first + count])
            crcs.extend(e.crcs[first : first + count])
            tags.extend(e.tags[first : first + count])

        def pick(column: array[int]) -> array[int]:
            return array(column.typecode, [column[n] for n in numbers])

        sizes = pick(self.sizes)
        extents = DeltaMap("cdc", sum(sizes), e.key, 0, lengths, crcs, tags)
        return replace(
            self,
            extents=extents,
            sizes=sizes,
            crcs=pick(self.crcs),
            tags=pick(self.tags),
            mapped=pick(self.mapped),
        )

    def file_maps(self) -> list[DeltaMap]:
        """Each file's extents as a map of its own."""
        e, out = self.extents, []
        for size, (first, count) in zip(self.sizes, self.file_extents(), strict=True):
            end = first + count
            out.append(
                DeltaMap(
                    "cdc",
                    size,
                    e.key,
                    0,
                    e.lengths[first:end],
                    e.crcs[first:end],
                    e.tags[first:end],
                )
            )
        return out

    def with_maps(self, maps: Mapping[int, DeltaMap]) -> TreeMap:
        """This map with the extents of the files `maps` names (by index) replaced by theirs."""
        lengths, crcs, tags = array("I"), array("I"), array("Q")
        mapped = array("B", self.mapped)
        e = self.extents
        for number, (first, count) in enumerate(self.file_extents()):
            part = maps.get(number)
            if part is None:
                lengths.extend(e.lengths[first : first + count])
                crcs.extend(e.crcs[first : first + count])
                tags.extend(e.tags[first : first + count])
                continue
            if part.size != self.sizes[number]:
                raise ValueError("a file's map is not of its size")
            lengths.extend(part.lengths)
            crcs.extend(part.crcs)
            tags.extend(part.tags)
            mapped[number] = 1
        extents = DeltaMap("cdc", e.size, e.key, 0, lengths, crcs, tags)
        return replace(self, extents=extents, mapped=mapped)


@dataclass
class TreeReceiverDelta(ReceiverDelta):
    """A receiver's delta whose base is a tree: `files` are ``(path, stream offset, size)`` of
    the base stream's files, found under `root` (a local folder, or an object store's
    generation prefix)."""

    files: tuple[tuple[str, int, int], ...] = ()
    root: str = ""
    stream_crc: int = 0
    """The base stream's CRC32C, combined from its files' (not from every extent's)."""
    tree: TreeMap | None = None
    """The map last offered (extents of the files a sender asked for: `with_maps`)."""

    def offer(self, encoded_map: bytes) -> DeltaOffer:
        return DeltaOffer(self.base_id, format_checksum(self.stream_crc), self.size, encoded_map)


class TreeMapBuilder:
    """Builds a `TreeMap` from files fed one after another (`update` pieces of any size, then
    `end_file`), each cut afresh from its first byte.  Empty files are left out."""

    def __init__(self, mode: str, *, key: bytes, block_size: int, extents: bool = True) -> None:
        self.mode, self.key, self.block_size = mode, key, block_size if mode == "blocks" else 0
        self._lengths, self._crcs, self._tags = array("I"), array("I"), array("Q")
        self._sizes, self._file_crcs, self._file_tags = array("Q"), array("I"), array("Q")
        self._extents = extents  # else files are identified, not cut (their pieces only)
        self._file, self._ident = self.file_builder(), FileIdentity(key)
        self.digests: list[bytes] = []
        """The BLAKE3 digest of each non-empty file, in order (key-independent)."""

    def file_builder(self) -> MapBuilder:
        """A `MapBuilder` for one file's extents, cut as this builder cuts them."""
        return MapBuilder(self.mode, key=self.key, block_size=self.block_size or MIN_BLOCK_SIZE)

    def update(self, data: Buffer) -> None:
        """Feed the next bytes of the current file."""
        if self._extents:
            self._file.update(data)
        self._ident.update(data)

    def end_file(self) -> None:
        """The current file is complete; the next bytes begin another."""
        ident = self._ident
        part, (size, crc, tag) = self._file.finish(), ident.identity()
        self._file, self._ident = self.file_builder(), FileIdentity(self.key)
        if not size:
            return
        self.digests.append(ident.digest())
        if self._extents:
            self._lengths.extend(part.lengths)
            self._crcs.extend(part.crcs)
            self._tags.extend(part.tags)
        else:
            self._lengths.extend(n for n, _ in ident.pieces)
            self._crcs.extend(c for _, c in ident.pieces)
            self._tags.extend(0 for _ in ident.pieces)
        self._sizes.append(size)
        self._file_crcs.append(crc)
        self._file_tags.append(tag)

    def known_file(self, size: int, crc: int, digest: bytes) -> None:
        """Add a file identified from its recorded CRC32C and digest, without its bytes: one
        piece (so at most `PIECE` bytes), only where files are identified, not cut."""
        if self._extents or not 0 < size <= PIECE:
            raise ValueError("a known file is identified whole: 1 byte to PIECE, not cut")
        self._lengths.append(size)
        self._crcs.append(crc)
        self._tags.append(0)
        self._sizes.append(size)
        self._file_crcs.append(crc)
        self._file_tags.append(file_tag(self.key, size, digest))
        self.digests.append(digest)

    def finish(self) -> TreeMap:
        extents = DeltaMap(
            "cdc", sum(self._sizes), self.key, 0, self._lengths, self._crcs, self._tags
        )
        mapped = array("B", [int(self._extents)] * len(self._sizes))
        return TreeMap(
            self.mode,
            self.block_size,
            extents,
            self._sizes,
            self._file_crcs,
            self._file_tags,
            mapped,
        )


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
        b, offsets = base.extents, base.extents.offsets()
        for number, (first, count) in enumerate(base.file_extents()):
            if base.mapped[number]:
                for i in range(first, first + count):
                    parts.setdefault((b.lengths[i], b.crcs[i], b.tags[i]), offsets[i])
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
