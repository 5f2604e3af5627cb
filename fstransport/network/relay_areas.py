"""The bookkeeping of a `RelayNetwork`: staging areas and their manifests (areas found in the
bucket that another process staged are read by `relay_found`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from fstransport.checksum import chunk_crc
from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    InvalidRequest,
    NetworkError,
    StorageError,
)
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    SnapshotMeta,
    StagedChunk,
    Vote,
    contiguous,
)
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.storage.staging import (
    MANIFEST_VERSION,
    MAX_AREA_LENGTH,
    StagingStore,
    chunk_name,
    manifest_url,
)

log = logging.getLogger("fstransport.relay")

__all__ = [
    "Area",
    "SharedStaging",
    "Staged",
    "StagingCounts",
    "is_damaged",
    "jsonable",
    "log_id_of",
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

    def adopt(self, found: list[Area], meta: SnapshotMeta) -> set[str]:
        """Reuse the areas another process keeps (`found`) when `meta` names its checksum;
        return the checksums of every committed copy known (`RelayNetwork.find_staged`)."""
        checksums = {a.checksum for a in self.areas if a.committed and a.checksum is not None}
        known = {a.url for a in self.areas}
        for area in found:
            assert area.checksum is not None
            checksums.add(area.checksum)
            if meta.checksum is not None and area.url not in known:
                log.info("reusing the staged copy %s of %r", area.url, meta.snapshot_id)
                self.areas.append(area)
        return checksums

    def committed_ref(
        self, meta: SnapshotMeta, offset: int, length: int, now: float
    ) -> StagedChunk | None:
        """The committed object of `meta`'s snapshot holding exactly these bytes, if any
        (`RelayNetwork.staged_chunk`)."""
        if self.expires is not None and self.expires <= now:
            return None
        for area in self.areas:
            if area.committed and area.checksum == meta.checksum and area.meta.same_snapshot(meta):
                if area.expires is not None and area.expires <= now:
                    continue
                ref = area.ref(offset, length, None)
                if ref is not None:
                    return ref
        return None


class SharedStaging:
    """The staging state of a `RelayNetwork` and of every sibling made with `RelayNetwork.to`:
    what is staged, and the uploads, commits and removals of staged objects."""

    def __init__(self, staging_url: str, options: dict[str, Any], keep_for: float | None) -> None:
        self.staging_url = staging_url.rstrip("/")
        self.store = StagingStore(self.staging_url, options)
        self.keep_for = keep_for
        self.snapshots: dict[tuple[str, Vote], Staged] = {}
        self.bytes_uploaded = 0
        self.uploaded_by: dict[int, int] = {}
        """Bytes uploaded by each network sharing this staging (by `id`)."""
        self.reused_by: dict[int, int] = {}
        self.fetched_by: dict[int, int] = {}
        """Bytes each network's receiver took from its base, and fetched from the bucket."""

    def count_fetched(self, by: int, response: InstallSnapshotResponse) -> None:
        """Count what the receiver of the network `by` says it reused and fetched."""
        self.reused_by[by] = self.reused_by.get(by, 0) + response.reused
        self.fetched_by[by] = self.fetched_by.get(by, 0) + response.fetched

    async def stage(
        self, staged: Staged, req: InstallSnapshotRequest, by: int = 0, delta: str = "off"
    ) -> InstallSnapshotRequest:
        """`req` with its bytes staged (or found staged already) and replaced by a reference;
        bytes this call uploads are counted for the network `by` (`uploaded_by`).  With
        `delta` (a `TransferOptions.delta` mode) the chunk's block map is staged after its
        bytes (`fstransport.delta.relay.chunk_trailer`), for receivers that hold a base."""
        data = contiguous(req.data)
        length = len(data)
        crc = req.crc32c if req.crc32c is not None else chunk_crc(data)
        shared = self
        async with staged.cond:
            for area in staged.areas:
                if area.meta.same_snapshot(req.meta):
                    ref = area.ref(req.offset, length, crc)
                    if ref is not None:
                        return replace(req, data=b"", crc32c=crc, staged=ref)
            area = self.open_area(staged, req)
            ref = StagedChunk(
                area.url, chunk_name(req.offset, length, crc, staged.generation), length, crc
            )
            upload = area.uploading.get(ref.name)
            mine = upload is None
            if upload is None:  # nobody is uploading these bytes: this call does
                upload = area.uploading[ref.name] = asyncio.get_running_loop().create_future()
                area.pending += 1
        if not mine:  # another send (to another receiver) is uploading them right now
            if not await asyncio.shield(upload):
                raise NetworkError(f"staging {ref.url} failed; the chunk is sent again")
            ref = area.ref(req.offset, length, crc) or ref  # (its name names its trailer)
            return replace(req, data=b"", crc32c=crc, staged=ref)
        uploading, done = ref.name, False
        try:
            from fstransport.delta.relay import chunk_trailer

            trailer, ref = await chunk_trailer(delta, req.meta, req.offset, data, ref)
            # an earlier PUT of ours that was cancelled or failed: found there, the earlier one
            # wrote it, and its bytes were not counted then
            tried = ref.name in area.written
            if await _staging(shared.store.put_once(ref.url, data, crc, trailer)) or tried:
                shared.bytes_uploaded += length
                shared.uploaded_by[by] = shared.uploaded_by.get(by, 0) + length
            done = True
        finally:
            area.pending -= 1
            del area.uploading[uploading]
            area.written.add(ref.name)  # (a failed PUT may have left it too)
            if done:
                area.chunks[(req.offset, length)] = (crc, ref.name)
                area.damaged.discard(ref.name)
            upload.set_result(done)
            async with staged.cond:
                staged.cond.notify_all()
        return replace(req, data=b"", crc32c=crc, staged=ref)

    def open_area(self, staged: Staged, req: InstallSnapshotRequest) -> Area:
        """The area new chunks of `req`'s snapshot go to: the open one, or a new one (whose
        name no other sender can hit: a fresh nonce under the snapshot id and the vote)."""
        for area in staged.areas:
            if not area.committed and area.meta.same_snapshot(req.meta):
                return area
        vote = req.vote
        url = f"{snapshot_prefix(self.staging_url, req.meta.snapshot_id, vote)}/"
        url += uuid.uuid4().hex
        if len(url) > MAX_AREA_LENGTH:
            raise ConfigurationError(
                f"staging area URL {url[:64]!r}... is longer than {MAX_AREA_LENGTH} characters"
            )
        area = Area(url, replace(req.meta, checksum=None))
        staged.areas.append(area)
        return area

    async def commit(self, staged: Staged, meta: SnapshotMeta, vote: Vote) -> None:
        """Write the manifest of every open area of this snapshot (after its uploads ended):
        the commit marker that lets receivers install what they fetched from it."""
        async with staged.cond:
            await staged.cond.wait_for(lambda: all(a.pending == 0 for a in staged.areas))
            now = time.time()
            keep_for = self.keep_for
            for area in staged.areas:
                if area.committed or not area.meta.same_snapshot(meta):
                    continue
                manifest = manifest_document(area, meta, vote, now, keep_for)
                await _staging(self.store.write_json(manifest_url(area.url), manifest))
                area.committed = True
                area.checksum = meta.checksum
            if keep_for is not None:
                staged.expires = now + keep_for

    async def forget(self, staged: Staged, ref: StagedChunk) -> None:
        async with staged.cond:
            for area in staged.areas:
                if area.url == ref.area:
                    area.damaged.add(ref.name)
            staged.generation += 1  # its replacement gets a name of its own

    async def remove(self, staged: Staged, *, keep_committed: bool = False) -> None:
        for area in staged.areas:
            if area.adopted or (keep_committed and area.committed):
                continue  # another process's, or kept for later receivers by its TTL
            urls = [manifest_url(area.url)] if area.committed else []
            urls += [f"{area.url}/chunks/{name}" for name in sorted(area.written)]
            await self.store.remove(urls)  # the manifest first: then nobody installs
            await self.store.prune(f"{area.url}/chunks", self.staging_url)


