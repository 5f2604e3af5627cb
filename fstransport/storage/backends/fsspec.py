"""`FsspecBackend`: any fsspec filesystem, and the base every other backend refines.

It writes through fsspec file objects (`SeekableFileSink` where they seek, `SequentialSink`
where they do not), installs with ``fs.mv``, unpacks directory snapshots as objects (a fresh
generation prefix, then the manifest: see `objects`), and cleans up by listing the store's
folders.  It keeps no journal, so nothing it wrote is resumed.  Every filesystem call goes
through `call`, in a worker thread here (the S3 backend answers on its asynchronous client).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, ClassVar

from fstransport.errors import ConfigurationError
from fstransport.messages import Snapshot, SnapshotMeta
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.files import SeekableFileSink, SequentialSink, discard_file
from fstransport.storage.backends.objects import install_object_tree
from fstransport.storage.base import ChunkSource, DeltaBase, SnapshotSink, VerifyingSink
from fstransport.storage.layout import OLD_DIR, PARTIAL_DIR, STAGING_DIR
from fstransport.tree import TREE, TreeTable, read_table

if TYPE_CHECKING:
    from fstransport.storage.source import ReadSettings
    from fstransport.storage.store import FsspecSnapshotStore

__all__ = ["FsspecBackend", "modified"]

Found = tuple[VerifyingSink, list[ChunkRecord]]
"""Partial data a backend found for a snapshot: its sink and the chunks its record claims."""


class FsspecBackend:
    """How a `FsspecSnapshotStore` writes, installs, resumes and cleans up on its filesystem.

    A backend serves one store (`store`: its filesystem, paths and settings); the store keeps
    the bookkeeping of transfers and calls the backend for everything the filesystem decides.
    """

    sink_kinds: ClassVar[tuple[str, ...]] = ("auto", "seekable", "sequential")
    """The `FsspecSnapshotStore(sink=...)` values this backend takes."""

    def __init__(self, store: FsspecSnapshotStore) -> None:
        self.store = store
        self.fs: Any = store.fs

    @classmethod
    def serves(cls, fs: Any) -> bool:
        """Whether this backend can serve `fs` (a filesystem or its class): every one can."""
        return True

    # -- filesystem calls ---------------------------------------------------------------------

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<method>(...)`` without blocking the event loop (in a worker thread)."""
        return await asyncio.to_thread(getattr(self.fs, method), *args, **kwargs)

    def forget_listings(self, path: str) -> None:
        """Drop fsspec's cached listings of `path` and its folder: the bucket or folder may have
        changed behind the cache's back (our own S3 uploads go through another client)."""
        self.fs.invalidate_cache(path)
        self.fs.invalidate_cache(self.fs._parent(path))

    async def close(self, sinks: Sequence[SnapshotSink], *, idle: bool) -> None:
        """The store is closed while `sinks` are receiving (`idle`: none is, none is finished)."""

    def delta_base(self, *, keep: bool = False) -> DeltaBase | None:
        """How the store's snapshots serve as delta bases; None: they do not (every snapshot
        is received in full).  `keep`: keep what is learnt about them in the store (a
        long-lived receiver's: their maps, see `fstransport.delta.cache`)."""
        return None

    # -- receiving ----------------------------------------------------------------------------

    async def open_sink(self, meta: SnapshotMeta) -> SnapshotSink:
        """A fresh sink for `meta` at the store's partial path."""
        kind = self.store.sink_kind
        path = self.store.partial_path(meta.snapshot_id)
        with storage_errors(path, "open"):
            await asyncio.to_thread(self.fs.makedirs, self.store.folder(PARTIAL_DIR), exist_ok=True)
            fileobj: IO[bytes] = await asyncio.to_thread(self.fs.open, path, "wb")
        if kind != "sequential" and fileobj.seekable():
            return SeekableFileSink(self.fs, path, fileobj)
        if kind == "seekable":
            await asyncio.to_thread(discard_file, fileobj)
            raise ConfigurationError(f"{self.store.url} cannot seek in files being written")
        return SequentialSink(self.fs, path, fileobj, meta.snapshot_id)

    async def find_partial(self, meta: SnapshotMeta) -> Found | None:
        """The partial data an earlier receiver recorded for exactly `meta`, not yet verified."""
        return None

    async def has_partial(self, snapshot_id: str) -> bool:
        """Whether an earlier receiver left a record of partial data for `snapshot_id`."""
        journal = self.store.journal_path(snapshot_id)
        self.fs.invalidate_cache(self.fs._parent(journal))
        return bool(await self.call("exists", journal))

    async def finish_sink(self, meta: SnapshotMeta, sink: SnapshotSink) -> None:
        """Flush and close a completely received sink."""
        await sink.finish()

    async def open_finished(self, path: str, size: int | None) -> IO[bytes]:
        """A finished snapshot at `path`, opened for reading (its size known: no round trip)."""
        self.forget_listings(path)
        fileobj: IO[bytes] = await asyncio.to_thread(self.fs.open, path, "rb", size=size)
        return fileobj

    async def install(self, snapshot: Snapshot, sink: SnapshotSink, final: str) -> None:
        """Make the finished `snapshot` (written by `sink`) visible at `final`, and close it."""
        if snapshot.meta.kind != TREE:
            await asyncio.to_thread(snapshot.data.close)
            await self.install_file(sink, final)
            return
        try:
            await self.install_packed(snapshot, final)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(snapshot.data.close)
            with storage_errors(sink.path, "remove"):
                await self.remove(sink.path)  # the packed stream

    async def install_file(self, sink: SnapshotSink, final: str) -> None:
        """Move a finished file snapshot from `sink`'s path to `final` in one step."""
        await asyncio.to_thread(self.fs.mv, sink.path, final)

    async def install_packed(self, snapshot: Snapshot, final: str) -> None:
        """Unpack a verified directory snapshot (its packed stream) and make it visible at
        `final` in one step."""
        size = snapshot.meta.size
        assert size is not None
        # the receiver checked the table against its limits; the store checks its shape
        # again itself, for it writes what the table names
        table = await asyncio.to_thread(read_table, snapshot.data, size, None)
        await self.install_tree(snapshot, table, final)

    async def install_tree(self, snapshot: Snapshot, table: TreeTable, final: str) -> None:
        """Unpack a verified directory snapshot at `final`: files under a new generation, then
        the manifest (see `fstransport.storage.backends.objects`)."""
        await install_object_tree(self, snapshot, table, final)

    def set_aside(self, final: str) -> object:
        """Before a tree is written at `final`: take away what cannot stay beside it (a file
        snapshot, where a file and a folder cannot share a name); `put_back` restores it."""
        return None

    def put_back(self, final: str, held: object) -> None:
        """A tree at `final` failed: restore what `set_aside` took."""

    async def drop_replaced_file(self, final: str) -> None:
        """After a tree's manifest is written at `final`: remove a file snapshot stored there."""

    # -- discarding ---------------------------------------------------------------------------

    async def remove(self, path: str) -> None:
        """Delete the file at `path` if it is there."""
        if await self.call("exists", path):
            with contextlib.suppress(FileNotFoundError):
                await self.call("rm_file", path)

    async def discard(self, snapshot_id: str) -> None:
        """Delete what is stored of `snapshot_id` that is not installed (its sinks are gone)."""
        partial = self.store.partial_path(snapshot_id)
        with storage_errors(partial, "abort"):
            for leftover in (partial, self.store.journal_path(snapshot_id)):
                await self.remove(leftover)

    async def discard_stale(self, snapshot_id: str) -> None:
        """Before a new transfer of `snapshot_id`: drop what an earlier one left."""
        await self.discard(snapshot_id)

    # -- clean-up -----------------------------------------------------------------------------

    async def cleanup(
        self, folders: Sequence[str], cutoff: float, active: set[str], dry_run: bool
    ) -> list[str]:
        """Remove what `folders` hold that was last touched before `cutoff` and is not `active`:
        files, and in the local folders of tree installs, folders."""
        removed: list[str] = []
        for folder in folders:
            where = self.store.folder(folder)
            with storage_errors(where, "list"):
                self.fs.invalidate_cache(where)
                try:
                    entries = await self.call("ls", where, detail=True)
                except FileNotFoundError:
                    continue
            # (folders: what a crashed unpack or replace of a local tree left)
            is_tree_folder = folder in (STAGING_DIR, OLD_DIR)
            wanted = "directory" if is_tree_folder else "file"
            for entry in entries:
                path = str(entry["name"]).rstrip("/")
                if path.rsplit("/", 1)[-1] in active or entry.get("type") != wanted:
                    continue
                touched = modified(entry)
                if touched is not None and touched >= cutoff:
                    continue
                if not dry_run:
                    with storage_errors(path, "clean up"):
                        if is_tree_folder:
                            await self.call("rm", path, recursive=True)
                        else:
                            await self.call("rm_file", path)
                removed.append(self.fs.unstrip_protocol(path))
        return removed

    # -- sources ------------------------------------------------------------------------------

    @classmethod
    async def open_url(
        cls, fs_class: type, url: str, read: ReadSettings, options: dict[str, Any]
    ) -> ChunkSource | None:
        """A source for `url` opened by its URL alone, without a synchronous filesystem: an
        asynchronous filesystem's ranged reads on this loop; None where there is none."""
        from fstransport.storage.source import AsyncFsSource

        if getattr(fs_class, "async_impl", False):
            return await AsyncFsSource.open(url, **options)
        return None

    @classmethod
    async def open_path(cls, fs: Any, path: str, url: str, read: ReadSettings) -> ChunkSource:
        """A source for `path` on the open filesystem `fs`: a file object read in a thread."""
        from fstransport.errors import StorageError
        from fstransport.storage.source import FileObjectSource

        with storage_errors(url, "open"):
            size = int(await asyncio.to_thread(fs.size, path))
            fileobj = await asyncio.to_thread(fs.open, path, "rb")
        if not isinstance(size, int):
            raise StorageError(url, "stat", TypeError(f"no size reported for {url}"))
        return FileObjectSource(fileobj, size, url, owns_file=True, filesystem=fs)


def modified(entry: dict[str, Any]) -> float | None:
    """When an fsspec listing entry last changed, as a Unix time, if the filesystem says."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
    return None
