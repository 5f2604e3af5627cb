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
"""Seconds between two group commits of a local journal (``fdatasync`` of the data, then the
lines): a receiver killed mid-transfer sends again at most about this much of its data."""

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

    `append` only queues a line.  At most every `SYNC_INTERVAL` seconds (and by `commit`) the
    queued lines are written with one ``O_APPEND`` write, after an ``fdatasync`` of the partial
    file (`data_fd`) that began once each of their chunks was written: a line on disk names
    bytes on disk.  `append` is called from the worker thread that wrote the chunk, right after
    the write, so the group commit runs there too, off the event loop.
    """

    def __init__(self, path: str, fd: int, data_fd: int = -1) -> None:
        self.path = path
        self._fd = fd
        self._data_fd = data_fd
        self._queued: list[str] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._last_commit = time.monotonic()
        self._timer: threading.Timer | None = None
        self.commits = 0

    @classmethod
    def create(cls, path: str, meta: SnapshotMeta, data_fd: int = -1) -> LocalJournal:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.write(fd, header(meta).encode())
        return cls(path, fd, data_fd)

    @classmethod
    def reopen(cls, path: str, data_fd: int = -1) -> LocalJournal:
        return cls(path, os.open(path, os.O_WRONLY | os.O_APPEND), data_fd)

    @staticmethod
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def append(self, offset: int, length: int, crc: int) -> None:
        """Queue the line of a chunk just written; commit the queue if one is due."""
        with self._queue_lock:
            self._queued.append(f"{offset} {length} {crc}\n")
            due = self._last_commit + SYNC_INTERVAL - time.monotonic()
            if self._timer is None and self._fd >= 0:
                # A trailing commit: a stream that goes quiet (its sender dead) still gets its
                # lines written, and so do lines queued while another thread was committing.
                self._timer = threading.Timer(due if due > 0 else SYNC_INTERVAL, self._commit_later)
                self._timer.daemon = True
                self._timer.start()
        if due <= 0:
            self.commit(wait=False)

    def _commit_later(self) -> None:
        with self._queue_lock:
            self._timer = None
        with contextlib.suppress(OSError):  # (the next append or commit tries again)
            self.commit()

    def commit(self, *, wait: bool = True) -> None:
        """``fdatasync`` the data, then write the lines queued before it; without `wait`, do
        nothing if another thread is committing right now."""
        if not self._commit_lock.acquire(blocking=wait):
            return
        try:
            with self._queue_lock:
                lines, self._queued = self._queued, []
            if not lines or self._fd < 0:
                return
            if self._data_fd >= 0:
                _datasync(self._data_fd)
            os.write(self._fd, "".join(lines).encode())
            self.commits += 1
        finally:
            self._last_commit = time.monotonic()
            self._commit_lock.release()

    def close(self) -> None:
        """Stop committing (the lines still queued are dropped: their chunks are sent again)
        and close the journal; call it before the data's descriptor is closed."""
        with self._queue_lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
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
