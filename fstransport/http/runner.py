"""Running the server: an aiohttp runner with the connection limits, and the accept guard.

`make_runner` sets the header deadline and caps and keeps at most `max_connections`
connections open, and at most `max_connections_per_peer` of one address (`ConnectionCap`,
evicting idle ones first); `AcceptGuard` turns a flood of
"out of file descriptors" errors in ``accept()`` into one log line a minute.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from fstransport.errors import ConfigurationError
from fstransport.http.incoming import IDLE_TIMEOUT
from fstransport.http.logs import log, one_line_log

__all__ = [
    "BUSY_KEY",
    "FD_RESERVE",
    "IDLE_TIMEOUT_KEY",
    "MAX_HEADERS",
    "MAX_HEADER_LINE",
    "AcceptGuard",
    "ConnectionCap",
    "default_max_connections",
    "guarding_accept",
    "make_runner",
]

BUSY_KEY = web.AppKey("busy", set)
"""The transports of the connections in the middle of a request (never evicted)."""
IDLE_TIMEOUT_KEY = web.AppKey("idle_timeout", float)

MAX_HEADER_LINE = 8190
"""Bytes a request line or one header line may take (aiohttp's default; larger: 400)."""
MAX_HEADERS = 32
"""Headers a request may carry (a chunk needs eight; more: 400)."""


class AcceptGuard:
    """The event loop's exception handler while the server runs: "out of file descriptors"
    in ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) is logged once per `quiet` seconds with
    a count, not once per attempt with a traceback.  asyncio itself stops accepting for a
    second after such an error; the connections already open go on, and those that idle are
    closed by the header and body time limits, which frees descriptors."""

    MESSAGE = "socket.accept() out of system resource"
    ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(self, loop: asyncio.AbstractEventLoop, quiet: float = 60.0) -> None:
        self._loop = loop
        self._quiet = quiet
        self._previous = loop.get_exception_handler()
        self._last = -quiet
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == self.MESSAGE or (
            isinstance(exc, OSError) and exc.errno in self.ERRNOS
        ):
            now = loop.time()
            if now - self._last < self._quiet:
                self._suppressed += 1
                return
            more = f" ({self._suppressed} more since the last note)" if self._suppressed else ""
            self._last, self._suppressed = now, 0
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            log.error(
                "cannot accept connections: %s; retrying every second, noted at most once "
                "a minute%s",
                reason,
                more,
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def close(self) -> None:
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)


async def guarding_accept(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    guard = AcceptGuard(loop)
    loop.set_exception_handler(guard)
    try:
        yield
    finally:
        guard.close()


FD_RESERVE = 32
"""File descriptors kept free of connections: the store's partial files, journals and S3
sockets need some even while a flood of connections holds every other one."""


def default_max_connections() -> int:
    """Open connections the server keeps at once: the process's descriptor limit less
    `FD_RESERVE` (at least 4)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(4, soft - FD_RESERVE)


def _peer(transport: Any) -> str | None:
    """The peer's address without its port (None for a socket that has none)."""
    name = transport.get_extra_info("peername") if transport is not None else None
    return str(name[0]) if isinstance(name, tuple) and name else None


class ConnectionCap:
    """Takes the place of ``Server.connection_made``: at most `limit` connections stay open,
    so that connections alone can never use up the descriptors the store needs, and at most
    `per_peer` from one address, so that one peer cannot take every slot.  When a new
    connection would pass a limit, the oldest connection (of that peer, for the peer's limit)
    that is not in the middle of a request (`busy`) is closed to make room — a flood of idle
    connections evicts itself, not the senders that are sending — and if every one is busy,
    the new connection is closed.  Noted once a minute."""

    def __init__(
        self,
        server: Any,
        limit: int,
        busy: set[Any],
        quiet: float = 60.0,
        *,
        per_peer: int | None = None,
    ) -> None:
        self._server = server
        self._register = server.connection_made
        self._limit = limit
        self._per_peer = per_peer
        self._busy = busy
        self._quiet = quiet
        self._last = -quiet
        self._closed = 0
        self._leaving: set[Any] = set()  # transports chosen to close, not closed yet

    def __call__(self, handler: Any, transport: asyncio.Transport) -> None:
        self._register(handler, transport)
        open_now = len(self._server.connections)
        if open_now < self._limit and (self._per_peer is None or open_now <= self._per_peer):
            return  # far from both limits (no peer can hold more than are open): no walk
        connections = [h for h in self._server.connections if h.transport not in self._leaving]
        peer = _peer(transport)
        mine = [h for h in connections if _peer(h.transport) == peer] if peer else []
        if self._per_peer is not None and len(mine) > self._per_peer:
            self._evict(handler, mine, f"{len(mine) - 1} connections open from {peer}")
        elif len(connections) >= self._limit:
            self._evict(handler, connections, f"{self._limit} connections open (the limit)")

    def _evict(self, handler: Any, among: list[Any], why: str) -> None:
        idle = [h for h in among if h.transport not in self._busy]
        victim = idle[0] if idle else handler
        loop = asyncio.get_running_loop()
        # closed once aiohttp has started the connection's handler, as if the peer had gone
        # (closed here and now, a new connection's handler would start on a lost one)
        if victim.transport is not None:
            self._leaving.add(victim.transport)
            loop.call_soon(self._close, victim.transport)
        self._closed += 1
        now = loop.time()
        if now - self._last >= self._quiet:
            log.warning(
                "%s: closing the oldest idle one for each new one, noted at most once a "
                "minute (%d closed so far)",
                why,
                self._closed,
            )
            self._last = now

    def _close(self, transport: Any) -> None:
        self._leaving.discard(transport)
        transport.abort()


class Runner(web.AppRunner):
    """An `web.AppRunner` whose server keeps at most `max_connections` connections open."""

    def __init__(
        self,
        app: web.Application,
        max_connections: int,
        per_peer: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self._per_peer = per_peer

    async def setup(self) -> None:
        await super().setup()
        server = self.server
        if server is not None:
            server.connection_made = ConnectionCap(  # type: ignore[method-assign]
                server, self._max_connections, self.app[BUSY_KEY], per_peer=self._per_peer
            )


def make_runner(
    app: web.Application,
    *,
    max_connections: int | None = None,
    max_connections_per_peer: int | None = None,
    **kwargs: Any,
) -> web.AppRunner:
    """An aiohttp runner for an app of `create_app`, with the server's connection limits:
    a request's headers must arrive within the app's `idle_timeout` (aiohttp closes a
    connection still waiting for them then), at most `MAX_HEADERS` headers of
    `MAX_HEADER_LINE` bytes, no transparent decompression of bodies, and its request-handler
    errors logged in one line, and at most `max_connections` connections open at once
    (default: `default_max_connections`, the descriptor limit less `FD_RESERVE`; connections
    beyond it are closed at once), and at most `max_connections_per_peer` from one address
    (default: half of `max_connections`, at least 4).  `kwargs` go to `web.AppRunner` as they
    are."""
    settings: dict[str, Any] = {
        "keepalive_timeout": app.get(IDLE_TIMEOUT_KEY, IDLE_TIMEOUT),
        "max_line_size": MAX_HEADER_LINE,
        "max_field_size": MAX_HEADER_LINE,
        "max_headers": MAX_HEADERS,
        "auto_decompress": False,
        "logger": one_line_log(),
        "access_log": None,
    }
    limit = default_max_connections() if max_connections is None else max_connections
    per_peer = max(4, limit // 2) if max_connections_per_peer is None else max_connections_per_peer
    for name, value in (("max_connections", limit), ("max_connections_per_peer", per_peer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return Runner(app, limit, per_peer, **{**settings, **kwargs})
