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
import datetime
import json
import logging
import os
import threading
import time
from typing import IO, Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from fstransport.checksum import parse_checksum
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import Snapshot, SnapshotMeta
from fstransport.options import RetryPolicy
from fstransport.protocol.parts import MIN_PART_SIZE
from fstransport.protocol.ranges import ChunkLedger, ChunkRecord
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import storage_errors
from fstransport.storage.base import (  # SnapshotStore kept importable from here
    SnapshotSink,
    SnapshotStore,
    VerifyingSink,
)
from fstransport.storage.journal import LocalJournal, MemoryJournal, parse_records, resumable
from fstransport.storage.multipart import DEFAULT_UPLOADS, MultipartSink
from fstransport.storage.s3 import is_s3, open_s3, split_bucket_key
from fstransport.storage.sequential import SequentialSink
from fstransport.storage.sink import (
    MemorySink,
    PwriteSink,
    SeekableFileSink,
    discard_file,
)
from fstransport.tree import (
    MANIFEST_NAME,
    STREAM_ABOVE,
    TREE,
    TREE_UPLOADS,
    TreeFile,
    TreeTable,
    copy_file,
    install_local_tree,
    new_generation,
    read_table,
    tree_manifest,
)

__all__ = ["FsspecSnapshotStore", "SinkKind", "SnapshotStore"]

log = logging.getLogger("fstransport.store")

PARTIAL_DIR = ".fstransport/partial"
JOURNAL_DIR = ".fstransport/journal"
PACKED_DIR = ".fstransport/packed"
STAGING_DIR = ".fstransport/staging"
OLD_DIR = ".fstransport/old"
ABSENT_FOR = 5.0
"""Seconds for which an S3 store trusts having just seen no upload state for a snapshot, so that
`has_partial`, `resume` and `begin` of one transfer look it up once, not three times."""


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


