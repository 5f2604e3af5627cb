"""Areas of a relay's staging bucket that another process staged and keeps for later receivers:
found by their manifests, checked field by field, and reused by a sender joining later."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from fstransport.messages import SnapshotMeta, Vote
from fstransport.network.relay_areas import Area, jsonable, log_id_of, snapshot_prefix
from fstransport.storage.staging import MANIFEST_NAME, MANIFEST_VERSION, StagingStore, is_chunk_name

__all__ = ["find_areas"]


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
        and doc.get("last_log_id") == log_id_of(meta)
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
