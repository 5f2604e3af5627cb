"""What a partial snapshot holds, written down so that a restarted receiver can resume it.

A journal is a small text file beside the partial data (``.fstransport/journal/<id>``): a first
line naming the snapshot, then one line ``offset length crc`` per chunk.  A journal is a claim,
never proof: a resumed receiver re-reads the bytes of every chunk it names and keeps only those
whose CRC32C matches (`verified`); the rest is sent again.  On top of that, a local journal never
runs ahead of durable data: its lines are appended in groups, each only after an ``fdatasync`` of
the partial file that covers every chunk the group names (`LocalJournal`).  A line torn by a
crash is ignored; a chunk whose line is missing is simply sent again.  S3 keeps the same facts in
a JSON object beside the upload (see `MultipartSink`), checked against ``ListParts`` on resume.

This module holds what every backend's journal shares (the header that names a snapshot, the
record lines, `verified`); the journals themselves live with their backends
(`fstransport.storage.backends.local.journal`, `fstransport.storage.backends.memory`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from fstransport.checksum import chunk_crc
from fstransport.messages import SnapshotMeta
from fstransport.protocol.ranges import ChunkRecord

__all__ = [
    "header",
    "identity",
    "matches",
    "parse_records",
    "record_line",
    "resumable",
    "verified",
]

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


def record_line(offset: int, length: int, crc: int) -> str:
    """A journal's line for one chunk."""
    return f"{offset} {length} {crc}\n"
