"""Executes the receiver's stream actions against a store: open, resume, write, re-verify,
finish, drop and expire streams.  What to do is decided by
`fstransport.protocol.receiver_state.ReceiverState`; `StreamRunner` only does it, holding the
I/O side of each stream (its sink, its lock, a re-verification under way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fstransport.delta.extents import write_extents
from fstransport.delta.receive import answer_delta, assemble
from fstransport.errors import StorageError
from fstransport.messages import InstallSnapshotRequest, Snapshot, SnapshotMeta
from fstransport.protocol.receiver import StreamState
from fstransport.protocol.receiver_state import (
    Acknowledge,
    AwaitInstall,
    Begin,
    Continue,
    Drop,
    Expire,
    Held,
    ReceiverState,
    Reject,
    Resume,
)
from fstransport.relay_receive import StagedChunks
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

__all__ = ["Outcome", "StreamRunner", "consume_outcome"]

log = logging.getLogger("fstransport.receiver")

Outcome = tuple["Snapshot | None", "Held | None", "int | None"]
"""The finished snapshot (on the final chunk), what to tell the sender is held, the chunk's CRC."""


async def _put(
    sink: SnapshotSink, req: InstallSnapshotRequest, crc: int | None
) -> tuple[Lost, int]:
    """Write `req`'s data into `sink`; an unknown CRC is computed by the sink as it writes."""
    if crc is None:
        return await write_checked(sink, req.offset, req.data)
    return await write_chunk(sink, req.offset, req.data, crc), crc


def consume_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("installing a snapshot failed: %s", task.exception())


async def _check_tree(snapshot: Snapshot, max_files: int | None) -> None:
    """Read a verified directory snapshot's table as a hostile sender's (names, sizes,
    at most `max_files`) before it may be installed; `InvalidRequest` closes
    the snapshot's data (the caller drops the transfer)."""
    size = snapshot.meta.size
    assert size is not None
    try:
        try:
            await asyncio.to_thread(read_table, snapshot.data, size, max_files)
        except OSError as exc:
            raise StorageError(snapshot.meta.snapshot_id, "read the table of", exc) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(snapshot.data.close)
        raise


@dataclass
class _Stream:
    """A stream's I/O side; its rules' side is `state` (also in `ReceiverState.streams`)."""

    state: StreamState
    sink: SnapshotSink | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    verifying: asyncio.Future[None] | None = None


async def _delta(runner: StreamRunner, stream: _Stream, req: InstallSnapshotRequest) -> Outcome:
    """A delta request (its stream's lock held): `answer_delta`; an offer waits in
    ``stream.state.offer`` for the answer (`Receiver.handle` takes it).  A request with several
    ranges after an accepted recipe: `write_extents`."""
    if req.extents is not None:
        return await write_extents(runner, req.meta.snapshot_id, stream, req)
    from fstransport.delta.latest import last_installed

    latest = await last_installed(runner.rules.installed, runner.store, runner.long_lived)
    assert stream.sink is not None
    failed = runner.rules.failed_bases.of(req.meta.snapshot_id)
    held, stream.state.offer, stream.sink = await answer_delta(
        runner.store, latest, stream.state, req, stream.sink, keep=runner.long_lived, failed=failed
    )
    return None, held, None


