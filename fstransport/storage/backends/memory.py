"""The ``memory://`` backend: sinks write the memory file in place, on the event loop (it never
blocks); a `MemoryJournal` lets a new `Receiver` in the same process resume; installing is one
dict update."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from fstransport.checksum import chunk_crc
from fstransport.errors import SourceChanged
from fstransport.messages import Buffer, SnapshotMeta
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.fsspec import Found, FsspecBackend
from fstransport.storage.base import (
    NOTHING_LOST,
    BaseTree,
    ChunkSource,
    DeltaBase,
    Lost,
    MappedBase,
    SnapshotSink,
    aborted,
    checked_blocks,
)
from fstransport.storage.journal import header, parse_records, record_line, verified

if TYPE_CHECKING:
    from fstransport.protocol.delta import DeltaMap, Recipe
    from fstransport.storage.source import ReadSettings
    from fstransport.storage.store import FsspecSnapshotStore

__all__ = ["MemoryBackend", "MemoryDelta", "MemoryJournal", "MemorySink", "memory_file"]


class MemoryBackend(FsspecBackend):
    """``memory://``: `MemorySink` with a `MemoryJournal` (``sink="auto"``)."""

    fs: MemoryFileSystem

    @classmethod
    def serves(cls, fs: Any) -> bool:
        return issubclass(fs if isinstance(fs, type) else type(fs), MemoryFileSystem)

    async def open_sink(self, meta: SnapshotMeta) -> SnapshotSink:
        if self.store.sink_kind != "auto":
            return await super().open_sink(meta)
        path = self.store.partial_path(meta.snapshot_id)
        if meta.size is None:
            return MemorySink(self.fs, path)
        journal = self.store.journal_path(meta.snapshot_id)
        return MemorySink(self.fs, path, MemoryJournal.create(self.fs, journal, meta))

    def delta_base(self, *, keep: bool = False) -> DeltaBase | None:
        return MemoryDelta(self.store) if self.store.sink_kind == "auto" else None

    async def find_partial(self, meta: SnapshotMeta) -> Found | None:
        if self.store.sink_kind != "auto":
            return None
        path = self.store.partial_path(meta.snapshot_id)
        journal = self.store.journal_path(meta.snapshot_id)
        records = parse_records(MemoryJournal.read(self.fs, journal) or "", meta)
        if records is None or path not in self.fs.store:
            return None
        return MemorySink(self.fs, path, MemoryJournal(self.fs, journal)), records

    async def has_partial(self, snapshot_id: str) -> bool:
        return self.store.journal_path(snapshot_id) in self.fs.store

    async def install_file(self, sink: SnapshotSink, final: str) -> None:
        moved = self.fs.store.pop(sink.path)
        moved.path = final
        self.fs.store[final] = moved

    def set_aside(self, final: str) -> object:
        # memory:// cannot hold a file and a folder under one name: a file snapshot there
        # steps aside while the tree is written, and comes back if the tree fails
        return self.fs.store.pop(final, None)

    def put_back(self, final: str, held: object) -> None:
        if held is not None:
            self.fs.store[final] = held

    async def remove(self, path: str) -> None:
        self.fs.store.pop(path, None)

    @classmethod
    async def open_path(cls, fs: Any, path: str, url: str, read: ReadSettings) -> ChunkSource:
        """The memory file's buffer, read without a copy."""
        from fstransport.storage.source import BufferSource

        with storage_errors(url, "open"):
            if fs.isdir(path) or path not in fs.store:
                raise FileNotFoundError(url)
            memory_file = fs.store[path]
        return BufferSource(memory_file.getbuffer(), url)


