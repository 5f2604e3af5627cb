"""`FsspecSnapshotStore`: where a receiver writes incoming snapshots and installs finished ones.

Layout under the store's root::

    root/<snapshot_id>                         installed snapshots, visible to everyone
    root/.fstransport/partial/<snapshot_id>    snapshots being received (never visible as above)

A snapshot becomes visible as ``root/<snapshot_id>`` only by `install`, which moves a finished
partial file into place in one step (``os.replace`` locally, one dict update in memory).
"""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from fstransport.errors import InvalidRequest
from fstransport.messages import Snapshot, SnapshotMeta
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.storage._errors import storage_errors
from fstransport.storage.sink import MemorySink, PwriteSink, SeekableFileSink, SnapshotSink

__all__ = ["FsspecSnapshotStore", "SnapshotStore"]

PARTIAL_DIR = ".fstransport/partial"


class SnapshotStore(Protocol):
    """What a `Receiver` needs from storage."""

    async def begin(self, meta: SnapshotMeta) -> SnapshotSink:
        """Start receiving the snapshot `meta` describes, discarding any partial data for its id."""

    async def finish(self, meta: SnapshotMeta, sink: SnapshotSink) -> Snapshot:
        """Close a completely received snapshot and return it, readable, not yet installed."""

    async def install(self, snapshot: Snapshot) -> None:
        """Make a finished snapshot visible under its id, replacing any older one."""

    async def abort(self, snapshot_id: str) -> None:
        """Discard the partial or finished-but-not-installed data of `snapshot_id`."""


class FsspecSnapshotStore:
    """A `SnapshotStore` in any fsspec location: ``FsspecSnapshotStore("s3://b/p", **options)``.

    `fsync` (local targets only) flushes each finished snapshot to disk before it is installed.
    """

    def __init__(self, root_url: str, *, fsync: bool = False, **storage_options: Any) -> None:
        with storage_errors(root_url, "open"):
            fs, root = fsspec.core.url_to_fs(root_url, **storage_options)
        self._init(fs, root, root_url, fsync=fsync)

    @classmethod
    def from_filesystem(cls, fs: Any, root: str, *, fsync: bool = False) -> FsspecSnapshotStore:
        """A store over an already-open fsspec filesystem `fs` at path `root`."""
        store = cls.__new__(cls)
        store._init(fs, root, fs.unstrip_protocol(root), fsync=fsync)
        return store

    def _init(self, fs: Any, root: str, url: str, *, fsync: bool) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.url = url
        self._fsync = fsync
        self._sinks: dict[str, SnapshotSink] = {}
        self._finished: dict[str, SnapshotSink] = {}

    # -- paths -------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def path(self, snapshot_id: str) -> str:
        """Where snapshot `snapshot_id` is visible once installed."""
        return self._join(check_snapshot_id(snapshot_id))

    def partial_path(self, snapshot_id: str) -> str:
        """Where snapshot `snapshot_id` is written while it is received."""
        return self._join(PARTIAL_DIR, check_snapshot_id(snapshot_id))

    # -- receiving ---------------------------------------------------------------------------

    async def begin(self, meta: SnapshotMeta) -> SnapshotSink:
        snapshot_id = meta.snapshot_id
        await self.abort(snapshot_id)
        path = self.partial_path(snapshot_id)
        sink: SnapshotSink
        if isinstance(self.fs, MemoryFileSystem):
            sink = MemorySink(self.fs, path)
        elif isinstance(self.fs, LocalFileSystem):
            sink = await PwriteSink.create(path, fsync=self._fsync)
        else:
            with storage_errors(path, "open"):
                await asyncio.to_thread(self.fs.makedirs, self._join(PARTIAL_DIR), exist_ok=True)
            sink = await SeekableFileSink.create(self.fs, path)
        self._sinks[snapshot_id] = sink
        return sink

    async def finish(self, meta: SnapshotMeta, sink: SnapshotSink) -> Snapshot:
        snapshot_id = meta.snapshot_id
        if self._sinks.get(snapshot_id) is not sink:
            raise InvalidRequest(f"snapshot {snapshot_id!r} is not being received by this store")
        await sink.finish()
        del self._sinks[snapshot_id]
        self._finished[snapshot_id] = sink
        with storage_errors(sink.path, "open"):
            data: IO[bytes] = await asyncio.to_thread(self.fs.open, sink.path, "rb")
        return Snapshot(meta, data)

    async def install(self, snapshot: Snapshot) -> None:
        snapshot_id = snapshot.meta.snapshot_id
        sink = self._finished.get(snapshot_id)
        if sink is None:
            raise InvalidRequest(f"snapshot {snapshot_id!r} has not been received completely")
        final = self.path(snapshot_id)
        with storage_errors(final, "install"):
            await asyncio.to_thread(snapshot.data.close)
            if isinstance(self.fs, MemoryFileSystem):
                moved = self.fs.store.pop(sink.path)
                moved.path = final
                self.fs.store[final] = moved
            elif isinstance(self.fs, LocalFileSystem):
                await asyncio.to_thread(os.replace, sink.path, final)
            else:
                await asyncio.to_thread(self.fs.mv, sink.path, final)
        del self._finished[snapshot_id]

    async def abort(self, snapshot_id: str) -> None:
        """Discard what is held of `snapshot_id` that is not installed; the installed one stays."""
        check_snapshot_id(snapshot_id)
        for table in (self._sinks, self._finished):
            sink = table.pop(snapshot_id, None)
            if sink is not None:
                await sink.abort()
        partial = self.partial_path(snapshot_id)
        with storage_errors(partial, "abort"):
            if isinstance(self.fs, MemoryFileSystem):
                self.fs.store.pop(partial, None)
            elif await asyncio.to_thread(self.fs.exists, partial):
                await asyncio.to_thread(self.fs.rm_file, partial)

    # -- reading installed snapshots ----------------------------------------------------------

    async def exists(self, snapshot_id: str) -> bool:
        """Whether `snapshot_id` is installed."""
        path = self.path(snapshot_id)
        with storage_errors(path, "stat"):
            return bool(await asyncio.to_thread(self.fs.isfile, path))

    async def open(self, snapshot_id: str) -> IO[bytes]:
        """The installed snapshot `snapshot_id`, opened for reading."""
        path = self.path(snapshot_id)
        with storage_errors(path, "open"):
            if not await asyncio.to_thread(self.fs.isfile, path):
                raise FileNotFoundError(path)
            fileobj: IO[bytes] = await asyncio.to_thread(self.fs.open, path, "rb")
        return fileobj

    async def list(self) -> list[str]:
        """The ids of the installed snapshots, sorted."""
        with storage_errors(self.url, "list"):
            if not await asyncio.to_thread(self.fs.isdir, self.root):
                return []
            entries = await asyncio.to_thread(self.fs.ls, self.root, detail=True)
        names = [
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in entries
            if e.get("type") == "file"
        ]
        return sorted(n for n in names if n != ".fstransport")

    def __repr__(self) -> str:
        return f"FsspecSnapshotStore({self.url!r})"
