"""`SequentialSink`: for fsspec targets whose write files cannot seek (object stores other than
S3, FTP, ...).  Chunks pass through a bounded `ReorderBuffer` and are appended in order."""

from __future__ import annotations

import asyncio
from typing import IO, Any

from fstransport.messages import Buffer
from fstransport.protocol.reorder import ReorderBuffer
from fstransport.storage._errors import storage_errors
from fstransport.storage.sink import NOTHING_LOST, Lost, aborted, discard_file

__all__ = ["DEFAULT_REORDER_LIMIT", "SequentialSink"]

DEFAULT_REORDER_LIMIT = 64 * 1024 * 1024
"""Bytes held ahead of the write position: room for the default window of 4 x 8 MiB, twice."""


class SequentialSink:
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
        self.path = path
        self._fs = fs
        self._file = fileobj
        self.buffer = ReorderBuffer(snapshot_id, reorder_limit)
        self._lock = asyncio.Lock()

    def _append(self, pieces: list[memoryview]) -> None:
        for piece in pieces:
            self._file.write(piece)

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        async with self._lock:
            if self._file.closed:
                raise aborted(self.path)
            pieces = self.buffer.push(offset, data)
            if pieces:
                with storage_errors(self.path, "write"):
                    await asyncio.to_thread(self._append, pieces)
        return NOTHING_LOST

    def rewind(self, offset: int) -> tuple[int, Lost]:
        return min(offset, self.buffer.position), NOTHING_LOST

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
