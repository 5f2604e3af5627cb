"""Fan-out: one snapshot to several targets with one read of the source, optionally through a
relay (`RelayNetwork`: one upload to a staging bucket, each receiver fetching from it).

`ship` prepares the targets (in-process receivers, or the networks it was given) and the
source; `send_to_targets` runs one sender per target over a `SharedSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fstransport.errors import ConfigurationError, FstransportError, HigherVote, RemoteError
from fstransport.messages import SnapshotMeta, Vote
from fstransport.network.base import Network
from fstransport.network.relay import RelayNetwork
from fstransport.network.relay_gate import check_block_maps, check_stage_ahead
from fstransport.options import TransferOptions
from fstransport.receiver import Receiver
from fstransport.sender import ProgressCallback, SendResult, send_source
from fstransport.storage.base import ChunkSource
from fstransport.storage.shared_source import SharedSource
from fstransport.storage.source import source_checksum
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer_report import TransferReport
from fstransport.tree import TreeSource

__all__ = [
    "FanOut",
    "Target",
    "abort_targets",
    "close_target",
    "relay_settings",
    "reports",
    "send_to_targets",
]

log = logging.getLogger("fstransport.transfer")


@dataclass
class Target:
    """One target of a `ship`: where its bytes go and under which snapshot id."""

    url: str
    snapshot_id: str
    network: Network
    store: FsspecSnapshotStore | None = None
    """The in-process receiver's store (None: the receiver is behind `network`)."""
    receiver: Receiver | None = None


@dataclass
class FanOut:
    """What `send_to_targets` did: one result (or error) per target, and the totals."""

    results: list[SendResult | BaseException]
    read_by: list[int]
    """Bytes each target's sender read from the source itself (not from the shared chunks)."""
    finished: list[float]
    """When each target's send ended (`time.perf_counter`)."""
    bytes_read: int
    bytes_uploaded: int
    uploaded_by: list[int]
    """Bytes each target's send uploaded to the relay (the first send to stage a chunk
    uploads it, the others reuse it); they add up to `bytes_uploaded`."""
    reused_by: list[int] = field(default_factory=list)
    fetched_by: list[int] = field(default_factory=list)
    """Bytes each target's receiver took from its base and fetched from the staging bucket
    (0 without a relay; docs/relay.md, "Delta and the relay")."""


def relay_settings(
    relay: str | None, relay_options: dict[str, Any] | None
) -> tuple[dict[str, Any], float | None, int | None, bool]:
    """`relay_options` split into the staging bucket's storage options, ``keep_for``,
    ``stage_ahead`` and ``block_maps`` (`RelayNetwork`'s; `ConfigurationError` for a bad one)."""
    settings = dict(relay_options or {})
    if relay is None:
        if settings:
            raise ConfigurationError("relay_options need a relay (the staging URL)")
        return {}, None, None, False
    if not isinstance(relay, str) or not relay.strip("/"):
        raise ConfigurationError(f"relay must be a staging URL, got {relay!r}")
    keep_for = settings.pop("keep_for", None)
    if keep_for is not None and (
        isinstance(keep_for, bool) or not isinstance(keep_for, (int, float)) or keep_for < 0
    ):
        raise ConfigurationError(f"keep_for must be seconds (>= 0), got {keep_for!r}")
    stage_ahead = check_stage_ahead(settings.pop("stage_ahead", None))
    block_maps = check_block_maps(settings.pop("block_maps", False))
    return settings, None if keep_for is None else float(keep_for), stage_ahead, block_maps


