"""What a `Receiver` does with a chunk staged by a `RelayNetwork`: check the reference, fetch
the bytes, and check the staging areas' manifests before the snapshot may be installed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from fstransport.errors import InvalidRequest, StorageError
from fstransport.messages import InstallSnapshotRequest, SnapshotMeta, StagedChunk, Vote
from fstransport.protocol.receiver import ReceiverLimits, check_snapshot_id
from fstransport.protocol.receiver_state import StagingUnverified

if TYPE_CHECKING:
    from fstransport.delta.relay import Fetched, RelayBases
    from fstransport.storage.staging import StagingStore

__all__ = ["MANIFEST_WAIT", "Resolved", "StagedChunks"]

Resolved = tuple[InstallSnapshotRequest, "Fetched"]
"""A staged chunk's request with its bytes, and what of them came from a base and the bucket."""

MANIFEST_WAIT = 2.0
"""Seconds a receiver waits for the manifest of the area its final chunk came from: the relay
writes it while the receiver fetches that chunk (docs/relay.md).  No manifest by then, no
install."""


def _refuse(why: str) -> InvalidRequest:
    return InvalidRequest(f"malformed staged chunk reference: {why}", field="staged")


def check_ref(
    req: InstallSnapshotRequest, limits: ReceiverLimits, prefixes: tuple[str, ...] | None
) -> StagedChunk:
    """`req`'s reference, if it is well formed and allowed; else `InvalidRequest`."""
    from fstransport.storage.staging import MAX_AREA_LENGTH, is_chunk_name

    ref: object = req.staged
    if not isinstance(ref, StagedChunk):
        raise _refuse(f"not a StagedChunk but {type(ref).__name__}")
    if not isinstance(ref.area, str) or not 0 < len(ref.area) <= MAX_AREA_LENGTH:
        raise _refuse(f"the area must be a URL of at most {MAX_AREA_LENGTH} characters")
    if any(ch in ref.area for ch in "\x00\r\n") or "/../" in ref.area + "/":
        raise _refuse("the area URL holds forbidden characters")
    if not is_chunk_name(ref.name):
        raise _refuse("the object name is not a staged chunk name")
    for value in (ref.length, ref.crc32c):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _refuse("length and crc32c must be non-negative integers")
    if ref.crc32c > 0xFFFFFFFF:
        raise _refuse("crc32c is more than 32 bits")
    if len(req.data) != 0 or req.crc32c != ref.crc32c:
        raise _refuse("a reference carries no data and the staged object's CRC32C")
    limit = limits.max_chunk_size
    if limit is not None and ref.length > limit:
        raise InvalidRequest(
            f"staged chunk of {ref.length} bytes exceeds the receiver's limit of {limit}",
            field="data",
        )
    if prefixes is not None and not ref.area.startswith(prefixes):
        raise InvalidRequest(
            f"staging area {ref.area[:96]!r} is not under an allowed prefix", field="staged"
        )
    if not isinstance(req.vote, Vote):
        raise InvalidRequest("vote must be a Vote of integers", field="vote")
    if not isinstance(req.meta, SnapshotMeta):
        raise InvalidRequest("meta must be a SnapshotMeta", field="meta")
    check_snapshot_id(req.meta.snapshot_id)
    return ref


