"""The receiving end: validates each chunk, writes it into a store, installs finished snapshots.

`Receiver.receive` is openraft's ``Chunked::receive_snapshot``; `Receiver.handle` adds the vote
check and the install, and is what a network adapter calls for each request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fstransport.errors import InvalidRequest, SnapshotMismatch, StorageError, TooManyTransfers
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
    Vote,
)
from fstransport.protocol.receiver import (
    ReceiverLimits,
    StreamDecision,
    StreamState,
    decide_stream,
    validate_request,
)
from fstransport.storage.sink import SnapshotSink
from fstransport.storage.store import SnapshotStore

__all__ = ["Receiver"]


@dataclass
class _Stream:
    state: StreamState
    sink: SnapshotSink | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


class Receiver:
    """Receives snapshots into `store`; one stream per snapshot id, several ids at once.

    `vote` is the highest vote seen; requests with a lower one are refused (see `handle`).
    Every request is validated before anything is written; a refused request leaves the
    receiver's streams and the installed snapshots as they were.
    """

    def __init__(
        self,
        store: SnapshotStore,
        vote: Vote | None = None,
        *,
        limits: ReceiverLimits | None = None,
    ) -> None:
        self.store = store
        self.vote = vote
        self.limits = limits or ReceiverLimits()
        self._streams: dict[str, _Stream] = {}

    @property
    def receiving(self) -> list[str]:
        """Ids of the snapshots being received right now."""
        return sorted(self._streams)

    async def handle(
        self, req: InstallSnapshotRequest, *, trust_crc: bool = False
    ) -> InstallSnapshotResponse:
        """Answer one request: check its vote, store its chunk, install the snapshot when done.

        A request whose vote is lower than the receiver's is not applied; the answer carries
        the receiver's (higher) vote, which tells the sender to stop.  A higher vote is adopted.
        Raises `InvalidRequest`, `ChecksumMismatch`, `SnapshotMismatch` or `StorageError`.

        `trust_crc` takes ``req.crc32c`` as is instead of computing it again; it is only for a
        request that never left this process (see `LoopbackNetwork`).
        """
        crc = await self._validate(req, trust_crc=trust_crc)
        if self.vote is not None and req.vote < self.vote:
            return InstallSnapshotResponse(self.vote)
        if self.vote is None or req.vote > self.vote:
            self.vote = req.vote
        snapshot = await self._receive(req, crc)
        if snapshot is not None:
            await self.store.install(snapshot)
        return InstallSnapshotResponse(self.vote)

    async def receive(self, req: InstallSnapshotRequest) -> Snapshot | None:
        """Store one chunk; return the finished (not yet installed) snapshot on the final one.

        (On S3, which cannot rename, the finished snapshot is already visible: see
        `FsspecSnapshotStore`.)

        The seed's rules: a snapshot id not being received must start at offset 0, otherwise
        `SnapshotMismatch` expecting offset 0; chunks of the same snapshot are written at their
        offsets in any order; the ``done`` chunk completes it once every byte before it is held
        (else `SnapshotMismatch` expecting the first missing byte) and its checksum matches.
        """
        return await self._receive(req, await self._validate(req))

    async def _validate(self, req: InstallSnapshotRequest, *, trust_crc: bool = False) -> int:
        """`validate_request`; a broken request for a transfer in progress also ends that
        transfer (its sender gives up on an `InvalidRequest`), discarding its partial data.
        Nothing else changes: other transfers, the vote and installed snapshots stay."""
        try:
            return validate_request(req, self.limits, trust_crc=trust_crc)
        except InvalidRequest:
            stream = self._stream_of(req)
            if stream is not None:
                await self._drop(stream.state.meta.snapshot_id, stream)
            raise

    def _stream_of(self, req: object) -> _Stream | None:
        """The transfer in progress that `req` (however malformed) belongs to, if any."""
        meta = getattr(req, "meta", None)
        vote = getattr(req, "vote", None)
        if not isinstance(meta, SnapshotMeta) or not isinstance(meta.snapshot_id, str):
            return None
        try:
            if not isinstance(vote, Vote) or (self.vote is not None and vote < self.vote):
                return None  # a stale leader cannot end the current leader's transfer
        except TypeError:  # a vote of the wrong types
            return None
        stream = self._streams.get(meta.snapshot_id)
        if stream is None or not stream.state.meta.same_snapshot(meta):
            return None
        return stream

    async def _receive(self, req: InstallSnapshotRequest, crc: int) -> Snapshot | None:
        snapshot_id = req.meta.snapshot_id
        stream = self._streams.get(snapshot_id)
        decision = decide_stream(stream.state.meta if stream else None, req)
        if decision is StreamDecision.CONTINUE and stream is not None:
            async with stream.lock:
                if stream.closed:  # replaced while this request waited: decide again
                    return await self._receive(req, crc)
                return await self._write(snapshot_id, stream, req, crc)
        if stream is not None:
            await self._drop(snapshot_id, stream)
        elif len(self._streams) >= self.limits.max_transfers:
            raise TooManyTransfers(
                f"already receiving {len(self._streams)} snapshots "
                f"(limit {self.limits.max_transfers}); try again later"
            )
        # Register the stream before the first await, so that chunks arriving while the sink
        # is created find it (and wait for its lock) instead of being told to start over.
        stream = _Stream(StreamState(req.meta))
        self._streams[snapshot_id] = stream
        async with stream.lock:
            try:
                stream.sink = await self.store.begin(req.meta)
            except BaseException:
                stream.closed = True
                if self._streams.get(snapshot_id) is stream:
                    del self._streams[snapshot_id]
                raise
            return await self._write(snapshot_id, stream, req, crc)

    async def _write(
        self, snapshot_id: str, stream: _Stream, req: InstallSnapshotRequest, crc: int
    ) -> Snapshot | None:
        """Write `req` into `stream` (whose lock is held); finish the snapshot on ``done``."""
        sink = stream.sink
        assert sink is not None
        try:
            lost = await sink.write(req.offset, req.data)
        except StorageError:
            await self._drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
            raise
        stream.state.record(req, crc, lost)
        if not req.done:
            return None
        try:
            meta = stream.state.complete(req.offset + len(req.data), sink.rewind)
            snapshot = await self.store.finish(meta, sink)
        except SnapshotMismatch:
            raise  # the sender fills the gap; the stream stays
        except BaseException:
            await self._drop(snapshot_id, stream, locked=True)
            raise
        stream.closed = True
        del self._streams[snapshot_id]
        return snapshot

    async def abort(self, snapshot_id: str) -> None:
        """Stop receiving `snapshot_id` and delete its partial data (installed data stays)."""
        stream = self._streams.get(snapshot_id)
        if stream is not None:
            await self._drop(snapshot_id, stream)
        else:
            await self.store.abort(snapshot_id)

    async def _drop(self, snapshot_id: str, stream: _Stream, *, locked: bool = False) -> None:
        """Forget `stream` and delete its partial data."""
        if self._streams.get(snapshot_id) is stream:
            del self._streams[snapshot_id]
        if locked:
            stream.closed = True
            await self.store.abort(snapshot_id)
            return
        async with stream.lock:
            stream.closed = True
            await self.store.abort(snapshot_id)
