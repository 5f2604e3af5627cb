"""The storage interfaces: what a receiver writes into and what a sender reads from.

This module imports no fsspec (nor anything else outside the standard library and this
package's light modules), so the drivers and anyone writing a store of their own can depend on
the interfaces without paying for the backends:

- `SnapshotStore`: what a `Receiver` needs from storage (begin, resume, finish, install, abort);
- `SnapshotSink`: where the chunks of one incoming snapshot are written, with its optional
  capabilities `CheckedSink` and `PiecesSink` (found with `is_checked_sink`/`is_pieces_sink`);
- `ChunkSource`: random access to a snapshot's bytes, with the optional `CheckedSource`;
- `Lost`, `aborted`, and the write and read helpers (`write_chunk`, `write_checked`,
  `read_checked`, `source_checksum`) that pick a capability when a sink or source has it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeGuard

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.errors import StorageError
from fstransport.messages import Buffer, ChunkData, Pieces, Snapshot, SnapshotMeta, contiguous
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage._capabilities import implements

if TYPE_CHECKING:
    from fstransport.protocol.delta import DeltaMap, Recipe

__all__ = [
    "CHECK_BLOCK",
    "NOTHING_LOST",
    "BaseTree",
    "CheckedSink",
    "CheckedSource",
    "ChunkSource",
    "DeltaBase",
    "Lost",
    "MappedBase",
    "PiecesSink",
    "SnapshotSink",
    "SnapshotStore",
    "TreeReader",
    "VerifyingSink",
    "aborted",
    "checked_blocks",
    "is_checked_sink",
    "is_checked_source",
    "is_pieces_sink",
    "is_verifying_sink",
    "read_checked",
    "source_checksum",
    "write_checked",
    "write_chunk",
]

Lost = Sequence[tuple[int, int]]
"""Byte ranges ``[start, end)`` a write made the sink forget (they must be sent again)."""
NOTHING_LOST: Lost = ()


# -- sinks -----------------------------------------------------------------------------------------


class SnapshotSink(Protocol):
    """Where the chunks of one incoming snapshot are written."""

    path: str

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        """Store `data` (whose CRC32C is `crc`) at `offset`; return ranges written earlier that
        the sink no longer holds.

        Raises `StorageError`, or `SnapshotMismatch` when the sink cannot take `offset` now (a
        sequential target too far behind it); nothing is written then.
        """

    def rewind(self, offset: int) -> tuple[int, Lost]:
        """The sender misses byte `offset` and will send everything from a point on again.

        Returns that point (at or before `offset`) and the ranges the sink forgot to make room
        for the new pass.
        """

    async def finish(self) -> None:
        """Flush every written byte into the partial file and close it; raises `StorageError`."""

    async def abort(self) -> None:
        """Close and delete the partial file; never raises for a file already gone."""


class CheckedSink(SnapshotSink, Protocol):
    """A sink that can compute a chunk's CRC32C while it writes it (see `write_checked`).

    Found with `is_checked_sink`, not ``isinstance`` (which costs more than a small chunk)."""

    async def write_checked(self, offset: int, data: Buffer) -> tuple[Lost, int]:
        """`write` for a chunk whose CRC32C is not known yet: returns it with what was lost."""


class PiecesSink(SnapshotSink, Protocol):
    """A sink that writes `Pieces` as they are, without joining them (see `write_chunk`).

    Found with `is_pieces_sink`, not ``isinstance``."""

    async def write_pieces(self, offset: int, data: Pieces, crc: int) -> Lost:
        """`write` for a chunk that arrived in pieces."""


class VerifyingSink(SnapshotSink, Protocol):
    """A sink that can re-read what it holds and check it against the chunks' CRC32Cs.

    Found with `is_verifying_sink`.  Partial data that outlived a sender or a receiver is never
    trusted without this: the store calls it on resume, the receiver when a new sender starts."""

    async def verify(self, records: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        """The `records` whose bytes the sink holds now, as they were written (the others
        are forgotten: their bytes must be sent again).  Raises `StorageError`."""


def is_verifying_sink(sink: SnapshotSink) -> TypeGuard[VerifyingSink]:
    """Whether `sink` is a `VerifyingSink` (its class has ``verify``)."""
    return implements(sink, "verify")


def is_checked_sink(sink: SnapshotSink) -> TypeGuard[CheckedSink]:
    """Whether `sink` is a `CheckedSink` (its class has ``write_checked``)."""
    return implements(sink, "write_checked")


def is_pieces_sink(sink: SnapshotSink) -> TypeGuard[PiecesSink]:
    """Whether `sink` is a `PiecesSink` (its class has ``write_pieces``)."""
    return implements(sink, "write_pieces")


async def write_chunk(sink: SnapshotSink, offset: int, data: ChunkData, crc: int) -> Lost:
    """``sink.write`` for chunk data of any shape: `Pieces` go to a `PiecesSink` as they are,
    and are joined into one buffer for any other sink."""
    if isinstance(data, Pieces):
        if is_pieces_sink(sink):
            return await sink.write_pieces(offset, data, crc)
        data = data.join()
    return await sink.write(offset, data, crc)


async def write_checked(sink: SnapshotSink, offset: int, data: ChunkData) -> tuple[Lost, int]:
    """Write `data` at `offset` like ``sink.write`` and return what it lost and `data`'s CRC32C.

    A `CheckedSink` computes the CRC as it writes (see `fstransport.storage.sink`); for others
    it is computed first.  Only for data nobody can have altered on the way: the CRC is computed
    from what is written, so it cannot catch corruption before it.
    """
    data = contiguous(data)
    if is_checked_sink(sink):
        return await sink.write_checked(offset, data)
    crc = chunk_crc(data)
    return await sink.write(offset, data, crc), crc


CHECK_BLOCK = 256 * 1024
"""Bytes checked and then written at a time by `checked_blocks`: small enough to stay in L2."""


def checked_blocks(data: Buffer, write: Callable[[int, memoryview], object]) -> int:
    """Call ``write(position, block)`` for each `CHECK_BLOCK` of `data`; return its CRC32C,
    computed one block at a time just before the block is written (a `CheckedSink`'s helper)."""
    view = memoryview(data).cast("B")
    crc = 0
    for start in range(0, len(view), CHECK_BLOCK):
        block = view[start : start + CHECK_BLOCK]
        crc = chunk_crc(block, crc)
        write(start, block)
    return crc


def aborted(path: str) -> StorageError:
    """The error for a write into a sink that was aborted (by ``store.abort``, say)."""
    return StorageError(path, "write", RuntimeError("the transfer was aborted; start it over"))


# -- stores ----------------------------------------------------------------------------------------


class SnapshotStore(Protocol):
    """What a `Receiver` needs from storage."""

    async def begin(self, meta: SnapshotMeta) -> SnapshotSink:
        """Start receiving the snapshot `meta` describes, discarding any partial data for its id."""

    async def resume(self, meta: SnapshotMeta) -> tuple[SnapshotSink, list[ChunkRecord]] | None:
        """Reopen partial data left for exactly this snapshot, with the chunks it holds; or None."""

    async def finish(self, meta: SnapshotMeta, sink: SnapshotSink) -> Snapshot:
        """Close a completely received snapshot and return it, readable, not yet installed.

        Where the target cannot rename (S3), finishing is what makes the snapshot visible:
        it completes the upload to the final name, and `install` is only bookkeeping.
        """

    async def install(self, snapshot: Snapshot) -> None:
        """Make a finished snapshot visible under its id, replacing any older one."""

    async def abort(self, snapshot_id: str) -> None:
        """Discard the partial or finished-but-not-installed data of `snapshot_id` (an S3 object
        whose upload was completed by `finish` stays: S3 cannot take it back)."""


# -- sources ---------------------------------------------------------------------------------------


class ChunkSource(Protocol):
    """Random access to a snapshot's bytes.

    `read` returns exactly `length` bytes from `offset` (fewer only at the end of the data) and
    raises `StorageError` when the backend fails.  `close` releases what the source opened.
    """

    size: int
    description: str

    async def read(self, offset: int, length: int) -> Buffer: ...

    async def close(self) -> None: ...


class CheckedSource(ChunkSource, Protocol):
    """A source that computes each chunk's CRC32C where it reads it (see `read_checked`).

    Found with `is_checked_source`, not ``isinstance`` (which costs more than a small chunk)."""

    async def read_checked(self, offset: int, length: int) -> tuple[Buffer, int]:
        """`read`, and the CRC32C of what was read."""


def is_checked_source(source: ChunkSource) -> TypeGuard[CheckedSource]:
    """Whether `source` is a `CheckedSource` (its class has ``read_checked``)."""
    return implements(source, "read_checked")


async def read_checked(source: ChunkSource, offset: int, length: int) -> tuple[Buffer, int]:
    """`source`'s chunk at `offset` and its CRC32C.

    A `CheckedSource` (one that reads in a worker thread anyway) computes the CRC there too,
    off the event loop; for others it is computed here.
    """
    if is_checked_source(source):
        return await source.read_checked(offset, length)
    data = await source.read(offset, length)
    return data, chunk_crc(data)


async def source_checksum(source: ChunkSource, step: int = 8 * 1024 * 1024) -> str:
    """The ``"crc32c:%08x"`` checksum of all of `source`'s bytes (one full read)."""
    crc = 0
    for offset in range(0, source.size, step):
        crc = chunk_crc(await source.read(offset, min(step, source.size - offset)), crc)
    return format_checksum(crc)


# -- delta bases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappedBase:
    """An installed snapshot a store offers as a delta base: its id, its `map` and `pin`, what
    its backend needs to reach exactly those bytes at assembly (a path; on S3 the object with
    the ETag its map was read at)."""

    snapshot_id: str
    map: DeltaMap
    pin: object


TreeReader = Callable[[str, int], Iterator[bytes]]
"""``read(path, size)``: a base tree's file read whole, in pieces (blocking: called in a worker
thread); `SourceChanged` when it is no longer that file (another size, another version)."""


@dataclass(frozen=True)
class BaseTree:
    """An installed directory snapshot a store offers as a delta base: its non-empty `files`
    (``(path, size)`` in its listing's order: the base stream is their bytes joined), the
    `root` they are found under (a local folder, an object store's generation prefix), a
    reader of them (`read`), and what its backend needs to reach exactly those files at assembly
    (`pin`: on S3 each file's object with the ETag it was read at)."""

    snapshot_id: str
    files: tuple[tuple[str, int], ...]
    root: str
    read: TreeReader
    pin: object = None
    known: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """``path -> (crc32c, BLAKE3 digest)`` recorded when the tree was installed, for files whose
    pin is the version they were recorded for (an offer uses them instead of reading)."""
    digests: dict[str, bytes] = field(default_factory=dict)
    """``path -> BLAKE3 digest`` of every file the offer identified (recorded or read)."""

    def placed(self) -> tuple[tuple[str, int, int], ...]:
        """``(path, offset in the base stream, size)`` of each file."""
        out, at = [], 0
        for path, size in self.files:
            out.append((path, at, size))
            at += size
        return tuple(out)


class DeltaBase(Protocol):
    """A store whose installed snapshots can be delta bases (``docs/delta.md``): one
    implementation per backend that can (local folders, ``memory://``, S3), given by the
    backend's ``delta_base()``; a backend without one receives every snapshot in full."""

    def takes_delta(self, meta: SnapshotMeta, sink: SnapshotSink, holds: bool) -> bool:
        """Whether the stream of `meta` writing into `sink` (`holds`: it holds data already)
        can receive a delta at all."""

    async def map_base(self, snapshot_id: str, mode: str, key: bytes) -> MappedBase | None:
        """The installed file snapshot `snapshot_id` mapped in `mode` with `key` (read once);
        None when it is not held or cannot be read."""

    async def delta_sink(self, meta: SnapshotMeta, sink: SnapshotSink) -> SnapshotSink:
        """The sink a delta's sent ranges go to, once a recipe came: `sink`, or one the store
        put in its place (`sink` then aborted)."""

    async def assemble(
        self, sink: SnapshotSink, base: MappedBase, recipe: Recipe, expected: int
    ) -> tuple[int, int]:
        """Build the target from `base` (the recipe's copied ranges) and `sink` (its sent
        ranges); return its CRC32C, computed from the bytes sent and the copied ranges' own
        bytes (or the base map's CRCs of them, where the pin proves the base unchanged), and the
        bytes copied.  Never makes a target whose CRC32C is not `expected` visible: raises
        `ChecksumMismatch` (``whole=True``) or `SourceChanged` (the base changed) first."""

    async def tree_base(self, snapshot_id: str) -> BaseTree | None:
        """The installed directory snapshot `snapshot_id` as a base tree (its files listed, not
        read); None when the store holds no complete tree under it."""

    async def assemble_tree(
        self,
        sink: SnapshotSink,
        base: BaseTree,
        base_map: DeltaMap,
        recipe: Recipe,
        expected: int,
    ) -> tuple[int, int]:
        """`assemble` for a directory snapshot's packed stream, its copied ranges taken from
        `base`'s files (`recipe`'s base offsets are in its base stream, `base_map` its extents
        as last offered); return the stream's CRC32C and the bytes copied.  Never makes a tree
        whose CRC32C is not `expected` visible: `ChecksumMismatch` (``whole=True``) or
        `SourceChanged` first."""