class StreamRunner:
    """The streams of one `Receiver`: executes what its `ReceiverState` decides."""

    def __init__(
        self,
        store: SnapshotStore,
        rules: ReceiverState,
        clock: Callable[[], float],
        staged: StagedChunks,
        long_lived: bool = False,
    ) -> None:
        self.store, self.rules, self.clock, self.staged = store, rules, clock, staged
        self.long_lived = long_lived  # (`Receiver`'s)
        self.relay_options: dict[str, Any] | None = None
        self.idle_timeout: float | None = None
        self.streams: dict[str, _Stream] = {}
        self.installing: dict[str, asyncio.Future[None]] = {}

    async def expire_idle(self) -> list[str]:
        """`Receiver.expire_idle`: let go of the streams the rules call idle."""
        now, t = self.clock(), self.idle_timeout
        expired = []
        for state in self.rules.idle(now, t):
            snapshot_id = state.meta.snapshot_id
            stream = self.streams.get(snapshot_id)
            # (`expired` again: things move while an earlier one is let go)
            if stream is None or stream.lock.locked() or not self.rules.expired(state, now, t):
                continue
            self.forget(snapshot_id, stream)
            async with stream.lock:
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

    async def receive(self, req: InstallSnapshotRequest, crc: int | None) -> Outcome:
        """Execute what the rules say `req` does, until it is written (or refused)."""
        snapshot_id = req.meta.snapshot_id
        resume_tried = expired_nothing = False
        while True:
            action = self.rules.route(
                req, resume_tried=resume_tried, expired_nothing=expired_nothing
            )
            if isinstance(action, AwaitInstall):
                installing = self.installing.get(snapshot_id)
                if installing is None:  # (cannot happen: the two tables change together)
                    self.rules.install_ended(snapshot_id)
                    continue
                with contextlib.suppress(Exception):
                    await asyncio.shield(installing)
            elif isinstance(action, Acknowledge):
                return None, action.held, crc
            elif isinstance(action, Resume):
                await self._resume(action.meta)
                resume_tried = True
            elif isinstance(action, Expire):
                expired_nothing = not await self.expire_idle()
            elif isinstance(action, Reject):
                raise action.error
            elif isinstance(action, Drop):
                # False: it ended meanwhile, decide again; True: the id is free for a new one
                resume_tried = await self.drop(snapshot_id, self.streams[snapshot_id])
            elif isinstance(action, Continue):
                stream = self.streams[snapshot_id]
                if action.reverify:
                    await self._reverify(snapshot_id, stream)
                concurrent = getattr(stream.sink, "concurrent_writes", False)
                if stream.state.concurrent(req, crc is not None, concurrent):
                    return await self._write_concurrently(snapshot_id, stream, req)
                async with stream.lock:
                    if not stream.closed:
                        return await self._write(snapshot_id, stream, req, crc)
                resume_tried = expired_nothing = False  # replaced meanwhile: decide anew
            elif isinstance(action, Begin):
                # Register the stream before the first await, so that chunks arriving while the
                # sink is created find it (and wait for its lock) instead of starting over.
                stream = self._open(action.meta)
                async with stream.lock:
                    try:
                        stream.sink = await self.store.begin(action.meta)
                    except BaseException:
                        self.forget(snapshot_id, stream)
                        raise
                    return await self._write(snapshot_id, stream, req, crc)
            else:  # `Refuse` comes from `check_vote`, never from `route`
                raise AssertionError(f"unexpected action {action!r}")

    def _open(self, meta: SnapshotMeta) -> _Stream:
        stream = _Stream(self.rules.opened(meta, self.clock()))
        self.streams[meta.snapshot_id] = stream
        return stream

    async def _resume(self, meta: SnapshotMeta) -> None:
        """A stream over partial data an earlier receiver left for this very snapshot, if any."""
        snapshot_id = meta.snapshot_id
        stream = self._open(meta)
        async with stream.lock:
            try:
                found = await self.store.resume(meta)
            except BaseException:
                self.forget(snapshot_id, stream)
                raise
            if found is None:
                self.forget(snapshot_id, stream)
                return
            stream.sink, records = found
            self.rules.resumed(stream.state, records)
            log.info(
                "resuming snapshot %r: %d bytes already held",
                snapshot_id,
                stream.state.ledger.held().total(),
            )

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
        if not stream.state.needs_check():
            return
        task = asyncio.ensure_future(self._check_held(snapshot_id, stream))
        task.add_done_callback(consume_outcome)
        stream.verifying = task
        await asyncio.shield(task)

    async def _check_held(self, snapshot_id: str, stream: _Stream) -> None:
        async with stream.lock:
            sink = stream.sink
            if stream.closed or sink is None or not is_verifying_sink(sink):
                return
            records = stream.state.written()
            try:
                intact = await sink.verify(records)
            except StorageError:
                await self.drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
                raise
            lost = stream.state.checked(records, intact)
            if lost:
                log.warning(
                    "snapshot %r: %d of %d held chunks lost their bytes; they are sent again",
                    snapshot_id,
                    lost,
                    len(records),
                )

    def forget(self, snapshot_id: str, stream: _Stream) -> None:
        stream.closed = True
        if self.streams.get(snapshot_id) is stream:
            del self.streams[snapshot_id]
        self.rules.closed(stream.state)

    async def _write(
        self, snapshot_id: str, stream: _Stream, req: InstallSnapshotRequest, crc: int | None
    ) -> Outcome:
        """Write `req` into `stream` (whose lock is held); finish the snapshot on ``done``.
        An unknown CRC is computed by the sink as it writes."""
        if req.delta is not None or req.extents is not None:  # a delta's (see `_delta`)
            return await _delta(self, stream, req)
        sink = stream.sink
        assert sink is not None
        if not stream.state.holds(req):
            try:
                lost, crc = await _put(sink, req, crc)
            except StorageError:
                await self.drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
                raise
            stream.state.record(req, crc, lost)
        held = stream.state.tell(req)
        if not req.done:
            return None, held, crc
        options = self.relay_options or {}  # (the client that fetched the chunks is reused)
        try:
            await self.staged.check_manifests(stream.state.staged, req, options)  # or no install
            meta = stream.state.complete(req.offset + len(req.data), sink.rewind)
            await assemble(self.store, sink, stream.state, meta, keep=self.long_lived)  # a delta's
            snapshot = await self.store.finish(meta, sink)
            if meta.kind == TREE:
                await _check_tree(snapshot, self.rules.limits.max_tree_files)
        except BaseException as exc:
            drop, error = self.rules.finish_failed(stream.state, req, exc)
            self.rules.failed_bases.note(stream.state, error, drop)  # (not offered again)
            if drop:
                await self.drop(snapshot_id, stream, locked=True)
            if error is exc:
                raise
            raise error from exc
        # (a request that ended this transfer may have taken it out of the table meanwhile)
        self.forget(snapshot_id, stream)
        return snapshot, held, crc

    async def _write_concurrently(
        self, snapshot_id: str, stream: _Stream, req: InstallSnapshotRequest
    ) -> Outcome:
        """`_write` for a chunk whose sink computes its CRC while writing it into a sink that
        takes several writes at once: the stream's lock is held to look at the stream and to
        record the chunk, not while the data is written, so that the next chunk's write is
        already waiting in a worker thread when this one ends.  The final chunk always goes
        through `_write` (under the lock), and the sink's ``finish`` and ``abort`` wait for
        writes still running."""
        async with stream.lock:
            if stream.closed:  # replaced while this request waited: decide again
                return await self.receive(req, None)
            sink = stream.sink
            assert sink is not None
        try:
            lost, crc = await _put(sink, req, None)
        except StorageError:
            async with stream.lock:
                # (if it was replaced meanwhile, the id and its partial data are not its any more)
                if self.streams.get(snapshot_id) is stream and not stream.closed:
                    await self.drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
            raise
        async with stream.lock:
            if stream.closed:
                raise aborted(sink.path)  # dropped while this chunk was being written
            stream.state.record(req, crc, lost)
            return None, stream.state.tell(req), crc

    async def drop(self, snapshot_id: str, stream: _Stream, *, locked: bool = False) -> bool:
        """Forget `stream` and delete its partial data; False if it had ended meanwhile
        (finished, or dropped by another request), and nothing was done.

        The stream stays in the table until its lock is taken: a request arriving meanwhile
        waits behind it instead of beginning the same id anew beside a write or a finish."""
        if locked:
            self.forget(snapshot_id, stream)
            await self.store.abort(snapshot_id)
            return True
        async with stream.lock:
            if stream.closed:
                return False
            self.forget(snapshot_id, stream)
            await self.store.abort(snapshot_id)
            return True
