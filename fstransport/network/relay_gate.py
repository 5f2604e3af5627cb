"""The order and number of the requests a `RelayNetwork` sends its receiver."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator

from fstransport.errors import ConfigurationError
from fstransport.protocol.send_order import ReferenceOrder

__all__ = ["ReferenceGate", "check_stage_ahead", "orders_references"]


def check_stage_ahead(stage_ahead: object) -> int | None:
    """`stage_ahead` if it is None or a count >= 0, else `ConfigurationError`."""
    if stage_ahead is not None and (
        not isinstance(stage_ahead, int) or isinstance(stage_ahead, bool) or stage_ahead < 0
    ):
        raise ConfigurationError(f"stage_ahead must be a count >= 0, got {stage_ahead!r}")
    return stage_ahead


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

    @property
    def sent(self) -> int:
        """Requests out to the receiver now."""
        return self._order.sent

    @contextlib.contextmanager
    def entered(self, key: str, offset: int, done: bool) -> Iterator[int]:
        """A ticket (`enter`) that is given up (`leave`) on the way out."""
        ticket = self.enter(key, offset, done)
        try:
            yield ticket
        finally:
            self.leave(ticket)

    def enter(self, key: str, offset: int, done: bool) -> int:
        """A request of snapshot `key` at `offset` (`done`: the final one) arrives."""
        return self._order.enter(key, offset, done)

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

    def leave(self, ticket: int, ok: bool = False) -> None:
        """`ticket` is answered (`ok`: without error), failed or cancelled."""
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
