"""`MockNetwork`: a `Network` whose requests are answered by a function of the test's.

Where a test needs a peer that hangs, refuses, answers with another vote or fails the third
request, it writes that behaviour as a handler — ``request -> response`` (or raise) — instead of a
class with an ``install_snapshot`` method.  The idea is httpx's ``MockTransport``: the transport
is injected, and the mock is only a function.  A `MockNetwork` also records what it was sent
(`requests`, `seen`), what its handler raised (`errors`) and how many requests were in flight
at once (`max_in_flight`).

Handlers for the common cases: `deliver_to` (a real `Receiver`, its errors as `RemoteError`, as
`LoopbackNetwork` reports them), `answer` (acknowledge with the request's vote, deliver nothing),
`hang` (never answer), `fail` (raise the same error every time); and to combine them: `after`
(one handler for the first requests, another for the rest: a link that dies halfway), `before`
(look at or act on each request first), `stop_after` (a sender that dies after so many answers).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from fstransport.errors import RemoteError
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse
from fstransport.options import TransferOptions

if TYPE_CHECKING:
    from fstransport.receiver import Receiver

__all__ = [
    "Handler",
    "MockNetwork",
    "Seen",
    "after",
    "answer",
    "before",
    "deliver_to",
    "fail",
    "hang",
    "stop_after",
]

Handler = Callable[
    [InstallSnapshotRequest], "InstallSnapshotResponse | Awaitable[InstallSnapshotResponse]"
]
"""Answers one request: returns the response (or an awaitable of it) or raises the error the
sender should see (an `RPCError`: `Timeout`, `Unreachable`, `RemoteError(...)`, ...)."""


class Seen(NamedTuple):
    """The position of one request a `MockNetwork` saw."""

    offset: int
    length: int
    done: bool


class MockNetwork:
    """A `Network` that hands each request to `handler` and returns what it answers.

    `handler` may be a plain function or an ``async`` one.  Every request is kept in `requests`
    before the handler runs, so a request the handler refuses or never answers counts too;
    `errors` holds what the handler raised, in order.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[InstallSnapshotRequest] = []
        self.errors: list[BaseException] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def calls(self) -> int:
        """How many requests arrived."""
        return len(self.requests)

    @property
    def seen(self) -> list[Seen]:
        """Offset, length and ``done`` of each request, in the order they arrived."""
        return [Seen(req.offset, len(req.data), req.done) for req in self.requests]

    @property
    def data_bytes(self) -> int:
        """How many bytes of chunk data the requests carried together."""
        return sum(len(req.data) for req in self.requests)

    @property
    def offsets(self) -> list[int]:
        """The offsets of the requests, in the order they arrived."""
        return [req.offset for req in self.requests]

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.requests.append(req)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = await _answer_with(self.handler, req)
        except Exception as exc:
            self.errors.append(exc)
            raise
        finally:
            self.in_flight -= 1
        return answer

    def __repr__(self) -> str:
        return f"MockNetwork({self.handler!r}, calls={self.calls})"


def deliver_to(
    receiver: Receiver, *, target: object = "mock", interleave: bool = True
) -> Callable[[InstallSnapshotRequest], Awaitable[InstallSnapshotResponse]]:
    """A handler that delivers to `receiver` (which verifies every chunk's CRC) and raises its
    errors as `RemoteError` with `target`, as a real adapter reports them.

    With `interleave`, each request first lets other tasks run once, so that chunks in flight
    reach the receiver interleaved, as over a real network.
    """

    async def deliver(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if interleave:
            await asyncio.sleep(0)
        try:
            return await receiver.handle(req)
        except Exception as exc:
            raise RemoteError(exc, target) from exc

    return deliver


def answer(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
    """A handler that acknowledges every request with its own vote and keeps nothing."""
    return InstallSnapshotResponse(req.vote)


async def hang(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
    """A handler that never answers (until the sender cancels it)."""
    await asyncio.Event().wait()
    raise AssertionError("an event nobody sets was set")


def fail(error: BaseException) -> Callable[[InstallSnapshotRequest], InstallSnapshotResponse]:
    """A handler that raises `error` for every request (``Unreachable(...)``, say)."""

    def refuse(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        raise error

    return refuse


async def _answer_with(handler: Handler, req: InstallSnapshotRequest) -> InstallSnapshotResponse:
    answer = handler(req)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


def after(n: int, first: Handler, then: Handler) -> Handler:
    """A handler that gives the first `n` requests to `first` and every later one to `then`:
    ``after(3, deliver_to(receiver), fail(Unreachable("gone")))`` is a link that dies halfway."""
    count = 0

    async def switch(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        nonlocal count
        count += 1
        return await _answer_with(first if count <= n else then, req)

    return switch


def before(
    look: Callable[[InstallSnapshotRequest], object], handler: Handler
) -> Callable[[InstallSnapshotRequest], Awaitable[InstallSnapshotResponse]]:
    """A handler that shows each request to `look` first (which may check it, raise, or change
    the world, such as damaging a staged object), then lets `handler` answer it."""

    async def looked(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        look(req)
        return await _answer_with(handler, req)

    return looked


def stop_after(
    answers: int, handler: Handler, stopped: asyncio.Event
) -> Callable[[InstallSnapshotRequest], Awaitable[InstallSnapshotResponse]]:
    """A handler that lets `handler` answer until it has answered `answers` requests, then sets
    `stopped` and never answers again: a sender that dies without a word, when it is given
    ``stopped.wait()`` as the signal to stop."""
    answered = 0

    async def counted(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        nonlocal answered
        if stopped.is_set():
            return await hang(req)
        response = await _answer_with(handler, req)
        answered += 1
        if answered >= answers:
            stopped.set()
        return response

    return counted
