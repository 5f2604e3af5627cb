"""The sender's bookkeeping: which chunk goes next, what is in flight, retries and rewinds.

`SendWindow` does no I/O and never reads a clock: the driver passes ``now`` in and performs
what the window plans.  Its rules:

- Chunks are cut from the lowest byte still to be sent, at most `chunk_size` long.
- At most `max_in_flight` chunks are out at once; with `short_in_flight` raised (a delta, whose
  sent ranges are often single pages) up to that many short chunks, as long as their bytes stay
  within `max_in_flight` full chunks.  With `pack` set (a receiver that takes them, after a
  delta's recipe) a chunk may gather several short ranges (`ChunkPlan.extents`, up to
  `chunk_size` bytes: ``fstransport.protocol.delta_pack``); never the first or the final one.
- The chunk at offset 0 goes alone: a receiver starts a new stream only at offset 0 and answers
  any other offset of an unknown stream with a mismatch, so the window opens once it is answered.
- The final chunk (the one ending at `size`, marked ``done``) is sent only when nothing else
  is in flight or left to send, so it is always the last request of a transfer.
- (Through a network that stages chunks and orders its references itself, a relay, those two
  rules move to the network: `fstransport.protocol.send_order`.)
- A retryable failure puts the chunk's bytes back, counts an attempt for its offset, and pauses
  new sends for the policy's backoff; too many attempts, or too long without progress, ends the
  transfer with `RetryExhausted`.
- A mismatch rewinds: every byte from the receiver's expected offset is sent again.  Answers
  to chunks sent before the rewind are stale; their failures put bytes back, nothing else.
- `PayloadTooLarge` halves the chunk size, down to a floor, before it counts as a failure.
- What a failed request means is `SendWindow.verdict`'s answer, a `Verdict` value: rewind,
  shrink, retry, or give up with the error.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass

from fstransport.checksum import combine
from fstransport.errors import (
    BodyStalled,
    ChecksumMismatch,
    InvalidRequest,
    NetworkError,
    PayloadTooLarge,
    RemoteError,
    RetryExhausted,
    RPCError,
    SnapshotMismatch,
    StorageError,
    TooManyTransfers,
    UntrustedPeer,
)
from fstransport.options import TransferOptions
from fstransport.protocol.delta_pack import take_extents
from fstransport.protocol.ranges import ChunkLedger, RangeSet

__all__ = ["ChunkPlan", "Failure", "RateLimiter", "SendStats", "SendWindow", "Verdict"]


class Failure(enum.Enum):
    """What a failed request makes the sender do."""

    REWIND = "rewind"  # send everything from the receiver's expected offset again
    SHRINK = "shrink"  # the chunk was too large: cut smaller ones
    RETRY = "retry"  # send the chunk again after a backoff (bounded)
    FATAL = "fatal"  # give up: raise the error


@dataclass(frozen=True)
class Verdict:
    """`SendWindow.verdict`'s answer: what to do (`failure`), the error to count or raise, and
    for `Failure.REWIND` the offset the receiver expects."""

    failure: Failure
    error: BaseException
    expect_offset: int = 0


class RateLimiter:
    """Spaces chunks so that, on average, at most `rate` bytes per second are sent.

    The first chunk goes at once; each chunk then delays the next by ``len / rate`` seconds.
    """

    def __init__(self, rate: int | None, now: float = 0.0) -> None:
        self.rate = rate
        self._free_at = now

    def ready_at(self, now: float) -> float:
        """The earliest time the next chunk may go (``now`` if it may go now)."""
        return now if self.rate is None else max(now, self._free_at)

    def spend(self, now: float, nbytes: int) -> None:
        """A chunk of `nbytes` goes now."""
        if self.rate is not None:
            self._free_at = max(now, self._free_at) + nbytes / self.rate


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk the driver should read and send."""

    ticket: int
    offset: int
    length: int
    done: bool
    generation: int
    extents: tuple[tuple[int, int], ...] = ()  # several ranges (`delta_pack`): not one

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class SendStats:
    """What a transfer did so far."""

    chunks_sent: int = 0
    bytes_sent: int = 0
    retries: int = 0
    rewinds: int = 0
    shrinks: int = 0
    bytes_skipped: int = 0
    bytes_reused: int = 0  # copied by the receiver from a delta base (within bytes_skipped)
    delta_bytes: int = 0  # the delta map and recipe that crossed the network


