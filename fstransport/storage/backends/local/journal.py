"""`LocalJournal`: the journal of a local partial file (see `fstransport.storage.journal`)."""

from __future__ import annotations

import contextlib
import os
import threading
import time

from fstransport.messages import SnapshotMeta
from fstransport.storage._files import open_fd
from fstransport.storage.journal import header, record_line

__all__ = ["QUIET_COMMIT", "SYNC_INTERVAL", "LocalJournal"]

SYNC_INTERVAL = 1.0
"""Seconds at most between two group commits of a local journal while chunks keep coming
(``fdatasync`` of the data, then the lines): a receiver killed mid-transfer, or a machine that
loses power, sends again about this much of its data at most."""

QUIET_COMMIT = 0.02
"""Seconds without a new chunk after which the lines queued are committed at once: a transfer
that pauses or stops (its sender gone, a rate limit) gets its lines written right away."""


def _datasync(fd: int) -> None:
    """``fdatasync`` where the system has it (Linux), else ``fsync``."""
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


class LocalJournal:
    """A journal in a local file, whose lines never run ahead of the data they name.

    `append` only queues a line, from the worker thread that has just written the chunk.  A
    committer thread writes the queue down in groups: once the chunks stop coming for
    `QUIET_COMMIT` seconds, or `SYNC_INTERVAL` after its last commit while they keep coming.  A
    commit first ``fdatasync``-s the partial file (`data_fd`) and then appends the lines queued
    before the sync began, with one ``O_APPEND`` write: a line on disk names bytes on disk.
    Nothing waits for a commit, so a chunk is acknowledged before its line is written: after a
    crash the chunks of the last moments are sent again (and a line that did reach the disk is
    still re-checked against the bytes on resume: see `verified`).
    """

    def __init__(self, path: str, fd: int, data_fd: int = -1) -> None:
        self.path = path
        self._fd = fd
        self._data_fd = data_fd
        self._queued: list[str] = []
        self._wake = threading.Condition()
        self._commit_lock = threading.Lock()
        self._last_append = 0.0
        self._last_commit = time.monotonic()
        self._committer: threading.Thread | None = None
        self._closed = False
        self.commits = 0

    @classmethod
    def create(cls, path: str, meta: SnapshotMeta, data_fd: int = -1) -> LocalJournal:
        fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        try:
            os.write(fd, header(meta).encode())
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, data_fd)

    @classmethod
    def reopen(cls, path: str, data_fd: int = -1) -> LocalJournal:
        return cls(path, open_fd(path, os.O_WRONLY | os.O_APPEND), data_fd)

    @staticmethod
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def append(self, offset: int, length: int, crc: int) -> None:
        """Queue the line of a chunk just written (the committer writes it down soon)."""
        with self._wake:
            if self._closed:
                return
            self._queued.append(record_line(offset, length, crc))
            self._last_append = time.monotonic()
            if self._committer is None:
                self._committer = threading.Thread(
                    target=self._commit_loop, name=f"journal {self.path}", daemon=True
                )
                self._committer.start()
            elif len(self._queued) == 1:
                self._wake.notify()

    def _commit_loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed:
                    if self._queued:
                        now = time.monotonic()
                        due = min(
                            self._last_append + QUIET_COMMIT, self._last_commit + SYNC_INTERVAL
                        )
                        if now >= due:
                            break
                        self._wake.wait(due - now)
                    else:
                        self._wake.wait()
                if self._closed:
                    return
            with contextlib.suppress(OSError):  # (its lines stay queued for the next try)
                self.commit()

    def commit(self) -> None:
        """``fdatasync`` the data, then append the lines queued before it began."""
        with self._commit_lock:
            with self._wake:
                lines, self._queued = self._queued, []
                self._last_commit = time.monotonic()
            if not lines or self._fd < 0:
                return
            try:
                if self._data_fd >= 0:
                    _datasync(self._data_fd)
                os.write(self._fd, "".join(lines).encode())
            except OSError:
                with self._wake:
                    self._queued[:0] = lines
                raise
            self.commits += 1

    def close(self) -> None:
        """Stop committing (lines still queued are dropped: their chunks are sent again) and
        close the journal; call it before the data's descriptor is closed."""
        with self._wake:
            self._closed = True
            self._queued.clear()
            self._wake.notify_all()
        with self._commit_lock:  # waits for a commit under way
            self._data_fd = -1
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