class _Progress:
    """Tells `progress` what every target has: the bytes all of them acknowledged (the
    slowest one), and through its ``skip`` (if it has one) the bytes all of them held already."""

    def __init__(self, progress: ProgressCallback | None, targets: int) -> None:
        self.progress = progress
        skip = getattr(progress, "skip", None)
        self.skip: Callable[[int], object] | None = skip if callable(skip) else None
        self.done = [0] * targets
        self.held = [0] * targets
        self.live = set(range(targets))
        self.reported = self.reported_held = 0

    def callback(self, index: int) -> ProgressCallback | None:
        if self.progress is None:
            return None
        return _TargetProgress(self, index)

    def finished(self, index: int) -> None:
        self.live.discard(index)
        self._report()

    def _report(self) -> None:
        """Report the gain in bytes every live target has (acknowledged or held); of it,
        what every one of them held goes to ``skip``, the rest to `progress`, so that the two
        never add up to more than the snapshot."""
        if self.progress is None or not self.live:
            return
        covered = min(self.done[i] + self.held[i] for i in self.live)
        gain = covered - self.reported - self.reported_held
        if gain <= 0:
            return
        held = min(self.held[i] for i in self.live) - self.reported_held
        skipped = min(max(0, held), gain) if self.skip is not None else 0
        if skipped and self.skip is not None:
            self.skip(skipped)
            self.reported_held += skipped
        if gain > skipped:
            self.progress(gain - skipped)
            self.reported += gain - skipped


class _TargetProgress:
    """One target's progress callback, with ``skip`` (see `ProgressCallback`)."""

    def __init__(self, tracker: _Progress, index: int) -> None:
        self.tracker, self.index = tracker, index

    def __call__(self, nbytes: int) -> None:
        self.tracker.done[self.index] += nbytes
        self.tracker._report()

    def skip(self, nbytes: int) -> None:
        self.tracker.held[self.index] += nbytes
        self.tracker._report()


async def send_to_targets(
    targets: Sequence[Target],
    vote: Vote,
    meta: SnapshotMeta,
    source: ChunkSource,
    options: TransferOptions,
    *,
    cancel: Awaitable[Any] | None = None,
    progress: ProgressCallback | None = None,
    relay: str | None = None,
    relay_storage: dict[str, Any] | None = None,
    keep_for: float | None = None,
    stage_ahead: int | None = None,
    block_maps: bool = False,
) -> FanOut:
    """Send `source` as `meta` (its id replaced by each target's) to every target at once.

    The source is read once (`SharedSource`; a fast target runs at most two windows ahead of
    the slowest).  With `relay`, the chunks are staged once in that bucket prefix and every
    receiver is sent references (`RelayNetwork`); what this call staged is removed at the end
    unless `keep_for` keeps its committed copies for later receivers.  A copy another process
    staged and keeps is reused: nothing is uploaded (when the meta names no checksum, the
    source is read once first to compute it).  Errors are returned per target, not raised."""
    extra_read = 0
    nets = [t.network for t in targets]
    relay_net: RelayNetwork | None = None
    if relay is not None:
        storage = relay_storage or {}
        relay_net = RelayNetwork(
            nets[0],
            relay,
            keep_for=keep_for,
            stage_ahead=stage_ahead,
            block_maps=block_maps,
            **storage,
        )
        nets = [relay_net, *(relay_net.to(n) for n in nets[1:])]
    cancel_task = asyncio.ensure_future(cancel) if cancel is not None else None
    tracker = _Progress(progress, len(targets))
    finished = [0.0] * len(targets)
    shared: SharedSource | None = None
    try:
        if relay_net is not None:
            meta, extra_read = await _reuse_staged(
                relay_net, nets, targets, vote, meta, source, options
            )
        ahead = 2 * options.max_in_flight * options.chunk_size
        shared = SharedSource(source, len(targets), ahead)

        async def one(index: int) -> SendResult:
            reader = shared.readers[index]
            stop = None if cancel_task is None else asyncio.shield(cancel_task)
            try:
                return await send_source(
                    nets[index],
                    vote,
                    replace(meta, snapshot_id=targets[index].snapshot_id),
                    reader,
                    stop,
                    options,
                    progress=tracker.callback(index),
                )
            finally:
                finished[index] = time.perf_counter()
                tracker.finished(index)
                await reader.close()

        results = await asyncio.gather(
            *(one(i) for i in range(len(targets))), return_exceptions=True
        )
    finally:
        if cancel_task is not None and not cancel_task.done():
            cancel_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await cancel_task
        if relay_net is not None:
            await relay_net.close(keep=keep_for is not None)
    return FanOut(
        results=list(results),
        read_by=[r.bytes_read for r in shared.readers],
        finished=finished,
        bytes_read=shared.bytes_read + extra_read,
        bytes_uploaded=0 if relay_net is None else relay_net.bytes_uploaded,
        uploaded_by=[n.own_bytes_uploaded if isinstance(n, RelayNetwork) else 0 for n in nets],
        reused_by=[n.own_bytes_reused if isinstance(n, RelayNetwork) else 0 for n in nets],
        fetched_by=[n.own_bytes_fetched if isinstance(n, RelayNetwork) else 0 for n in nets],
    )


