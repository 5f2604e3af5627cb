"""`ship()`: copy one fsspec file (or a folder, as one directory snapshot) to another through the
chunked transport, and its report."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Any

from fstransport.errors import ChecksumMismatch, ConfigurationError, InvalidRequest
from fstransport.fanout import (
    Target,
    abort_targets,
    close_target,
    relay_settings,
    reports,
    send_to_targets,
)
from fstransport.messages import SnapshotMeta, Vote
from fstransport.network.base import Network
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import RetryPolicy, TransferOptions
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.receiver import Receiver
from fstransport.sender import ProgressCallback
from fstransport.server_side import server_side as _server_side
from fstransport.storage.base import ChunkSource
from fstransport.storage.locate import is_directory, split_target
from fstransport.storage.source import open_source, source_checksum
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer_report import TransferReport
from fstransport.tree import TREE, open_tree_source

__all__ = ["TransferReport", "ship"]

DEFAULT_VOTE = Vote(term=0, node_id=0)


STORE_OPTIONS = frozenset(
    {"fsync", "prefill", "sink", "part_size", "full_object_checksum", "upload_concurrency"}
)
"""The `FsspecSnapshotStore` settings `ship(store_options=...)` passes to its in-process store."""


async def _split_target(
    target_url: str,
    storage_options: dict[str, Any],
    retry: RetryPolicy,
    store_options: dict[str, Any],
    *,
    tree: bool = False,
) -> tuple[FsspecSnapshotStore, str]:
    """The store at `target_url`'s folder and the file name, which becomes the snapshot id."""
    unknown = sorted(set(store_options) - STORE_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown store option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(STORE_OPTIONS))}"
        )
    fs, parent, name = await split_target(target_url, storage_options, tree=tree)
    store = FsspecSnapshotStore.from_filesystem(fs, parent, retry=retry, **store_options)
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
    target_url: str | Sequence[str],
    *,
    options: TransferOptions | None = None,
    network: Network | Sequence[Network] | None = None,
    source_options: dict[str, Any] | None = None,
    target_options: dict[str, Any] | None = None,
    store_options: dict[str, Any] | None = None,
    cancel: Awaitable[Any] | None = None,
    vote: Vote = DEFAULT_VOTE,
    progress: ProgressCallback | None = None,
    checksum: str | None = None,
    server_side: bool | None = None,
    relay: str | None = None,
    relay_options: dict[str, Any] | None = None,
) -> TransferReport:
    """Copy the file at `source_url` to exactly `target_url` through the chunked transport.

    A folder `source_url` (local or ``memory://``; elsewhere a URL ending in ``/``) is shipped as
    one directory snapshot (`fstransport.tree`): its regular files packed into one stream with
    one checksum, and `target_url` names the folder it becomes, replaced whole if it exists
    (on S3 and ``memory://``, a manifest written last marks the complete tree: see
    ``docs/directories.md``).  Symlinks, devices, sockets, FIFOs and unsafe names raise
    `UnsupportedEntry` before anything is sent.

    Without `network`, a `Receiver` over a `FsspecSnapshotStore` at the target's folder runs in
    this process (`LoopbackNetwork`); with one, the receiver behind it decides where the data
    lands and the target's file name is the snapshot id.  The target appears only when the whole
    copy is verified; on any failure nothing is visible at `target_url` and, in-process, no
    partial data is left behind.

    `target_url` may be a list of targets (a fan-out): the source is read once and sent to all
    of them at once, and `network`, if given, is one network per target (or one for all).  The
    report then covers the whole fan-out, with one `TransferReport` per target in `targets`;
    when a target fails, the others still finish and the first error is raised.

    `relay` (a staging URL, e.g. ``s3://bucket/stage``) sends the data through a bucket
    (`RelayNetwork`, ``docs/relay.md``): it is uploaded there once, and every receiver is sent
    small references and fetches the bytes itself.  `relay_options` are the keyword arguments
    of `RelayNetwork`: the bucket's fsspec storage options, which the in-process receivers use
    too, ``keep_for`` (seconds) and ``stage_ahead`` (chunks staged beyond the window, a count
    >= 0; default ``max_in_flight``) and ``block_maps`` (stage each chunk's block map, so
    that a receiver holding an earlier snapshot fetches only what it lacks; default False).
    What `ship` staged is removed once all its targets acknowledged, unless ``keep_for`` keeps
    it for later receivers: a later `ship` (in any process) of the same snapshot id, vote and
    data then uploads nothing.

    `source_options` and `target_options` are fsspec storage options (``endpoint_url``, ...).
    `store_options` configure the in-process receiver's `FsspecSnapshotStore`: ``part_size``
    and ``upload_concurrency`` for S3 targets, ``fsync``, ``sink``, ``full_object_checksum``;
    with a `network` the remote receiver decides them, so they are refused.

    `checksum` (``"crc32c:%08x"``) names the data when the caller knows it: the receiver then
    verifies it, and can resume a transfer an earlier, interrupted call left halfway.  Without
    it, an in-process copy computes it only when such a partial copy exists.

    `server_side` decides whether an S3 -> S3 copy on one endpoint is made by the server
    (``UploadPartCopy``, see ``docs/s3.md``) instead of passing every byte through this
    process: None (the default) does so only when the copy can be proved, i.e. the source
    was stored with a full-object CRC32C (or `checksum` names it) and the server reports the
    CRC32C of what it copied; True always does so, trusting the server where it proves
    nothing (one ``CopyObject`` up to `options.copy_cutoff` bytes), and refuses
    (`ConfigurationError`) a source and target on different endpoints or not on S3, several
    targets or a relay; False never does.

    Raises `StorageError` (source or target unusable), `RetryExhausted`, `ReplicationClosed`
    (`cancel` completed), `HigherVote` (the receiver holds a higher vote), `ConfigurationError`.
    """
    options = options or TransferOptions()
    fan_out = not isinstance(target_url, str)
    urls = [target_url] if isinstance(target_url, str) else list(target_url)
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigurationError(f"target_url must be a URL or a list of URLs, got {target_url!r}")
    networks = _networks(network, len(urls))
    relay_storage, keep_for, stage_ahead, block_maps = relay_settings(relay, relay_options)
    tree = await is_directory(source_url, dict(source_options or {}))
    if tree and server_side:
        raise ConfigurationError("a directory is shipped through this process, not server-side")
    if server_side and (network is not None or len(urls) > 1 or relay is not None):
        raise ConfigurationError(
            "server_side copies are made by the S3 server for an in-process ship() to one "
            "target; with a network, several targets or a relay, the bytes pass through"
        )
    targets: list[Target] = []
    try:
        for url, net in zip(urls, networks, strict=True):
            targets.append(
                await _target(
                    url,
                    net,
                    options,
                    target_options,
                    store_options,
                    tree,
                    relay_storage if relay else None,
                )
            )
        _check_distinct(targets)
        started = time.perf_counter()
        only = targets[0]
        alone = len(targets) == 1 and only.store is not None and relay is None
        if alone and server_side is not False and not tree:
            assert only.store is not None
            copied = await _server_side(
                source_url,
                only.url,
                dict(source_options or {}),
                dict(target_options or {}),
                only.store,
                only.snapshot_id,
                required=bool(server_side),
                options=options,
                checksum=checksum,
                concurrency=(store_options or {}).get("upload_concurrency"),
            )
            if copied is not None:
                if progress is not None and copied.size:
                    progress(copied.size)
                copied = replace(copied, elapsed=time.perf_counter() - started)
                return replace(copied, targets=(copied,)) if fan_out else copied
        source, checksum = await _open(source_url, tree, checksum, options, source_options)
        try:
            meta = SnapshotMeta(
                snapshot_id=only.snapshot_id,
                size=source.size,
                checksum=checksum,
                kind=TREE if tree else "file",
            )
            if checksum is None and any(
                [t.store is not None and await t.store.has_partial(t.snapshot_id) for t in targets]
            ):
                # An earlier ship() was killed halfway: name the data by its checksum, so that
                # the receiver can resume its partial copy and prove the result whole (a partial
                # copy of other data is discarded by the receiver, which then starts over).
                meta = replace(meta, checksum=await source_checksum(source, options.chunk_size))
            try:
                sent = await send_to_targets(
                    targets,
                    vote,
                    meta,
                    source,
                    options,
                    cancel=cancel,
                    progress=progress,
                    relay=relay,
                    relay_storage=relay_storage,
                    keep_for=keep_for,
                    stage_ahead=stage_ahead,
                    block_maps=block_maps,
                )
            except BaseException:
                await abort_targets(targets)
                raise
        finally:
            await source.close()
        done = await reports(source_url, source, targets, sent, vote, started)
    finally:
        for target in targets:
            await close_target(target)
    if not fan_out:
        return replace(done[0], bytes_uploaded=sent.bytes_uploaded)
    return TransferReport(
        source=source_url,
        target=", ".join(urls),
        size=source.size,
        bytes_sent=sum(r.bytes_sent for r in done),
        chunks_sent=sum(r.chunks_sent for r in done),
        retries=sum(r.retries for r in done),
        rewinds=sum(r.rewinds for r in done),
        bytes_skipped=min(r.bytes_skipped for r in done),
        bytes_reused=sum(r.bytes_reused for r in done),
        bytes_fetched=sum(r.bytes_fetched for r in done),
        elapsed=time.perf_counter() - started,
        checksum=done[0].checksum,
        files=done[0].files,
        bytes_read=sent.bytes_read,
        bytes_uploaded=sent.bytes_uploaded,
        targets=tuple(done),
    )


