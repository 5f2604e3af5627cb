"""The bookkeeping of a `RelayNetwork`: staging areas, their manifests, and areas found in the
bucket that another process staged (reused by a sender joining later)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from fstransport.errors import ChecksumMismatch, InvalidRequest, StorageError
from fstransport.messages import InstallSnapshotRequest, SnapshotMeta, StagedChunk, Vote
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.storage.staging import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    StagingStore,
    is_chunk_name,
)

__all__ = [
    "Area",
    "SharedStaging",
    "Staged",
    "find_areas",
    "is_damaged",
    "manifest_document",
    "not_fetched",
    "snapshot_prefix",
    "stageable",
]


@dataclass
class Area:
    """One staging area: this sender's objects of one snapshot under one vote."""

    url: str
    meta: SnapshotMeta
    chunks: dict[tuple[int, int], tuple[int, str]] = field(default_factory=dict)
    """(offset, length) → (CRC32C, object name)"""
    damaged: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)  # every object name staged here, for removal
    pending: int = 0  # uploads under way
    uploading: dict[str, asyncio.Future[bool]] = field(default_factory=dict)
    """Uploads under way, by object name: True once the object is there."""
    committed: bool = False
    checksum: str | None = None
    adopted: bool = False
    """Staged by another process and found in the bucket: reused, never removed by us."""
    expires: float | None = None
    """When an adopted area's manifest says it goes."""

    def ref(self, offset: int, length: int, crc: int | None) -> StagedChunk | None:
        found = self.chunks.get((offset, length))
        if found is None or found[1] in self.damaged or (crc is not None and found[0] != crc):
            return None
        return StagedChunk(self.url, found[1], length, found[0])


@dataclass
class Staged:
    """What is staged for one (snapshot id, vote)."""

    areas: list[Area] = field(default_factory=list)
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    busy: int = 0  # requests under way
    users: set[int] = field(default_factory=set)
    """The networks (siblings) that began sending this snapshot and saw no acknowledgement."""
    expires: float | None = None
    generation: int = 0
    searched: set[str | None] = field(default_factory=set)
    """Checksums the bucket was searched for areas of other processes (`find_areas`)."""


class SharedStaging:
    """The staging state of a `RelayNetwork` and of every sibling made with `RelayNetwork.to`."""

    def __init__(self, staging_url: str, options: dict[str, Any], keep_for: float | None) -> None:
        self.staging_url = staging_url.rstrip("/")
        self.store = StagingStore(self.staging_url, options)
        self.keep_for = keep_for
        self.snapshots: dict[tuple[str, Vote], Staged] = {}
        self.bytes_uploaded = 0


def is_damaged(source: BaseException) -> bool:
    """Whether a receiver's refusal of a reference says the staged object is bad or gone."""
    if isinstance(source, ChecksumMismatch):
        return not source.whole
    return isinstance(source, StorageError) and source.verb == "fetch" and not source.retryable


def not_fetched(source: BaseException) -> bool:
    """Whether the receiver could not fetch a staged object (the bucket failed it)."""
    return isinstance(source, StorageError) and source.verb == "fetch"


def stageable(req: InstallSnapshotRequest) -> bool:
    """Whether `req` names a snapshot and vote that can name staged objects; the receiver
    refuses any other request anyway, so it goes to the receiver as it is."""
    try:
        check_snapshot_id(req.meta.snapshot_id)
        return all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0
            for n in (req.vote.term, req.vote.node_id, req.offset)
        )
    except (InvalidRequest, AttributeError):
        return False


def jsonable(value: object) -> object:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def snapshot_prefix(staging_url: str, snapshot_id: str, vote: Vote) -> str:
    """The folder of every area staged for `snapshot_id` under `vote`."""
    return (
        f"{staging_url}/{quote(snapshot_id, safe=' ')}/"
        f"v{vote.term}-{vote.node_id}-{int(vote.committed)}"
    )


def _log_id(meta: SnapshotMeta) -> list[int] | None:
    log_id = meta.last_log_id
    return [log_id.term, log_id.index] if log_id else None


def manifest_document(
    area: Area, meta: SnapshotMeta, vote: Vote, now: float, keep_for: float | None
) -> dict[str, Any]:
    """The manifest of `area`: the commit marker receivers check (see docs/relay.md)."""
    return {
        "version": MANIFEST_VERSION,
        "snapshot_id": meta.snapshot_id,
        "vote": [vote.term, vote.node_id, vote.committed],
        "size": meta.size,
        "checksum": meta.checksum,
        "kind": meta.kind,
        "last_log_id": _log_id(meta),
        "last_membership": jsonable(meta.last_membership),
        "chunks": sorted(
            [name, offset, length, crc]
            for (offset, length), (crc, name) in area.chunks.items()
            if name not in area.damaged
        ),
        "created": now,
        "expires": None if keep_for is None else now + keep_for,
    }


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _adoptable(doc: dict[str, Any], meta: SnapshotMeta, vote: Vote, now: float) -> bool:
    """Whether the manifest `doc` commits this very snapshot, kept for later receivers."""
    expires = doc.get("expires")
    return (
        doc.get("version") == MANIFEST_VERSION
        and doc.get("snapshot_id") == meta.snapshot_id
        and doc.get("vote") == [vote.term, vote.node_id, vote.committed]
        and doc.get("size") == meta.size
        and doc.get("kind", "file") == meta.kind
        and doc.get("last_log_id") == _log_id(meta)
        and doc.get("last_membership") == jsonable(meta.last_membership)
        and isinstance(doc.get("checksum"), str)
        # only areas kept by a TTL: one without is removed when its own receivers acknowledged
        and isinstance(expires, (int, float))
        and not isinstance(expires, bool)
        and expires > now
        and isinstance(doc.get("chunks"), list)
    )


def _area_from(url: str, doc: dict[str, Any], meta: SnapshotMeta) -> Area | None:
    """The committed area a well-formed manifest describes (None when malformed)."""
    area = Area(url, replace(meta, checksum=None), committed=True, adopted=True)
    area.checksum = str(doc["checksum"])
    for item in doc["chunks"]:
        if not (isinstance(item, list) and len(item) == 4 and is_chunk_name(item[0])):
            return None
        name, offset, length, crc = item
        if not (_is_count(offset) and _is_count(length) and _is_count(crc) and crc < 1 << 32):
            return None
        area.chunks[(offset, length)] = (crc, name)
    return area


async def find_areas(
    store: StagingStore, staging_url: str, meta: SnapshotMeta, vote: Vote
) -> list[Area]:
    """Committed areas of this snapshot and vote that other processes staged and keep for
    later receivers (their manifest names a TTL still running).

    Manifests that do not match `meta` in every field (id, vote, size, kind, log id,
    membership; the checksum when `meta` names one) are left alone."""
    prefix = snapshot_prefix(staging_url, meta.snapshot_id, vote)
    now = time.time()
    found: list[Area] = []
    root = await store.path(prefix)
    objects = await store.find(prefix)
    for path in sorted(objects):
        if not path.endswith("/" + MANIFEST_NAME) or not path.startswith(root + "/"):
            continue
        area_url = prefix + path[len(root) : -len(MANIFEST_NAME) - 1]
        doc = await store.read_json(f"{area_url}/{MANIFEST_NAME}")
        if doc is None or not _adoptable(doc, meta, vote, now):
            continue
        if meta.checksum is not None and doc["checksum"] != meta.checksum:
            continue
        area = _area_from(area_url, doc, meta)
        if area is not None:
            area.expires = float(doc["expires"])
            found.append(area)
    return found