async def _manifest(store: StagingStore, url: str, *, wait: bool) -> dict[str, Any] | None:
    """The manifest at `url`, waiting up to `MANIFEST_WAIT` seconds for it when `wait` (one
    read half written, on a store without atomic writes, is read again meanwhile)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + (MANIFEST_WAIT if wait else 0.0)
    pause = 0.02
    while True:
        late = loop.time() + pause > give_up
        try:
            manifest = await store.read_json(url)
        except StorageError:
            if late:
                raise
            manifest = None
        if manifest is not None or late:
            return manifest
        await asyncio.sleep(pause)
        pause = min(2 * pause, 0.5)


class StagedChunks:
    """The staging buckets one receiver fetched from (one client per protocol)."""

    def __init__(
        self, store: Any = None, installed: Iterable[str] = (), long_lived: bool = False
    ) -> None:
        self._stores: dict[str, StagingStore] = {}
        self.bases: RelayBases | None = None
        """The receiver's bases (`store`'s, `installed` its ids installed, oldest first)."""
        if store is not None:
            from fstransport.delta.latest import last_installed
            from fstransport.delta.relay import RelayBases

            latest = partial(last_installed, installed, store, long_lived)
            self.bases = RelayBases(store, latest, keep=long_lived)
        self._opening: dict[str, asyncio.Future[None]] = {}
        """Snapshots whose chunk at offset 0 is being fetched: their other chunks wait for it
        (fetches of different lengths, or a base looked up first, may end in any order)."""
        self._manifests: dict[str, dict[str, Any]] = {}  # read with a final chunk (`fetch`)

    def store(self, area: str, options: dict[str, Any]) -> StagingStore:
        from fstransport.storage.staging import StagingStore

        protocol = area.split("://", 1)[0] if "://" in area else "file"
        store = self._stores.get(protocol)
        if store is None:
            store = self._stores[protocol] = StagingStore(area, options)
        return store

    async def fetch(
        self,
        req: InstallSnapshotRequest,
        ref: StagedChunk,
        options: dict[str, Any],
    ) -> Resolved:
        """`req` with the staged object's bytes as its data, checked against its CRC32C, and
        what was reused and fetched: the ranges the receiver's base holds are taken from it
        (`bases`, `fstransport.delta.relay.fetch_staged`).  With a final chunk, its area's
        manifest is read at the same time (`check_manifests`)."""
        from fstransport.delta.relay import fetch_staged

        store, snapshot_id = self.store(ref.area, options), req.meta.snapshot_id
        opening = self._opening.get(snapshot_id)
        first = not req.offset and opening is None
        if first:
            opening = self._opening[snapshot_id] = asyncio.get_running_loop().create_future()
        elif req.offset and opening is not None:
            await asyncio.shield(opening)  # the chunk at 0 opens the stream: it goes first
        early = None
        if req.done:
            from fstransport.storage.staging import manifest_url

            url = manifest_url(ref.area)
            early = asyncio.ensure_future(_manifest(store, url, wait=False))
        try:
            done = await fetch_staged(store, ref, req.meta, req.offset, self.bases)
        except BaseException:
            if early is not None:
                early.cancel()
                await asyncio.gather(early, return_exceptions=True)
            raise
        finally:
            if first:
                self._opening.pop(snapshot_id).set_result(None)
        if early is not None:
            self._remember(url, (await asyncio.gather(early, return_exceptions=True))[0])
        return replace(req, data=done.data, crc32c=ref.crc32c), done

    def _remember(self, url: str, manifest: object) -> None:
        """Keep a manifest read alongside a final chunk for `check_manifests` (the last 16);
        one not there yet, or unreadable, is read again there."""
        if isinstance(manifest, dict):
            while len(self._manifests) >= 16:
                del self._manifests[next(iter(self._manifests))]
            self._manifests[url] = manifest

    async def check_manifests(
        self,
        staged: Mapping[str, set[str]],
        req: InstallSnapshotRequest,
        options: dict[str, Any],
    ) -> None:
        """Refuse to finish a snapshot fetched (in part) from a staging area whose manifest is
        missing or does not name this snapshot, vote and size and the objects fetched
        (`StagingUnverified`)."""
        own = req.staged.area if req.staged is not None else None
        foreign = any(area != own for area in staged)
        if self.bases is not None:  # (a base under this id is about to be replaced)
            self.bases.drop(req.meta.snapshot_id)
        try:
            await self._check_manifests(staged, req, options)
        except StorageError as exc:
            raise StagingUnverified(exc, foreign=foreign) from exc

    async def _check_manifests(
        self,
        staged: Mapping[str, set[str]],
        req: InstallSnapshotRequest,
        options: dict[str, Any],
    ) -> None:
        from fstransport.storage.staging import manifest_url

        meta = req.meta
        own = req.staged.area if req.staged is not None else None
        vote = [req.vote.term, req.vote.node_id, req.vote.committed]
        for area, names in sorted(staged.items()):
            url = manifest_url(area)
            manifest = self._manifests.pop(url, None)  # (manifests are written once)
            if manifest is None:
                manifest = await _manifest(self.store(area, options), url, wait=area == own)
            if manifest is None:
                raise StorageError(
                    url, "read", FileNotFoundError("the staging area has no manifest")
                )
            listed = manifest.get("chunks")
            listed_names = (
                {entry[0] for entry in listed if isinstance(entry, list) and entry}
                if isinstance(listed, list)
                else set()
            )
            problems = [
                what
                for what, bad in (
                    ("snapshot id", manifest.get("snapshot_id") != meta.snapshot_id),
                    ("vote", manifest.get("vote") != vote),
                    ("size", manifest.get("size") != meta.size),
                    (
                        "checksum",
                        meta.checksum is not None
                        and manifest.get("checksum") not in (None, meta.checksum),
                    ),
                    ("objects", not names <= listed_names),
                )
                if bad
            ]
            if problems:
                raise StorageError(
                    url,
                    "verify",
                    ValueError(f"the manifest does not match this snapshot: {', '.join(problems)}"),
                )

    async def close(self) -> None:
        """Close the staging clients opened."""
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            await store.close()