class MemorySink:
    """Writes into a ``memory://`` file in place."""

    def __init__(
        self, fs: MemoryFileSystem, path: str, journal: MemoryJournal | None = None
    ) -> None:
        self.path = path
        self._fs = fs
        existing = fs.store.get(path)
        if journal is not None and isinstance(existing, MemoryFile):
            self._file = existing  # resuming: keep the bytes already there
        else:
            self._file = MemoryFile(fs, path)
            self._file.commit()
        self._journal = journal
        self._aborted = False

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        if self._aborted:
            raise aborted(self.path)
        with storage_errors(f"memory://{self.path}", "write"):
            self._file.seek(offset)
            self._file.write(data)
            if self._journal is not None:
                self._journal.append(offset, len(data), crc)
        return NOTHING_LOST

    async def write_checked(self, offset: int, data: Buffer) -> tuple[Lost, int]:
        """`write` that computes `data`'s CRC32C as it copies (see `write_checked`)."""
        if self._aborted:
            raise aborted(self.path)
        with storage_errors(f"memory://{self.path}", "write"):
            self._file.seek(offset)
            crc = checked_blocks(data, lambda _, block: self._file.write(block))
            if self._journal is not None:
                self._journal.append(offset, len(data), crc)
        return NOTHING_LOST, crc

    def rewind(self, offset: int) -> tuple[int, Lost]:
        return offset, NOTHING_LOST

    async def verify(self, records: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        """The `records` whose bytes in the memory file still have their CRC32C."""
        if self._aborted:
            raise aborted(self.path)
        held = self._file.getbuffer()
        try:
            return verified(records, lambda offset, length: bytes(held[offset : offset + length]))
        finally:
            held.release()

    async def finish(self) -> None:
        if self._journal is not None:
            self._journal.remove()

    async def abort(self) -> None:
        self._aborted = True
        self._fs.store.pop(self.path, None)
        if self._journal is not None:
            self._journal.remove()

    async def release(self) -> None:
        """Let go, keeping the data and its journal for a later resume (without a journal
        nothing can resume it: it is discarded)."""
        if self._journal is None:
            await self.abort()
        self._aborted = True


def memory_file(fs: MemoryFileSystem, path: str) -> MemoryFile | None:
    """The file `fs` holds at `path` (None: none, or a folder)."""
    found = fs.store.get(path)
    return found if isinstance(found, MemoryFile) else None


class MemoryDelta:
    """The `DeltaBase` of a ``memory://`` store: bases mapped and copied in memory."""

    def __init__(self, store: FsspecSnapshotStore) -> None:
        self.store = store
        self.fs: MemoryFileSystem = store.fs

    def _file(self, path: str) -> MemoryFile | None:
        return memory_file(self.fs, path)

    def takes_delta(self, meta: SnapshotMeta, sink: SnapshotSink, holds: bool) -> bool:
        return True

    async def map_base(self, snapshot_id: str, mode: str, key: bytes) -> MappedBase | None:
        from fstransport.protocol.delta import build_map

        try:
            path = self.store.path(snapshot_id)
        except Exception:  # an id the store would refuse: never a base
            return None
        found = self._file(path)
        if found is None:
            return None
        with found.getbuffer() as view:  # (an installed file is not written to)
            base_map = await asyncio.to_thread(build_map, mode, view, key=key)
        return MappedBase(snapshot_id, base_map, path)

    async def delta_sink(self, meta: SnapshotMeta, sink: SnapshotSink) -> SnapshotSink:
        return sink

    async def assemble(
        self, sink: SnapshotSink, base: MappedBase, recipe: Recipe, expected: int
    ) -> tuple[int, int]:
        from fstransport.protocol.delta import SEND

        base_path = str(base.pin)
        target, source = self._file(sink.path), self._file(base_path)
        if target is None:
            raise SourceChanged(sink.path, "assemble", FileNotFoundError(sink.path))
        changed = SourceChanged(base_path, "reuse", ValueError("the delta base changed"))
        if source is None:
            raise changed
        reused = 0
        with source.getbuffer() as data:  # (copied range by range, never whole)
            if data.nbytes != recipe.base_size:
                raise changed
            for at, length, base_at in recipe.targets():
                if base_at != SEND:
                    target.seek(at)
                    target.write(data[base_at : base_at + length])
                    reused += length
        target.truncate(recipe.size)
        with target.getbuffer() as view:
            return chunk_crc(view[: recipe.size]), reused

    async def tree_base(self, snapshot_id: str) -> BaseTree | None:
        from fstransport.delta.tree_bases import memory_tree

        return memory_tree(snapshot_id, self.fs, self.store.path(snapshot_id))

    async def assemble_tree(
        self, sink: SnapshotSink, base: BaseTree, base_map: DeltaMap, recipe: Recipe, expected: int
    ) -> tuple[int, int]:
        from fstransport.delta.tree_bases import assemble_memory_tree

        return assemble_memory_tree(self.fs, base, recipe, sink.path), recipe.reused


class MemoryJournal:
    """A journal in ``memory://`` (it lets a new `Receiver` in the same process resume)."""

    def __init__(self, fs: MemoryFileSystem, path: str) -> None:
        self.path = path
        self._fs = fs

    @classmethod
    def create(cls, fs: MemoryFileSystem, path: str, meta: SnapshotMeta) -> MemoryJournal:
        fs.pipe_file(path, header(meta).encode())
        return cls(fs, path)

    @staticmethod
    def read(fs: MemoryFileSystem, path: str) -> str | None:
        entry: Any = fs.store.get(path)
        return None if entry is None else bytes(entry.getbuffer()).decode(errors="replace")

    def append(self, offset: int, length: int, crc: int) -> None:
        entry = self._fs.store.get(self.path)
        if entry is not None:
            entry.seek(0, 2)
            entry.write(record_line(offset, length, crc).encode())

    def close(self) -> None:
        return None

    def remove(self) -> None:
        self._fs.store.pop(self.path, None)
