"""What a partial snapshot holds, written down so that a restarted receiver can resume it.

A journal is a small text file beside the partial data (``partial/<id>.journal``): a first line
naming the snapshot, then one line ``offset length crc`` per chunk, appended after the chunk's
bytes were written.  A line torn by a crash is ignored; a chunk whose line is missing is simply
sent again.  S3 keeps the same facts in a JSON object beside the upload (see `MultipartSink`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem

from fstransport.messages import SnapshotMeta
from fstransport.protocol.ranges import ChunkRecord

__all__ = [
    "LocalJournal",
    "MemoryJournal",
    "identity",
    "matches",
    "parse_records",
    "resumable",
]


def identity(meta: SnapshotMeta) -> str:
    """A string equal for two metas that name the same snapshot, the checksum left aside."""
    log = [meta.last_log_id.term, meta.last_log_id.index] if meta.last_log_id else None
    fields = [meta.snapshot_id, meta.size, log, meta.last_membership]
    return json.dumps(fields, default=repr, sort_keys=True)


def resumable(meta: SnapshotMeta) -> bool:
    """Whether a transfer of `meta` may continue partial data: only with a size and a checksum.

    The checksum is what makes it safe: the receiver checks the whole snapshot — the bytes held
    from before and the bytes sent now — against it before installing anything.
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


class LocalJournal:
    """A journal in a local file, appended with ``O_APPEND`` writes of one line each."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def create(cls, path: str, meta: SnapshotMeta) -> LocalJournal:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.write(fd, header(meta).encode())
        return cls(path, fd)

    @classmethod
    def reopen(cls, path: str) -> LocalJournal:
        return cls(path, os.open(path, os.O_WRONLY | os.O_APPEND))

    @staticmethod
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def append(self, offset: int, length: int, crc: int) -> None:
        # One short write to the page cache: cheaper than a hop to a worker thread.
        os.write(self._fd, f"{offset} {length} {crc}\n".encode())

    def close(self) -> None:
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
