"""The receiving end: validates each chunk, writes it into a store, installs finished snapshots.

`Receiver.receive` is openraft's ``Chunked::receive_snapshot``; `Receiver.handle` adds the vote
check and the install, and is what a network adapter calls for each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from fstransport.checksum import chunk_crc
from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    InvalidRequest,
    SnapshotMismatch,
    StorageError,
    TooManyTransfers,
)
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
    SnapshotSegmentId,
    StagedChunk,
    Vote,
)
from fstransport.protocol.receiver import (
    ReceiverLimits,
    StreamDecision,
    StreamState,
    check_snapshot_id,
    decide_stream,
    validate_request,
)
from fstransport.storage.base import (
    Lost,
    SnapshotSink,
    SnapshotStore,
    aborted,
    is_verifying_sink,
    write_checked,
    write_chunk,
)
from fstransport.tree import TREE, read_table

if TYPE_CHECKING:
    from fstransport.storage.staging import StagingStore

__all__ = ["Receiver", "VoteScope"]

log = logging.getLogger("fstransport.receiver")


INSTALLED_MEMORY = 256
"""How many installed snapshots a receiver remembers, to acknowledge a repeated final chunk."""

VOTES_MEMORY = 4096
"""How many snapshot ids a receiver with ``vote_scope="snapshot"`` remembers a vote for (the
least recently used id not being received is forgotten first)."""

VoteScope = Literal["node", "snapshot"]
"""What one vote covers: the whole receiver (a Raft node) or one snapshot id (a standalone
server shared by unrelated senders)."""

Held = tuple[tuple[int, int], ...]
_Outcome = tuple["Snapshot | None", "Held | None"]
_UNKNOWN = -1
"""The CRC passed down for a chunk whose sink computes it as it writes (`handle_checked`)."""


@dataclass
class _Checked:
    """The CRC32C of a request's data, once somebody computed it."""

    crc: int = _UNKNOWN


def _concurrent(stream: _Stream, req: InstallSnapshotRequest, checked: _Checked) -> bool:
    """Whether `req` may be written without holding its stream's lock (`_write_concurrently`)."""
    return (
        checked.crc == _UNKNOWN
        and not req.done
        and stream.state.meta.checksum is None  # else `_write` may skip bytes held already
        and getattr(stream.sink, "concurrent_writes", False)
    )


async def _put(sink: SnapshotSink, req: InstallSnapshotRequest, checked: _Checked) -> Lost:
    """Write `req`'s data into `sink`; an unknown CRC is computed by the sink as it writes."""
    if checked.crc == _UNKNOWN:
        lost, checked.crc = await write_checked(sink, req.offset, req.data)
        return lost
    return await write_chunk(sink, req.offset, req.data, checked.crc)


def _held_to_tell(stream: _Stream, req: InstallSnapshotRequest) -> Held | None:
    """What the stream holds, for the answer to the first chunk and to the first one after a
    resume (the sender need not send it), else None."""
    if req.offset != 0 and not stream.resumed:
        return None
    stream.resumed = False
    return tuple(stream.state.ledger.held())


def _consume_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("installing a snapshot failed: %s", task.exception())


@dataclass
class _Stream:
    state: StreamState
    sink: SnapshotSink | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    resumed: bool = False  # the next answer tells the sender what is held
    from_store: bool = False  # it continues partial data an earlier receiver or sender left
    unverified: bool = False  # it was written since its bytes were last re-read
    verifying: asyncio.Future[None] | None = None
    last_seen: float = 0.0  # when a request of it last came or ended (the receiver's clock)
    staged: dict[str, set[str]] = field(default_factory=dict)  # staging area → objects used


