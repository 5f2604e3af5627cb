"""What a partial snapshot holds, written down so that a restarted receiver can resume it.

A journal is a small text file beside the partial data (``.fstransport/journal/<id>``): a first
line naming the snapshot, then one line ``offset length crc`` per chunk.  A journal is a claim,
never proof: a resumed receiver re-reads the bytes of every chunk it names and keeps only those
whose CRC32C matches (`verified`); the rest is sent again.  On top of that, a local journal never
runs ahead of durable data: its lines are appended in groups, each only after an ``fdatasync`` of
the partial file that covers every chunk the group names (`LocalJournal`).  A line torn by a
crash is ignored; a chunk whose line is missing is simply sent again.  S3 keeps the same facts in
a JSON object beside the upload (see `MultipartSink`), checked against ``ListParts`` on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem

from fstransport.checksum import chunk_crc
from fstransport.messages import SnapshotMeta
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage._files import open_fd

__all__ = [
    "LocalJournal",
    "MemoryJournal",
    "identity",
    "matches",
    "parse_records",
    "resumable",
    "verified",
]

SYNC_INTERVAL = 1.0
"""Seconds at most between two group commits of a local journal while chunks keep coming
(``fdatasync`` of the data, then the lines): a receiver killed mid-transfer, or a machine that
loses power, sends again about this much of its data at most."""

QUIET_COMMIT = 0.02
"""Seconds without a new chunk after which the lines queued are committed at once: a transfer
that pauses or stops (its sender gone, a rate limit) gets its lines written right away."""

VERIFY_BLOCK = 1024 * 1024
"""Bytes read at a time when a held chunk is re-read to check its CRC32C."""


def verified(
    records: Iterable[ChunkRecord], read: Callable[[int, int], bytes | memoryview]
) -> list[ChunkRecord]:
    """The `records` whose bytes, as ``read(offset, length)`` returns them now, have the CRC32C
    the record names.  A short read (a truncated file) fails its record.  Blocking: run it in a
    worker thread for files."""
    kept = []
    for record in records:
        crc = 0
        position = record.offset
        while position < record.end:
            want = min(VERIFY_BLOCK, record.end - position)
            block = read(position, want)
            if len(block) != want:
                break
            crc = chunk_crc(block, crc)
            position += want
        if position == record.end and crc == record.crc:
            kept.append(record)
    return kept


def identity(meta: SnapshotMeta) -> str:
    """A string equal for two metas that name the same snapshot, the checksum left aside."""
    log = [meta.last_log_id.term, meta.last_log_id.index] if meta.last_log_id else None
    fields = [meta.snapshot_id, meta.size, log, meta.last_membership]
    if meta.kind != "file":  # (a file's identity is what it was before kinds existed)
        fields.append(meta.kind)
    return json.dumps(fields, default=repr, sort_keys=True)


def resumable(meta: SnapshotMeta) -> bool:
    """Whether a transfer of `meta` may continue partial data left in the store (by a receiver
    that stopped, or a stream that was let go): only with a size and a checksum.

    The checksum names the data, so partial data recorded for it cannot be of other bytes; and
    the receiver checks the whole snapshot against it before installing anything — combined
    from the CRCs of chunks written in this session and of held chunks whose bytes were re-read
    and verified on resume (`verified`), never from a journal's word alone.  (A stream still
    open in a running receiver is continued by any sender of the same snapshot, checksum or
    not; it too re-reads what it holds when a sender starts again: see `Receiver`.)
    """
    return meta.size is not None and meta.checksum is not None


def matches(recorded: object, meta: SnapshotMeta) -> bool:
    """Whether partial data recorded as `recorded` (a journal's header) may serve `meta`."""
    if not isinstance(recorded, dict) or recorded.get("identity") != identity(meta):
        return False
    checksum = recorded.get("checksum")
    return checksum is None or checksum == meta.checksum


def header(meta: SnapshotMeta) -> str:
    fields = {"fstransport-journal": 1, "identity": identity(meta), "checksum": meta.checksum}
    return json.dumps(fields) + "\n"


def parse_records(text: str, meta: SnapshotMeta) -> list[ChunkRecord] | None:
    """The chunk records of a journal for `meta`, or None if it belongs to another snapshot."""
    lines = text.split("\n")
    try:
        head = json.loads(lines[0])
    except (json.JSONDecodeError, IndexError):
        return None
    if not matches(head, meta):
        return None
    size = meta.size or 0
    records: list[ChunkRecord] = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            continue  # torn by a crash, or blank
        offset, length, crc = (int(p) for p in parts)
        if length > 0 and offset + length <= size and crc < 2**32:
            records.append(ChunkRecord(offset, length, crc))
    return records


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
            self._queued.append(f"{offset} {length} {crc}\n")
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
            entry.write(f"{offset} {length} {crc}\n".encode())

    def close(self) -> None:
        return None

    def remove(self) -> None:
        self._fs.store.pop(self.path, None)
