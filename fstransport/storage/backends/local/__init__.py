"""The local-folder backend: `PwriteSink` (``os.pwrite`` from worker threads) with a
`LocalJournal` that never runs ahead of durable data; installing is ``os.replace`` (a tree: a
staging folder renamed into place); resuming re-reads every chunk the journal names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

from fstransport.errors import StorageError
from fstransport.messages import Snapshot, SnapshotMeta
from fstransport.storage.backends.fsspec import Found, FsspecBackend
from fstransport.storage.backends.local.delta import LocalDelta
from fstransport.storage.backends.local.journal import LocalJournal
from fstransport.storage.backends.local.sink import PwriteSink
from fstransport.storage.base import ChunkSource, DeltaBase, SnapshotSink
from fstransport.storage.journal import parse_records
from fstransport.storage.layout import JOURNAL_DIR, OLD_DIR, PARTIAL_DIR, STAGING_DIR
from fstransport.tree import TreeTable, install_local_tree

if TYPE_CHECKING:
    from fstransport.storage.source import ReadSettings

__all__ = ["LocalBackend", "LocalDelta", "LocalJournal", "PwriteSink", "refuse_special"]


def refuse_special(path: str) -> None:
    """Raise a permanent `StorageError` when `path` exists and is a device, a FIFO or a socket:
    installing renames over the name, and a snapshot must never replace ``/dev/sda`` (as root)
    or a pipe someone reads.  A regular file, a symlink (the link is replaced, not what it points
    to) or nothing at all may be replaced."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise StorageError(path, "install", exc) from exc
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise StorageError(
            path,
            "install",
            reason="it is a device, a pipe or a socket, not a regular file",
            retryable=False,
        )


class LocalBackend(FsspecBackend):
    """Local folders: `PwriteSink` with a `LocalJournal` (``sink="auto"``)."""

    @classmethod
    def serves(cls, fs: Any) -> bool:
        return issubclass(fs if isinstance(fs, type) else type(fs), LocalFileSystem)

    async def open_sink(self, meta: SnapshotMeta) -> SnapshotSink:
        if self.store.sink_kind != "auto":
            return await super().open_sink(meta)
        snapshot_id = meta.snapshot_id
        journal = self.store.journal_path(snapshot_id) if meta.size is not None else None
        return await PwriteSink.create(
            self.store.partial_path(snapshot_id),
            fsync=self.store.fsync,
            journal_path=journal,
            meta=meta,
        )

    def delta_base(self, *, keep: bool = False) -> DeltaBase | None:
        return LocalDelta(self.store, keep=keep) if self.store.sink_kind == "auto" else None

    async def find_partial(self, meta: SnapshotMeta) -> Found | None:
        if self.store.sink_kind != "auto":
            return None
        path = self.store.partial_path(meta.snapshot_id)
        journal = self.store.journal_path(meta.snapshot_id)
        text = await asyncio.to_thread(LocalJournal.read, journal)
        records = parse_records(text or "", meta)
        if records is None or not await asyncio.to_thread(os.path.isfile, path):
            return None
        sink = await PwriteSink.create(
            path, fsync=self.store.fsync, journal_path=journal, meta=meta, resume=True
        )
        return sink, records

    async def install_file(self, sink: SnapshotSink, final: str) -> None:
        def replace() -> None:
            refuse_special(final)
            os.replace(sink.path, final)

        await asyncio.to_thread(replace)

    async def install_tree(self, snapshot: Snapshot, table: TreeTable, final: str) -> None:
        """Unpack into a staging folder and rename it into place (see `install_local_tree`)."""
        await asyncio.to_thread(
            install_local_tree,
            snapshot.data,
            table,
            final,
            self.store.folder(STAGING_DIR),
            self.store.folder(OLD_DIR),
            fsync=self.store.fsync,
        )

    async def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)

    async def close(self, sinks: Sequence[SnapshotSink], *, idle: bool) -> None:
        """Write down the journals of the transfers still receiving and let them go; after the
        last transfer, remove the store's empty folders."""
        for sink in sinks:
            if isinstance(sink, PwriteSink):
                await sink.release()
        if idle:
            # no empty .fstransport/{partial,journal} folders after the last transfer; a folder
            # that still holds something (another receiver's partial data) stays
            names = (PARTIAL_DIR, JOURNAL_DIR, STAGING_DIR, OLD_DIR, ".fstransport")
            await asyncio.to_thread(_remove_empty_folders, [self.store.folder(n) for n in names])

    @classmethod
    async def open_path(cls, fs: Any, path: str, url: str, read: ReadSettings) -> ChunkSource:
        """The file through memory maps (or ``os.pread`` without `read.map_files`)."""
        from fstransport.storage.source import PreadSource

        return await PreadSource.open(path, map_file=read.map_files)


def _remove_empty_folders(folders: list[str]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):  # missing or not empty
            os.rmdir(folder)
