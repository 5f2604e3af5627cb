"""The receiving end: executes the receiver's rules against a store.

`Receiver.receive` is openraft's ``Chunked::receive_snapshot``; `Receiver.handle` adds the vote
check and the install, and is what a network adapter calls for each request.  What a request
does is decided by `fstransport.protocol.receiver_state.ReceiverState` (sans I/O), which answers
with an action; this module only executes it: it writes, resumes, drops and installs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from fstransport.checksum import chunk_crc
from fstransport.delta.latest import note_latest
from fstransport.delta.relay import NOT_FETCHED
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Snapshot,
    Vote,
)
from fstransport.protocol.delta_pack import takes_extents
from fstransport.protocol.receiver import ReceiverLimits, validate_request
from fstransport.protocol.receiver_state import (
    INSTALLED_MEMORY,
    VOTES_MEMORY,
    ReceiverState,
    VoteScope,
)
from fstransport.receive_streams import Outcome, StreamRunner, consume_outcome
from fstransport.relay_receive import Resolved, StagedChunks, check_ref
from fstransport.storage.base import SnapshotStore
from fstransport.tree import TREE

__all__ = ["INSTALLED_MEMORY", "VOTES_MEMORY", "Receiver", "VoteScope"]

log = logging.getLogger("fstransport.receiver")


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
    without a ``release`` method discards it).  `clock`: monotonic seconds (tests fake it).

    With `relay_options` (the staging bucket's fsspec storage options, ``{}`` for none) it
    fetches chunks a `RelayNetwork` staged, refuses any whose CRC32C is not the reference's,
    and installs only once each staging area's manifest (the commit marker) names them
    (``docs/relay.md``); `relay_prefixes` limits where from.  Without, a reference is refused
    (`InvalidRequest`, field ``"staged"``) and the relay sends the bytes themselves.
    `long_lived` (a Raft node's; ``serve --keep-delta-state``) keeps in the store the id installed
    last and its bases' delta maps (``fstransport.delta.latest``, ``fstransport.delta.cache``).
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
        long_lived: bool = False,
    ) -> None:
        if idle_timeout is not None and not idle_timeout > 0:
            raise ConfigurationError(f"idle_timeout must be positive, got {idle_timeout!r}")
        if relay_prefixes is not None and relay_options is None:
            raise ConfigurationError("relay_prefixes needs relay_options")
        self.rules = ReceiverState(vote, limits or ReceiverLimits(), vote_scope)
        self.relay_prefixes = (
            None if relay_prefixes is None else tuple(p.rstrip("/") + "/" for p in relay_prefixes)
        )
        self._staged = StagedChunks(store, self.rules.installed, long_lived)
        self.store, self.clock = store, clock
        self._io = StreamRunner(store, self.rules, clock, self._staged, long_lived)
        self.idle_timeout = idle_timeout
        self.relay_options = relay_options

    @property
    def vote(self) -> Vote | None:
        """The receiver's vote (with ``vote_scope="snapshot"``: the floor of every id's)."""
        return self.rules.vote

    @vote.setter
    def vote(self, vote: Vote | None) -> None:
        self.rules.vote = vote

    @property
    def idle_timeout(self) -> float | None:
        return self._io.idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float | None) -> None:
        self._io.idle_timeout = seconds

    @property
    def relay_options(self) -> dict[str, Any] | None:
        """The fsspec storage options of staging buckets (None: staged chunks are refused)."""
        return self._io.relay_options

    @relay_options.setter
    def relay_options(self, options: dict[str, Any] | None) -> None:
        self._io.relay_options = options

    @property
    def vote_scope(self) -> VoteScope:
        return self.rules.vote_scope

    @property
    def limits(self) -> ReceiverLimits:
        return self.rules.limits

    @limits.setter
    def limits(self, limits: ReceiverLimits) -> None:
        self.rules.limits = limits

    def vote_for(self, snapshot_id: str) -> Vote | None:
        """The vote a request for `snapshot_id` is checked against (None: none seen yet)."""
        return self.rules.vote_for(snapshot_id)

    @property
    def receiving(self) -> list[str]:
        """Ids of the snapshots being received right now."""
        return sorted(self._io.streams)

    async def handle(
        self, req: InstallSnapshotRequest, *, trust_crc: bool = False
    ) -> InstallSnapshotResponse:
        """Answer one request: check its vote, store its chunk, install the snapshot when done.

        A request whose vote is lower than the receiver's is not applied; the answer carries
        the receiver's (higher) vote, which tells the sender to stop.  A higher vote is adopted.
        Raises `InvalidRequest`, `ChecksumMismatch`, `SnapshotMismatch` or `StorageError`.

        `trust_crc` takes ``req.crc32c`` as is instead of computing it again; it is only for a
        request that never left this process (see `LoopbackNetwork`).  Such a request may even
        carry no CRC: the sink computes it while writing the data (one pass over it), and the
        answer's ``crc32c`` hands it back.  The answer to an applied request always names the
        CRC32C of its data in ``crc32c``.  A ``staged`` request (a `RelayNetwork` reference) is
        fetched first (class docstring)."""
        fetched = NOT_FETCHED
        if getattr(req, "staged", None) is not None:
            resolved = await self._resolve(req)
            if resolved is None:  # a lower vote: nothing fetched
                current = self.vote_for(req.meta.snapshot_id)
                assert current is not None
                return InstallSnapshotResponse(current)
            (req, fetched), trust_crc = resolved, True
        crc = await self._validate(req, trust_crc=trust_crc)
        refused = self.rules.check_vote(req)
        if refused is not None:
            return InstallSnapshotResponse(refused.vote)
        snapshot, held, crc = await self._receive(req, crc)
        offer = None
        stream = self.rules.streams.get(req.meta.snapshot_id) if req.delta else None
        if stream is not None:
            offer, stream.offer = stream.offer, None
        if snapshot is not None:
            # Verified and finished: install it even if this request is cancelled meanwhile (its
            # sender timed out), and remember it only once it is really installed.
            install = asyncio.ensure_future(self._install(snapshot))
            install.add_done_callback(consume_outcome)  # seen even if nobody awaits it any more
            self._io.installing[snapshot.meta.snapshot_id] = install
            self.rules.install_started(snapshot.meta.snapshot_id)
            await asyncio.shield(install)
        vote = self.vote_for(req.meta.snapshot_id)
        assert vote is not None  # adopted above
        if crc is None:  # not written (held already, installed): nobody computed it yet
            crc = chunk_crc(req.data)
        extents = takes_extents(stream, req)
        return InstallSnapshotResponse(vote, held, crc, offer, **fetched.counts, extents=extents)

    async def _resolve(self, req: InstallSnapshotRequest) -> Resolved | None:
        """`req` with the bytes of its staged object as its data, checked against the
        reference's CRC32C, and what was reused and fetched; None for a lower vote's."""
        if self.relay_options is None:
            raise InvalidRequest("this receiver does not fetch staged chunks", field="staged")
        ref = check_ref(req, self.limits, self.relay_prefixes)
        if self.rules.is_stale(req):
            return None
        return await self._staged.fetch(req, ref, self.relay_options)

    async def close(self) -> None:
        """Close the clients of staging buckets this receiver opened (see `relay_options`)."""
        await self._staged.close()

    async def _install(self, snapshot: Snapshot) -> None:
        snapshot_id = snapshot.meta.snapshot_id
        try:
            await self.store.install(snapshot)
            self.rules.remember_installed(snapshot.meta)
            if self._io.long_lived:
                await note_latest(self.store, snapshot_id)
        finally:
            if self._io.installing.get(snapshot_id) is asyncio.current_task():
                del self._io.installing[snapshot_id]
                self.rules.install_ended(snapshot_id)

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
            req, trust_crc = resolved[0], True
        crc = await self._validate(req, trust_crc=trust_crc)
        snapshot, _, _ = await self._receive(req, crc)
        return snapshot

    async def _validate(
        self, req: InstallSnapshotRequest, *, trust_crc: bool = False
    ) -> int | None:
        """`validate_request`; the data's CRC32C, or None for a trusted request without one
        (the sink computes it as it writes).  A broken request for a transfer in progress also
        ends that transfer (its sender gives up on an `InvalidRequest`), discarding its partial
        data.  Nothing else changes: other transfers, the vote and installed snapshots stay."""
        try:
            if trust_crc and isinstance(req, InstallSnapshotRequest) and req.crc32c is None:
                validate_request(replace(req, crc32c=0), self.limits, trust_crc=True)
                crc = None  # every field is checked but the CRC, which nobody computed yet
            else:
                crc = validate_request(req, self.limits, trust_crc=trust_crc)
            if req.meta.kind == TREE and not getattr(self.store, "accepts_trees", False):
                raise InvalidRequest(
                    "this receiver's store does not take directory snapshots", field="kind"
                )
            return crc
        except InvalidRequest:
            snapshot_id = self.rules.stream_of(req)
            stream = None if snapshot_id is None else self._io.streams.get(snapshot_id)
            if stream is not None:
                await self._io.drop(snapshot_id or "", stream)
            raise

    async def _receive(self, req: InstallSnapshotRequest, crc: int | None) -> Outcome:
        """`_receive_now`, with the request counted as under way for `expire_idle`."""
        with self.in_use(req.meta.snapshot_id):
            return await self._io.receive(req, crc)

    @contextlib.contextmanager
    def in_use(self, snapshot_id: str) -> Iterator[None]:
        """While inside, the transfer of `snapshot_id` (if any, or once begun) does not expire;
        leaving counts as activity.  A network adapter holds it while a chunk is still
        arriving, so that a slow chunk does not see its transfer let go under it."""
        self.rules.enter(snapshot_id)
        try:
            yield
        finally:
            self.rules.leave(snapshot_id, self.clock())

    async def expire_idle(self) -> list[str]:
        """Let go of every transfer no request touched for `idle_timeout` seconds; return their
        ids.  Each gives back its slot, its open files and its buffers; its partial data stays
        in the store (see the class's docstring).  Does nothing without an `idle_timeout`."""
        return await self._io.expire_idle()

    async def abort(self, snapshot_id: str) -> None:
        """Stop receiving `snapshot_id` and delete its partial data (installed data stays)."""
        stream = self._io.streams.get(snapshot_id)
        if stream is not None:
            await self._io.drop(snapshot_id, stream)
        else:
            await self.store.abort(snapshot_id)
