"""`ship()`: copy one fsspec file (or a folder, as one directory snapshot) to another through the
chunked transport, and its report."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, replace
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from fstransport.checksum import format_checksum, parse_checksum
from fstransport.errors import (
    ChecksumMismatch,
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
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.s3 import S3StreamSource, is_s3, open_s3, split_bucket_key
from fstransport.storage.backends.s3.copy import (
    DEFAULT_COPY_CONCURRENCY,
    head_source,
    s3_endpoint,
    server_side_copy,
)
from fstransport.storage.backends.s3.ranged import S3RangedSource
from fstransport.storage.base import ChunkSource
from fstransport.storage.source import open_source, source_checksum
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.tree import TREE, TreeSource, open_tree_source

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
    server_side: bool = False
    """True when the S3 server copied the data itself (`ship(server_side=...)`): then no
    byte passed through this process, `bytes_sent` is 0 and `chunks_sent` counts part copies."""
    files: int | None = None
    """For a directory snapshot, how many files it holds (`size` is its packed stream's
    length: the files' bytes plus the table); None for a file."""

    @property
    def throughput(self) -> float:
        """Bytes per second of snapshot data this call sent: neither re-sent bytes nor the
        bytes a resumed transfer found already at the receiver count."""
        sent = self.size - self.bytes_skipped
        return sent / self.elapsed if self.elapsed > 0 else float("inf")

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
    with storage_errors(target_url, "open"):
        fs, path = fsspec.core.url_to_fs(target_url, **storage_options)
        path = str(path)
        if tree:  # a directory snapshot replaces the folder it names
            path = path.rstrip("/")
            is_dir = False
        else:
            # (object stores have no folders to mistake for a file: no round trip to ask)
            is_dir = (
                bool(path.strip("/")) and not is_s3(fs) and await asyncio.to_thread(fs.isdir, path)
            )
    if (target_url.endswith("/") and not tree) or not path.strip("/") or is_dir:
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
    server_side: bool | None = None,
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
    nothing, and refuses (`ConfigurationError`) a source and target on different endpoints or
    not on S3; False never does.

    Raises `StorageError` (source or target unusable), `RetryExhausted`, `ReplicationClosed`
    (`cancel` completed), `HigherVote` (the receiver holds a higher vote), `ConfigurationError`.
    """
    options = options or TransferOptions()
    store: FsspecSnapshotStore | None = None
    snapshot_id: str
    tree = await is_directory(source_url, dict(source_options or {}))
    if tree and server_side:
        raise ConfigurationError("a directory is shipped through this process, not server-side")
    if server_side and network is not None:
        raise ConfigurationError(
            "server_side copies are made by the S3 server for an in-process ship(); with a "
            "network, the receiver behind it writes the target"
        )
    if network is None:
        store, snapshot_id = await _split_target(
            target_url,
            dict(target_options or {}),
            options.retry,
            dict(store_options or {}),
            tree=tree,
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
        if store is not None and server_side is not False and not tree:
            copied = await _server_side(
                source_url,
                target_url,
                dict(source_options or {}),
                dict(target_options or {}),
                store,
                snapshot_id,
                required=bool(server_side),
                options=options,
                checksum=checksum,
                concurrency=(store_options or {}).get("upload_concurrency"),
            )
            if copied is not None:
                if progress is not None and copied.size:
                    progress(copied.size)
                return replace(copied, elapsed=time.perf_counter() - started)
        source: ChunkSource
        if tree:
            source = tree_source = await open_tree_source(source_url, **(source_options or {}))
            if checksum is not None and checksum != tree_source.checksum:
                raise ChecksumMismatch(source_url, checksum, tree_source.checksum, whole=True)
            checksum = tree_source.checksum
        else:
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
            meta = SnapshotMeta(
                snapshot_id=snapshot_id,
                size=source.size,
                checksum=checksum,
                kind=TREE if tree else "file",
            )
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
        files=source.file_count if isinstance(source, TreeSource) else None,
    )


async def is_directory(url: str, storage_options: dict[str, Any]) -> bool:
    """Whether `url` names a folder (shipped as a directory snapshot).  Asked of local and
    ``memory://`` paths only; elsewhere (S3, HTTP, ...), where asking costs a request for every
    file shipped, only a URL ending in ``/`` names a folder."""
    if url == "-" or "::" in url:
        return False
    with storage_errors(url, "open"):
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    if not isinstance(fs, (LocalFileSystem, MemoryFileSystem)):
        return url.endswith("/")
    with storage_errors(url, "stat"):
        return bool(await asyncio.to_thread(fs.isdir, path))


def _is_s3_url(url: str) -> bool:
    return "::" not in url and fsspec.core.split_protocol(url)[0] in ("s3", "s3a")


async def _server_side(
    source_url: str,
    target_url: str,
    source_options: dict[str, Any],
    target_options: dict[str, Any],
    store: FsspecSnapshotStore,
    snapshot_id: str,
    *,
    required: bool,
    options: TransferOptions,
    checksum: str | None,
    concurrency: int | None,
) -> TransferReport | None:
    """Copy on the S3 server when it can (see `ship`'s `server_side`); None: copy through the
    client instead."""
    if not (_is_s3_url(source_url) and _is_s3_url(target_url) and is_s3(store.fs)):
        if required:
            raise ConfigurationError(
                f"a server-side copy needs an s3:// source and target, not {source_url!r} -> "
                f"{target_url!r}"
            )
        return None
    source_endpoint, target_endpoint = s3_endpoint(source_options), s3_endpoint(target_options)
    if source_endpoint != target_endpoint:
        if required:
            raise ConfigurationError(
                "a server-side copy needs the source and target on one S3 endpoint; the source "
                f"is on {source_endpoint or 'AWS'}, the target on {target_endpoint or 'AWS'} "
                "(copy without server_side / --server-side to stream it through this process)"
            )
        return None
    wanted = None if checksum is None else parse_checksum(checksum)
    fs = await open_s3(target_options)
    try:
        with storage_errors(source_url, "open"):
            bucket, key = split_bucket_key(fs._strip_protocol(source_url))
        source = await head_source(fs, bucket, key, options.retry)
        if wanted is not None and source.crc32c is not None and wanted != source.crc32c:
            raise ChecksumMismatch(
                source_url, format_checksum(wanted), format_checksum(source.crc32c), whole=True
            )
        expected = wanted if wanted is not None else source.crc32c
        if not required and expected is None:
            return None  # nothing to prove a server-side copy with: stream it, verified
        target_bucket, target_key = split_bucket_key(store.path(snapshot_id))
        result = await server_side_copy(
            fs,
            source,
            target_bucket,
            target_key,
            expected=expected,
            require_proof=not required,
            part_size=store.part_size,
            concurrency=concurrency or DEFAULT_COPY_CONCURRENCY,
            retry=options.retry,
        )
    finally:
        await close_async_filesystem(fs)
    if result is None:
        return None
    return TransferReport(
        source=source_url,
        target=target_url,
        size=source.size,
        bytes_sent=0,
        chunks_sent=max(1, result.parts),
        retries=0,
        rewinds=0,
        bytes_skipped=0,
        elapsed=0.0,
        checksum=result.checksum,
        server_side=True,
    )
