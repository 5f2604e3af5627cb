"""`SequentialSink`: for fsspec targets whose write files cannot seek (object stores other than
S3, FTP, ...).  Chunks pass through a bounded `ReorderBuffer` and are appended in order."""

from __future__ import annotations

from typing import IO, Any

from fstransport.messages import Buffer
from fstransport.protocol.reorder import ReorderBuffer
from fstransport.storage.sink import NOTHING_LOST, FileObjectSink, Lost, aborted

__all__ = ["DEFAULT_REORDER_LIMIT", "SequentialSink"]

DEFAULT_REORDER_LIMIT = 64 * 1024 * 1024
"""Bytes held ahead of the write position: room for the default window of 4 x 8 MiB, twice."""


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
