"""The receiver's rules, without I/O: what a valid request is, and what a request does to a stream.

Everything here raises the typed errors of `fstransport.errors` and changes nothing but the
`StreamState` it is handed, so the I/O side can validate first and write second.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from fstransport.checksum import chunk_crc, format_checksum, parse_checksum
from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    InvalidRequest,
    SnapshotMismatch,
)
from fstransport.messages import (
    DeltaOffer,
    InstallSnapshotRequest,
    Pieces,
    SnapshotMeta,
    SnapshotSegmentId,
    Vote,
)
from fstransport.protocol.delta_pack import check_extents
from fstransport.protocol.delta_session import ReceiverDelta, check_delta_request
from fstransport.protocol.ranges import ChunkLedger, ChunkRecord

__all__ = [
    "DEFAULT_MAX_SNAPSHOT_SIZE",
    "MAX_SNAPSHOT_ID_LENGTH",
    "ReceiverLimits",
    "StreamDecision",
    "StreamState",
    "check_snapshot_id",
    "decide_stream",
    "validate_request",
]

MAX_SNAPSHOT_ID_LENGTH = 255
"""Bytes (of UTF-8) a snapshot id may take: the longest file name most file systems allow."""
RESERVED_NAMES = frozenset({".", "..", ".fstransport"})
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Control and format characters (bidi overrides such as U+202E, zero-width ones),
surrogates, private-use and unassigned code points, and line and paragraph separators:
characters that make a name print as something else, or break a line in a tool's output."""

SNAPSHOT_KINDS = frozenset({"file", "tree"})
"""What `SnapshotMeta.kind` may say: a file, or a directory packed by `fstransport.tree`."""

DEFAULT_MAX_SNAPSHOT_SIZE = 256 * 1024**3
"""The largest snapshot a receiver takes unless told otherwise (256 GiB): it also bounds where
a chunk of a snapshot that names no size may land."""