def failure_verdict(exc: BaseException, snapshot_id: str) -> Verdict:
    """What the failure `exc` of a request for `snapshot_id` means (a bare error or the
    receiver's inside `RemoteError`); `Failure.FATAL` carries the error unchanged."""
    source = exc.source if isinstance(exc, RemoteError) else exc
    if isinstance(source, SnapshotMismatch):
        if source.expect.id != snapshot_id:
            other = NetworkError(f"mismatch answer names another snapshot: {source}")
            return Verdict(Failure.RETRY, other)
        return Verdict(Failure.REWIND, exc, source.expect.offset)
    if isinstance(source, PayloadTooLarge):
        return Verdict(Failure.SHRINK, source)
    if isinstance(source, ChecksumMismatch):
        return Verdict(Failure.FATAL if source.whole else Failure.RETRY, exc)
    if isinstance(source, (TooManyTransfers, BodyStalled)):
        return Verdict(Failure.RETRY, exc)  # a busy receiver; a body that came too slowly
    if isinstance(source, InvalidRequest):
        return Verdict(Failure.FATAL, exc)  # the same request would be refused again
    if isinstance(source, StorageError) and not source.retryable:
        return Verdict(Failure.FATAL, exc)  # the receiver's storage is missing or forbidden
    if isinstance(exc, UntrustedPeer):
        return Verdict(Failure.FATAL, exc)  # its certificate will not become trusted
    if isinstance(exc, RPCError):
        return Verdict(Failure.RETRY, exc)  # timeouts, unreachable, remote storage trouble
    return Verdict(Failure.FATAL, exc)


