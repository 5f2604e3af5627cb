"""`FaultyNetwork`: deterministic, seeded fault injection around any `Network`.

It is for fstransport's own tests and benchmarks, and for users who want to see their own
integration (their `Network` adapter, their `Receiver` and store, their retry options) survive
a bad network before a real one shows them.  Wrap the network, run a transfer, read the
counters in ``stats``::

    net = FaultyNetwork(LoopbackNetwork(receiver), seed=7, drop=0.05, corrupt=0.01, latency=0.002)
    await Chunked.send_snapshot(net, vote, snapshot, None, options)
    print(net.stats)  # FaultStats(requests=..., delivered=..., dropped_requests=..., ...)

Do not wrap a ``LoopbackNetwork(..., trust_checksums=True)`` when corrupting: a receiver that
trusts the sender's CRC cannot notice a flipped bit.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, replace

from fstransport.errors import ConfigurationError, PayloadTooLarge, Timeout
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, contiguous
from fstransport.network.base import Network, carries_delta
from fstransport.options import TransferOptions
from fstransport.tasks import retrieve_exception

__all__ = ["FaultStats", "FaultyNetwork"]

REORDER_MIN_HOLD = 0.005
"""Seconds: the shortest extra delay of a reordered request, so that it can be overtaken even
on a network without latency.  The longest is this plus ``max(this, 3 * (latency + jitter))``."""

_DRAWS_PER_REQUEST = 11


@dataclass
class FaultStats:
    """What a `FaultyNetwork` did, counted since it was made.

    - `requests`: calls of ``install_snapshot``.
    - `delivered`: requests handed to the inner network (a duplicated request counts twice);
      `bytes_delivered` is their data, in bytes.
    - `dropped_requests`: requests lost on the way (never delivered); `dropped_answers`: requests
      delivered whose answer was lost.  Both end in `Timeout`.
    - `timeouts`: requests delivered whose answer came too late (`Timeout`).
    - `duplicated`: requests delivered a second time; `duplicate_errors`: how many of those
      second deliveries failed (their errors are not reported to the caller).
    - `reordered`: requests held back so that later ones could overtake them.
    - `corrupted`: requests delivered with one bit of their data flipped.
    - `too_large`: requests refused with `PayloadTooLarge` (never delivered).
    - `errors`: errors of the inner network passed on to the caller.
    """

    requests: int = 0
    delivered: int = 0
    dropped_requests: int = 0
    dropped_answers: int = 0
    timeouts: int = 0
    duplicated: int = 0
    duplicate_errors: int = 0
    reordered: int = 0
    corrupted: int = 0
    too_large: int = 0
    errors: int = 0
    bytes_delivered: int = 0


@dataclass(frozen=True)
class _Plan:
    """Every fault of one request, drawn when it arrives."""

    drop_request: bool
    drop_answer: bool
    timeout: bool
    duplicate: bool
    duplicate_concurrently: bool
    hold: float
    corrupt_bit: int | None
    out: float
    back: float


class FaultyNetwork:
    """A `Network` that delivers through `inner` and injects seeded faults on the way.

    Each request goes through these steps; each fault has its own probability per request:

    1. `payload_limit` (bytes, None = no limit): a request whose data is longer is refused with
       ``PayloadTooLarge(limit=payload_limit)`` after one round trip of latency, and is not
       delivered (as a proxy refusing the body by its announced length; it takes no bandwidth).
    2. `reorder`: the request is held back by an extra ``REORDER_MIN_HOLD`` plus up to
       ``max(REORDER_MIN_HOLD, 3 * (latency + jitter))`` seconds (uniform), so that requests sent
       after it can overtake it.
    3. `bandwidth` (bytes per second, None = unlimited): one link shared by all requests.  A
       request's data occupies it for ``len(data) / bandwidth`` seconds, one request after the
       other, so any number of requests in flight together cannot exceed the bandwidth.  Answers
       are tiny and take no link time.  A request cancelled before or while it is sent gives
       the link back if nobody queued behind it.
    4. `latency` (seconds, one way) plus a jitter uniform in ``[0, jitter]``: waited before the
       request is delivered, and again (with a jitter of its own) before the answer returns.
    5. `drop`: the request is lost, either on the way there (not delivered) or on the way back
       (delivered, the answer lost): 50/50.  Either way the caller gets `Timeout` once the
       answer would have come back — right after the simulated latency, not after the
       sender's ``hard_ttl``, so that tests run fast; the sender retries it as it would any
       timeout.
    6. `corrupt`: a copy of the request is delivered whose data has one random bit flipped,
       with the original ``crc32c``, so a verifying receiver answers `ChecksumMismatch` (which
       an inner network such as `LoopbackNetwork` hands back wrapped in `RemoteError`).  The
       caller's buffer is never touched.  Empty chunks are not corrupted.
    7. `duplicate`: the request is delivered twice, either both at once or the second right
       after the first answered (50/50).  The caller gets the first delivery's outcome; the
       second's answer is discarded and its errors are counted, not raised.
    8. `timeout`: the request is delivered, but its answer comes too late: `Timeout`.

    Errors of the inner network pass through unchanged (and travel back with the latency),
    unless the answer was dropped or came too late.  Cancellation is never delayed: it stops
    any simulated wait at once, and both deliveries of a duplicated request.

    Determinism: all random choices come from ``random.Random(seed)``, drawn when a request
    arrives (before any wait), in arrival order, and always the same number of draws per
    request.  The same seed and the same sequence of calls give the same faults; and changing
    one probability does not reshuffle the others (what is dropped with ``drop=0.1`` is still
    dropped with ``drop=0.1, corrupt=0.2``).  With several requests in flight the arrival
    order depends on timing; a serial sender (``max_in_flight=1``) makes it fixed.

    Counters are in `stats` (`FaultStats`).  The attributes may be changed between requests
    (``net.drop = 0`` heals the network); they are not validated again then.
    """

    @property
    def carries_delta(self) -> bool:
        """As its `inner` network: faults apply to delta requests like any other."""
        return carries_delta(self.inner)

    def __init__(
        self,
        inner: Network,
        seed: int = 0,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        timeout: float = 0.0,
        latency: float = 0.0,
        jitter: float = 0.0,
        bandwidth: float | None = None,
        payload_limit: int | None = None,
    ) -> None:
        if not isinstance(inner, Network):
            raise ConfigurationError(
                f"inner must be a Network (with install_snapshot), got {type(inner).__name__}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"seed must be an integer, got {seed!r}")
        self.inner = inner
        self.seed = seed
        self.drop = _probability("drop", drop)
        self.duplicate = _probability("duplicate", duplicate)
        self.reorder = _probability("reorder", reorder)
        self.corrupt = _probability("corrupt", corrupt)
        self.timeout = _probability("timeout", timeout)
        self.latency = _seconds("latency", latency)
        self.jitter = _seconds("jitter", jitter)
        if bandwidth is not None and (
            isinstance(bandwidth, bool)
            or not isinstance(bandwidth, (int, float))
            or not math.isfinite(bandwidth)
            or bandwidth <= 0
        ):
            raise ConfigurationError(
                f"bandwidth must be None or > 0 bytes per second, got {bandwidth!r}"
            )
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        if payload_limit is not None and (
            isinstance(payload_limit, bool)
            or not isinstance(payload_limit, int)
            or payload_limit < 1
        ):
            raise ConfigurationError(
                f"payload_limit must be None or an integer >= 1 byte, got {payload_limit!r}"
            )
        self.payload_limit = payload_limit
        self.stats = FaultStats()
        self._rng = random.Random(seed)
        self._link_free_at = -math.inf  # loop time at which the shared link is idle again

    def __repr__(self) -> str:
        settings = [f"seed={self.seed}"]
        for name in ("drop", "duplicate", "reorder", "corrupt", "timeout", "latency", "jitter"):
            value = getattr(self, name)
            if value:
                settings.append(f"{name}={value:g}")
        if self.bandwidth is not None:
            settings.append(f"bandwidth={self.bandwidth:g}")
        if self.payload_limit is not None:
            settings.append(f"payload_limit={self.payload_limit}")
        return f"FaultyNetwork({self.inner!r}, {', '.join(settings)})"

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        plan = self._plan(req)  # before the first await: arrival order decides the draws
        stats = self.stats
        stats.requests += 1
        size = len(req.data)
        if self.payload_limit is not None and size > self.payload_limit:
            stats.too_large += 1
            await _sleep(plan.out + plan.back)
            raise PayloadTooLarge(
                f"request of {size} bytes exceeds the payload limit of {self.payload_limit} "
                "(simulated)",
                limit=self.payload_limit,
            )
        if plan.hold:
            stats.reordered += 1
            await _sleep(plan.hold)
        await self._transmit(size)
        await _sleep(plan.out)
        if plan.drop_request:
            stats.dropped_requests += 1
            await _sleep(plan.back)
            raise Timeout(f"request at offset {req.offset} was lost (simulated)")
        if plan.corrupt_bit is not None:
            stats.corrupted += 1
            req = _flip_bit(req, plan.corrupt_bit)
        response: InstallSnapshotResponse | None = None
        error: Exception | None = None
        try:
            if plan.duplicate:
                response = await self._deliver_twice(req, option, plan.duplicate_concurrently)
            else:
                response = await self._deliver(req, option)
        except Exception as exc:  # the inner network's error; CancelledError propagates
            error = exc
        if plan.drop_answer:
            stats.dropped_answers += 1
            await _sleep(plan.back)
            raise Timeout(f"answer for the request at offset {req.offset} was lost (simulated)")
        if plan.timeout:
            stats.timeouts += 1
            await _sleep(plan.back)
            raise Timeout(
                f"answer for the request at offset {req.offset} came too late (simulated)"
            )
        await _sleep(plan.back)
        if error is not None:
            stats.errors += 1
            try:
                raise error
            finally:
                error = None  # no reference cycle through this frame
        assert response is not None
        return response

    def _plan(self, req: InstallSnapshotRequest) -> _Plan:
        draws = [self._rng.random() for _ in range(_DRAWS_PER_REQUEST)]
        u_drop, u_side, u_timeout, u_dup, u_mode, u_reorder, u_hold, u_corrupt, u_bit = draws[:9]
        u_out, u_back = draws[9:]
        dropped = u_drop < self.drop
        bits = len(req.data) * 8
        corrupt_bit = (
            min(int(u_bit * bits), bits - 1) if u_corrupt < self.corrupt and bits else None
        )
        hold = 0.0
        if u_reorder < self.reorder:
            spread = max(REORDER_MIN_HOLD, 3 * (self.latency + self.jitter))
            hold = REORDER_MIN_HOLD + u_hold * spread
        return _Plan(
            drop_request=dropped and u_side < 0.5,
            drop_answer=dropped and u_side >= 0.5,
            timeout=u_timeout < self.timeout,
            duplicate=u_dup < self.duplicate,
            duplicate_concurrently=u_mode < 0.5,
            hold=hold,
            corrupt_bit=corrupt_bit,
            out=self.latency + u_out * self.jitter,
            back=self.latency + u_back * self.jitter,
        )

    async def _transmit(self, size: int) -> None:
        """Occupy the shared link for ``size / bandwidth`` seconds, after whoever is before."""
        if self.bandwidth is None or size == 0:
            return
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._link_free_at)
        end = start + size / self.bandwidth
        self._link_free_at = end
        try:
            await asyncio.sleep(end - loop.time())
        except asyncio.CancelledError:
            if self._link_free_at == end:  # nobody queued behind us: give the rest back
                self._link_free_at = max(start, loop.time())
            raise

    async def _deliver(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.stats.delivered += 1
        self.stats.bytes_delivered += len(req.data)
        return await self.inner.install_snapshot(req, option)

    async def _deliver_twice(
        self, req: InstallSnapshotRequest, option: TransferOptions, concurrently: bool
    ) -> InstallSnapshotResponse:
        self.stats.duplicated += 1
        if not concurrently:  # again right after the first answer or error (not when cancelled)
            try:
                response = await self._deliver(req, option)
            except Exception:
                await self._deliver_duplicate(req, option)
                raise
            await self._deliver_duplicate(req, option)
            return response
        first = asyncio.ensure_future(self._deliver(req, option))
        second = asyncio.ensure_future(self._deliver_duplicate(req, option))
        try:
            await asyncio.wait((first, second))
        except BaseException:
            first.cancel()
            second.cancel()
            first.add_done_callback(retrieve_exception)
            raise
        return first.result()

    async def _deliver_duplicate(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> None:
        try:
            await self._deliver(req, option)
        except Exception:
            self.stats.duplicate_errors += 1


def _flip_bit(req: InstallSnapshotRequest, bit: int) -> InstallSnapshotRequest:
    """A copy of `req` whose data has `bit` flipped; ``crc32c`` stays the original's."""
    data = bytearray(contiguous(req.data))
    data[bit >> 3] ^= 1 << (bit & 7)
    return replace(req, data=bytes(data))


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _probability(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 <= value <= 1.0  # also refuses NaN
    ):
        raise ConfigurationError(f"{name} must be a probability within [0, 1], got {value!r}")
    return float(value)


def _seconds(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)
