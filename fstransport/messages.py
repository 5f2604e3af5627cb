"""The protocol's messages: what a sender and a receiver say to each other.

They mirror openraft 0.9's ``InstallSnapshotRequest{vote, meta, offset, data, done}`` and its
answers, as frozen dataclasses.  Chunk data travels as ``bytes`` or a ``memoryview`` (or, from
the receiver server, as `Pieces`) and is never copied by these classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

__all__ = [
    "Buffer",
    "ChunkData",
    "DeltaOffer",
    "InstallSnapshotRequest",
    "InstallSnapshotResponse",
    "LogId",
    "Pieces",
    "Snapshot",
    "SnapshotMeta",
    "SnapshotResponse",
    "SnapshotSegmentId",
    "StagedChunk",
    "Vote",
    "contiguous",
]

Buffer = bytes | bytearray | memoryview
"""Chunk data: anything that exposes a contiguous byte buffer."""


class Pieces:
    """Chunk data that arrived in several buffers, kept apart: joining them would copy it all.

    The receiver server collects a request body this way (aiohttp hands it over in pieces of
    up to 256 KiB).  A sink with a ``write_pieces`` method gets it as it is (the local file sink
    writes it with ``pwritev``); any other sink gets `join`.  `len` is the total length.
    """

    __slots__ = ("_length", "_parts")

    def __init__(self, parts: Iterable[Buffer]) -> None:
        self._parts: tuple[Buffer, ...] = tuple(parts)
        self._length = sum(memoryview(part).nbytes for part in self._parts)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Buffer]:
        return iter(self._parts)

    @property
    def count(self) -> int:
        """How many pieces there are."""
        return len(self._parts)

    def join(self) -> bytes:
        """The pieces as one ``bytes`` (a copy of them all)."""
        return b"".join(self._parts)

    def __repr__(self) -> str:  # never dump chunk data into logs
        return f"Pieces(count={len(self._parts)}, len={self._length})"


ChunkData = Buffer | Pieces
"""What a request's `data` may be: one contiguous buffer, or `Pieces`."""


def contiguous(data: ChunkData) -> Buffer:
    """`data` as one contiguous buffer: itself, or its pieces joined."""
    return data.join() if isinstance(data, Pieces) else data


@dataclass(frozen=True, order=True)
class Vote:
    """A leader's vote.  Ordered by term, then node id, then committed (False < True)."""

    term: int
    node_id: int
    committed: bool = False

    def __str__(self) -> str:
        return f"T{self.term}-N{self.node_id}{':committed' if self.committed else ''}"


@dataclass(frozen=True, order=True)
class LogId:
    """The id of a log entry: the term it was written in and its index."""

    term: int
    index: int

    def __str__(self) -> str:
        return f"{self.term}-{self.index}"


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot is: its id, the log position it covers, and optionally its size and checksum.

    `size` (bytes) lets the receiver refuse out-of-range chunks early; `checksum`
    (``"crc32c:%08x"``) lets it verify the whole snapshot before installing it.  `kind` says
    what the bytes are: ``"file"`` (installed as they are) or ``"tree"`` (a directory packed
    by `fstransport.tree`, unpacked into a folder once verified; see ``docs/directories.md``).
    """

    snapshot_id: str
    last_log_id: LogId | None = None
    last_membership: object = None
    size: int | None = None
    checksum: str | None = None
    kind: str = "file"

    def same_snapshot(self, other: SnapshotMeta) -> bool:
        """Whether `other` describes the same snapshot (a missing checksum matches any)."""
        return (
            self.snapshot_id == other.snapshot_id
            and self.last_log_id == other.last_log_id
            and self.last_membership == other.last_membership
            and self.size == other.size
            and self.kind == other.kind
            and (self.checksum is None or other.checksum is None or self.checksum == other.checksum)
        )


@dataclass(frozen=True)
class SnapshotSegmentId:
    """A position in a snapshot: its id and a byte offset."""

    id: str
    offset: int


@dataclass(frozen=True)
class StagedChunk:
    """A reference to a chunk's bytes staged in a bucket, sent instead of the bytes themselves.

    The object is `name` inside the staging area `area` (an fsspec URL: one sender, one vote,
    one snapshot; see `fstransport.network.relay`), holds `length` bytes whose CRC32C is
    `crc32c`, and is written once and never changed.  The receiver fetches it, checks the
    CRC32C before writing anything, and installs only once the area's manifest exists.
    """

    area: str
    name: str
    length: int
    crc32c: int

    @property
    def url(self) -> str:
        """The staged object's URL."""
        return f"{self.area}/chunks/{self.name}"