class Receiver:
    """Receives snapshots into `store`; one stream per snapshot id, several ids at once.

    Requests whose vote is lower than the one the receiver holds are refused (see `handle`).
    With ``vote_scope="node"`` (the default: a receiver inside a Raft node) there is one vote,
    `vote`, the highest seen on any request.  With ``vote_scope="snapshot"`` (a standalone
    server such as ``fstransport serve``, shared by senders that are not one Raft group) each
    snapshot id has its own: a high vote on one id never refuses another id, and `vote`, if
    given, stays a floor below which every request is refused.  See `vote_for`.
    Every request is validated before anything is written; a refused request leaves the
    receiver's streams and the installed snapshots as they were.

    With `idle_timeout` (seconds), a transfer that no request touched for that long is let go
    by `expire_idle` (which the receiver server calls periodically, and the receiver itself
    before it would refuse a new transfer as one too many): its slot, open files and buffers
    are given back, and its partial data stays in the store for a later resume (a store
    without a ``release`` method discards it).  `clock` tells the time (monotonic seconds;
    tests pass a fake one).

    With `relay_options` (the fsspec storage options of the staging bucket, ``{}`` for none)
    the receiver takes chunks staged by a `RelayNetwork`: it fetches each referenced object
    (ranged GETs, several at once), refuses it with `ChecksumMismatch` unless its CRC32C
    matches the reference, and installs only once every staging area it fetched from has its
    manifest (the sender's commit marker), naming this snapshot, its vote and size and the
    objects used.  `relay_prefixes` limits the staging URLs it fetches from.  Without
    `relay_options`, a reference is refused with `InvalidRequest` (field ``"staged"``) and the
    relay sends the bytes themselves.
    """

    def __init__(
        self,
        store: SnapshotStore,
        vote: Vote | None = None,
        *,
        limits: ReceiverLimits | None = None,
        vote_scope: VoteScope = "node",
        idle_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        relay_options: dict[str, Any] | None = None,
        relay_prefixes: Sequence[str] | None = None,
    ) -> None:
        if vote_scope not in ("node", "snapshot"):
            raise ConfigurationError(f"vote_scope must be 'node' or 'snapshot', got {vote_scope!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ConfigurationError(f"idle_timeout must be positive, got {idle_timeout!r}")
        if relay_prefixes is not None and relay_options is None:
            raise ConfigurationError("relay_prefixes needs relay_options")
        self.relay_options = relay_options
        self.relay_prefixes = (
            None if relay_prefixes is None else tuple(p.rstrip("/") + "/" for p in relay_prefixes)
        )
        self._staging: dict[str, StagingStore] = {}
        self.store = store
        self.vote = vote
        self.vote_scope: VoteScope = vote_scope
        self._votes: OrderedDict[str, Vote] = OrderedDict()
        self.limits = limits or ReceiverLimits()
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._busy: dict[str, int] = {}  # requests under way, per snapshot id
        self._streams: dict[str, _Stream] = {}
        self._installed: OrderedDict[str, SnapshotMeta] = OrderedDict()
        self._installing: dict[str, asyncio.Future[None]] = {}

    def vote_for(self, snapshot_id: str) -> Vote | None:
        """The vote a request for `snapshot_id` is checked against (None: none seen yet)."""
        if self.vote_scope == "node":
            return self.vote
        own = self._votes.get(snapshot_id)
        if own is None or (self.vote is not None and self.vote > own):
            return self.vote
        return own

    def _adopt(self, snapshot_id: str, vote: Vote) -> None:
        if self.vote_scope == "node":
            self.vote = vote
            return
        self._votes[snapshot_id] = vote
        self._votes.move_to_end(snapshot_id)
        if len(self._votes) > VOTES_MEMORY:
            for old in list(self._votes):
                if old not in self._streams and old != snapshot_id:
                    del self._votes[old]
                    if len(self._votes) <= VOTES_MEMORY:
                        break

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

        A request with ``staged`` set (a `RelayNetwork` reference) is resolved first: see the
        class's docstring.
        """
        if getattr(req, "staged", None) is not None:
            resolved = await self._resolve(req)
            if resolved is None:  # a lower vote: nothing fetched
                current = self.vote_for(req.meta.snapshot_id)
                assert current is not None
                return InstallSnapshotResponse(current)
            req, trust_crc = resolved, True
        crc = await self._validate(req, trust_crc=trust_crc)
        return await self._handle(req, _Checked(crc))

    async def _resolve(self, req: InstallSnapshotRequest) -> InstallSnapshotRequest | None:
        """`req` with the bytes of its staged object as its data, checked against the
        reference's CRC32C; None for a request of a lower vote (it is not fetched)."""
        ref = req.staged
        assert ref is not None
        if self.relay_options is None:
            raise InvalidRequest("this receiver does not fetch staged chunks", field="staged")
        self._check_ref(req, ref)
        current = self.vote_for(req.meta.snapshot_id)
        if current is not None and req.vote < current:
            return None
        store = self._staging_store(ref.area)
        data = await store.fetch(ref)
        return replace(req, data=data, crc32c=ref.crc32c)

    def _check_ref(self, req: InstallSnapshotRequest, ref: object) -> None:
        from fstransport.storage.staging import MAX_AREA_LENGTH, is_chunk_name

        def refuse(why: str) -> InvalidRequest:
            return InvalidRequest(f"malformed staged chunk reference: {why}", field="staged")

        if not isinstance(ref, StagedChunk):
            raise refuse(f"not a StagedChunk but {type(ref).__name__}")
        if not isinstance(ref.area, str) or not 0 < len(ref.area) <= MAX_AREA_LENGTH:
            raise refuse(f"the area must be a URL of at most {MAX_AREA_LENGTH} characters")
        if any(ch in ref.area for ch in "\x00\r\n") or "/../" in ref.area + "/":
            raise refuse("the area URL holds forbidden characters")
        if not is_chunk_name(ref.name):
            raise refuse("the object name is not a staged chunk name")
        for value in (ref.length, ref.crc32c):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise refuse("length and crc32c must be non-negative integers")
        if ref.crc32c > 0xFFFFFFFF:
            raise refuse("crc32c is more than 32 bits")
        if len(req.data) != 0 or req.crc32c != ref.crc32c:
            raise refuse("a reference carries no data and the staged object's CRC32C")
        limit = self.limits.max_chunk_size
        if limit is not None and ref.length > limit:
            raise InvalidRequest(
                f"staged chunk of {ref.length} bytes exceeds the receiver's limit of {limit}",
                field="data",
            )
        if self.relay_prefixes is not None and not ref.area.startswith(self.relay_prefixes):
            raise InvalidRequest(
                f"staging area {ref.area[:96]!r} is not under an allowed prefix", field="staged"
            )
        if not isinstance(req.vote, Vote):
            raise InvalidRequest("vote must be a Vote of integers", field="vote")
        if not isinstance(req.meta, SnapshotMeta):
            raise InvalidRequest("meta must be a SnapshotMeta", field="meta")
        check_snapshot_id(req.meta.snapshot_id)

    def _staging_store(self, area: str) -> StagingStore:
        from fstransport.storage.staging import StagingStore

        protocol = area.split("://", 1)[0] if "://" in area else "file"
        store = self._staging.get(protocol)
        if store is None:
            store = self._staging[protocol] = StagingStore(area, self.relay_options)
        return store

    async def _check_manifests(self, stream: _Stream, req: InstallSnapshotRequest) -> None:
        """Refuse to finish a snapshot fetched (in part) from a staging area whose manifest is
        missing or does not name this snapshot, vote and size and the objects fetched."""
        from fstransport.storage.staging import manifest_url

        meta = req.meta
        vote = [req.vote.term, req.vote.node_id, req.vote.committed]
        for area, names in sorted(stream.staged.items()):
            url = manifest_url(area)
            manifest = await self._staging_store(area).read_json(url)
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
        """Close the clients of staging buckets this receiver opened (see `relay_options`)."""
        stores, self._staging = list(self._staging.values()), {}
        for store in stores:
            await store.close()

    async def handle_checked(
        self, req: InstallSnapshotRequest
    ) -> tuple[InstallSnapshotResponse, int]:
        """`handle` for a request that never left this process and carries no CRC yet: the
        CRC32C of its data is computed while the data is written (see
        `fstransport.storage.sink.write_checked`), and returned with the answer.  A request
        that carries a CRC after all goes through `handle`, which checks it."""
        if not isinstance(req, InstallSnapshotRequest):
            raise InvalidRequest(f"not an InstallSnapshotRequest: {type(req).__name__}")
        if req.staged is not None:
            response = await self.handle(req)
            assert req.crc32c is not None
            return response, req.crc32c
        if req.crc32c is not None:
            crc = await self._validate(req)
            return await self._handle(req, _Checked(crc)), crc
        await self._validate(replace(req, crc32c=0), trust_crc=True)  # every field but the CRC
        checked = _Checked()
        response = await self._handle(req, checked)
        if checked.crc == _UNKNOWN:  # not written (held already, installed, a lower vote)
            checked.crc = chunk_crc(req.data)
        return response, checked.crc

    async def _handle(
        self, req: InstallSnapshotRequest, checked: _Checked
    ) -> InstallSnapshotResponse:
        snapshot_id = req.meta.snapshot_id
        current = self.vote_for(snapshot_id)
        if current is not None and req.vote < current:
            return InstallSnapshotResponse(current)
        if current is None or req.vote > current:
            self._adopt(snapshot_id, req.vote)
        snapshot, held = await self._receive(req, checked)
        if snapshot is not None:
            # Verified and finished: install it even if this request is cancelled meanwhile (its
            # sender timed out), and remember it only once it is really installed.
            install = asyncio.ensure_future(self._install(snapshot))
            install.add_done_callback(_consume_outcome)  # seen even if nobody awaits it any more
            self._installing[snapshot.meta.snapshot_id] = install
            await asyncio.shield(install)
        vote = self.vote_for(snapshot_id)
        assert vote is not None  # adopted above
        return InstallSnapshotResponse(vote, held=held)

    async def _install(self, snapshot: Snapshot) -> None:
        snapshot_id = snapshot.meta.snapshot_id
        try:
            await self.store.install(snapshot)
            self._installed[snapshot_id] = snapshot.meta
            while len(self._installed) > INSTALLED_MEMORY:
                self._installed.popitem(last=False)
        finally:
            if self._installing.get(snapshot_id) is asyncio.current_task():
                del self._installing[snapshot_id]

    async def receive(self, req: InstallSnapshotRequest) -> Snapshot | None:
        """Store one chunk; return the finished (not yet installed) snapshot on the final one.

        (On S3, which cannot rename, the finished snapshot is already visible: see
        `FsspecSnapshotStore`.)

        The seed's rules: a snapshot id not being received must start at offset 0, otherwise
        `SnapshotMismatch` expecting offset 0; chunks of the same snapshot are written at their
        offsets in any order; the ``done`` chunk completes it once every byte before it is held
        (else `SnapshotMismatch` expecting the first missing byte) and its checksum matches.
        """
        trust_crc = False
        if getattr(req, "staged", None) is not None:
            resolved = await self._resolve(req)
            if resolved is None:
                return None
            req, trust_crc = resolved, True
        checked = _Checked(await self._validate(req, trust_crc=trust_crc))
        snapshot, _ = await self._receive(req, checked)
        return snapshot

    async def _validate(self, req: InstallSnapshotRequest, *, trust_crc: bool = False) -> int:
        """`validate_request`; a broken request for a transfer in progress also ends that
        transfer (its sender gives up on an `InvalidRequest`), discarding its partial data.
        Nothing else changes: other transfers, the vote and installed snapshots stay."""
        try:
            crc = validate_request(req, self.limits, trust_crc=trust_crc)
            if req.meta.kind == TREE and not getattr(self.store, "accepts_trees", False):
                raise InvalidRequest(
                    "this receiver's store does not take directory snapshots", field="kind"
                )
            return crc
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
            current = self.vote_for(meta.snapshot_id)
            if not isinstance(vote, Vote) or (current is not None and vote < current):
                return None  # a stale leader cannot end the current leader's transfer
        except TypeError:  # a vote of the wrong types
            return None
        stream = self._streams.get(meta.snapshot_id)
        if stream is None or not stream.state.meta.same_snapshot(meta):
            return None
        return stream

    async def _receive(self, req: InstallSnapshotRequest, checked: _Checked) -> _Outcome:
        """`_receive_now`, with the request counted as under way for `expire_idle`."""
        with self.in_use(req.meta.snapshot_id):
            return await self._receive_now(req, checked)

    @contextlib.contextmanager
    def in_use(self, snapshot_id: str) -> Iterator[None]:
        """While inside, the transfer of `snapshot_id` (if any, or once begun) does not expire;
        leaving counts as activity.  A network adapter holds it while a chunk is still
        arriving, so that a slow chunk does not see its transfer let go under it."""
        self._busy[snapshot_id] = self._busy.get(snapshot_id, 0) + 1
        try:
            yield
        finally:
            left = self._busy[snapshot_id] - 1
            if left:
                self._busy[snapshot_id] = left
            else:
                del self._busy[snapshot_id]
            stream = self._streams.get(snapshot_id)
            if stream is not None:
                stream.last_seen = self.clock()

    async def expire_idle(self) -> list[str]:
        """Let go of every transfer no request touched for `idle_timeout` seconds; return their
        ids.  Each gives back its slot, its open files and its buffers; its partial data stays
        in the store (see the class's docstring).  Does nothing without an `idle_timeout`."""
        if self.idle_timeout is None:
            return []
        cutoff = self.clock() - self.idle_timeout
        expired = []
        for snapshot_id, stream in list(self._streams.items()):
            if (
                stream.last_seen > cutoff
                or self._busy.get(snapshot_id)
                or stream.lock.locked()
                or self._streams.get(snapshot_id) is not stream
            ):
                continue
            del self._streams[snapshot_id]
            async with stream.lock:
                stream.closed = True
                try:
                    release = getattr(self.store, "release", None)
                    if release is not None:
                        await release(snapshot_id)
                    else:
                        await self.store.abort(snapshot_id)
                except StorageError as exc:
                    log.warning("letting go of snapshot %r failed: %s", snapshot_id, exc)
            log.info(
                "snapshot %r: no chunk for %g s; its slot is free, its partial data kept",
                snapshot_id,
                self.idle_timeout,
            )
            expired.append(snapshot_id)
        return expired

    async def _receive_now(self, req: InstallSnapshotRequest, checked: _Checked) -> _Outcome:
        snapshot_id = req.meta.snapshot_id
        stream = self._streams.get(snapshot_id)
        installing = self._installing.get(snapshot_id)
        if stream is None and installing is not None:
            # Its answer was lost while it was installed (a repeated final chunk), or a new
            # transfer under this id begins: either way, after the install, never beside it
            # (beginning anew discards what the install is moving into place).
            with contextlib.suppress(Exception):
                await asyncio.shield(installing)
            return await self._receive_now(req, checked)
        if stream is None:
            if self._already_installed(req):
                return None, ((0, req.offset + len(req.data)),)
            stream = await self._resume(req)
        decision = decide_stream(stream.state.meta if stream else None, req)
        if decision is StreamDecision.CONTINUE and stream is not None:
            if req.offset == 0:
                await self._reverify(snapshot_id, stream)
            if _concurrent(stream, req, checked):
                return await self._write_concurrently(snapshot_id, stream, req, checked)
            async with stream.lock:
                if stream.closed:  # replaced while this request waited: decide again
                    return await self._receive(req, checked)
                return await self._write(snapshot_id, stream, req, checked)
        if stream is not None:
            if not await self._drop(snapshot_id, stream):  # it ended meanwhile: decide again
                return await self._receive_now(req, checked)
        elif len(self._streams) >= self.limits.max_transfers:
            if await self.expire_idle():  # a slot is free now; things moved meanwhile: again
                return await self._receive_now(req, checked)
            raise TooManyTransfers(
                f"already receiving {len(self._streams)} snapshots "
                f"(limit {self.limits.max_transfers}); try again later"
            )
        # Register the stream before the first await, so that chunks arriving while the sink
        # is created find it (and wait for its lock) instead of being told to start over.
        stream = _Stream(StreamState(req.meta), last_seen=self.clock())
        self._streams[snapshot_id] = stream
        async with stream.lock:
            try:
                stream.sink = await self.store.begin(req.meta)
            except BaseException:
                self._forget(snapshot_id, stream)
                raise
            return await self._write(snapshot_id, stream, req, checked)

    async def _resume(self, req: InstallSnapshotRequest) -> _Stream | None:
        """A stream over partial data an earlier receiver left for this very snapshot."""
        snapshot_id = req.meta.snapshot_id
        if len(self._streams) >= self.limits.max_transfers:
            if not await self.expire_idle():
                return None
            if snapshot_id in self._streams:  # begun by another request meanwhile
                return self._streams[snapshot_id]
        stream = _Stream(StreamState(req.meta), last_seen=self.clock())
        self._streams[snapshot_id] = stream
        async with stream.lock:
            try:
                found = await self.store.resume(req.meta)
            except BaseException:
                self._forget(snapshot_id, stream)
                raise
            if found is None:
                self._forget(snapshot_id, stream)
                return None
            stream.sink, records = found
            for record in records:
                stream.state.ledger.add(record.offset, record.length, record.crc)
            stream.resumed = True
            stream.from_store = True
            log.info(
                "resuming snapshot %r: %d bytes already held",
                snapshot_id,
                stream.state.ledger.held().total(),
            )
        return stream

    async def _reverify(self, snapshot_id: str, stream: _Stream) -> None:
        """A chunk at offset 0 for a stream that holds data: a sender starting (again) — often
        a new one after the last died.  The bytes held may have been damaged since they were
        written, so they are re-read and checked against their CRCs before the sender is told
        what is held; chunks that fail are forgotten and sent again.  Runs once per batch of
        writes (a retried chunk 0 waits for the check under way, it does not start another),
        in a task of its own that a cancelled request does not stop."""
        if stream.verifying is not None and not stream.verifying.done():
            await asyncio.shield(stream.verifying)
            return
        if not stream.unverified or stream.resumed:
            return  # nothing written since the last check (a stream from the store was checked)
        stream.unverified = False
        task = asyncio.ensure_future(self._check_held(snapshot_id, stream))
        task.add_done_callback(_consume_outcome)
        stream.verifying = task
        await asyncio.shield(task)

    async def _check_held(self, snapshot_id: str, stream: _Stream) -> None:
        async with stream.lock:
            sink = stream.sink
            if stream.closed or sink is None or not is_verifying_sink(sink):
                return
            records = stream.state.ledger.records()
            try:
                held = set(await sink.verify(records))
            except StorageError:
                await self._drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
                raise
            for record in records:
                if record not in held:
                    stream.state.ledger.discard(record.offset, record.end)
            if len(held) < len(records):
                log.warning(
                    "snapshot %r: %d of %d held chunks lost their bytes; they are sent again",
                    snapshot_id,
                    len(records) - len(held),
                    len(records),
                )
            stream.from_store = True  # its data may be another sender's: see `_write`

    def _forget(self, snapshot_id: str, stream: _Stream) -> None:
        stream.closed = True
        if self._streams.get(snapshot_id) is stream:
            del self._streams[snapshot_id]

    def _already_installed(self, req: InstallSnapshotRequest) -> bool:
        """A final chunk of a snapshot this receiver installed already (its answer was lost)."""
        installed = self._installed.get(req.meta.snapshot_id)
        return (
            req.done
            and installed is not None
            and req.meta.checksum is not None
            and installed.checksum == req.meta.checksum
            and installed.same_snapshot(req.meta)
        )

    async def _write(
        self, snapshot_id: str, stream: _Stream, req: InstallSnapshotRequest, checked: _Checked
    ) -> _Outcome:
        """Write `req` into `stream` (whose lock is held); finish the snapshot on ``done``.

        An unknown CRC (`handle_checked`) is computed by the sink as it writes."""
        sink = stream.sink
        assert sink is not None
        end = req.offset + len(req.data)
        if stream.state.meta.checksum is not None and stream.state.ledger.covers(req.offset, end):
            pass  # a snapshot named by its checksum never changes: these bytes are there already
        else:
            try:
                lost = await _put(sink, req, checked)
            except StorageError:
                await self._drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
                raise
            stream.state.record(req, checked.crc, lost)
            stream.unverified = True
            if req.staged is not None:
                stream.staged.setdefault(req.staged.area, set()).add(req.staged.name)
        held = _held_to_tell(stream, req)
        if not req.done:
            return None, held
        if stream.staged:
            own = req.staged.area if req.staged is not None else None
            if any(area != own for area in stream.staged):
                try:
                    await self._check_manifests(stream, req)
                except StorageError as exc:  # bytes of a sender that died before its commit:
                    await self._drop(snapshot_id, stream, locked=True)  # start over, from 0
                    got = SnapshotSegmentId(snapshot_id, req.offset)
                    raise SnapshotMismatch(SnapshotSegmentId(snapshot_id, 0), got) from exc
            await self._check_manifests(stream, req)  # no manifest, no install
        try:
            meta = stream.state.complete(req.offset + len(req.data), sink.rewind)
            snapshot = await self.store.finish(meta, sink)
            if meta.kind == TREE:
                await self._check_tree(snapshot)
        except SnapshotMismatch:
            raise  # the sender fills the gap; the stream stays
        except ChecksumMismatch as exc:
            await self._drop(snapshot_id, stream, locked=True)
            if stream.from_store:
                # The partial data an earlier receiver or sender left was not of this snapshot
                # after all (it named no checksum): it is gone now; the sender starts over.
                raise SnapshotMismatch(
                    expect=SnapshotSegmentId(snapshot_id, 0),
                    got=SnapshotSegmentId(snapshot_id, req.offset),
                ) from exc
            raise
        except BaseException:
            await self._drop(snapshot_id, stream, locked=True)
            raise
        # (a request that ended this transfer may have taken it out of the table meanwhile)
        self._forget(snapshot_id, stream)
        return snapshot, held

    async def _check_tree(self, snapshot: Snapshot) -> None:
        """Read a verified directory snapshot's table as a hostile sender's (names, sizes,
        the receiver's `max_tree_files`) before it may be installed; `InvalidRequest` closes
        the snapshot's data (the caller drops the transfer)."""
        size = snapshot.meta.size
        assert size is not None
        try:
            try:
                await asyncio.to_thread(read_table, snapshot.data, size, self.limits.max_tree_files)
            except OSError as exc:
                raise StorageError(snapshot.meta.snapshot_id, "read the table of", exc) from exc
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(snapshot.data.close)
            raise

    async def _write_concurrently(
        self, snapshot_id: str, stream: _Stream, req: InstallSnapshotRequest, checked: _Checked
    ) -> _Outcome:
        """`_write` for a chunk whose sink computes its CRC while writing it (`handle_checked`)
        into a sink that takes several writes at once: the stream's lock is held to look at the
        stream and to record the chunk, not while the data is written, so that the next chunk's
        write is already waiting in a worker thread when this one ends.  The final chunk always
        goes through `_write` (under the lock), and the sink's ``finish`` and ``abort`` wait for
        writes still running."""
        async with stream.lock:
            if stream.closed:  # replaced while this request waited: decide again
                return await self._receive(req, checked)
            sink = stream.sink
            assert sink is not None
        try:
            lost = await _put(sink, req, checked)
        except StorageError:
            async with stream.lock:
                # (if it was replaced meanwhile, the id and its partial data are not its any more)
                if self._streams.get(snapshot_id) is stream and not stream.closed:
                    await self._drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
            raise
        async with stream.lock:
            if stream.closed:
                raise aborted(sink.path)  # dropped while this chunk was being written
            stream.state.record(req, checked.crc, lost)
            stream.unverified = True
            return None, _held_to_tell(stream, req)

    async def abort(self, snapshot_id: str) -> None:
        """Stop receiving `snapshot_id` and delete its partial data (installed data stays)."""
        stream = self._streams.get(snapshot_id)
        if stream is not None:
            await self._drop(snapshot_id, stream)
        else:
            await self.store.abort(snapshot_id)

    async def _drop(self, snapshot_id: str, stream: _Stream, *, locked: bool = False) -> bool:
        """Forget `stream` and delete its partial data; False if it had ended meanwhile
        (finished, or dropped by another request), and nothing was done.

        The stream stays in the table until its lock is taken: a request arriving meanwhile
        waits behind it instead of beginning the same id anew beside a write or a finish."""
        if locked:
            self._forget(snapshot_id, stream)
            await self.store.abort(snapshot_id)
            return True
        async with stream.lock:
            if stream.closed:
                return False
            self._forget(snapshot_id, stream)
            await self.store.abort(snapshot_id)
            return True
