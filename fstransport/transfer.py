"""`ship()`: copy one fsspec file to another through the chunked transport, and its report."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, replace
from typing import Any

import fsspec

from fstransport.errors import (
    ConfigurationError,
    FstransportError,
    HigherVote,
    InvalidRequest,
    RemoteError,
)
from fstransport.messages import SnapshotMeta, Vote
from fstransport.network.base import Network
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import RetryPolicy, TransferOptions
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.receiver import Receiver
from fstransport.sender import ProgressCallback, send_source
from fstransport.storage._errors import storage_errors
from fstransport.storage.s3 import S3StreamSource, is_s3
from fstransport.storage.s3_ranged import S3RangedSource
from fstransport.storage.source import open_source, source_checksum
from fstransport.storage.store import FsspecSnapshotStore

__all__ = ["TransferReport", "ship"]

log = logging.getLogger("fstransport.transfer")

DEFAULT_VOTE = Vote(term=0, node_id=0)


@dataclass(frozen=True)
class TransferReport:
    """What `ship` did: sizes, counts, time and the whole snapshot's checksum."""

    source: str
    target: str
    size: int
    bytes_sent: int
    chunks_sent: int
    retries: int
    rewinds: int
    bytes_skipped: int
    elapsed: float
    checksum: str | None

    @property
    def throughput(self) -> float:
        """Bytes per second of snapshot data (not counting re-sent bytes)."""
        return self.size / self.elapsed if self.elapsed > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the report, throughput included."""
        return {**asdict(self), "throughput": self.throughput}


STORE_OPTIONS = frozenset(
    {"fsync", "sink", "part_size", "full_object_checksum", "upload_concurrency"}
)
"""The `FsspecSnapshotStore` settings `ship(store_options=...)` passes to its in-process store."""


async def _split_target(
    target_url: str,
    storage_options: dict[str, Any],
    retry: RetryPolicy,
    store_options: dict[str, Any],
) -> tuple[FsspecSnapshotStore, str]:
    """The store at `target_url`'s folder and the file name, which becomes the snapshot id."""
    unknown = sorted(set(store_options) - STORE_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown store option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(STORE_OPTIONS))}"
        )
    with storage_errors(target_url, "open"):
        fs, path = fsspec.core.url_to_fs(target_url, **storage_options)
        path = str(path)
        # (object stores have no folders to mistake for a file: no round trip to ask)
        is_dir = bool(path.strip("/")) and not is_s3(fs) and await asyncio.to_thread(fs.isdir, path)
    if target_url.endswith("/") or not path.strip("/") or is_dir:
        raise ConfigurationError(f"target {target_url!r} must name a file, not a folder")
    parent, _, name = path.rpartition("/")
    store = FsspecSnapshotStore.from_filesystem(fs, parent or "/", retry=retry, **store_options)
    return store, _snapshot_id(target_url, name)


def _snapshot_id(target_url: str, name: str) -> str:
    try:
        return check_snapshot_id(name)
    except InvalidRequest as exc:
        raise ConfigurationError(
            f"target {target_url!r} has an unusable file name: {exc}"
        ) from None


async def ship(
    source_url: str,
    target_url: str,
    *,
    options: TransferOptions | None = None,
    network: Network | None = None,
    source_options: dict[str, Any] | None = None,
    target_options: dict[str, Any] | None = None,
    store_options: dict[str, Any] | None = None,
    cancel: Awaitable[Any] | None = None,
    vote: Vote = DEFAULT_VOTE,
    progress: ProgressCallback | None = None,
    checksum: str | None = None,
) -> TransferReport:
    """Copy the file at `source_url` to exactly `target_url` through the chunked transport.

    Without `network`, a `Receiver` over a `FsspecSnapshotStore` at the target's folder runs in
    this process (`LoopbackNetwork`); with one, the receiver behind it decides where the data
    lands and the target's file name is the snapshot id.  The target appears only when the whole
    copy is verified; on any failure nothing is visible at `target_url` and, in-process, no
    partial data is left behind.

    `source_options` and `target_options` are fsspec storage options (``endpoint_url``, ...).
    `store_options` configure the in-process receiver's `FsspecSnapshotStore`: ``part_size``
    and ``upload_concurrency`` for S3 targets, ``fsync``, ``sink``, ``full_object_checksum``;
    with a `network` the remote receiver decides them, so they are refused.

    `checksum` (``"crc32c:%08x"``) names the data when the caller knows it: the receiver then
    verifies it, and can resume a transfer an earlier, interrupted call left halfway.  Without
    it, an in-process copy computes it only when such a partial copy exists.

    Raises `StorageError` (source or target unusable), `RetryExhausted`, `ReplicationClosed`
    (`cancel` completed), `HigherVote` (the receiver holds a higher vote), `ConfigurationError`.
    """
    options = options or TransferOptions()
    store: FsspecSnapshotStore | None = None
    snapshot_id: str
    if network is None:
        store, snapshot_id = await _split_target(
            target_url, dict(target_options or {}), options.retry, dict(store_options or {})
        )
        # Sender and receiver share this process and every buffer: one CRC pass is enough.
        network = LoopbackNetwork(Receiver(store), trust_checksums=True)
    else:
        if store_options:
            raise ConfigurationError(
                "store_options apply to the in-process receiver only; with a network, the "
                "receiver behind it has its own store"
            )
        snapshot_id = _snapshot_id(target_url, target_url.rstrip("/").rpartition("/")[2])
    started = time.perf_counter()
    try:
        source = await open_source(
            source_url,
            map_files=options.map_files,
            read_streams=options.read_streams,
            read_part_size=options.read_part_size,
            ranged_read_threshold=options.ranged_read_threshold,
            **(source_options or {}),
        )
        if isinstance(source, (S3StreamSource, S3RangedSource)):
            source.retry = options.retry
        try:
            meta = SnapshotMeta(snapshot_id=snapshot_id, size=source.size, checksum=checksum)
            if checksum is None and store is not None and await store.has_partial(snapshot_id):
                # An earlier ship() was killed halfway: name the data by its checksum, so that
                # the receiver can resume its partial copy and prove the result whole (a partial
                # copy of other data is discarded by the receiver, which then starts over).
                meta = replace(meta, checksum=await source_checksum(source, options.chunk_size))
            result = await send_source(
                network, vote, meta, source, cancel, options, progress=progress
            )
        except BaseException as exc:
            if store is None:
                raise
            try:
                await store.abort(snapshot_id)
            except Exception:
                log.warning(
                    "could not remove the partial data of %r",
                    snapshot_id,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            if isinstance(exc, RemoteError) and isinstance(exc.source, FstransportError):
                # The receiver runs in this process: its error is this call's own error.
                raise exc.source from exc.source.__cause__
            raise
        finally:
            await source.close()
    finally:
        if store is not None:
            await store.close()
    if not result.completed:
        raise HigherVote(result.response.vote, vote)
    stats = result.stats
    return TransferReport(
        source=source_url,
        target=target_url,
        size=source.size,
        bytes_sent=stats.bytes_sent,
        chunks_sent=stats.chunks_sent,
        retries=stats.retries,
        rewinds=stats.rewinds,
        bytes_skipped=stats.bytes_skipped,
        elapsed=time.perf_counter() - started,
        checksum=result.checksum,
    )
