"""The order and number of the requests a `RelayNetwork` sends its receiver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from fstransport.errors import ConfigurationError

__all__ = ["ReferenceGate", "check_stage_ahead"]


def check_stage_ahead(stage_ahead: int | None) -> int | None:
    if stage_ahead is not None and (
        not isinstance(stage_ahead, int) or isinstance(stage_ahead, bool) or stage_ahead < 0
    ):
        raise ConfigurationError(f"stage_ahead must be a count >= 0, got {stage_ahead!r}")
    return stage_ahead


class ReferenceGate:
    """The requests one `RelayNetwork` sends its receiver: at most ``limit`` at once, in the
    order the sender handed them over (`enter`), whichever finished staging first.

    A request enters on arrival, waits for its `turn` once staged, and `leave`s when answered
    or failed (a request that failed before its turn gives it up).  No lock: every step runs
    on the event loop without awaiting in between."""

    def __init__(self) -> None:
        self._next = 0
        self._waiting: dict[int, asyncio.Future[None] | None] = {}
        """Tickets not yet sent, in order; a future once the request is staged and waits."""
        self._sent: set[int] = set()
        self._limit = 1

    @property
    def sent(self) -> int:
        """Requests out to the receiver now."""
        return len(self._sent)

    @contextlib.contextmanager
    def entered(self) -> Iterator[int]:
        """A ticket (`enter`) that is given up (`leave`) on the way out."""
        ticket = self.enter()
        try:
            yield ticket
        finally:
            self.leave(ticket)

    def enter(self) -> int:
        ticket = self._next
        self._next += 1
        self._waiting[ticket] = None
        return ticket

    async def turn(self, ticket: int, limit: int) -> None:
        """Wait until `ticket` is the oldest request not sent and fewer than `limit` are out."""
        self._limit = max(1, limit)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = waiter
        self._wake()
        await waiter  # (`leave` settles a cancelled wait)

    def leave(self, ticket: int) -> None:
        """`ticket` is answered, failed or cancelled: the next one may go."""
        self._sent.discard(ticket)
        waiter = self._waiting.pop(ticket, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()
        self._wake()

    def _wake(self) -> None:
        while self._waiting and len(self._sent) < self._limit:
            ticket, waiter = next(iter(self._waiting.items()))
            if waiter is None:
                return  # the oldest is still being staged: the references keep their order
            del self._waiting[ticket]
            if waiter.done():  # its wait was cancelled: it will leave
                continue
            self._sent.add(ticket)
            waiter.set_result(None)
