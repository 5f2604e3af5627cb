"""The receiver's rules as one sans-I/O state object: `ReceiverState`.

`fstransport.receiver.Receiver` asks it what a request does and executes the answer — an
*action* (`Refuse`, `Acknowledge`, `AwaitInstall`, `Resume`, `Begin`, `Continue`, `Drop`,
`Expire`, `Reject`) — against its store and sinks; it reports back what happened (a stream
opened, a chunk written, a snapshot installed) and asks again.  Nothing here awaits, reads a
clock or touches storage: the receiver passes the time in, so every rule is tested directly
(`tests/test_protocol_receiver_state.py`).

The rules kept here: vote adoption (one vote per node, or one per snapshot id with a bounded
table), the stale-vote rule, which stream a request continues, restarts or begins, resuming
partial data a store holds, "already installed" memory, admission (`ReceiverLimits`), which held
ranges to tell the sender, the checksum-to-mismatch turn on resumed streams, and idle expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    SnapshotMismatch,
    SourceChanged,
    StorageError,
    TooManyTransfers,
)
from fstransport.messages import (
    InstallSnapshotRequest,
    SnapshotMeta,
    SnapshotSegmentId,
    Vote,
)
from fstransport.protocol.delta_restart import FailedBases
from fstransport.protocol.ranges import ChunkRecord
from fstransport.protocol.receiver import (
    ReceiverLimits,
    StreamDecision,
    StreamState,
    decide_stream,
)

__all__ = [
    "INSTALLED_MEMORY",
    "VOTES_MEMORY",
    "Acknowledge",
    "Action",
    "AwaitInstall",
    "Begin",
    "Continue",
    "Drop",
    "Expire",
    "Held",
    "ReceiverState",
    "Refuse",
    "Reject",
    "Resume",
    "VoteScope",
]

INSTALLED_MEMORY = 256
"""How many installed snapshots a receiver remembers, to acknowledge a repeated final chunk."""

VOTES_MEMORY = 4096
"""How many snapshot ids a receiver with ``vote_scope="snapshot"`` remembers a vote for (the
least recently used id not being received is forgotten first)."""

VoteScope = Literal["node", "snapshot"]
"""What one vote covers: the whole receiver (a Raft node) or one snapshot id (a standalone
server shared by unrelated senders)."""

Held = tuple[tuple[int, int], ...]


class StagingUnverified(StorageError):
    """A snapshot fetched (in part) from staging areas whose manifest is missing or does not
    match it. `foreign`: some of those bytes came from an area other than the final chunk's
    (a sender that died before it committed): the transfer starts over from offset 0."""

    def __init__(self, found: StorageError, *, foreign: bool) -> None:
        super().__init__(found.subject, found.verb, found.cause, retryable=found.retryable)
        self.foreign = foreign


@dataclass(frozen=True)
class Refuse:
    """A request of a lower vote: apply nothing, answer with the receiver's `vote`."""

    vote: Vote


@dataclass(frozen=True)
class Acknowledge:
    """A repeated final chunk of a snapshot installed already: answer, `held` all of it."""

    held: Held


@dataclass(frozen=True)
class AwaitInstall:
    """The id's snapshot is being installed: wait for that, then ask again."""

    snapshot_id: str


@dataclass(frozen=True)
class Resume:
    """No stream for the id: look for partial data the store holds of `meta`, then ask again
    (`ReceiverState.resumed` or `ReceiverState.closed`)."""

    meta: SnapshotMeta


@dataclass(frozen=True)
class Begin:
    """Begin a new stream for `meta` (`ReceiverState.opened`) and write the chunk into it."""

    meta: SnapshotMeta


@dataclass(frozen=True)
class Continue:
    """Write the chunk into the id's stream; `reverify`: re-read what it holds first (a sender
    starting at offset 0 again, maybe a new one)."""

    snapshot_id: str
    reverify: bool


@dataclass(frozen=True)
class Drop:
    """Another snapshot under the same id: discard the old stream and its data, ask again."""

    snapshot_id: str


@dataclass(frozen=True)
class Expire:
    """Every slot is taken: let idle transfers go (`ReceiverState.idle`), then ask again with
    ``expired_nothing=True`` if none went."""


@dataclass(frozen=True)
class Reject:
    """Refuse the request with `error` (too many transfers)."""

    error: TooManyTransfers


Action = Refuse | Acknowledge | AwaitInstall | Resume | Begin | Continue | Drop | Expire | Reject


