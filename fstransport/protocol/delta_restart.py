"""A delta across a receiver that started over, sans I/O (``docs/delta.md``, "A receiver
restarted mid-delta").

A receiver restarted mid-delta (or one that let its stream go and resumed it) keeps what it
wrote, its partial data and journal, but not the recipe: the copied ranges are not held any
more, and a request with several ranges finds no recipe to check against.  Its answer is a
mismatch (a rewind).  Without more, the sender would then send everything it does not hear
is held, in full.  The rules here make a restart cost about the delta again:

- **The sender runs the exchange again** (`ExchangeRule`): after a rewind of a transfer whose
  last exchange ended in a recipe the receiver accepted, nothing more is sent until the
  requests in flight are answered, then the exchange runs again (offer, recipe); its answer
  says what the receiver holds, what its partial data keeps and the new recipe's copied
  ranges together, and only the rest is sent.  The rewind goes back to offset 0 (the new
  answer says what is held before any other offset as well).  At most `MAX_EXCHANGES`
  exchanges a send: a receiver that keeps restarting then gets the rest in full.
- **A straggler meets the new recipe** (`check_sent`): a request with extents sent under an
  earlier recipe may arrive after the new one was accepted.  Extents inside ranges the new
  recipe sends are written (they are the same snapshot's bytes at the same offsets).  Others
  on a stream that may see stragglers (one that continues partial data, or whose sender
  began a second exchange) are refused with `SnapshotMismatch` expecting 0 and nothing is
  written: the sender ignores a mismatch to a request sent before its rewind, and a current
  one makes it run the exchange again.  On a stream with one exchange and its own data, an
  extent outside the recipe can only be a broken sender's: `InvalidRequest`, as before.
- **A recipe meets a receiver restarted after its offer** (`start_over`, `offer_lost`): it is
  answered with `SnapshotMismatch` expecting 0 (not `InvalidRequest`), and the sender asks for
  the offer again, once a send, with the same key (the same base gives the same map, and
  the recipe planned serves).
- **A base whose assembly failed is not offered again** (`FailedBases`): the final chunk of a
  delta whose base changed since the offer (`SourceChanged`, or a whole CRC32C that differs)
  drops the stream and answers a mismatch expecting 0, as before; the receiver notes the
  base, and the sender's new exchange gets no offer of it, so the snapshot is sent in full
  as it always was after such a failure (a base that changed once may change again).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fstransport.errors import InvalidRequest, RemoteError, SnapshotMismatch
from fstransport.messages import InstallSnapshotRequest, SnapshotSegmentId
from fstransport.protocol.sender import Failure, Verdict

if TYPE_CHECKING:
    from fstransport.protocol.receiver import StreamState

__all__ = [
    "FAILED_BASES_MEMORY",
    "MAX_EXCHANGES",
    "ExchangeRule",
    "FailedBases",
    "begin_exchange",
    "check_sent",
    "offer_lost",
    "start_over",
]

MAX_EXCHANGES = 4
"""Delta exchanges one send runs at most: the first, and three after rewinds."""
FAILED_BASES_MEMORY = 256
"""Snapshot ids a receiver remembers failed bases for (the oldest forgotten first)."""


@dataclass
class ExchangeRule:
    """When the sender runs its delta exchange (again); see the module.  The driver reports
    each exchange's end (`ended`) and each rewind (`verdict`, then `rewound`), and runs the
    exchange when `due` and nothing is in flight."""

    limit: int = MAX_EXCHANGES
    ran: int = 0
    accepted: bool = False  # the last exchange ended in a recipe the receiver accepted
    due: bool = False  # an exchange is to run before any other request

    def ended(self, accepted: bool) -> None:
        """An exchange ended; `accepted`: in a recipe the receiver took (something reused)."""
        self.ran += 1
        self.accepted, self.due = accepted, False

    @property
    def again(self) -> bool:
        """Whether a rewind now would run the exchange again."""
        return self.accepted and self.ran < self.limit

    def verdict(self, verdict: Verdict) -> Verdict:
        """The verdict to apply: a rewind that runs the exchange again goes back to 0."""
        if verdict.failure is Failure.REWIND and self.again:
            return replace(verdict, expect_offset=0)
        return verdict

    def rewound(self, applied: bool) -> None:
        """A verdict was applied; `applied`: it rewound the window (not a stale answer's)."""
        if applied and self.again:
            self.due = True


def start_over(state: StreamState, req: InstallSnapshotRequest) -> SnapshotMismatch:
    """The answer that makes `req`'s sender start over at offset 0: a request that needs a
    recipe or an offer the stream does not have (a receiver restarted since)."""
    snapshot_id = state.meta.snapshot_id
    return SnapshotMismatch(
        expect=SnapshotSegmentId(snapshot_id, 0), got=SnapshotSegmentId(snapshot_id, req.offset)
    )


def begin_exchange(state: StreamState) -> None:
    """A delta exchange begins on `state`'s stream (an offer is asked): what an earlier recipe
    copied is not held any more (its bytes were never written), and it is counted."""
    if state.delta is not None:
        for at, length, _ in state.delta.still_copied(state.ledger):
            state.ledger.discard(at, at + length)
    state.delta = None
    state.exchanges += 1


def check_sent(state: StreamState, req: InstallSnapshotRequest) -> None:
    """Whether `req`'s extents may be written into `state`'s stream (see the module): returns
    when each lies inside a range its accepted recipe sends; `SnapshotMismatch` expecting 0
    (nothing written, the stream kept) without a recipe, or for a possible straggler;
    `InvalidRequest` (the caller drops the stream) for anything else."""
    assert req.extents is not None
    delta = state.delta
    if delta is None or delta.sent is None:
        raise start_over(state, req)
    try:
        delta.sent.check(req.extents)
    except InvalidRequest:
        if state.from_store or state.exchanges > 1:
            raise start_over(state, req) from None
        raise


def offer_lost(exc: BaseException) -> bool:
    """Whether the failure `exc` of a recipe request says the receiver holds no offer for it
    (`start_over`: it restarted after offering); the sender asks for an offer again."""
    source = exc.source if isinstance(exc, RemoteError) else exc
    return isinstance(source, SnapshotMismatch) and source.expect.offset == 0


class FailedBases:
    """The bases whose assembly failed, by snapshot id (see the module); forgotten when the
    snapshot is installed (its next version's base is another file), the oldest first."""

    def __init__(self, keep: int = FAILED_BASES_MEMORY) -> None:
        self.keep = keep
        self._failed: OrderedDict[str, set[str]] = OrderedDict()

    def note(self, state: StreamState, error: BaseException, dropped: bool) -> None:
        """The final chunk of `state`'s stream failed with `error` (as answered; `dropped`:
        the stream with it): a delta's base is noted when its assembly failed, which drops
        the stream and answers a rewind (a gap keeps the stream: the base is not to blame)."""
        delta = state.delta
        if delta is None or delta.recipe is None or not dropped:
            return
        if not isinstance(error, SnapshotMismatch):
            return
        snapshot_id = state.meta.snapshot_id
        self._failed.setdefault(snapshot_id, set()).add(delta.base_id)
        self._failed.move_to_end(snapshot_id)
        while len(self._failed) > self.keep:
            self._failed.popitem(last=False)

    def of(self, snapshot_id: str) -> frozenset[str]:
        """The bases not to offer for `snapshot_id`."""
        return frozenset(self._failed.get(snapshot_id, ()))

    def finished(self, snapshot_id: str) -> None:
        """`snapshot_id` was installed: forget its failed bases."""
        self._failed.pop(snapshot_id, None)