def _networks(network: Network | Sequence[Network] | None, count: int) -> list[Network | None]:
    if network is None:
        return [None] * count
    if isinstance(network, Sequence):
        if len(network) != count:
            raise ConfigurationError(
                f"give one network per target: {len(network)} networks for {count} targets"
            )
        return list(network)
    return [network] * count


async def _target(
    url: str,
    network: Network | None,
    options: TransferOptions,
    target_options: dict[str, Any] | None,
    store_options: dict[str, Any] | None,
    tree: bool,
    relay_storage: dict[str, Any] | None,
) -> Target:
    """One target: an in-process receiver at `url`'s folder, or the receiver behind `network`."""
    if network is not None:
        if store_options:
            raise ConfigurationError(
                "store_options apply to the in-process receiver only; with a network, the "
                "receiver behind it has its own store"
            )
        return Target(url, _snapshot_id(url, url.rstrip("/").rpartition("/")[2]), network)
    store, snapshot_id = await _split_target(
        url, dict(target_options or {}), options.retry, dict(store_options or {}), tree=tree
    )
    receiver = Receiver(store, relay_options=relay_storage)
    # Sender and receiver share this process and every buffer: one CRC pass is enough.
    network = LoopbackNetwork(receiver, trust_checksums=True)
    return Target(url, snapshot_id, network, store, receiver)


def _check_distinct(targets: list[Target]) -> None:
    seen: set[tuple[int | str, str]] = set()
    for target in targets:
        where: int | str = target.store.root if target.store is not None else id(target.network)
        key = (where, target.snapshot_id)
        if key in seen:
            raise ConfigurationError(f"target {target.url!r} is given twice")
        seen.add(key)


async def _open(
    source_url: str,
    tree: bool,
    checksum: str | None,
    options: TransferOptions,
    source_options: dict[str, Any] | None,
) -> tuple[ChunkSource, str | None]:
    """The source, and the checksum it is known by (a directory snapshot's is computed)."""
    source: ChunkSource
    if tree:
        source = tree_source = await open_tree_source(source_url, **(source_options or {}))
        if checksum is not None and checksum != tree_source.checksum:
            await source.close()
            raise ChecksumMismatch(source_url, checksum, tree_source.checksum, whole=True)
        checksum = tree_source.checksum
    else:
        source = await open_source(
            source_url,
            map_files=options.map_files,
            read_streams=options.read_streams,
            read_part_size=options.read_part_size,
            ranged_read_threshold=options.ranged_read_threshold,
            retry=options.retry,
            **(source_options or {}),
        )
    return source, checksum