async def _reuse_staged(
    relay_net: RelayNetwork,
    nets: list[Network],
    targets: Sequence[Target],
    vote: Vote,
    meta: SnapshotMeta,
    source: ChunkSource,
    options: TransferOptions,
) -> tuple[SnapshotMeta, int]:
    """Register every target with the relay and look for a copy of the snapshot that is
    staged already (by another process, kept by its TTL); the meta (with the checksum when one
    had to be computed to match a copy) and the bytes read to compute it."""
    read = 0
    for net, target in zip(nets, targets, strict=True):
        assert isinstance(net, RelayNetwork)
        net.expect(vote, target.snapshot_id)
    for snapshot_id in dict.fromkeys(t.snapshot_id for t in targets):
        named = replace(meta, snapshot_id=snapshot_id)
        found = await relay_net.find_staged(vote, named)
        if found and meta.checksum is None:
            checksum = await source_checksum(source, options.chunk_size)
            read += source.size
            meta = replace(meta, checksum=checksum)
            if checksum in found:
                await relay_net.find_staged(vote, replace(named, checksum=checksum))
    return meta, read


async def reports(
    source_url: str,
    source: ChunkSource,
    targets: list[Target],
    sent: FanOut,
    vote: Vote,
    started: float,
) -> list[TransferReport]:
    """One report per target; the first error (or refusal by a higher vote) raised, once the
    partial data of every failed in-process target is removed."""
    failure: BaseException | None = None
    reports = []
    ends = zip(targets, sent.results, sent.read_by, sent.finished, sent.uploaded_by, strict=True)
    none = [0] * len(targets)
    relayed = zip(sent.reused_by or none, sent.fetched_by or none, strict=True)
    for (target, result, read, end, uploaded), (reused, fetched) in zip(ends, relayed, strict=True):
        if isinstance(result, BaseException):
            if target.store is not None:
                await _abort(target)
                if isinstance(result, RemoteError) and isinstance(result.source, FstransportError):
                    # The receiver runs in this process: its error is this call's own error.
                    result = result.source.with_traceback(result.source.__traceback__)
            failure = failure or result
            continue
        if not result.completed:
            failure = failure or HigherVote(result.response.vote, vote)
            continue
        stats = result.stats
        reports.append(
            TransferReport(
                source=source_url,
                target=target.url,
                size=source.size,
                bytes_sent=stats.bytes_sent + stats.delta_bytes,
                bytes_reused=stats.bytes_reused + reused,
                chunks_sent=stats.chunks_sent,
                retries=stats.retries,
                rewinds=stats.rewinds,
                bytes_skipped=stats.bytes_skipped,
                elapsed=end - started,
                checksum=result.checksum,
                files=source.file_count if isinstance(source, TreeSource) else None,
                bytes_read=read,
                bytes_uploaded=uploaded,
                bytes_fetched=fetched,
            )
        )
    if failure is not None:
        raise failure
    return reports


async def abort_targets(targets: Sequence[Target]) -> None:
    """Remove the partial data of the in-process targets."""
    for target in targets:
        if target.store is not None:
            await _abort(target)


async def _abort(target: Target) -> None:
    assert target.store is not None
    try:
        await target.store.abort(target.snapshot_id)
    except Exception:
        log.warning(
            "could not remove the partial data of %r",
            target.snapshot_id,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )


async def close_target(target: Target) -> None:
    if target.receiver is not None:
        await target.receiver.close()
    if target.store is not None:
        await target.store.close()