class SendWindow:
    """Plans the chunks of one snapshot of `size` bytes; see the module docstring for the rules."""

    def __init__(
        self,
        size: int,
        options: TransferOptions,
        *,
        now: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        self.size = size
        self.options = options
        self.chunk_size = options.chunk_size
        self.min_chunk_size = min(options.min_chunk_size, options.chunk_size)
        self.stats = SendStats()
        self.acked = ChunkLedger()
        self._pending = RangeSet([(0, size)])
        self._empty_pending = size == 0  # a 0-byte snapshot still sends one (empty) done chunk
        self._in_flight: dict[int, ChunkPlan] = {}
        self._next_ticket = 0
        self._generation = 0
        self._failures: dict[int, int] = {}
        self._rewinds: dict[int, int] = {}
        self._resume_at = now
        self._last_progress = now
        self._finished = False
        self._rng = rng or random.Random()
        self.short_in_flight = options.max_in_flight  # (see the module docstring)
        self.pack = False  # short ranges travel together (`delta_pack`) until a rewind to 0

    # -- what to do next ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the final chunk was acknowledged."""
        return self._finished

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def next_chunk(self, now: float) -> ChunkPlan | None:
        """The next chunk to send now, or None (window full, backing off, waiting, finished)."""
        if self._finished or now < self._resume_at:
            return None
        if len(self._in_flight) >= self.options.max_in_flight and not _room_for_short(self):
            return None
        first = self._pending.first()
        if first is None:
            if not self._empty_pending or self._in_flight:
                return None
            start, length = 0, 0
        else:
            start = first[0]
            length = min(self.chunk_size, first[1] - start)
        done = start + length == self.size
        if self._held_back(start, done):
            return None  # the final chunk goes last; the one at offset 0 goes alone
        extents = take_extents(self._pending, self.chunk_size, self.size) if self.pack else ()
        extents = extents if len(extents) > 1 else ()
        for at, n in extents or ((start, length),):
            self._pending.remove(at, at + n)
        if extents:
            start, length = extents[0][0], sum(n for _, n in extents)
        self._empty_pending = False
        plan = ChunkPlan(self._next_ticket, start, length, done, self._generation, extents)
        self._next_ticket += 1
        self._in_flight[plan.ticket] = plan
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += length
        return plan

    def wake_at(self, now: float) -> float | None:
        """When `next_chunk` may return a chunk again without any answer arriving, if ever."""
        if self._finished or now >= self._resume_at:
            return None
        if not (self._pending or self._empty_pending):
            return None
        return self._resume_at

    # -- answers -----------------------------------------------------------------------------

    def on_ack(self, plan: ChunkPlan, crc: int, now: float) -> None:
        """The receiver stored `plan`'s bytes, whose CRC32C is `crc`."""
        self._take(plan)
        if not plan.extents:  # (a delta's: its checksum is known, `whole_crc` is not needed)
            self.acked.add(plan.offset, plan.length, crc)
        self._last_progress = now
        self._failures.pop(plan.offset, None)
        if plan.done and plan.generation == self._generation:
            self._finished = True

    def on_failure(self, plan: ChunkPlan, error: BaseException, now: float) -> None:
        """`plan` failed in a way worth retrying; raises `RetryExhausted` when out of budget."""
        self._take(plan)
        self._put_back(plan)
        if plan.generation != self._generation:
            return
        self.stats.retries += 1
        self._count_failure(plan.offset, self._failures, error, now)

    def on_too_large(self, plan: ChunkPlan, error: BaseException, now: float) -> None:
        """The peer refused `plan` for its size: shrink the chunk size and send the bytes again."""
        self._take(plan)
        self._put_back(plan)
        if plan.generation != self._generation:
            return
        limit = getattr(error, "limit", None)
        if isinstance(limit, int) and limit > 0:
            target = min(plan.length // 2 or 1, limit)  # the peer said what it takes
        else:
            target = max(self.min_chunk_size, plan.length // 2)
        if target < plan.length:
            self.chunk_size = min(self.chunk_size, target)
            self.stats.shrinks += 1
            return
        self.stats.retries += 1  # already at the floor: an ordinary failure
        self._count_failure(plan.offset, self._failures, error, now)

    def on_mismatch(
        self, plan: ChunkPlan, expect_offset: int, error: BaseException, now: float
    ) -> None:
        """The receiver wants the data from `expect_offset` on: send everything from there again.

        An offset outside the snapshot is a broken answer and counts as a failure of `plan`.
        """
        self._take(plan)
        if plan.generation != self._generation:
            self._put_back(plan)
            return
        valid = 0 <= expect_offset < self.size or expect_offset == self.size == 0
        if not valid:
            self._put_back(plan)
            self.stats.retries += 1
            self._count_failure(plan.offset, self._failures, error, now)
            return
        self._generation += 1
        self.stats.rewinds += 1
        if expect_offset == 0:  # the receiver starts over (a delta's base changed, say)
            self.stats.bytes_reused, self.pack = 0, False
        self._pending.add(expect_offset, self.size)
        self._empty_pending = self.size == 0
        if plan.offset < expect_offset:
            self._put_back(plan)
        # The first rewind to an offset is immediate (as in openraft); repeats back off and are
        # bounded like failures, so a receiver that keeps rewinding cannot hold us forever.
        if self._rewinds.get(expect_offset, 0) >= 1:
            self._count_failure(expect_offset, self._rewinds, error, now)
        else:
            self._rewinds[expect_offset] = 1

    verdict = staticmethod(failure_verdict)  # (the rules in one place: `failure_verdict`)

    def on_verdict(self, plan: ChunkPlan, verdict: Verdict, now: float) -> None:
        """Apply a non-fatal `verdict` on `plan` (`on_mismatch`, `on_too_large`, `on_failure`)."""
        if verdict.failure is Failure.REWIND:
            self.on_mismatch(plan, verdict.expect_offset, verdict.error, now)
        elif verdict.failure is Failure.SHRINK:
            self.on_too_large(plan, verdict.error, now)
        elif verdict.failure is Failure.RETRY:
            self.on_failure(plan, verdict.error, now)
        else:
            raise ValueError(f"a fatal verdict is raised, not applied: {verdict.error!r}")

    def on_held(self, ranges: Iterable[tuple[int, int]]) -> int:
        """The receiver already holds `ranges` (from an earlier attempt): do not send them.

        The last byte is always sent, in the final chunk that completes the transfer.  Ranges
        outside the snapshot are ignored.  Returns the number of bytes skipped.
        """
        limit = self.size - 1
        before = self._pending.total()  # (once: a delta's recipe holds thousands of ranges)
        for start, end in ranges:
            if not (isinstance(start, int) and isinstance(end, int)):
                continue
            start, end = max(0, start), min(end, limit)
            if start < end:
                self._pending.remove(start, end)
        skipped = before - self._pending.total()
        self.stats.bytes_skipped += skipped
        return skipped

    def on_abandoned(self, plan: ChunkPlan) -> None:
        """`plan`'s answer will never be looked at (the transfer is ending)."""
        self._in_flight.pop(plan.ticket, None)

    # -- the whole snapshot ------------------------------------------------------------------

    def whole_crc(self, final: ChunkPlan, final_crc: int) -> int | None:
        """The whole snapshot's CRC32C if `final` were acknowledged with `final_crc`.

        None if the acknowledged chunks do not tile the bytes before `final` exactly (possible
        only after a rewind into the middle of a chunk); the driver then reads the data again.
        """
        before = self.acked.whole_crc(final.offset)
        if before is None:
            return None
        return combine(before, final_crc, final.length)

    # -- internals ---------------------------------------------------------------------------

    def _held_back(self, start: int, done: bool) -> bool:
        """Whether the chunk at `start` (the final one if `done`) waits for those in flight."""
        flying = self._in_flight.values()
        return bool(flying) and (done or start == 0 or any(p.offset == 0 for p in flying))

    def _take(self, plan: ChunkPlan) -> None:
        if self._in_flight.pop(plan.ticket, None) is None:
            raise ValueError(f"chunk {plan} is not in flight")

    def _put_back(self, plan: ChunkPlan) -> None:
        for at, n in plan.extents or ((plan.offset, plan.length),):
            self._pending.add(at, at + n)  # (RangeSet.add ignores an empty range)
        if not plan.length and plan.done:
            self._empty_pending = True

    def _count_failure(
        self, offset: int, counts: dict[int, int], error: BaseException, now: float
    ) -> None:
        policy = self.options.retry
        failures = counts.get(offset, 0) + 1
        counts[offset] = failures
        stalled = now - self._last_progress
        if failures >= policy.max_attempts or stalled >= policy.give_up_after:
            raise RetryExhausted(failures, error) from error
        self._resume_at = max(self._resume_at, now + policy.backoff(failures, self._rng))


def _room_for_short(window: SendWindow) -> bool:
    """Whether the next chunk may go beyond `max_in_flight` (see `short_in_flight`)."""
    flying = window._in_flight.values()
    first = window._pending.first()
    if len(flying) >= window.short_in_flight or first is None:
        return False
    length = min(window.chunk_size, first[1] - first[0])
    budget = window.options.max_in_flight * window.chunk_size
    return sum(p.length for p in flying) + length <= budget
