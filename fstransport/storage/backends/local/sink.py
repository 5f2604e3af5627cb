"""`PwriteSink`: writes a local partial file with ``os.pwrite`` (``pwritev`` for `Pieces`) from
worker threads, several chunks at once, noting each in a `LocalJournal`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from fstransport.messages import Buffer, Pieces, SnapshotMeta
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage._errors import storage_errors
from fstransport.storage._files import open_fd
from fstransport.storage.backends.local.journal import LocalJournal
from fstransport.storage.backends.local.prefill import settle
from fstransport.storage.base import NOTHING_LOST, Lost, aborted, checked_blocks
from fstransport.storage.journal import verified

if TYPE_CHECKING:
    from fstransport.storage.backends.local.prefill import Prefill

__all__ = ["IOV_MAX", "PwriteSink"]

_T = TypeVar("_T")


def _iov_max() -> int:
    """Buffers one ``pwritev`` takes at most: ``IOV_MAX`` (1,024 on Linux; POSIX's least is 16)."""
    try:
        return max(16, os.sysconf("SC_IOV_MAX"))
    except (AttributeError, ValueError, OSError):
        return 16


IOV_MAX = _iov_max()


class PwriteSink:
    """Writes a local file with ``os.pwrite`` from worker threads.

    Writes at different offsets may run at once (`concurrent_writes`).  A write keeps running
    in its thread when the task awaiting it is cancelled, so `finish` and `abort` wait for every
    write still in a thread before they close the descriptor: a ``pwrite`` must never reach a
    closed descriptor, or one that a later ``open`` got the same number for.
    """

    concurrent_writes = True

    def __init__(
        self, path: str, fd: int, *, fsync: bool, journal: LocalJournal | None = None
    ) -> None:
        self.path = path
        self._fd = fd
        self._fsync = fsync
        self._journal = journal
        self._threads: set[asyncio.Future[Any]] = set()
        self.prefill: Prefill | None = None
        self._received = False  # (any received bytes written: else a release keeps nothing)
        """A delta base being copied into this file (`LocalDelta`): every write claims its
        range from it first, and it is stopped before the file is finished or let go."""

    @property
    def writing(self) -> bool:
        """Whether a write is running in a thread now."""
        return bool(self._threads)

    def _claim(self, offset: int, length: int) -> None:
        self._received = True
        if self.prefill is not None:
            self.prefill.claim(offset, length)

    def stop_prefill(self) -> None:
        """Stop the base's copy (waiting for it; blocking) and forget it."""
        if self.prefill is not None:
            prefill, self.prefill = self.prefill, None
            prefill.stop()

    async def _in_thread(self, call: Callable[[], _T]) -> _T:
        """Run `call` in a worker thread; it counts as in flight until the thread is done."""
        future = asyncio.get_running_loop().run_in_executor(None, call)
        self._threads.add(future)
        future.add_done_callback(self._thread_done)
        return await asyncio.shield(future)

    def _thread_done(self, future: asyncio.Future[Any]) -> None:
        self._threads.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: its awaiter may have been cancelled meanwhile

    async def _settled(self) -> None:
        """Wait until no write is running in a thread."""
        while self._threads:
            await asyncio.wait(set(self._threads))

    @classmethod
    async def create(
        cls,
        path: str,
        *,
        fsync: bool = False,
        journal_path: str | None = None,
        meta: SnapshotMeta | None = None,
        resume: bool = False,
    ) -> PwriteSink:
        """Open `path` for writing: truncated, or as it is when `resume`.  With `journal_path`
        and `meta`, every chunk written is also noted in a journal there (see `journal`)."""

        def _create() -> tuple[int, LocalJournal | None]:
            settle(path)  # (an earlier stream's copy of a delta base into this file: done first)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # (read too: `verify` re-reads what a resumed partial holds)
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
            fd = open_fd(path, flags if resume else flags | os.O_TRUNC)
            if journal_path is None or meta is None:
                return fd, None
            try:
                os.makedirs(os.path.dirname(journal_path), exist_ok=True)
                if resume:
                    return fd, LocalJournal.reopen(journal_path, fd)
                return fd, LocalJournal.create(journal_path, meta, fd)
            except BaseException:
                os.close(fd)  # not left open behind a journal that could not be opened
                raise

        with storage_errors(path, "open"):
            fd, journal = await asyncio.to_thread(_create)
        return cls(path, fd, fsync=fsync, journal=journal)

    def _pwrite_all(self, offset: int, data: Buffer) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def _pwritev_all(self, offset: int, data: Pieces) -> None:
        """``pwritev`` of every piece, `IOV_MAX` at a time, resuming after short writes (a
        ``pwrite`` per piece where the system has no ``pwritev``)."""
        if not hasattr(os, "pwritev"):
            for part in data:
                self._pwrite_all(offset, part)
                offset += memoryview(part).nbytes
            return
        pending = [view for view in (memoryview(p).cast("B") for p in data) if view.nbytes]
        pending.reverse()  # the next piece last, where popping it is cheap
        while pending:
            written = os.pwritev(self._fd, pending[: -IOV_MAX - 1 : -1], offset)
            if written <= 0:
                raise OSError(f"pwritev wrote nothing at offset {offset}")
            offset += written
            while pending and written >= pending[-1].nbytes:  # pieces written whole
                written -= pending.pop().nbytes
            if written:  # a short write ended inside this piece
                pending[-1] = pending[-1][written:]

    def _pwrite_checked(self, offset: int, data: Buffer) -> int:
        self._claim(offset, len(data))
        crc = checked_blocks(data, lambda start, block: self._pwrite_all(offset + start, block))
        if self._journal is not None:
            self._journal.append(offset, len(data), crc)
        return crc

    def _pwrite_noted(self, offset: int, data: Buffer, crc: int) -> None:
        self._claim(offset, len(data))
        self._pwrite_all(offset, data)
        if self._journal is not None:
            self._journal.append(offset, len(data), crc)

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        if self._fd < 0:
            raise aborted(self.path)
        with storage_errors(self.path, "write"):
            await self._in_thread(lambda: self._pwrite_noted(offset, data, crc))
        return NOTHING_LOST

    async def write_pieces(self, offset: int, data: Pieces, crc: int) -> Lost:
        """`write` for `Pieces`: written with ``pwritev`` as they are, never joined."""
        if self._fd < 0:
            raise aborted(self.path)

        def _pwritev_noted() -> None:
            self._claim(offset, len(data))
            self._pwritev_all(offset, data)
            if self._journal is not None:
                self._journal.append(offset, len(data), crc)

        with storage_errors(self.path, "write"):
            await self._in_thread(_pwritev_noted)
        return NOTHING_LOST

    async def write_checked(self, offset: int, data: Buffer) -> tuple[Lost, int]:
        """`write` that computes `data`'s CRC32C as it writes, in the same worker thread."""
        if self._fd < 0:
            raise aborted(self.path)
        with storage_errors(self.path, "write"):
            crc = await self._in_thread(lambda: self._pwrite_checked(offset, data))
        return NOTHING_LOST, crc

    async def write_checked_many(self, pieces: Sequence[tuple[int, Buffer]]) -> list[int]:
        """`write_checked` of each ``(offset, data)`` (a request with several ranges: a delta's
        changed pages) in one worker thread, not one each; their CRC32Cs.  Nothing is lost."""
        if self._fd < 0:
            raise aborted(self.path)
        with storage_errors(self.path, "write"):
            return await self._in_thread(lambda: [self._pwrite_checked(*p) for p in pieces])

    def rewind(self, offset: int) -> tuple[int, Lost]:
        return offset, NOTHING_LOST

    async def verify(self, records: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        """The `records` whose bytes in the file still have their CRC32C (read with
        ``os.pread`` in a worker thread; bytes past the end of a truncated file fail)."""
        if self._fd < 0:
            raise aborted(self.path)
        fd = self._fd
        with storage_errors(self.path, "verify"):
            return await self._in_thread(
                lambda: verified(records, lambda offset, length: os.pread(fd, length, offset))
            )

    def _close(self) -> None:
        if self._journal is not None:
            self._journal.close()  # before the data's descriptor: it may be syncing it
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    async def release(self) -> None:
        """Let go of the partial file without finishing or deleting it, its journal written
        down first (after an ``fdatasync``): a later receiver resumes it.  Without a journal
        nothing could resume the file: it is deleted."""
        if self._journal is None or (self.prefill is not None and not self._received):
            await self.abort()  # (a partial of only a delta base's copy: nothing to resume)
            return

        def _release() -> None:
            self.stop_prefill()
            if self._journal is not None:
                self._journal.commit()
            self._close()

        await self._settled()
        with storage_errors(self.path, "release"):
            await asyncio.to_thread(_release)

    async def finish(self) -> None:
        def _finish() -> None:
            self.stop_prefill()
            if self._fsync:
                os.fsync(self._fd)
            self._close()
            if self._journal is not None:
                self._journal.remove()

        await self._settled()
        with storage_errors(self.path, "finish"):
            await asyncio.to_thread(_finish)

    async def abort(self) -> None:
        def _abort() -> None:
            try:
                self.stop_prefill()
                self._close()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                if self._journal is not None:
                    self._journal.remove()

        await self._settled()
        with storage_errors(self.path, "abort"):
            await asyncio.to_thread(_abort)