class StagingCounts:
    """What one `RelayNetwork` (of those sharing a `SharedStaging`) did, by its own sends."""

    _shared: SharedStaging

    @property
    def own_bytes_uploaded(self) -> int:
        """Bytes of chunks this network itself uploaded (its siblings' uploads not counted):
        of a fan-out, the chunks this receiver's send staged first."""
        return self._shared.uploaded_by.get(id(self), 0)

    @property
    def own_bytes_reused(self) -> int:
        """Bytes this network's receiver took from a base it held instead of fetching them
        (`InstallSnapshotResponse.reused`; docs/relay.md, "Delta and the relay")."""
        return self._shared.reused_by.get(id(self), 0)

    @property
    def own_bytes_fetched(self) -> int:
        """Bytes this network's receiver fetched from the staging bucket, block maps included
        (`InstallSnapshotResponse.fetched`)."""
        return self._shared.fetched_by.get(id(self), 0)


async def _staging(write: Awaitable[bool]) -> bool:
    """`write` to the staging bucket; a failure that may pass (a reset, a 503) becomes a
    `NetworkError`, so that the sender sends the chunk again (with its usual retries)."""
    try:
        return await write
    except StorageError as exc:
        if exc.retryable:
            raise NetworkError(f"staging failed, the chunk is sent again: {exc}") from exc
        raise


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


def log_id_of(meta: SnapshotMeta) -> list[int] | None:
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
        "last_log_id": log_id_of(meta),
        "last_membership": jsonable(meta.last_membership),
        "chunks": sorted(
            [name, offset, length, crc]
            for (offset, length), (crc, name) in area.chunks.items()
            if name not in area.damaged
        ),
        "created": now,
        "expires": None if keep_for is None else now + keep_for,
    }