class FsspecSnapshotStore:
    """A `SnapshotStore` in any fsspec location: ``FsspecSnapshotStore("s3://b/p", **options)``.

    How chunks are written is chosen by what the target can do (`sink="auto"`): in place for
    ``memory://``, ``os.pwrite`` for local folders, a multipart upload for S3, ``seek`` +
    ``write`` for other filesystems whose write files seek, and a bounded reorder buffer in front
    of a sequential write for the rest.  `sink` forces one of ``"seekable"``, ``"sequential"``
    or ``"multipart"`` (S3 only).  `part_size` overrides the S3 part size (at least 5 MiB) and
    `upload_concurrency` is how many parts are uploaded at once (4).
    `fsync` (local targets only) flushes each finished snapshot to disk before it is installed.
    `retry` is how transient storage failures (5xx, SlowDown, connection resets) are retried
    before they surface as `StorageError`.  `full_object_checksum` asks S3 to verify each
    object's whole CRC32C too, where the server takes it (see the property of that name for the
    default).

    On S3 a snapshot is uploaded straight to ``root/<snapshot_id>`` and appears there when the
    upload completes, after the final chunk was verified; there is no rename on S3.  Close the
    store with ``await store.close()`` (or ``async with``) to release its S3 connections.
    """

    accepts_trees = True
    """It installs directory snapshots (``SnapshotMeta(kind="tree")``) too."""

    def __init__(
        self,
        root_url: str,
        *,
        fsync: bool = False,
        sink: SinkKind = "auto",
        part_size: int | None = None,
        retry: RetryPolicy | None = None,
        full_object_checksum: bool | None = None,
        upload_concurrency: int = DEFAULT_UPLOADS,
        **storage_options: Any,
    ) -> None:
        with storage_errors(root_url, "open"):
            fs, root = fsspec.core.url_to_fs(root_url, **storage_options)
        self._init(
            fs,
            root,
            root_url,
            fsync,
            sink,
            part_size,
            retry,
            full_object_checksum,
            upload_concurrency,
        )

    @classmethod
    def from_filesystem(
        cls,
        fs: Any,
        root: str,
        *,
        fsync: bool = False,
        sink: SinkKind = "auto",
        part_size: int | None = None,
        retry: RetryPolicy | None = None,
        full_object_checksum: bool | None = None,
        upload_concurrency: int = DEFAULT_UPLOADS,
    ) -> FsspecSnapshotStore:
        """A store over an already-open fsspec filesystem `fs` at path `root`."""
        store = cls.__new__(cls)
        url = fs.unstrip_protocol(root)
        store._init(
            fs, root, url, fsync, sink, part_size, retry, full_object_checksum, upload_concurrency
        )
        return store

    def _init(
        self,
        fs: Any,
        root: str,
        url: str,
        fsync: bool,
        sink: SinkKind,
        part_size: int | None,
        retry: RetryPolicy | None,
        full_object_checksum: bool | None,
        upload_concurrency: int,
    ) -> None:
        _check_type("upload_concurrency", upload_concurrency, int)
        _check_type("part_size", part_size, int, None)
        _check_type("fsync", fsync, bool)
        _check_type("full_object_checksum", full_object_checksum, bool, None)
        if upload_concurrency < 1:
            raise ConfigurationError(
                f"upload_concurrency must be at least 1, got {upload_concurrency}"
            )
        if sink not in ("auto", "seekable", "sequential", "multipart"):
            raise ConfigurationError(f"unknown sink kind {sink!r}")
        if sink == "multipart" and not is_s3(fs):
            raise ConfigurationError("sink='multipart' needs an s3:// store")
        if part_size is not None and part_size < MIN_PART_SIZE:
            raise ConfigurationError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.url = url
        self.sink_kind: SinkKind = sink
        self.part_size = part_size
        self.upload_concurrency = upload_concurrency
        self.retry = retry or RetryPolicy()
        self._full_object = full_object_checksum
        self._fsync = fsync
        self._sinks: dict[str, SnapshotSink] = {}
        self._finished: dict[str, SnapshotSink] = {}
        self._s3: Any = None
        self._s3_loop: asyncio.AbstractEventLoop | None = None
        self._no_state: dict[str, float] = {}  # snapshot id -> when its S3 state was missing

    async def __aenter__(self) -> FsspecSnapshotStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the store's S3 connections and the files of transfers still in progress.

        Those transfers are let go, not aborted: their partial data stays (a local journal is
        written down first), to be resumed by a later receiver or removed by `cleanup`.
        """
        for sink in self._sinks.values():
            if isinstance(sink, (MultipartSink, PwriteSink)):
                await sink.release()  # (a local one writes its journal down first)
        if isinstance(self.fs, LocalFileSystem) and not self._sinks and not self._finished:
            # no empty .fstransport/{partial,journal} folders after the last transfer; a folder
            # that still holds something (another receiver's partial data) stays
            folders = [
                self._join(name)
                for name in (PARTIAL_DIR, JOURNAL_DIR, STAGING_DIR, OLD_DIR, ".fstransport")
            ]
            await asyncio.to_thread(_remove_empty_folders, folders)
        if self._s3 is not None:
            fs, self._s3 = self._s3, None
            await close_async_filesystem(fs)

    async def _async_s3(self) -> Any:
        """The store's ``S3FileSystem(asynchronous=True)`` for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._s3 is None or self._s3_loop is not loop:
            if self._s3 is not None and self._s3_loop is not None and not self._s3_loop.is_closed():
                await close_async_filesystem(self._s3)
            self._s3 = await open_s3(dict(self.fs.storage_options))
            self._s3_loop = loop
        return self._s3

    async def _fs_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.fs.<method>(...)`` without blocking the loop: on S3 through the store's
        asynchronous client (fresh listings every time), elsewhere in a worker thread."""
        if is_s3(self.fs):
            s3 = await self._async_s3()
            s3.invalidate_cache()
            return await getattr(s3, f"_{method}")(*args, **kwargs)
        return await asyncio.to_thread(getattr(self.fs, method), *args, **kwargs)

    @property
    def full_object_checksum(self) -> bool:
        """Whether S3 uploads ask the bucket to verify the whole object's CRC32C as well.

        Unless set, on for AWS itself and off for other endpoints (``endpoint_url``): not every
        S3-compatible server has full-object checksums, and moto computes them slowly.
        """
        if self._full_object is not None:
            return self._full_object
        client_kwargs = self.fs.storage_options.get("client_kwargs") or {}
        custom = self.fs.storage_options.get("endpoint_url") or client_kwargs.get("endpoint_url")
        return not custom

    # -- paths -------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def path(self, snapshot_id: str) -> str:
        """Where snapshot `snapshot_id` is visible once installed."""
        return self._join(check_snapshot_id(snapshot_id))

    def upload_path(self, meta: SnapshotMeta) -> str:
        """Where an S3 upload of `meta` goes: the final name for a file, a staging name for
        a directory snapshot (unpacked from there by `install`)."""
        if meta.kind == TREE:
            return self._join(PACKED_DIR, check_snapshot_id(meta.snapshot_id))
        return self.path(meta.snapshot_id)

    def partial_path(self, snapshot_id: str) -> str:
        """Where snapshot `snapshot_id` is written while it is received."""
        return self._join(PARTIAL_DIR, check_snapshot_id(snapshot_id))

    # -- receiving ---------------------------------------------------------------------------

    def journal_path(self, snapshot_id: str) -> str:
        """Where the record of what a partial snapshot holds is kept (for resuming it)."""
        return self._join(JOURNAL_DIR, check_snapshot_id(snapshot_id))

    async def begin(self, meta: SnapshotMeta) -> SnapshotSink:
        snapshot_id = meta.snapshot_id
        await self._discard_stale(snapshot_id)
        sink = await self._open_sink(meta)
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
        path, journal = self.partial_path(snapshot_id), self.journal_path(snapshot_id)
        found: tuple[VerifyingSink, list[ChunkRecord]] | None = None
        with storage_errors(path, "resume"):
            if self.sink_kind in ("auto", "multipart") and is_s3(self.fs):
                if self._state_known_absent(snapshot_id):
                    return None
                bucket, key = split_bucket_key(self.upload_path(meta))
                state_key = split_bucket_key(journal)[1]
                s3 = await self._async_s3()
                exists, state = await MultipartSink.read_state(s3, bucket, state_key)
                if not exists:
                    self._no_state[snapshot_id] = time.monotonic()
                found = MultipartSink.from_state(
                    s3, bucket, key, meta, state_key, state, self.retry, self.upload_concurrency
                )
            elif self.sink_kind == "auto" and isinstance(self.fs, MemoryFileSystem):
                records = parse_records(MemoryJournal.read(self.fs, journal) or "", meta)
                if records is not None and path in self.fs.store:
                    found = MemorySink(self.fs, path, MemoryJournal(self.fs, journal)), records
            elif self.sink_kind == "auto" and isinstance(self.fs, LocalFileSystem):
                text = await asyncio.to_thread(LocalJournal.read, journal)
                records = parse_records(text or "", meta)
                if records is not None and await asyncio.to_thread(os.path.isfile, path):
                    local = await PwriteSink.create(
                        path, fsync=self._fsync, journal_path=journal, meta=meta, resume=True
                    )
                    found = local, records
        if found is None:
            return None
        sink, claimed = found
        latest = _latest(claimed)
        self._sinks[snapshot_id] = sink
        try:
            held = await sink.verify(latest)
        except Exception as exc:  # what cannot be checked is not resumed: start afresh
            log.warning("cannot check the partial data of %r (%s); starting over", snapshot_id, exc)
            del self._sinks[snapshot_id]
            with contextlib.suppress(Exception):
                await sink.abort()
            return None
        except BaseException:
            del self._sinks[snapshot_id]
            raise
        if len(held) < len(latest):
            log.warning(
                "partial data of %r: %d of %d recorded chunks do not hold their bytes; "
                "they are sent again",
                snapshot_id,
                len(latest) - len(held),
                len(latest),
            )
        return sink, held

    async def has_partial(self, snapshot_id: str) -> bool:
        """Whether an earlier receiver left resumable partial data for `snapshot_id`."""
        journal = self.journal_path(snapshot_id)
        with storage_errors(journal, "stat"):
            if isinstance(self.fs, MemoryFileSystem):
                return journal in self.fs.store
            if is_s3(self.fs) and self.sink_kind in ("auto", "multipart"):
                if self._state_known_absent(snapshot_id):
                    return False
                if await self._state_exists(journal):
                    return True
                self._no_state[snapshot_id] = time.monotonic()
                return False
            self.fs.invalidate_cache(self.fs._parent(journal))
            return bool(await self._fs_call("exists", journal))

    def _state_known_absent(self, snapshot_id: str, *, forget: bool = False) -> bool:
        """Whether this store saw no S3 upload state for `snapshot_id` a moment ago."""
        seen = self._no_state.pop(snapshot_id, None) if forget else self._no_state.get(snapshot_id)
        return seen is not None and time.monotonic() - seen < ABSENT_FOR

    async def _state_exists(self, journal: str) -> bool:
        """Whether the S3 upload state object `journal` exists: one HEAD (s3fs's ``exists``
        would list the "folder" too when the object is missing)."""
        bucket, key = split_bucket_key(journal)
        s3 = await self._async_s3()
        try:
            await s3._call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    async def _open_sink(self, meta: SnapshotMeta) -> SnapshotSink:
        kind = self.sink_kind
        snapshot_id = meta.snapshot_id
        path = self.partial_path(snapshot_id)
        journal = self.journal_path(snapshot_id) if meta.size is not None else None
        if kind in ("auto", "multipart") and is_s3(self.fs):
            bucket, key = split_bucket_key(self.upload_path(meta))
            state_key = split_bucket_key(journal)[1] if journal else None
            return MultipartSink(
                await self._async_s3(),
                bucket,
                key,
                meta,
                part_size=self.part_size,
                max_uploads=self.upload_concurrency,
                state_key=state_key,
                retry=self.retry,
                full_object_checksum=self.full_object_checksum,
            )
        if kind == "auto" and isinstance(self.fs, MemoryFileSystem):
            if journal is None:
                return MemorySink(self.fs, path)
            return MemorySink(self.fs, path, MemoryJournal.create(self.fs, journal, meta))
        if kind == "auto" and isinstance(self.fs, LocalFileSystem):
            return await PwriteSink.create(path, fsync=self._fsync, journal_path=journal, meta=meta)
        with storage_errors(path, "open"):
            await asyncio.to_thread(self.fs.makedirs, self._join(PARTIAL_DIR), exist_ok=True)
            fileobj: IO[bytes] = await asyncio.to_thread(self.fs.open, path, "wb")
        if kind != "sequential" and fileobj.seekable():
            return SeekableFileSink(self.fs, path, fileobj)
        if kind == "seekable":
            await asyncio.to_thread(discard_file, fileobj)
            raise ConfigurationError(f"{self.url} cannot seek in files being written")
        return SequentialSink(self.fs, path, fileobj, meta.snapshot_id)

    async def finish(self, meta: SnapshotMeta, sink: SnapshotSink) -> Snapshot:
        snapshot_id = meta.snapshot_id
        if self._sinks.get(snapshot_id) is not sink:
            raise InvalidRequest(f"snapshot {snapshot_id!r} is not being received by this store")
        if isinstance(sink, MultipartSink) and meta.checksum is not None:
            sink.whole_crc = parse_checksum(meta.checksum)
        await sink.finish()
        del self._sinks[snapshot_id]
        self._finished[snapshot_id] = sink
        with storage_errors(sink.path, "open"):
            self._forget_listings(sink.path)
            # The size is known: opening must not cost a round trip to ask for it.
            data: IO[bytes] = await asyncio.to_thread(self.fs.open, sink.path, "rb", size=meta.size)
        return Snapshot(meta, data)

    async def install(self, snapshot: Snapshot) -> None:
        snapshot_id = snapshot.meta.snapshot_id
        sink = self._finished.get(snapshot_id)
        if sink is None:
            raise InvalidRequest(f"snapshot {snapshot_id!r} has not been received completely")
        final = self.path(snapshot_id)
        if snapshot.meta.kind == TREE:
            try:
                await self._install_tree(snapshot, sink.path, final)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(snapshot.data.close)
                await self._remove_packed(sink.path)
                self._finished.pop(snapshot_id, None)
            return
        with storage_errors(final, "install"):
            await asyncio.to_thread(snapshot.data.close)
            if isinstance(sink, MultipartSink):
                pass  # completing the upload already put the object in place
            elif isinstance(self.fs, MemoryFileSystem):
                moved = self.fs.store.pop(sink.path)
                moved.path = final
                self.fs.store[final] = moved
            elif isinstance(self.fs, LocalFileSystem):
                await asyncio.to_thread(os.replace, sink.path, final)
            else:
                await asyncio.to_thread(self.fs.mv, sink.path, final)
        del self._finished[snapshot_id]

    async def release(self, snapshot_id: str) -> None:
        """Let go of the transfer of `snapshot_id` in progress: close what it holds open,
        keeping its partial data (and journal) for a later `resume` or `cleanup`.  Partial
        data that cannot be resumed (a sink without a ``release`` method) is discarded."""
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
        for table in (self._sinks, self._finished):
            sink = table.pop(snapshot_id, None)
            if sink is not None:
                await sink.abort()
        partial = self.partial_path(snapshot_id)
        with storage_errors(partial, "abort"):
            for leftover in (partial, self.journal_path(snapshot_id)):
                if isinstance(self.fs, MemoryFileSystem):
                    self.fs.store.pop(leftover, None)
                elif await self._fs_call("exists", leftover):
                    await self._fs_call("rm_file", leftover)
        if is_s3(self.fs):
            await self._abort_uploads(self.path(snapshot_id))
            packed = self._join(PACKED_DIR, snapshot_id)
            await self._abort_uploads(packed)
            await self._remove_packed(packed)

    # -- directory snapshots -----------------------------------------------------------------

    async def _remove_packed(self, path: str) -> None:
        """Delete a directory snapshot's packed stream once unpacked (or abandoned)."""
        with storage_errors(path, "remove"):
            if isinstance(self.fs, MemoryFileSystem):
                self.fs.store.pop(path, None)
            elif isinstance(self.fs, LocalFileSystem):
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(os.unlink, path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    await self._fs_call("rm_file", path)

    async def _install_tree(self, snapshot: Snapshot, packed: str, final: str) -> None:
        """Unpack a verified directory snapshot and make it visible at `final` in one step."""
        size = snapshot.meta.size
        assert size is not None
        with storage_errors(final, "install"):
            # the receiver checked the table against its limits; the store checks its shape
            # again itself, for it writes what the table names
            table = await asyncio.to_thread(read_table, snapshot.data, size, None)
            if isinstance(self.fs, LocalFileSystem):
                await asyncio.to_thread(
                    install_local_tree,
                    snapshot.data,
                    table,
                    final,
                    self._join(STAGING_DIR),
                    self._join(OLD_DIR),
                    fsync=self._fsync,
                )
            else:
                await self._install_object_tree(snapshot, table, final)

    async def _install_object_tree(self, snapshot: Snapshot, table: TreeTable, final: str) -> None:
        """Write the files under a fresh generation prefix, then the manifest (the commit
        marker), then remove older generations.  A failure before the manifest removes the
        new generation; the tree a reader finds through the manifest is never a half one."""
        generation = new_generation()
        base = f"{final}/{generation}"
        reading = threading.Lock()  # one file object serves every read

        def read(entry: TreeFile) -> bytes:
            body = bytearray()
            with reading:
                copy_file(snapshot.data, entry, body.extend)
            return bytes(body)

        async def put(entry: TreeFile) -> None:
            async with slots:
                target = f"{base}/{entry.path}"
                if entry.size <= STREAM_ABOVE:
                    await self._fs_call("pipe_file", target, await asyncio.to_thread(read, entry))
                else:
                    await asyncio.to_thread(
                        self._stream_entry, snapshot.data, reading, entry, target
                    )

        slots = asyncio.Semaphore(TREE_UPLOADS)
        pending: set[asyncio.Task[None]] = set()
        # memory:// cannot hold a file and a folder under one name: a file snapshot there
        # steps aside while the tree is written, and comes back if the tree fails
        replaced_file = (
            self.fs.store.pop(final, None) if isinstance(self.fs, MemoryFileSystem) else None
        )
        try:
            for entry in table.files:
                pending.add(asyncio.ensure_future(put(entry)))
                if len(pending) >= 4 * TREE_UPLOADS:
                    done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                    for task in done:
                        task.result()
            while pending:
                done, pending = await asyncio.wait(pending, return_when="FIRST_EXCEPTION")
                for task in done:
                    task.result()
            manifest = tree_manifest(snapshot.meta, table, generation)
            await self._fs_call("pipe_file", f"{final}/{MANIFEST_NAME}", manifest)
        except BaseException:
            # stop the other writes first, so that none lands after the generation is removed
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._fs_call("rm", base, recursive=True))
            if replaced_file is not None:
                self.fs.store[final] = replaced_file
            raise
        self._forget_listings(f"{final}/{MANIFEST_NAME}")
        await self._remove_replaced(final, generation)

    async def _remove_replaced(self, final: str, generation: str) -> None:
        """After a tree's manifest is written: remove what it replaced under `final` (older
        generations, what a crashed install left) and a file snapshot stored at `final` itself."""
        try:
            if is_s3(self.fs):
                with contextlib.suppress(FileNotFoundError):
                    await self._fs_call("rm_file", final)  # one key: never the tree under it
            entries = await self._fs_call("ls", final, detail=False)
            for name in entries:
                path = str(name).rstrip("/")
                if not path.lstrip("/").startswith(f"{final.lstrip('/')}/"):
                    continue  # (a listing of a file names the file itself)
                if path.rsplit("/", 1)[-1] not in (generation, MANIFEST_NAME):
                    await self._fs_call("rm", path, recursive=True)
        except Exception as exc:
            log.warning("could not remove older generations of %s: %s", final, exc)

    def _stream_entry(
        self, data: IO[bytes], reading: threading.Lock, entry: TreeFile, target: str
    ) -> None:
        """Copy a large file of a tree to `target` without holding it in memory (blocking)."""
        with reading, self.fs.open(target, "wb") as out:
            copy_file(data, entry, out.write)

    async def _discard_stale(self, snapshot_id: str) -> None:
        """Before a new transfer of `snapshot_id`: drop what an earlier one left, cheaply.

        Unlike `abort`, on S3 this does not list the bucket's uploads: it aborts the upload the
        recorded state names (if any); uploads that left no record are `cleanup`'s job.
        """
        if not (is_s3(self.fs) and self.sink_kind in ("auto", "multipart")):
            await self.abort(snapshot_id)
            return
        for table in (self._sinks, self._finished):
            sink = table.pop(snapshot_id, None)
            if sink is not None:
                await sink.abort()
        if self._state_known_absent(snapshot_id, forget=True):
            return  # resume() or has_partial() just found no state: nothing to discard
        bucket, state_key = split_bucket_key(self.journal_path(snapshot_id))
        s3 = await self._async_s3()
        with storage_errors(f"s3://{bucket}/{state_key}", "discard"):
            try:
                response = await s3._call_s3("get_object", Bucket=bucket, Key=state_key)
                state = json.loads(await response["Body"].read())
            except (FileNotFoundError, ValueError):
                return
            upload_id = state.get("upload_id") if isinstance(state, dict) else None
            if upload_id:
                _, key = split_bucket_key(self.path(snapshot_id))
                with contextlib.suppress(FileNotFoundError):
                    await s3._call_s3(
                        "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=str(upload_id)
                    )
            await s3._call_s3("delete_object", Bucket=bucket, Key=state_key)

    async def _abort_uploads(self, path: str) -> None:
        """Abort every incomplete multipart upload to `path`, this process's or an earlier one's."""
        bucket, key = split_bucket_key(path)
        s3 = await self._async_s3()
        with storage_errors(f"s3://{path}", "abort uploads"):
            try:
                listing = await s3._call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
            except FileNotFoundError:  # no bucket, so no uploads
                return
            for upload in listing.get("Uploads", []):
                if upload.get("Key") == key:
                    await s3._call_s3(
                        "abort_multipart_upload",
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload["UploadId"],
                    )

    # -- clean-up ------------------------------------------------------------------------------

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
        removed: list[str] = []
        for folder in (PARTIAL_DIR, JOURNAL_DIR, PACKED_DIR, STAGING_DIR, OLD_DIR):
            where = self._join(folder)
            with storage_errors(where, "list"):
                self.fs.invalidate_cache(where)
                try:
                    entries = await self._fs_call("ls", where, detail=True)
                except FileNotFoundError:
                    continue
            for entry in entries:
                path = str(entry["name"]).rstrip("/")
                # (folders: what a crashed unpack or replace of a local tree left)
                is_tree_folder = folder in (STAGING_DIR, OLD_DIR)
                wanted = "directory" if is_tree_folder else "file"
                if path.rsplit("/", 1)[-1] in active or entry.get("type") != wanted:
                    continue
                touched = _modified(entry)
                if touched is not None and touched >= cutoff:
                    continue
                if not dry_run:
                    with storage_errors(path, "clean up"):
                        if is_tree_folder:
                            await self._fs_call("rm", path, recursive=True)
                        else:
                            await self._fs_call("rm_file", path)
                removed.append(self.fs.unstrip_protocol(path))
        if is_s3(self.fs):
            removed.extend(await self._cleanup_uploads(cutoff, active, dry_run))
        return removed

    async def _cleanup_uploads(self, cutoff: float, active: set[str], dry_run: bool) -> list[str]:
        bucket, _, prefix = self.root.lstrip("/").partition("/")
        prefix = f"{prefix}/" if prefix else ""
        s3 = await self._async_s3()
        removed = []
        with storage_errors(f"s3://{self.root}", "list uploads"):
            listing = await s3._call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        for upload in listing.get("Uploads", []):
            key = str(upload.get("Key", ""))
            name = key[len(prefix) :]
            if name.startswith(f"{PACKED_DIR}/"):  # a directory snapshot's packed stream
                name = name[len(PACKED_DIR) + 1 :]
            elif name.count("/") >= 2 and name.split("/")[1].startswith("g-"):
                name = name.split("/")[0]  # a large file of a tree's generation (a crashed install)
            started = upload.get("Initiated")
            if "/" in name or name in active:
                continue
            if started is not None and started.timestamp() >= cutoff:
                continue
            if not dry_run:
                with storage_errors(f"s3://{bucket}/{key}", "abort upload"):
                    await s3._call_s3(
                        "abort_multipart_upload",
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload["UploadId"],
                    )
            removed.append(f"s3://{bucket}/{key} (upload {upload['UploadId']})")
        return removed

    # -- reading installed snapshots ----------------------------------------------------------

    def _forget_listings(self, path: str) -> None:
        """Drop fsspec's cached listings of `path` and its folder: the bucket or folder may have
        changed behind the cache's back (our own S3 uploads go through another client)."""
        self.fs.invalidate_cache(path)
        self.fs.invalidate_cache(self.fs._parent(path))

    async def exists(self, snapshot_id: str) -> bool:
        """Whether `snapshot_id` is installed."""
        path = self.path(snapshot_id)
        with storage_errors(path, "stat"):
            self._forget_listings(path)
            return bool(await self._fs_call("isfile", path))

    async def open(self, snapshot_id: str) -> IO[bytes]:
        """The installed snapshot `snapshot_id`, opened for reading."""
        path = self.path(snapshot_id)
        with storage_errors(path, "open"):
            self._forget_listings(path)
            if not await self._fs_call("isfile", path):
                raise FileNotFoundError(path)
            fileobj: IO[bytes] = await asyncio.to_thread(self.fs.open, path, "rb")
        return fileobj

    async def list(self) -> list[str]:
        """The ids of the installed snapshots, sorted."""
        with storage_errors(self.url, "list"):
            self.fs.invalidate_cache(self.root)
            if not await self._fs_call("isdir", self.root):
                return []
            entries = await self._fs_call("ls", self.root, detail=True)
        names = [
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in entries
            if e.get("type") == "file"
        ]
        return sorted(n for n in names if n != ".fstransport")

    def __repr__(self) -> str:
        return f"FsspecSnapshotStore({self.url!r})"


def _remove_empty_folders(folders: list[str]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):  # missing or not empty
            os.rmdir(folder)


def _latest(records: list[ChunkRecord]) -> list[ChunkRecord]:
    """The records of a journal as a ledger keeps them: a later chunk over the same bytes
    replaces earlier ones (only those are worth re-reading)."""
    ledger = ChunkLedger()
    for record in records:
        ledger.add(record.offset, record.length, record.crc)
    return ledger.records()


def _modified(entry: dict[str, Any]) -> float | None:
    """When an fsspec listing entry last changed, as a Unix time, if the filesystem says."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
    return None
