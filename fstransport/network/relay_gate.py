"""The order and number of the requests a `RelayNetwork` sends its receiver."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator

from fstransport.errors import ConfigurationError
from fstransport.messages import InstallSnapshotRequest
from fstransport.protocol.ranges import RangeSet
from fstransport.protocol.send_order import ReferenceOrder

__all__ = ["ReferenceGate", "check_stage_ahead", "orders_references"]


def check_stage_ahead(stage_ahead: object) -> int | None:
    """`stage_ahead` if it is None or a count >= 0, else `ConfigurationError`."""
    if stage_ahead is not None and (
        not isinstance(stage_ahead, int) or isinstance(stage_ahead, bool) or stage_ahead < 0
    ):
        raise ConfigurationError(f"stage_ahead must be a count >= 0, got {stage_ahead!r}")
    return stage_ahead


def check_block_maps(block_maps: object) -> bool:
    """`block_maps` if it is True or False, else `ConfigurationError`."""
    if not isinstance(block_maps, bool):
        raise ConfigurationError(f"block_maps must be True or False, got {block_maps!r}")
    return block_maps


def orders_references(net: object) -> bool:
    """Whether `net` itself declares ``orders_references`` (a `RelayNetwork`): it stages the
    chunks handed over and keeps the order of what its receiver sees (`ReferenceGate`), so the
    sender may hand chunks over under `fstransport.protocol.send_order.RelaySendWindow`'s
    rules.  Read with ``inspect.getattr_static``: a wrapper that forwards attributes to such a
    network (a fault injector, say) does not inherit the declaration."""
    return inspect.getattr_static(net, "orders_references", False) is True


class ReferenceGate:
    """Executes a `ReferenceOrder` for one `RelayNetwork`: at most ``limit`` requests out to
    its receiver, in the order the sender handed them over, whichever finished staging first;
    one at offset 0 opens its snapshot before any other goes, and the final one goes alone.

    A request enters on arrival (`entered`), waits for its `turn` once staged, and leaves when
    answered (`leave` with ``ok``), failed or cancelled.  No lock: every step runs on the event
    loop without awaiting in between."""

    def __init__(self) -> None:
        self._order = ReferenceOrder()
        self._turns: dict[int, asyncio.Future[None]] = {}
        self._settles: list[tuple[int, asyncio.Future[None]]] = []
        self._limit = 1
        self._held: dict[tuple[str, object], RangeSet] = {}  # what the receiver said it holds
        self._reqs: dict[int, InstallSnapshotRequest] = {}

    @property
    def sent(self) -> int:
        """Requests out to the receiver now."""
        return self._order.sent

    @contextlib.contextmanager
    def entered(self, req: InstallSnapshotRequest) -> Iterator[int]:
        """A ticket for `req` (`enter`) that is given up (`leave`) on the way out."""
        ticket = self.enter(*_place(req))
        self._reqs[ticket] = req
        try:
            yield ticket
        finally:
            self.leave(ticket)

    def enter(self, key: str, offset: int, done: bool) -> int:
        """A request of snapshot `key` at `offset` (`done`: the final one) arrives."""
        return self._order.enter(key, offset, done)

    def holds(self, req: InstallSnapshotRequest) -> bool:
        """Whether the receiver said, answering the chunk at offset 0, that it holds all of
        `req`'s bytes (a resumed transfer): the sender handed `req` over before it knew (it
        stages ahead), and it need not go; the whole checksum still decides at the end."""
        held = self._held.get((req.meta.snapshot_id, req.vote))
        if held is None or req.done or req.offset == 0:
            return False
        length = req.staged.length if req.staged is not None else len(req.data)
        end = req.offset + length
        return any(start <= req.offset and end <= stop for start, stop in held)

    async def turn(self, ticket: int, limit: int) -> None:
        """`ticket` is staged: wait until the order lets it go (fewer than `limit` out)."""
        self._limit = max(1, limit)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns[ticket] = waiter
        self._order.staged(ticket)
        self._wake()
        await waiter  # (`leave` settles a cancelled wait)

    async def settled(self, ticket: int) -> None:
        """Wait until every request of `ticket`'s snapshot that entered before it is staged."""
        if self._order.settled_before(ticket):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settles.append((ticket, waiter))
        try:
            await waiter
        finally:
            self._settles = [(t, w) for t, w in self._settles if w is not waiter]

    def leave(self, ticket: int, ok: bool = False, held: object = None) -> None:
        """`ticket` is answered (`ok`: without error; the answer's `held`), failed or
        cancelled."""
        req = self._reqs.pop(ticket, None)
        if ok and req is not None and req.offset == 0:  # (before the chunks behind it go)
            self._held[(_place(req)[0], req.vote)] = RangeSet(_ranges(held))
        self._order.leave(ticket, ok)
        waiter = self._turns.pop(ticket, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()
        self._wake()

    def _wake(self) -> None:
        for ticket in self._order.release(self._limit):
            waiter = self._turns.pop(ticket, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for ticket, waiter in self._settles:
            if not waiter.done() and self._order.settled_before(ticket):
                waiter.set_result(None)


def _ranges(held: object) -> list[tuple[int, int]]:
    """The well-formed ranges of an answer's `held` (a hostile receiver's answer is data)."""
    if not isinstance(held, (tuple, list)):
        return []
    return [
        (r[0], r[1])
        for r in held
        if isinstance(r, (tuple, list))
        and len(r) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in r)
    ]


def _place(req: InstallSnapshotRequest) -> tuple[str, int, bool]:
    """`req`'s place in the order: its snapshot id, offset and whether it is final (for a
    malformed request, whatever it says: the receiver refuses it anyway)."""
    offset = req.offset if isinstance(req.offset, int) else -1
    return str(getattr(req.meta, "snapshot_id", "")), offset, req.done is True