@dataclass(frozen=True)
class ReceiverLimits:
    """What a receiver accepts.  `None` means no limit.

    `max_snapshot_size` bounds a snapshot's declared size and the end of every chunk (so a
    sender that names no size cannot make a huge sparse file either)."""

    max_snapshot_size: int | None = DEFAULT_MAX_SNAPSHOT_SIZE
    max_chunk_size: int | None = 256 * 1024 * 1024
    max_transfers: int = 16
    max_tree_files: int | None = 100_000
    """Files and folders a directory snapshot may hold (their bytes are bounded by
    `max_snapshot_size`, which bounds the packed stream)."""

    def __post_init__(self) -> None:
        if self.max_transfers < 1:
            raise ConfigurationError(f"max_transfers must be >= 1, got {self.max_transfers}")
        for name in ("max_snapshot_size", "max_chunk_size", "max_tree_files"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigurationError(f"{name} must not be negative, got {value}")


def _refuse_id(message: str) -> InvalidRequest:
    return InvalidRequest(message, field="snapshot_id")


def check_snapshot_id(snapshot_id: object) -> str:
    """Return `snapshot_id` if it is safe as a single file name, else raise `InvalidRequest`.

    Safe for this store and for the tools people later run over ROOT (a shell, ``ls``,
    ``rm``, ``tar``).  Refused: non-strings, the empty string, over 255 bytes of UTF-8, text
    that is not valid Unicode, path separators, control and format characters (bidi overrides,
    zero-width characters), line and paragraph separators, unassigned and private-use code
    points, any white space but the plain space, white space at either end, a leading ``-``
    (read as an option), a trailing ``.`` (dropped by Windows and SMB), ``.``, ``..``, and the
    name ``.fstransport`` that the store keeps to itself.
    """
    if not isinstance(snapshot_id, str):
        raise _refuse_id(f"snapshot id must be a string, got {type(snapshot_id).__name__}")
    if not snapshot_id:
        raise _refuse_id("snapshot id must not be empty")
    try:
        size = len(snapshot_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refuse_id("snapshot id is not valid Unicode") from None
    shown = ascii(snapshot_id[:64])  # never echo a bidi override or a line break as it is
    if size > MAX_SNAPSHOT_ID_LENGTH:
        raise _refuse_id(
            f"snapshot id is {size} bytes long in UTF-8; at most {MAX_SNAPSHOT_ID_LENGTH} "
            "are allowed"
        )
    if "/" in snapshot_id or "\\" in snapshot_id:
        raise _refuse_id(f"snapshot id {shown} contains a path separator")
    for ch in snapshot_id:
        category = unicodedata.category(ch)
        if category in _REFUSED_CATEGORIES:
            kind = "control" if category == "Cc" else "unsafe"
            raise _refuse_id(f"snapshot id {shown} contains a {kind} character U+{ord(ch):04X}")
        if (category == "Zs" and ch != " ") or (ch.isspace() and ch != " "):
            raise _refuse_id(f"snapshot id {shown} contains white space U+{ord(ch):04X}")
    if snapshot_id != snapshot_id.strip():
        raise _refuse_id(f"snapshot id {shown} begins or ends with white space")
    if snapshot_id.startswith("-"):
        raise _refuse_id(f"snapshot id {shown} begins with '-' (tools read it as an option)")
    if snapshot_id in RESERVED_NAMES:
        raise _refuse_id(f"snapshot id {shown} is reserved")
    if snapshot_id.endswith("."):
        raise _refuse_id(f"snapshot id {shown} ends with '.'")
    return snapshot_id


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_buffer(data: object) -> None:
    """`InvalidRequest` unless `data` is a contiguous buffer of bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"data must be bytes, got {type(data).__name__}", field="data")
    if isinstance(data, memoryview) and not (
        data.c_contiguous and data.itemsize == 1 and data.ndim == 1
    ):
        raise InvalidRequest("data must be a contiguous byte buffer", field="data")


def validate_request(
    req: InstallSnapshotRequest, limits: ReceiverLimits, *, trust_crc: bool = False
) -> int:
    """Check every field of `req` against the protocol and `limits`; return the data's CRC32C.

    Raises `InvalidRequest` for a malformed request and `ChecksumMismatch` when the data does
    not match ``req.crc32c``.  With `trust_crc`, a given ``req.crc32c`` is taken as is instead
    of being computed again: only for requests that never left this process.
    """
    if not isinstance(req, InstallSnapshotRequest):
        raise InvalidRequest(f"expected an InstallSnapshotRequest, got {type(req).__name__}")
    if not isinstance(req.vote, Vote) or not (_is_int(req.vote.term) and _is_int(req.vote.node_id)):
        raise InvalidRequest("vote must be a Vote of integers", field="vote")
    meta = req.meta
    if not isinstance(meta, SnapshotMeta):
        raise InvalidRequest("meta must be a SnapshotMeta", field="meta")
    check_snapshot_id(meta.snapshot_id)
    if meta.kind not in SNAPSHOT_KINDS:
        raise InvalidRequest(
            f"kind must be one of {', '.join(sorted(SNAPSHOT_KINDS))}", field="kind"
        )
    if meta.kind != "file" and meta.size is None:
        raise InvalidRequest("a directory snapshot must name its size", field="size")
    if meta.size is not None:
        if not _is_int(meta.size) or meta.size < 0:
            raise InvalidRequest(
                f"snapshot size must be a non-negative integer, got {meta.size!r}", field="size"
            )
        if limits.max_snapshot_size is not None and meta.size > limits.max_snapshot_size:
            raise InvalidRequest(
                f"snapshot of {meta.size} bytes exceeds the receiver's limit "
                f"of {limits.max_snapshot_size}",
                field="size",
            )
    if meta.checksum is not None:
        if not isinstance(meta.checksum, str):
            raise InvalidRequest("checksum must be a string", field="checksum")
        try:
            parse_checksum(meta.checksum)
        except ConfigurationError as exc:
            raise InvalidRequest(str(exc), field="checksum") from None
    if not _is_int(req.offset) or req.offset < 0:
        raise InvalidRequest(
            f"offset must be a non-negative integer, got {req.offset!r}", field="offset"
        )
    for part in req.data if isinstance(req.data, Pieces) else (req.data,):
        _check_buffer(part)
    length = len(req.data)
    if limits.max_chunk_size is not None and length > limits.max_chunk_size:
        raise InvalidRequest(
            f"chunk of {length} bytes exceeds the receiver's limit of {limits.max_chunk_size}",
            field="data",
        )
    if not isinstance(req.done, bool):
        raise InvalidRequest("done must be a bool", field="done")
    end = req.offset + length
    if limits.max_snapshot_size is not None and end > limits.max_snapshot_size:
        raise InvalidRequest(
            f"chunk [{req.offset}, {end}) reaches beyond the receiver's size limit "
            f"of {limits.max_snapshot_size}",
            field="offset",
        )
    if meta.size is not None:
        if end > meta.size:
            raise InvalidRequest(
                f"chunk [{req.offset}, {end}) reaches beyond the snapshot's size {meta.size}",
                field="offset",
            )
        if req.done and end != meta.size:
            raise InvalidRequest(
                f"final chunk ends at {end}, but the snapshot's size is {meta.size}", field="done"
            )
    if req.crc32c is not None and (not _is_int(req.crc32c) or not 0 <= req.crc32c < 2**32):
        raise InvalidRequest(
            f"crc32c must be a 32-bit unsigned integer, got {req.crc32c!r}", field="crc32c"
        )
    check_delta_request(req)
    check_extents(req)
    if trust_crc and req.crc32c is not None:
        return req.crc32c
    crc = chunk_crc(req.data)
    if req.crc32c is not None and crc != req.crc32c:
        raise ChecksumMismatch(
            f"chunk [{req.offset}, {end}) of {meta.snapshot_id!r}",
            f"{req.crc32c:08x}",
            f"{crc:08x}",
        )
    return crc


Rewind = Callable[[int], tuple[int, Iterable[tuple[int, int]]]]
"""Where a sender missing a byte starts again, and the byte ranges forgotten for that."""


def _no_rewind(offset: int) -> tuple[int, Iterable[tuple[int, int]]]:
    return offset, ()


class StreamDecision(enum.Enum):
    """What a valid request does to the stream of its snapshot id."""

    START = "start"  # no stream yet: begin one
    CONTINUE = "continue"  # the same snapshot: write into it
    RESTART = "restart"  # another snapshot under the same id: discard the old, begin anew


def decide_stream(current: SnapshotMeta | None, req: InstallSnapshotRequest) -> StreamDecision:
    """The seed's rule: a new snapshot begins at offset 0, else `SnapshotMismatch` expecting 0."""
    if current is not None and current.same_snapshot(req.meta):
        return StreamDecision.CONTINUE
    if req.offset != 0:
        snapshot_id = req.meta.snapshot_id
        raise SnapshotMismatch(
            expect=SnapshotSegmentId(snapshot_id, 0), got=SnapshotSegmentId(snapshot_id, req.offset)
        )
    return StreamDecision.START if current is None else StreamDecision.RESTART


@dataclass
class StreamState:
    """What the receiver knows of one snapshot being received: its meta and the chunks held."""

    meta: SnapshotMeta
    ledger: ChunkLedger = field(default_factory=ChunkLedger)
    resumed: bool = False  # the next answer tells the sender what is held
    from_store: bool = False  # it continues partial data an earlier receiver or sender left
    unverified: bool = False  # it was written since its bytes were last re-read
    last_seen: float = 0.0  # when a request of it last came or ended (the receiver's clock)
    staged: dict[str, set[str]] = field(default_factory=dict)  # staging area -> objects used
    delta: ReceiverDelta | None = None  # the base offered, and the recipe once accepted
    offer: DeltaOffer | None = None  # an offer waiting to go out with its answer
    exchanges: int = 0  # delta exchanges begun on it (`delta_restart.begin_exchange`)

    def record(
        self, req: InstallSnapshotRequest, crc: int, lost: Iterable[tuple[int, int]] = ()
    ) -> None:
        """Note that `req`'s data is stored and the `lost` ranges are not any more; adopt a
        checksum the sender announces late."""
        for start, end in lost:
            self.ledger.discard(start, end)
        self.ledger.add(req.offset, len(req.data), crc)
        if self.meta.checksum is None and req.meta.checksum is not None:
            self.meta = replace(self.meta, checksum=req.meta.checksum)
        self.unverified = True
        if req.staged is not None:
            self.staged.setdefault(req.staged.area, set()).add(req.staged.name)

    def written(self) -> list[ChunkRecord]:
        """The chunks held whose bytes were written (not a delta's copied ranges, which are
        filled from the base only at assembly)."""
        delta, records = self.delta, self.ledger.records()
        if delta is None:
            return records
        return [r for r in records if not delta.is_copied(r.offset, r.length, r.crc)]

    def holds(self, req: InstallSnapshotRequest) -> bool:
        """Whether `req`'s bytes need not be written: a snapshot named by its checksum never
        changes, so a chunk it holds already is there."""
        return self.meta.checksum is not None and self.ledger.covers(
            req.offset, req.offset + len(req.data)
        )

    def concurrent(
        self, req: InstallSnapshotRequest, crc_known: bool, sink_concurrent: bool
    ) -> bool:
        """Whether `req` may be written without holding the stream's lock: a chunk but the
        last whose CRC the sink computes as it writes, into a sink that takes several writes at
        once, of a snapshot naming no checksum (else `holds` may skip bytes)."""
        plain = not req.done and req.extents is None
        return not crc_known and plain and self.meta.checksum is None and sink_concurrent

    def tell(self, req: InstallSnapshotRequest) -> tuple[tuple[int, int], ...] | None:
        """What to tell the sender is held: in the answer to the first chunk and to the first
        one after a resume (the sender need not send it), else None."""
        if req.offset != 0 and not self.resumed:
            return None
        self.resumed = False
        return tuple(self.ledger.held())

    def needs_check(self) -> bool:
        """Whether a chunk at offset 0 must have the bytes held re-read first: something was
        written since the last check (a stream from the store was checked already).  Marks
        them as checked."""
        if not self.unverified or self.resumed:
            return False
        self.unverified = False
        return True

    def checked(self, records: Iterable[ChunkRecord], intact: Iterable[ChunkRecord]) -> int:
        """The bytes of `records` were re-read and only `intact` matched: forget the others
        (they are sent again); return how many were lost.  The data may be another sender's
        from now on (see `ReceiverState.finish_failed`)."""
        good = set(intact)
        lost = [r for r in records if r not in good]
        for record in lost:
            self.ledger.discard(record.offset, record.end)
        self.from_store = True
        return len(lost)

    def complete(self, end: int, rewind: Rewind = _no_rewind) -> SnapshotMeta:
        """Check that ``[0, end)`` is held and matches the checksum; return the final meta.

        Raises `SnapshotMismatch` for a gap, expecting the point ``rewind(first missing byte)``
        names (a sink may need more than the gap again; the ranges it forgets for that are
        dropped from the ledger), `InvalidRequest` for data beyond `end`, and `ChecksumMismatch`
        when the whole CRC differs from the meta's.
        """
        gap = self.ledger.first_gap(end)
        if gap is not None:
            point, lost = rewind(gap)
            for start, stop in lost:
                self.ledger.discard(start, stop)
            snapshot_id = self.meta.snapshot_id
            raise SnapshotMismatch(
                expect=SnapshotSegmentId(snapshot_id, point),
                got=SnapshotSegmentId(snapshot_id, end),
            )
        records = self.ledger.records()
        crc = self.ledger.whole_crc(end)
        if crc is None or (records and records[-1].end > end):
            raise InvalidRequest(
                f"data was written beyond the final chunk's end {end}", field="done"
            )
        actual = format_checksum(crc)
        if self.meta.checksum is not None and self.meta.checksum != actual:
            raise ChecksumMismatch(
                f"snapshot {self.meta.snapshot_id!r}", self.meta.checksum, actual, whole=True
            )
        return replace(self.meta, size=end, checksum=actual)
