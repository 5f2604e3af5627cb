"""`FsspecSnapshotStore`: where a receiver writes incoming snapshots and installs finished ones.

Layout under the store's root::

    root/<snapshot_id>                         installed snapshots, visible to everyone
    root/.fstransport/partial/<snapshot_id>    snapshots being received (never visible as above)
    root/.fstransport/packed/<snapshot_id>     on S3, a directory snapshot being received
    root/.fstransport/staging/, .../old/       local folders being unpacked or replaced

A directory snapshot (``SnapshotMeta.kind == "tree"``) is received as its packed stream and
unpacked by `install`, after it was verified: locally into a staging folder that is renamed
into place; elsewhere (S3, memory) into a fresh generation prefix ``root/<snapshot_id>/g-.../``
followed by the manifest ``root/<snapshot_id>/fstransport-tree.json``, written last (see
``docs/directories.md``).

A snapshot becomes visible as ``root/<snapshot_id>`` only by `install`, which moves a finished
partial file into place in one step (``os.replace`` locally, one dict update in memory), or, on
S3, when its multipart upload to ``root/<snapshot_id>`` completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import IO, Any, Literal

import fsspec

from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import Snapshot, SnapshotMeta
from fstransport.options import RetryPolicy
from fstransport.protocol.parts import MIN_PART_SIZE
from fstransport.protocol.ranges import ChunkLedger, ChunkRecord
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends import backend_class
from fstransport.storage.backends.s3.client import full_object_default
from fstransport.storage.backends.s3.multipart import DEFAULT_UPLOADS
from fstransport.storage.base import (  # SnapshotStore kept importable from here
    SnapshotSink,
    SnapshotStore,
    VerifyingSink,
)
from fstransport.storage.journal import resumable
from fstransport.storage.layout import FOLDERS, JOURNAL_DIR, PACKED_DIR, PARTIAL_DIR
from fstransport.tree import TREE

__all__ = ["FsspecSnapshotStore", "SinkKind", "SnapshotStore", "replace_sink"]

log = logging.getLogger("fstransport.store")

SinkKind = Literal["auto", "seekable", "sequential", "multipart"]


def _check_type(name: str, value: object, *kinds: type | None) -> None:
    """`ConfigurationError` unless `value` is of one of `kinds` (None: may be None; a bool is
    not taken for an int)."""
    if value is None and None in kinds:
        return
    types = tuple(kind for kind in kinds if kind is not None)
    bool_for_int = isinstance(value, bool) and bool not in types
    if bool_for_int or not isinstance(value, types):
        wanted = " or ".join("None" if kind is None else kind.__name__ for kind in kinds)
        raise ConfigurationError(f"{name} must be {wanted}, got {value!r}")


def _open(url: str, fs: Any, storage_options: dict[str, Any]) -> tuple[Any, str, str]:
    """The filesystem, the root path in it and the URL of a store at `url` (a path in `fs`
    when a filesystem is given)."""
    if fs is not None:
        if storage_options:
            raise ConfigurationError("storage options go to `filesystem` when it is opened")
        return fs, url, fs.unstrip_protocol(url)
    with storage_errors(url, "open"):
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
    return fs, root, url


def _check_options(
    sink: str,
    part_size: int | None,
    flags: tuple[bool, bool],
    full_object_checksum: bool | None,
    upload_concurrency: int,
) -> None:
    """`ConfigurationError` for options no store takes (the backend checks the rest); `flags`:
    ``fsync`` and ``prefill``."""
    for name, flag in zip(("fsync", "prefill"), flags, strict=True):
        _check_type(name, flag, bool)
    _check_type("upload_concurrency", upload_concurrency, int)
    _check_type("part_size", part_size, int, None)
    _check_type("full_object_checksum", full_object_checksum, bool, None)
    if part_size is not None and part_size < MIN_PART_SIZE:
        raise ConfigurationError(f"part_size must be at least {MIN_PART_SIZE} bytes")
    if upload_concurrency < 1:
        raise ConfigurationError(f"upload_concurrency must be at least 1, got {upload_concurrency}")
    if sink not in ("auto", "seekable", "sequential", "multipart"):
        raise ConfigurationError(f"unknown sink kind {sink!r}")


class FsspecSnapshotStore:
    """A `SnapshotStore` in any fsspec location: ``FsspecSnapshotStore("s3://b/p", **options)``.

    How chunks are written is chosen by what the target can do (`sink="auto"`, see
    `fstransport.storage.backends`): in place for ``memory://``, ``os.pwrite`` for local
    folders, a multipart upload for S3, ``seek`` + ``write`` for other filesystems whose write
    files seek, and a bounded reorder buffer in front of a sequential write for the rest.
    `sink` forces one of ``"seekable"``, ``"sequential"`` or ``"multipart"`` (S3 only).
    `part_size` overrides the S3 part size (at least 5 MiB) and `upload_concurrency` is how
    many parts are uploaded at once (4).  `fsync` (local targets only) flushes each finished
    snapshot to disk before it is installed; `prefill` (local targets only) copies a delta's
    base into the partial file while the sender plans (``docs/delta.md``, "Prefill").  `retry`:
    how transient storage failures (5xx, SlowDown, resets) are retried before they surface as
    `StorageError`.  `full_object_checksum` asks S3 to verify each object's whole CRC32C too,
    where the server takes it (default: on for AWS, off for other endpoints; see `S3Backend`).
    `filesystem`: an fsspec filesystem already open, `root_url` a path in it.

    On S3 a snapshot appears at ``root/<snapshot_id>`` when its upload completes, after the
    final chunk was verified.  ``await store.close()`` (or ``async with``) releases its
    connections and lets go of the transfers in progress (see `close`).
    """

    accepts_trees = True
    """It installs directory snapshots (``SnapshotMeta(kind="tree")``) too."""

    def __init__(
        self,
        root_url: str,
        *,
        fsync: bool = False,
        prefill: bool = True,
        sink: SinkKind = "auto",
        part_size: int | None = None,
        retry: RetryPolicy | None = None,
        full_object_checksum: bool | None = None,
        upload_concurrency: int = DEFAULT_UPLOADS,
        filesystem: Any = None,
        **storage_options: Any,
    ) -> None:
        filesystem, root, url = _open(root_url, filesystem, storage_options)
        flags = (fsync, prefill)
        _check_options(sink, part_size, flags, full_object_checksum, upload_concurrency)
        self.fs: Any = filesystem
        self.backend = backend_class(filesystem)(self)
        if sink not in self.backend.sink_kinds:
            raise ConfigurationError(f"sink={sink!r} needs an s3:// store")
        self.root, self.url = root.rstrip("/") or "/", url
        self.sink_kind: SinkKind = sink
        self.part_size = part_size
        self.upload_concurrency = upload_concurrency
        self.retry = retry or RetryPolicy()
        self.fsync, self.prefill = flags
        self._full_object = full_object_checksum
        self._sinks: dict[str, SnapshotSink] = {}
        self._finished: dict[str, SnapshotSink] = {}

    @classmethod
    def from_filesystem(cls, fs: Any, root: str, **options: Any) -> FsspecSnapshotStore:
        """A store over an already-open fsspec filesystem `fs` at path `root`."""
        return cls(root, filesystem=fs, **options)

    async def __aenter__(self) -> FsspecSnapshotStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the store's S3 connections and the files of transfers still in progress.

        Those transfers are let go, not aborted: their partial data stays (a local journal is
        written down first), to be resumed by a later receiver or removed by `cleanup`.
        """
        idle = not self._sinks and not self._finished
        await self.backend.close(list(self._sinks.values()), idle=idle)

    @property
    def full_object_checksum(self) -> bool:
        """Whether S3 uploads ask the bucket to verify the whole object's CRC32C as well."""
        return full_object_default(self.fs, self._full_object)

    # -- paths -------------------------------------------------------------------------------

    def folder(self, *parts: str) -> str:
        """The path of `parts` under the store's root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def path(self, snapshot_id: str) -> str:
        """Where snapshot `snapshot_id` is visible once installed."""
        return self.folder(check_snapshot_id(snapshot_id))

    def upload_path(self, meta: SnapshotMeta) -> str:
        """Where an S3 upload of `meta` goes: the final name for a file, a staging name for
        a directory snapshot (unpacked from there by `install`)."""
        if meta.kind == TREE:
            return self.folder(PACKED_DIR, check_snapshot_id(meta.snapshot_id))
        return self.path(meta.snapshot_id)

    def partial_path(self, snapshot_id: str) -> str:
        """Where snapshot `snapshot_id` is written while it is received."""
        return self.folder(PARTIAL_DIR, check_snapshot_id(snapshot_id))

    def journal_path(self, snapshot_id: str) -> str:
        """Where the record of what a partial snapshot holds is kept (for resuming it)."""
        return self.folder(JOURNAL_DIR, check_snapshot_id(snapshot_id))

    # -- receiving ---------------------------------------------------------------------------

    async def begin(self, meta: SnapshotMeta) -> SnapshotSink:
        snapshot_id = meta.snapshot_id
        await self._drop_sinks(snapshot_id)
        await self.backend.discard_stale(snapshot_id)
        sink = await self.backend.open_sink(meta)
        self._sinks[snapshot_id] = sink
        return sink

    async def resume(self, meta: SnapshotMeta) -> tuple[SnapshotSink, list[ChunkRecord]] | None:
        """Reopen the partial data of the snapshot `meta` describes, left by an earlier receiver
        (of this process or one before it), with the chunks it holds; None if there is none.

        Only snapshots with a size and a checksum are resumed, and only into partial data
        recorded for exactly the same snapshot; anything else is started afresh by `begin`.
        What the journal (or S3 state) records is only a claim: every chunk it names is
        re-read and checked against its CRC32C (on S3, every part against ``ListParts``)
        before it is returned, and chunks that fail are left out, to be sent again.
        """
        snapshot_id = meta.snapshot_id
        if not resumable(meta) or snapshot_id in self._sinks:
            return None
        with storage_errors(self.partial_path(snapshot_id), "resume"):
            found = await self.backend.find_partial(meta)
        if found is None:
            return None
        sink, claimed = found
        self._sinks[snapshot_id] = sink
        try:
            held = await _held(snapshot_id, sink, claimed)
        except BaseException:
            del self._sinks[snapshot_id]
            raise
        if held is None:
            del self._sinks[snapshot_id]
            return None
        return sink, held

    async def has_partial(self, snapshot_id: str) -> bool:
        """Whether an earlier receiver left resumable partial data for `snapshot_id`."""
        with storage_errors(self.journal_path(snapshot_id), "stat"):
            return await self.backend.has_partial(snapshot_id)

    async def finish(self, meta: SnapshotMeta, sink: SnapshotSink) -> Snapshot:
        snapshot_id = meta.snapshot_id
        if self._sinks.get(snapshot_id) is not sink:
            raise InvalidRequest(f"snapshot {snapshot_id!r} is not being received by this store")
        await self.backend.finish_sink(meta, sink)
        del self._sinks[snapshot_id]
        self._finished[snapshot_id] = sink
        with storage_errors(sink.path, "open"):
            data = await self.backend.open_finished(sink.path, meta.size)
        return Snapshot(meta, data)

    async def install(self, snapshot: Snapshot) -> None:
        snapshot_id = snapshot.meta.snapshot_id
        sink = self._finished.get(snapshot_id)
        if sink is None:
            raise InvalidRequest(f"snapshot {snapshot_id!r} has not been received completely")
        final = self.path(snapshot_id)
        try:
            with storage_errors(final, "install"):
                await self.backend.install(snapshot, sink, final)
        except BaseException:
            if snapshot.meta.kind == TREE:  # (its packed stream is gone: never installed now)
                self._finished.pop(snapshot_id, None)
            raise
        del self._finished[snapshot_id]

    async def release(self, snapshot_id: str) -> None:
        """Let go of the transfer of `snapshot_id` in progress, keeping its partial data (and
        journal) for a later `resume` or `cleanup`; what cannot be resumed (a sink without a
        ``release`` method) is discarded."""
        sink = self._sinks.get(snapshot_id)
        if sink is None:
            return
        release = getattr(sink, "release", None)
        if release is None:
            await self.abort(snapshot_id)
            return
        del self._sinks[snapshot_id]
        await release()

    async def abort(self, snapshot_id: str) -> None:
        """Discard what is held of `snapshot_id` that is not installed; the installed one stays."""
        check_snapshot_id(snapshot_id)
        await self._drop_sinks(snapshot_id)
        await self.backend.discard(snapshot_id)

    async def _drop_sinks(self, snapshot_id: str) -> None:
        """Abort the sinks of `snapshot_id` this store holds (receiving, or finished)."""
        for table in (self._sinks, self._finished):
            sink = table.pop(snapshot_id, None)
            if sink is not None:
                await sink.abort()

    # -- clean-up and listing -------------------------------------------------------------------

    async def cleanup(self, older_than: float, *, dry_run: bool = False) -> list[str]:
        """Remove partial data abandoned for more than `older_than` seconds: partial files and
        their journals, and on S3 incomplete multipart uploads under the root.  Transfers this
        store is receiving right now are left alone, and installed snapshots are never touched.
        Returns what was removed (with `dry_run`: what would be, and nothing is).
        """
        if older_than < 0:
            raise ConfigurationError(f"older_than must not be negative, got {older_than}")
        cutoff = time.time() - older_than
        active = set(self._sinks) | set(self._finished)
        return await self.backend.cleanup(FOLDERS, cutoff, active, dry_run)

    async def exists(self, snapshot_id: str) -> bool:
        """Whether `snapshot_id` is installed."""
        path = self.path(snapshot_id)
        with storage_errors(path, "stat"):
            self.backend.forget_listings(path)
            return bool(await self.backend.call("isfile", path))

    async def open(self, snapshot_id: str) -> IO[bytes]:
        """The installed snapshot `snapshot_id`, opened for reading."""
        path = self.path(snapshot_id)
        with storage_errors(path, "open"):
            self.backend.forget_listings(path)
            if not await self.backend.call("isfile", path):
                raise FileNotFoundError(path)
            fileobj: IO[bytes] = await asyncio.to_thread(self.fs.open, path, "rb")
        return fileobj

    async def list(self) -> list[str]:
        """The ids of the installed snapshots, sorted."""
        with storage_errors(self.url, "list"):
            self.fs.invalidate_cache(self.root)
            if not await self.backend.call("isdir", self.root):
                return []
            entries = await self.backend.call("ls", self.root, detail=True)
        names = [
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in entries
            if e.get("type") == "file"
        ]
        return sorted(n for n in names if n != ".fstransport")

    def __repr__(self) -> str:
        return f"FsspecSnapshotStore({self.url!r})"


async def _held(
    snapshot_id: str, sink: VerifyingSink, claimed: list[ChunkRecord]
) -> list[ChunkRecord] | None:
    """The `claimed` chunks `sink` holds as recorded (re-read and checked), or None when that
    cannot be checked (the sink is aborted then: the transfer starts afresh)."""
    latest = _latest(claimed)
    try:
        held = await sink.verify(latest)
    except Exception as exc:  # what cannot be checked is not resumed: start afresh
        log.warning("cannot check the partial data of %r (%s); starting over", snapshot_id, exc)
        with contextlib.suppress(Exception):
            await sink.abort()
        return None
    if len(held) < len(latest):
        log.warning(
            "partial data of %r: %d of %d recorded chunks do not hold their bytes; "
            "they are sent again",
            snapshot_id,
            len(latest) - len(held),
            len(latest),
        )
    return held


def _latest(records: list[ChunkRecord]) -> list[ChunkRecord]:
    """The records of a journal as a ledger keeps them: a later chunk over the same bytes
    replaces earlier ones (only those are worth re-reading)."""
    ledger = ChunkLedger()
    for record in records:
        ledger.add(record.offset, record.length, record.crc)
    return ledger.records()


async def replace_sink(
    store: FsspecSnapshotStore, snapshot_id: str, sink: SnapshotSink, new: SnapshotSink
) -> None:
    """`store` receives the rest of `snapshot_id` into `new` in place of `sink`, which is
    aborted (a delta onto S3 spools its sent ranges: `fstransport.storage.backends.s3.delta`)."""
    if store._sinks.get(snapshot_id) is not sink:
        raise InvalidRequest(f"snapshot {snapshot_id!r} is not being received by this store")
    store._sinks[snapshot_id] = new
    await sink.abort()
