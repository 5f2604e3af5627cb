"""`RelayNetwork`: snapshots through a bucket — bytes staged once, references sent to receivers.

``Chunked.send_snapshot(RelayNetwork(inner, "s3://bucket/stage"), vote, snapshot)`` stages every
chunk as an immutable object in the staging bucket and sends the receiver behind `inner` only a
`StagedChunk` reference (an `InstallSnapshotRequest` with empty data and ``staged`` set, well
under 1 KiB).  The receiver (``Receiver(store, relay_options={...})``) fetches the object, checks
its CRC32C, and writes it through its store as ever; before it finishes the snapshot it reads
the area's manifest, which this network writes **last**, once every chunk is staged, while the
receiver fetches the final chunk: no manifest, no install.  See docs/relay.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fstransport.errors import (
    ConfigurationError,
    InvalidRequest,
    NetworkError,
    RemoteError,
    StorageError,
)
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    SnapshotMeta,
    StagedChunk,
    Vote,
)
from fstransport.network.base import Network
from fstransport.network.relay_areas import (
    SharedStaging,
    Staged,
    StagingCounts,
    is_damaged,
    not_fetched,
    stageable,
)
from fstransport.network.relay_found import find_areas
from fstransport.network.relay_gate import ReferenceGate, check_block_maps, check_stage_ahead
from fstransport.options import TransferOptions

__all__ = ["RelayNetwork", "StagedChunk"]

log = logging.getLogger("fstransport.relay")

FALL_BACK_AFTER = 3
"""References in a row a receiver fails to fetch (or finds damaged) before the relay sends it
the bytes themselves."""


class RelayNetwork(StagingCounts):
    """A `Network` that stages chunk bytes in `staging_url` and sends references through `inner`.

    `staging_options` are the fsspec storage options of the staging URL (``endpoint_url``,
    ``key``, ...).  Each chunk becomes one object, written once with one PUT (conditional on
    S3) under a key nobody else uses (see `fstransport.storage.staging`).  A chunk staged
    already — the same snapshot and vote, offset, length and CRC32C — is not uploaded again:
    a second `Chunked.send_snapshot` of the same snapshot through this network (or a sibling
    from `to`, for another receiver) uploads nothing, and when the snapshot's meta names its
    checksum the sender does not even read the source again (`staged_chunk`).

    Once every receiver this network and its siblings began sending the snapshot to has
    acknowledged its final chunk, the staged objects are removed, unless `keep_for` (seconds)
    keeps them for later receivers; `expire` removes what outlived its TTL, `close` everything.
    With `block_maps`, each chunk is staged with its block map, and a receiver that holds an
    earlier snapshot fetches only the ranges it lacks (docs/relay.md).  A staged object a
    receiver finds damaged or gone is staged again; a receiver that takes no references (made
    without ``relay_options``) or fails to fetch `FALL_BACK_AFTER` in a row gets the bytes
    themselves through `inner` from then on.

    Staging runs ahead (`window_for`: `stage_ahead` chunks more than the window, default
    ``max_in_flight``) and from the first chunk on (`orders_references`, see
    `fstransport.protocol.send_order`); the receiver still sees at most ``max_in_flight``
    references, in order, the one at offset 0 first and the final one alone (docs/relay.md).
    """

    orders_references = True

    def __init__(
        self,
        inner: Network,
        staging_url: str,
        *,
        keep_for: float | None = None,
        stage_ahead: int | None = None,
        block_maps: bool = False,
        **staging_options: Any,
    ) -> None:
        if keep_for is not None and not keep_for >= 0:
            raise ConfigurationError(f"keep_for must not be negative, got {keep_for!r}")
        if not isinstance(staging_url, str) or not staging_url.strip("/"):
            raise ConfigurationError(f"staging_url must be a URL, got {staging_url!r}")
        self.inner = inner
        self._shared = SharedStaging(staging_url, staging_options, keep_for)
        self._direct = False  # the receiver takes no references: it gets the bytes
        self._fetch_failures = 0  # references in a row the receiver could not fetch
        self.stage_ahead = check_stage_ahead(stage_ahead)
        self.block_maps = check_block_maps(block_maps)  # (a base's receiver fetches less)
        self._gate = ReferenceGate()  # the references out to this network's receiver

    @property
    def staging_url(self) -> str:
        return self._shared.staging_url

    @property
    def keep_for(self) -> float | None:
        return self._shared.keep_for

    @property
    def bytes_uploaded(self) -> int:
        """Bytes of chunks this network and its siblings uploaded to the staging bucket."""
        return self._shared.bytes_uploaded

    @property
    def puts(self) -> int:
        """Objects (chunks and manifests) this network and its siblings wrote."""
        return self._shared.store.puts

    def to(self, inner: Network) -> RelayNetwork:
        """A `RelayNetwork` for another receiver (behind `inner`) that shares this one's
        staging: what either staged, the other reuses."""
        sibling = RelayNetwork.__new__(RelayNetwork)
        sibling.__dict__.update(self.__dict__, inner=inner, _direct=False, _fetch_failures=0)
        sibling._gate = ReferenceGate()  # (the staging, `stage_ahead` and counts are shared)
        return sibling

    def _maps(self, options: TransferOptions) -> str:
        """The delta mode whose block maps go with the staged chunks ("off": none)."""
        return options.delta if self.block_maps else "off"

    def window_for(self, options: TransferOptions) -> int:
        """Chunks a sender may hand over at once: ``max_in_flight`` plus `stage_ahead`."""
        ahead = options.max_in_flight if self.stage_ahead is None else self.stage_ahead
        return options.max_in_flight + ahead

    def expect(self, vote: Vote, snapshot_id: str) -> None:
        """Count the receiver behind this network among those the snapshot is sent to before
        its first chunk goes: what is staged stays until it acknowledged (or `close`), even if
        a sibling's receiver acknowledges first."""
        key = (snapshot_id, vote)
        self._shared.snapshots.setdefault(key, Staged()).users.add(id(self))

    async def find_staged(self, vote: Vote, meta: SnapshotMeta) -> set[str]:
        """The checksums of the committed staged copies of the snapshot `meta` names under
        `vote`: those of this network and its siblings, and those other processes staged and
        keep for later receivers (a manifest with a TTL still running, see `keep_for`).

        When `meta` names its checksum, a copy found with that checksum is reused from then on
        (a sender joining later): its chunks are neither read nor uploaded again, and it is
        never removed by this network (its TTL governs it).  `StorageError` when the bucket
        cannot be listed."""
        staged = self._shared.snapshots.setdefault((meta.snapshot_id, vote), Staged())
        staged.searched.add(meta.checksum)
        found = await find_areas(self._shared.store, self.staging_url, meta, vote)
        return staged.adopt(found, meta)

    def staged_chunk(
        self, vote: Vote, meta: SnapshotMeta, offset: int, length: int
    ) -> StagedChunk | None:
        """The committed staged object holding exactly bytes ``[offset, offset + length)`` of
        the snapshot `meta` names, if there is one; the sender then need not read them.

        Only for a meta that names its checksum, and equal to the committed one: an id alone
        does not prove that the bytes are the same."""
        staged = self._shared.snapshots.get((meta.snapshot_id, vote))
        if staged is None or meta.checksum is None or self._direct:
            return None
        return staged.committed_ref(meta, offset, length, time.time())

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        with self._gate.entered(req) as ticket:  # (its place among the references)
            if not stageable(req):
                await self._gate.turn(ticket, option.max_in_flight)
                answer = await self.inner.install_snapshot(req, option)  # as it is
                self._gate.leave(ticket, ok=True)
                return answer
            key = (req.meta.snapshot_id, req.vote)
            staged = self._shared.snapshots.get(key)
            if staged is None:
                staged = self._shared.snapshots[key] = Staged()
            staged.busy += 1
            staged.users.add(id(self))
            try:
                if _worth_searching(req, staged):
                    await _search(self, req.vote, req.meta)
                response = await self._deliver(ticket, staged, req, option)
                self._gate.leave(ticket, ok=True, held=response.held)
                if req.done and response.vote <= req.vote:
                    staged.users.discard(id(self))
                    await self._acknowledged(key, staged)
                return response
            finally:
                staged.busy -= 1

    async def _deliver(
        self, ticket: int, staged: Staged, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        direct = self._direct and req.staged is None  # (the receiver gets the bytes: no staging)
        staging = not direct and req.staged is None
        ref_req = req
        if staging:
            ref_req = await self._shared.stage(staged, req, id(self), self._maps(option))
        committing = None
        if req.done and not direct:  # the manifest goes once every chunk is staged, while fetched
            await self._gate.settled(ticket)
            committing = asyncio.ensure_future(self._shared.commit(staged, req.meta, req.vote))
        try:
            await self._gate.turn(ticket, option.max_in_flight)  # (staged: its turn)
            if self._gate.holds(req):  # (the receiver said so, answering the chunk at 0)
                return InstallSnapshotResponse(req.vote)
            if self._direct and req.staged is None:  # (found out while this one was staged)
                ref_req = req
            if committing is not None:
                await committing  # (the receiver reads the manifest with the final chunk)
                if _uncommitted(staged, req.meta):  # a chunk staged again since
                    await self._shared.commit(staged, req.meta, req.vote)
            response = await self.inner.install_snapshot(ref_req, option)
        except RemoteError as exc:
            ref = ref_req.staged
            source = exc.source
            if isinstance(source, InvalidRequest) and source.field == "staged":
                return await self._fall_back(req, option, exc, "takes no staged chunks")
            if ref is None or not (is_damaged(source) or not_fetched(source)):
                raise
            self._fetch_failures += 1
            if self._fetch_failures >= FALL_BACK_AFTER:
                return await self._fall_back(req, option, exc, "cannot fetch staged chunks")
            if not is_damaged(source):
                raise  # the bucket failed the receiver for now: the sender sends it again
            await self._shared.forget(staged, ref)
            if req.staged is not None:  # the sender retries, reading the bytes this time
                raise NetworkError(f"staged object {ref.url} is damaged or gone: {source}") from exc
            log.warning("staged object %s refused (%s); staging it again", ref.url, exc)
            ref_req = await self._shared.stage(staged, req, id(self), self._maps(option))
            if req.done:
                await self._shared.commit(staged, req.meta, req.vote)
            response = await self.inner.install_snapshot(ref_req, option)
        finally:
            if committing is not None and not committing.done():  # (cancelled meanwhile)
                committing.cancel()
                await asyncio.gather(committing, return_exceptions=True)
        self._fetch_failures = 0
        self._shared.count_fetched(id(self), response)
        return response

    async def _fall_back(
        self, req: InstallSnapshotRequest, option: TransferOptions, exc: RemoteError, why: str
    ) -> InstallSnapshotResponse:
        """From now on, send the receiver behind `inner` the bytes themselves."""
        log.warning("%r %s (%s); sending it the bytes themselves", self.inner, why, exc.source)
        self._direct = True
        if req.staged is not None:  # the sender did not read these bytes: it must now
            raise NetworkError(f"{self.inner!r} {why}") from exc
        return await self.inner.install_snapshot(req, option)

    async def _acknowledged(self, key: tuple[str, Vote], staged: Staged) -> None:
        """The receiver installed the snapshot: remove what is staged for it, unless it is kept
        for later receivers or another receiver is still being sent it."""
        alone = not staged.users and staged.busy <= 1 and self._shared.snapshots.get(key) is staged
        if self._shared.keep_for is None and alone:
            del self._shared.snapshots[key]
            await self._shared.remove(staged)
        await self.expire()

    async def expire(self, now: float | None = None) -> int:
        """Remove staged snapshots whose `keep_for` has passed and that no send is using;
        return how many."""
        now = time.time() if now is None else now
        removed = 0
        for key, staged in list(self._shared.snapshots.items()):
            if staged.expires is not None and staged.expires <= now and staged.busy == 0:
                del self._shared.snapshots[key]
                await self._shared.remove(staged)
                removed += 1
        return removed

    async def close(self, *, keep: bool = False) -> None:
        """Remove everything this network and its siblings staged (kept or not) and close the
        staging client.  The inner network stays open (its owner closes it).

        With `keep`, committed areas stay for later receivers, in this process or another
        (their manifests name when they expire: `keep_for`; `cleanup_staging` removes them
        then); only areas without a manifest (a send that failed) are removed."""
        try:
            for key, staged in list(self._shared.snapshots.items()):
                del self._shared.snapshots[key]
                await self._shared.remove(staged, keep_committed=keep)
        finally:
            await self._shared.store.close()

    async def __aenter__(self) -> RelayNetwork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"RelayNetwork({self.inner!r}, {self.staging_url!r})"


async def _search(relay: RelayNetwork, vote: Vote, meta: SnapshotMeta) -> None:
    """Look once for a copy of this snapshot that another process staged and keeps."""
    try:
        await relay.find_staged(vote, meta)
    except StorageError as exc:  # nothing found: the chunks are staged as usual
        log.warning("cannot look for staged copies of %r: %s", meta.snapshot_id, exc)


def _uncommitted(staged: Staged, meta: SnapshotMeta) -> bool:
    return any(not a.committed and a.meta.same_snapshot(meta) for a in staged.areas)


def _worth_searching(req: InstallSnapshotRequest, staged: Staged) -> bool:
    """Whether to look for copies other processes staged of `req`'s snapshot: once per
    checksum, and not when only the final chunk names it (a meta without one gets it there),
    where a search would cost a LIST before the last PUT to spare at most that PUT."""
    checksum = req.meta.checksum
    return (
        checksum is not None
        and checksum not in staged.searched
        and not (req.done and req.offset > 0)
    )