class ReceiverState:
    """What a receiver knows and decides, without I/O: votes, streams, installed snapshots."""

    def __init__(
        self, vote: Vote | None, limits: ReceiverLimits, vote_scope: VoteScope = "node"
    ) -> None:
        if vote_scope not in ("node", "snapshot"):
            raise ConfigurationError(f"vote_scope must be 'node' or 'snapshot', got {vote_scope!r}")
        self.vote = vote
        self.vote_scope: VoteScope = vote_scope
        self.limits = limits
        self.votes: OrderedDict[str, Vote] = OrderedDict()
        self.streams: dict[str, StreamState] = {}
        self.installed: OrderedDict[str, SnapshotMeta] = OrderedDict()
        self.installing: set[str] = set()
        self.busy: dict[str, int] = {}  # requests under way, per snapshot id
        self.failed_bases = FailedBases()  # delta bases whose assembly failed, by snapshot id

    # -- votes ---------------------------------------------------------------------------------

    def vote_for(self, snapshot_id: str) -> Vote | None:
        """The vote a request for `snapshot_id` is checked against (None: none seen yet)."""
        if self.vote_scope == "node":
            return self.vote
        own = self.votes.get(snapshot_id)
        if own is None or (self.vote is not None and self.vote > own):
            return self.vote
        return own

    def is_stale(self, req: InstallSnapshotRequest) -> bool:
        """Whether `req`'s vote is lower than the one held for its id (nothing of it applies)."""
        current = self.vote_for(req.meta.snapshot_id)
        return current is not None and req.vote < current

    def check_vote(self, req: InstallSnapshotRequest) -> Refuse | None:
        """`Refuse` for a stale request; else None, adopting a higher vote."""
        snapshot_id = req.meta.snapshot_id
        current = self.vote_for(snapshot_id)
        if current is not None and req.vote < current:
            return Refuse(current)
        if current is None or req.vote > current:
            self._adopt(snapshot_id, req.vote)
        return None

    def _adopt(self, snapshot_id: str, vote: Vote) -> None:
        if self.vote_scope == "node":
            self.vote = vote
            return
        self.votes[snapshot_id] = vote
        self.votes.move_to_end(snapshot_id)
        if len(self.votes) > VOTES_MEMORY:
            for old in list(self.votes):
                if old not in self.streams and old != snapshot_id:
                    del self.votes[old]
                    if len(self.votes) <= VOTES_MEMORY:
                        break

    def stream_of(self, req: object) -> str | None:
        """The id of the transfer `req` (however malformed) belongs to, if any: a broken request
        ends it.  A stale leader's request never ends the current leader's transfer."""
        meta = getattr(req, "meta", None)
        vote = getattr(req, "vote", None)
        if not isinstance(meta, SnapshotMeta) or not isinstance(meta.snapshot_id, str):
            return None
        try:
            current = self.vote_for(meta.snapshot_id)
            if not isinstance(vote, Vote) or (current is not None and vote < current):
                return None
        except TypeError:  # a vote of the wrong types
            return None
        stream = self.streams.get(meta.snapshot_id)
        if stream is None or not stream.meta.same_snapshot(meta):
            return None
        return meta.snapshot_id

    # -- streams -------------------------------------------------------------------------------

    def route(
        self,
        req: InstallSnapshotRequest,
        *,
        resume_tried: bool = False,
        expired_nothing: bool = False,
    ) -> Action:
        """What a valid request of a current vote does next.  Raises `SnapshotMismatch` (expect
        offset 0) for a chunk past 0 of a snapshot id with no stream.

        `resume_tried`: the store was asked for partial data already; `expired_nothing`: an
        `Expire` let nothing go (every slot is busy)."""
        snapshot_id = req.meta.snapshot_id
        stream = self.streams.get(snapshot_id)
        full = len(self.streams) >= self.limits.max_transfers
        if stream is None:
            if snapshot_id in self.installing:
                # Its answer was lost while it was installed (a repeated final chunk), or a new
                # transfer under this id begins: either way, after the install, never beside it.
                return AwaitInstall(snapshot_id)
            if self.already_installed(req):
                return Acknowledge(((0, req.offset + len(req.data)),))
            if not resume_tried and not (full and expired_nothing):
                return Expire() if full else Resume(req.meta)
        decision = decide_stream(stream.meta if stream is not None else None, req)
        if decision is StreamDecision.CONTINUE:
            return Continue(snapshot_id, reverify=req.offset == 0)
        if decision is StreamDecision.RESTART:
            return Drop(snapshot_id)
        if full:
            if not expired_nothing:
                return Expire()
            return Reject(
                TooManyTransfers(
                    f"already receiving {len(self.streams)} snapshots "
                    f"(limit {self.limits.max_transfers}); try again later"
                )
            )
        return Begin(req.meta)

    def opened(self, meta: SnapshotMeta, now: float) -> StreamState:
        """A stream for `meta` is registered (before its sink exists: chunks arriving meanwhile
        find it and wait for it)."""
        stream = StreamState(meta, last_seen=now)
        self.streams[meta.snapshot_id] = stream
        return stream

    def resumed(self, stream: StreamState, records: Iterable[ChunkRecord]) -> None:
        """The store held partial data of `stream`'s snapshot: these chunks."""
        for record in records:
            stream.ledger.add(record.offset, record.length, record.crc)
        stream.resumed = True
        stream.from_store = True

    def closed(self, stream: StreamState) -> None:
        """`stream` ended (installed, dropped, expired or never found): forget it."""
        snapshot_id = stream.meta.snapshot_id
        if self.streams.get(snapshot_id) is stream:
            del self.streams[snapshot_id]

    # -- installed snapshots -------------------------------------------------------------------

    def already_installed(self, req: InstallSnapshotRequest) -> bool:
        """A final chunk of a snapshot installed already (its answer was lost)."""
        installed = self.installed.get(req.meta.snapshot_id)
        return (
            req.done
            and installed is not None
            and req.meta.checksum is not None
            and installed.checksum == req.meta.checksum
            and installed.same_snapshot(req.meta)
        )

    def install_started(self, snapshot_id: str) -> None:
        """The finished snapshot of `snapshot_id` is being installed (`AwaitInstall` meanwhile)."""
        self.installing.add(snapshot_id)

    def install_ended(self, snapshot_id: str) -> None:
        """The install of `snapshot_id` ended, whatever its outcome."""
        self.installing.discard(snapshot_id)

    def remember_installed(self, meta: SnapshotMeta) -> None:
        """`meta` is installed: a repeated final chunk of it is acknowledged (`Acknowledge`)."""
        self.installed[meta.snapshot_id] = meta
        self.failed_bases.finished(meta.snapshot_id)
        self.installed.move_to_end(meta.snapshot_id)
        while len(self.installed) > INSTALLED_MEMORY:
            self.installed.popitem(last=False)

    # -- finishing -----------------------------------------------------------------------------

    @staticmethod
    def finish_failed(
        stream: StreamState, req: InstallSnapshotRequest, exc: BaseException
    ) -> tuple[bool, BaseException]:
        """A final chunk failed with `exc`: whether the stream is dropped, and what to raise.

        A gap (`SnapshotMismatch`) keeps the stream: the sender fills it.  A `ChecksumMismatch`
        on a stream that continues partial data from the store (whose snapshot named no checksum
        then) turns into `SnapshotMismatch` at offset 0: that data was not this snapshot's, it
        is gone now, and the sender starts over; so do bytes fetched from another sender's
        staging area that was never committed (`StagingUnverified` with `foreign`), and so
        does a delta whose base changed since it was offered (the sender then sends it all)."""
        if isinstance(exc, SnapshotMismatch) or (
            isinstance(exc, StagingUnverified) and not exc.foreign  # (its manifest may come yet)
        ):
            return False, exc
        delta = stream.delta is not None and stream.delta.recipe is not None
        if (
            isinstance(exc, StagingUnverified)
            or (isinstance(exc, ChecksumMismatch) and (stream.from_store or delta))
            or (isinstance(exc, SourceChanged) and delta)  # the base changed: send it all
        ):
            snapshot_id = stream.meta.snapshot_id
            turned = SnapshotMismatch(
                expect=SnapshotSegmentId(snapshot_id, 0),
                got=SnapshotSegmentId(snapshot_id, req.offset),
            )
            return True, turned
        return True, exc

    # -- activity and expiry -------------------------------------------------------------------

    def enter(self, snapshot_id: str) -> None:
        """A request for `snapshot_id` is under way: its transfer does not expire meanwhile."""
        self.busy[snapshot_id] = self.busy.get(snapshot_id, 0) + 1

    def leave(self, snapshot_id: str, now: float) -> None:
        """A request for `snapshot_id` ended at `now`: that counts as activity."""
        left = self.busy[snapshot_id] - 1
        if left:
            self.busy[snapshot_id] = left
        else:
            del self.busy[snapshot_id]
        stream = self.streams.get(snapshot_id)
        if stream is not None:
            stream.last_seen = now

    def expired(self, stream: StreamState, now: float, idle_timeout: float | None) -> bool:
        """Whether no request touched `stream` for `idle_timeout` seconds and none is under way
        (never without a timeout)."""
        return (
            idle_timeout is not None
            and stream.last_seen <= now - idle_timeout
            and not self.busy.get(stream.meta.snapshot_id)
            and self.streams.get(stream.meta.snapshot_id) is stream
        )

    def idle(self, now: float, idle_timeout: float | None) -> list[StreamState]:
        """The streams `expired` at `now`."""
        return [s for s in self.streams.values() if self.expired(s, now, idle_timeout)]
