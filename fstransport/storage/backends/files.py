"""Sinks over an fsspec file object opened ``"wb"``: what the generic fsspec backend writes with.

- `SeekableFileSink`: the file can ``seek`` in write mode — ``seek`` + ``write`` in a worker
  thread, one at a time.
- `SequentialSink`: it cannot (object stores other than S3, FTP, ...) — chunks pass through a
  bounded `ReorderBuffer` and are appended in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import IO, Any

from fstransport.messages import Buffer
from fstransport.protocol.reorder import ReorderBuffer
from fstransport.storage._errors import storage_errors
from fstransport.storage.base import NOTHING_LOST, Lost, aborted

__all__ = [
    "DEFAULT_REORDER_LIMIT",
    "FileObjectSink",
    "SeekableFileSink",
    "SequentialSink",
    "discard_file",
]

DEFAULT_REORDER_LIMIT = 64 * 1024 * 1024
"""Bytes held ahead of the write position: room for the default window of 4 x 8 MiB, twice."""


def discard_file(fileobj: IO[bytes]) -> None:
    """Close a file being written without committing what it holds, where the file allows.

    fsspec's buffered files commit their contents on ``close()`` even after ``discard()``, so
    they are discarded and then only marked closed.
    """
    discard = getattr(fileobj, "discard", None)
    if callable(discard):
        with contextlib.suppress(Exception):
            discard()
        with contextlib.suppress(Exception):
            fileobj.closed = True  # type: ignore[misc]
    if not fileobj.closed:
        with contextlib.suppress(Exception):
            fileobj.close()


class FileObjectSink:
    """The part of a sink over an fsspec file object opened ``"wb"`` that does not depend on
    how chunks reach the file: one write at a time in a worker thread, commit on `finish`,
    discard on `abort`.  Subclasses say how a chunk is written."""

    def __init__(self, fs: Any, path: str, fileobj: IO[bytes]) -> None:
        self.path = path
        self._fs = fs
        self._file = fileobj
        self._lock = asyncio.Lock()

    async def _in_thread(self, write: Callable[[], None]) -> None:
        """Run `write` on the file in a worker thread; the caller holds ``self._lock``."""
        if self._file.closed:
            raise aborted(self.path)
        with storage_errors(self.path, "write"):
            await asyncio.to_thread(write)

    async def finish(self) -> None:
        async with self._lock:
            with storage_errors(self.path, "finish"):
                await asyncio.to_thread(self._file.close)

    async def abort(self) -> None:
        def _abort() -> None:
            discard_file(self._file)
            if self._fs.exists(self.path):
                self._fs.rm_file(self.path)

        async with self._lock:
            with storage_errors(self.path, "abort"):
                await asyncio.to_thread(_abort)


class SeekableFileSink(FileObjectSink):
    """Writes through an fsspec file object that supports ``seek`` in write mode."""

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        def _write_at() -> None:
            self._file.seek(offset)
            self._file.write(data)

        async with self._lock:
            await self._in_thread(_write_at)
        return NOTHING_LOST

    def rewind(self, offset: int) -> tuple[int, Lost]:
        return offset, NOTHING_LOST


class SequentialSink(FileObjectSink):
    """Appends chunks in offset order to an fsspec file opened ``"wb"``.

    Up to `reorder_limit` bytes that arrive ahead of the write position are held in memory; a
    chunk further ahead is refused with `SnapshotMismatch` (expecting the write position).
    The file is written in a worker thread; `abort` discards it (``discard()`` where the file
    supports it, so no partial object is committed) and deletes whatever was created.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        fileobj: IO[bytes],
        snapshot_id: str,
        reorder_limit: int = DEFAULT_REORDER_LIMIT,
    ) -> None:
        super().__init__(fs, path, fileobj)
        self.buffer = ReorderBuffer(snapshot_id, reorder_limit)

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        pieces: list[memoryview] = []

        def _append() -> None:
            for piece in pieces:
                self._file.write(piece)

        async with self._lock:  # held from ordering to writing: appends stay in order
            if self._file.closed:
                raise aborted(self.path)
            pieces = self.buffer.push(offset, data)
            if pieces:
                await self._in_thread(_append)
        return NOTHING_LOST

    def rewind(self, offset: int) -> tuple[int, Lost]:
        return min(offset, self.buffer.position), NOTHING_LOST