@dataclass(frozen=True)
class InstallSnapshotRequest:
    """One chunk of a snapshot: `data` belongs at `offset`; `done` marks the last chunk.

    `crc32c` is the CRC32C of `data`, computed by the sender and checked by the receiver before
    it writes anything.  None leaves it to the receiver; only an in-process copy does that
    (`LoopbackNetwork` with ``trust_checksums``: the receiver's sink computes each chunk's CRC
    while it writes it and hands it back in `InstallSnapshotResponse.crc32c`, so the data is
    read once).

    `staged`, when set, says where the chunk's bytes wait in a bucket (`StagedChunk`): `data`
    is then empty and `crc32c` is the staged bytes' CRC32C.  A receiver created with
    ``relay_options`` fetches them (see `fstransport.network.relay.RelayNetwork`).

    `delta` (``"blocks"`` or ``"cdc"``) marks a data-less request at offset 0 that asks for a
    delta transfer (see ``docs/delta.md``): without `recipe` it asks for the receiver's offer;
    with `recipe` (`fstransport.protocol.delta_wire.encode_recipe`) it says which ranges the
    receiver takes from the offered base.  `delta_key` (16 random bytes, with the request for an
    offer) is the key the receiver tags its base map with: the sender maps its source with it
    meanwhile, instead of after the offer.

    `extents` (after an accepted recipe whose answer said ``extents``): ``(offset, length)``
    pairs, increasing and disjoint; `data` is their bytes joined, `offset` the first's and
    `crc32c` the CRC32C of `data` (``fstransport.protocol.delta_pack``).
    """

    vote: Vote
    meta: SnapshotMeta
    offset: int
    data: ChunkData
    done: bool
    crc32c: int | None = None
    staged: StagedChunk | None = None
    delta: str | None = None
    recipe: bytes | None = None
    delta_key: bytes | None = None
    extents: tuple[tuple[int, int], ...] | None = None

    def __repr__(self) -> str:  # never dump chunk data into logs
        return (
            f"InstallSnapshotRequest(vote={self.vote}, id={self.meta.snapshot_id!r}, "
            f"offset={self.offset}, len={len(self.data)}, done={self.done}, crc32c={self.crc32c}"
            + (f", staged={self.staged.url!r}" if self.staged is not None else "")
            + (f", delta={self.delta!r}" if self.delta is not None else "")
            + (f", recipe={len(self.recipe)} bytes" if self.recipe is not None else "")
            + (", delta_key=..." if self.delta_key is not None else "")
            + (f", extents={len(self.extents)}" if self.extents is not None else "")
            + ")"
        )


@dataclass(frozen=True)
class DeltaOffer:
    """What a receiver can build a delta on: the base snapshot it holds (`base_id`, its
    `checksum` and `size`) and its map (`fstransport.protocol.delta_wire.encode_map`)."""

    base_id: str
    checksum: str
    size: int
    map: bytes = field(repr=False)


@dataclass(frozen=True)
class InstallSnapshotResponse:
    """The receiver's answer to one chunk: its current vote.

    `held` lists byte ranges ``(start, end)`` of the snapshot the receiver already holds; it
    comes with the answer to the chunk at offset 0 and to the first chunk of a resumed transfer,
    so that a sender skips what an earlier attempt delivered.

    `crc32c` is the CRC32C of the request's data as the receiver computed or took it (None when
    nothing was applied).  Only a sender whose network declares ``trust_checksums`` (an
    in-process `LoopbackNetwork`) uses it, for a chunk it sent without a CRC; any other sender
    computes its own and never takes a peer's word for it.

    `offer` answers a request asking for a delta (``delta`` set, no recipe): the base the
    receiver offers, or None (no base: the sender sends everything).

    `reused` and `fetched` answer a staged chunk (a `RelayNetwork` reference): the bytes of it
    the receiver took from a base it holds, and the bytes it fetched from the staging bucket
    (its block map included); reports only, never trusted for anything else.

    `extents` (answering an accepted recipe): the receiver takes requests with ``extents``
    for the rest of this stream (a receiver that does not say so gets one range a request).
    """

    vote: Vote
    held: tuple[tuple[int, int], ...] | None = None
    crc32c: int | None = None
    offer: DeltaOffer | None = None
    reused: int = 0
    fetched: int = 0
    extents: bool = False


@dataclass(frozen=True)
class SnapshotResponse:
    """The result of sending a whole snapshot: the receiver's last vote."""

    vote: Vote


@dataclass(frozen=True)
class Snapshot:
    """A snapshot to send, or one just received: its meta and a readable binary file object."""

    meta: SnapshotMeta
    data: IO[bytes] = field(repr=False)
