"""The sending end: reads chunks, sends them through a `Network`, follows the `SendWindow`.

`Chunked.send_snapshot` is openraft's ``Chunked::send_snapshot`` with its weaknesses fixed:
several chunks in flight, no fixed sleep, bounded retries, shrinking on `PayloadTooLarge`,
and a CRC32C on every chunk.  `send_source` is the same driver for any `ChunkSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fstransport.checksum import chunk_crc, format_checksum, parse_checksum
from fstransport.delta.exchanges import SenderExchanges
from fstransport.delta.send import read_extents
from fstransport.errors import (
    ChecksumMismatch,
    InvalidRequest,
    NetworkError,
    ReplicationClosed,
    StorageError,
    Timeout,
)
from fstransport.messages import (
    Buffer,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
    SnapshotResponse,
    StagedChunk,
    Vote,
)
from fstransport.network.base import Network, trusts_checksums, window_options
from fstransport.network.relay_gate import orders_references
from fstransport.options import TransferOptions
from fstransport.protocol.send_order import RelaySendWindow
from fstransport.protocol.sender import ChunkPlan, Failure, RateLimiter, SendStats, SendWindow
from fstransport.storage.source import (
    ChunkSource,
    read_checked,
    source_checksum,
    source_for_file,
)

__all__ = ["Chunked", "SendResult", "send_source"]

log = logging.getLogger("fstransport.sender")

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just acknowledged.  When it also has a ``skip(nbytes)``
method (as `fstransport.progress.ProgressBar` has), that is called with the bytes the receiver
already held and need not be sent (a resumed transfer, a delta's reused ranges)."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class SendResult:
    """What a finished (or vote-stopped) send did."""

    response: SnapshotResponse
    completed: bool
    checksum: str | None
    stats: SendStats


async def send_source(
    net: Network,
    vote: Vote,
    meta: SnapshotMeta,
    source: ChunkSource,
    cancel: Awaitable[Any] | None = None,
    option: TransferOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    rng: random.Random | None = None,
) -> SendResult:
    """Send the bytes of `source` as snapshot `meta` to `net`; see `Chunked.send_snapshot`."""
    options = option or TransferOptions()
    sender = _Sender(net, vote, meta, source, options, progress, rng)
    return await sender.run(cancel)


class _Sender:
    def __init__(
        self,
        net: Network,
        vote: Vote,
        meta: SnapshotMeta,
        source: ChunkSource,
        options: TransferOptions,
        progress: ProgressCallback | None,
        rng: random.Random | None,
    ) -> None:
        if meta.size is not None and meta.size != source.size:
            raise InvalidRequest(
                f"meta says {meta.size} bytes, but the data holds {source.size}", field="size"
            )
        if meta.checksum is not None:
            parse_checksum(meta.checksum)  # ConfigurationError for a malformed one
        self.net = net
        self.trusted = trusts_checksums(net)  # chunks may go without a CRC: see there
        # A network that holds chunks staged already (`RelayNetwork`) names them: not read again.
        self.staged_chunk: Callable[..., StagedChunk | None] | None = getattr(
            net, "staged_chunk", None
        )
        self.vote = vote
        self.meta = replace(meta, size=source.size)
        self.source = source
        self.options = options
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        now = self.loop.time()
        rules = RelaySendWindow if orders_references(net) else SendWindow  # (see there)
        self.window = rules(source.size, window_options(net, options), now=now, rng=rng)
        self.limiter = RateLimiter(options.rate_limit, now)
        self.deadline_at = None if options.deadline is None else now + options.deadline
        self.checksum = meta.checksum
        self.exchanges = SenderExchanges(self)  # (delta exchanges: `delta.exchanges`)

    async def run(self, cancel: Awaitable[Any] | None) -> SendResult:
        window = self.window
        tasks: dict[asyncio.Future[Any], ChunkPlan] = {}
        cancel_task = asyncio.ensure_future(cancel) if cancel is not None else None
        try:
            if cancel_task is not None:
                await asyncio.sleep(0)  # a cancel that is set already stops us before any send
                if cancel_task.done():
                    raise self._closed(cancel_task)
            await self.exchanges.run(cancel_task)
            while True:
                now = self.loop.time()
                if self.deadline_at is not None and now >= self.deadline_at:
                    raise Timeout(f"the transfer did not finish within {self.options.deadline:g}s")
                if self.exchanges.ready(now, len(tasks)):  # the receiver started over mid-delta
                    await self.exchanges.run(cancel_task)
                    continue
                while (
                    self.limiter.ready_at(now) <= now
                    and not self.exchanges.rule.due
                    and (plan := window.next_chunk(now))
                ):
                    self.limiter.spend(now, plan.length)
                    tasks[asyncio.ensure_future(self._send_one(plan))] = plan
                waiters: set[asyncio.Future[Any]] = set(tasks)
                if cancel_task is not None:
                    waiters.add(cancel_task)
                wakes = [window.wake_at(now), self.deadline_at]
                if self.limiter.ready_at(now) > now:
                    wakes.append(self.limiter.ready_at(now))
                wake = min((w for w in wakes if w is not None), default=None)
                if not tasks and wake is None:
                    raise RuntimeError("send window stalled: nothing in flight and nothing to send")
                timeout = None if wake is None else max(0.0, wake - now)
                if not waiters:  # only backing off, nothing to watch
                    await asyncio.sleep(timeout or 0.0)
                    continue
                done, _ = await asyncio.wait(
                    waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if cancel_task is not None and cancel_task in done:
                    raise self._closed(cancel_task)
                for task in done:
                    result = self._settle(tasks.pop(task), task)
                    if result is not None:
                        return result
        finally:
            for task, plan in tasks.items():
                task.cancel()
                window.on_abandoned(plan)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if cancel_task is not None and not cancel_task.done():
                cancel_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await cancel_task

    @staticmethod
    def _closed(cancel_task: asyncio.Future[Any]) -> ReplicationClosed:
        if cancel_task.cancelled():
            return ReplicationClosed("cancel awaitable was cancelled")
        exc = cancel_task.exception()
        if exc is not None:
            return ReplicationClosed(f"cancelled: {exc}")
        value = cancel_task.result()
        return value if isinstance(value, ReplicationClosed) else ReplicationClosed()

    def _settle(self, plan: ChunkPlan, task: asyncio.Future[Any]) -> SendResult | None:
        """Feed one finished RPC to the window; a result means the transfer is over."""
        window = self.window
        now = self.loop.time()
        exc = task.exception()
        if exc is None:
            crc, response = task.result()
            if response.vote > self.vote:
                log.info(
                    "receiver has a higher vote %s than ours %s; stopping", response.vote, self.vote
                )
                return SendResult(SnapshotResponse(response.vote), False, None, window.stats)
            window.on_ack(plan, crc, now)
            if response.held:
                skipped = window.on_held(response.held)
                if skipped:
                    log.info("receiver already holds %d bytes; not sending them", skipped)
                    skip = getattr(self.progress, "skip", None)
                    if callable(skip):
                        skip(skipped)
            if self.progress is not None and plan.length:
                self.progress(plan.length)
            if window.finished:
                return SendResult(
                    SnapshotResponse(response.vote), True, self.checksum, window.stats
                )
            return None
        verdict = window.verdict(exc, self.meta.snapshot_id)
        if verdict.failure is Failure.FATAL:
            raise verdict.error
        verdict = self.exchanges.verdict(verdict)  # (a delta's exchange may run again)
        if verdict.failure is Failure.REWIND:
            log.warning(
                "snapshot mismatch at offset %d; continuing from %d",
                plan.offset,
                verdict.expect_offset,
            )
        elif verdict.failure is Failure.SHRINK:
            log.warning("chunk of %d bytes too large; shrinking", plan.length)
        else:
            log.warning("chunk at offset %d failed (%s); retrying", plan.offset, verdict.error)
        rewinds = window.stats.rewinds
        window.on_verdict(plan, verdict, now)
        self.exchanges.rewound(window.stats.rewinds > rewinds)
        return None

    async def _send_one(self, plan: ChunkPlan) -> tuple[int, InstallSnapshotResponse]:
        staged = None
        if self.staged_chunk is not None:
            staged = self.staged_chunk(self.vote, self.meta, plan.offset, plan.length)
        crc: int | None
        if staged is not None:  # its bytes wait in a bucket: the network sends a reference
            data: Buffer = b""
            crc = staged.crc32c
        elif plan.extents:  # several ranges (`fstransport.protocol.delta_pack`)
            data, crc = await read_extents(self.source, plan.extents, checked=not self.trusted)
        elif self.trusted and not plan.done:  # the receiver computes the CRC as it writes
            data, crc = await self.source.read(plan.offset, plan.length), None
        else:
            data, crc = await read_checked(self.source, plan.offset, plan.length)
        if staged is None and len(data) != plan.length:
            why = f"expected {plan.length} bytes at offset {plan.offset}, got {len(data)}"
            raise StorageError(self.source.description, "read", EOFError(why))
        if crc is not None and isinstance(self.window, RelaySendWindow):
            self.window.on_read(plan, crc)  # (no await until the relay has it: see there)
        meta = self.meta
        actual = None
        if plan.done:
            assert crc is not None
            actual = await self._whole_checksum(plan, crc)
            # Announce the caller's checksum if there is one: when the data does not match it,
            # the receiver refuses the snapshot and discards what it holds of it.
            meta = replace(meta, checksum=self.meta.checksum or actual)
            self.checksum = meta.checksum
        req = InstallSnapshotRequest(self.vote, meta, plan.offset, data, plan.done, crc, staged)
        if plan.extents:
            req = replace(req, extents=plan.extents)
        ttl = self.options.install_timeout if plan.done else self.options.hard_ttl
        if self.deadline_at is not None:
            ttl = max(0.0, min(ttl, self.deadline_at - self.loop.time()))
        response = await self._answer_within(
            lambda: self.net.install_snapshot(req, self.options), req, ttl
        )
        if not isinstance(response, InstallSnapshotResponse) or not isinstance(response.vote, Vote):
            raise NetworkError(f"malformed answer from the network: {response!r}")
        if crc is None:  # sent without one (`trusts_checksums`): the receiver's, if it says
            told = response.crc32c
            if isinstance(told, int) and not isinstance(told, bool) and 0 <= told < 2**32:
                crc = told
            else:
                crc = chunk_crc(data)
        if plan.done and actual is not None and meta.checksum != actual:
            raise ChecksumMismatch(  # a receiver that does not verify accepted it anyway
                f"snapshot {self.meta.snapshot_id!r} as read from {self.source.description}",
                str(meta.checksum),
                actual,
                whole=True,
            )
        return crc, response

    async def _answer_within(
        self, rpc: Callable[[], Awaitable[_T]], req: InstallSnapshotRequest, ttl: float
    ) -> _T:
        """What `rpc` (sending `req`) returns, or `Timeout` after `ttl` seconds.

        ``asyncio.wait_for`` would run the RPC in a task of its own; a timer that cancels this
        task does the same without a second task per chunk.
        """
        expired = f"no answer for chunk at offset {req.offset} within {ttl:g}s"
        if ttl <= 0:
            raise Timeout(expired)
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        timer = self.loop.call_later(ttl, expire)
        try:
            return await rpc()
        except BaseException:
            if not fired:
                raise
            raise Timeout(expired) from None  # whatever the RPC did once we cancelled it
        finally:
            timer.cancel()
            if fired:
                _uncancel(task)  # the cancellation was ours, and is handled here

    async def _whole_checksum(self, final: ChunkPlan, final_crc: int) -> str | None:
        """The checksum of the data as read, combined from the chunk CRCs.

        None when some bytes were never read (the receiver held them already) and the caller
        announced a checksum: the receiver verifies that one against everything it holds.
        """
        crc = self.window.whole_crc(final, final_crc)
        if crc is None and self.meta.checksum is not None:
            return None
        if crc is None:  # chunks were re-cut mid-way by a rewind: read the data once more
            return await source_checksum(self.source, self.options.chunk_size)
        return format_checksum(crc)


def _uncancel(task: asyncio.Task[Any]) -> None:
    """Withdraw one cancellation request of `task` (Python 3.11+ counts them)."""
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


class Chunked:
    """openraft's chunked snapshot transport (``Chunked``), for `Network` adapters."""

    @staticmethod
    async def send_snapshot(
        net: Network,
        vote: Vote,
        snapshot: Snapshot,
        cancel: Awaitable[Any] | None = None,
        option: TransferOptions | None = None,
    ) -> SnapshotResponse:
        """Send `snapshot` to the receiver behind `net` in chunks; return the receiver's vote.

        Chunks of ``option.chunk_size`` are read by range from ``snapshot.data``, each with its
        CRC32C, up to ``option.max_in_flight`` at once; the ``done`` chunk goes last, after every
        other chunk is acknowledged.  On `SnapshotMismatch` (bare or in `RemoteError`) the
        transfer continues from the offset the receiver expects.  A response whose vote is
        higher than `vote` stops the transfer and is returned as is.

        `cancel` is an awaitable (``event.wait()``, a future) whose completion cancels the
        transfer promptly, even while an RPC hangs, with `ReplicationClosed`.

        Raises `RetryExhausted` when a chunk keeps failing, `RemoteError` when the receiver
        refuses a request outright (`InvalidRequest`), `ChecksumMismatch` when the data does not
        match ``snapshot.meta.checksum``, `StorageError` when the data cannot be read.
        """
        source = await source_for_file(snapshot.data)
        try:
            result = await send_source(net, vote, snapshot.meta, source, cancel, option)
        finally:
            await source.close()
        return result.response
