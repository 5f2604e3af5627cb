"""The receiver server: an aiohttp application that drives a `Receiver` over a store.

``create_app(store, token=...)`` builds it; `make_runner` wraps it in an aiohttp runner with the
connection limits below; ``fstransport serve ROOT`` runs it.  The wire format is in
`fstransport.network.wire`.  Every request is checked before its body is read: the bearer token
(compared in constant time), the snapshot id, the headers, and the body's declared length
against the receiver's chunk limit (413 without reading a byte).  Every malformed request is
answered with a 4xx and logged in one line (logger ``fstransport.server``), never a traceback.

Time limits, all derived from `idle_timeout`: a connection must complete a request's headers
within it (from its start, or from the end of its previous answer); a body must keep arriving
at `MIN_BODY_RATE` on average over every `idle_timeout` (or end within it), else 408; a
transfer that receives no chunk for `idle_timeout` gives back its slot (`Receiver.expire_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from crc32c import crc32c

from fstransport.errors import (
    BodyStalled,
    ConfigurationError,
    FstransportError,
    InvalidRequest,
    PayloadTooLarge,
    TooManyTransfers,
    Unauthorized,
)
from fstransport.messages import Buffer, InstallSnapshotRequest, Pieces
from fstransport.network.wire import (
    API_PREFIX,
    H_CRC,
    H_DONE,
    H_META,
    H_OFFSET,
    H_STAGED,
    H_VOTE,
    check_token,
    decode_meta,
    decode_staged,
    decode_vote,
    encode_error,
    encode_vote,
    parse_uint,
)
from fstransport.protocol.receiver import ReceiverLimits, check_snapshot_id
from fstransport.receiver import Receiver
from fstransport.storage.store import SnapshotStore

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BUFFERED",
    "MAX_HEADERS",
    "MAX_HEADER_LINE",
    "MIN_BODY_RATE",
    "BodyStalled",
    "create_app",
    "make_runner",
]

log = logging.getLogger("fstransport.server")

RECEIVER_KEY = web.AppKey("receiver", Receiver)
BUSY_KEY = web.AppKey("busy", set)
"""The transports of the connections in the middle of a request (never evicted)."""
IDLE_TIMEOUT_KEY = web.AppKey("idle_timeout", float)

MAX_HEADER_LINE = 8190
"""Bytes a request line or one header line may take (aiohttp's default; larger: 400)."""
MAX_HEADERS = 32
"""Headers a request may carry (a chunk needs eight; more: 400)."""
MIN_BODY_RATE = 64 * 1024
"""Bytes per second a request body must average over every `idle_timeout` window, unless it
ends within the window: a slower body is answered 408 and its share of `max_buffered` given
back (four peers trickling a byte every few seconds would otherwise hold the whole budget)."""
_WIRE_HEADERS = (H_VOTE, H_META, H_OFFSET, H_DONE, H_CRC, H_STAGED)

SMALL_PIECE = 64 * 1024
"""Received pieces shorter than this are gathered into one buffer before they join a chunk's
`Pieces`: a peer that trickles a chunk a few bytes at a time costs a copy of those bytes, not
a Python object per trickle.  Longer pieces (aiohttp hands over up to 256 KiB) are kept as
they are."""


_QUIET_STATUSES = frozenset({409, 503})
"""Answers that are part of the protocol's normal flow: logged at INFO, the others at WARNING."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """`exc`'s text on one line, cut at `limit` characters (aiohttp's span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _answer_error(
    exc: FstransportError,
    request: web.Request | None = None,
    snapshot_id: str | None = None,
    hide: tuple[str, ...] = (),
    *,
    status: int | None = None,
) -> web.Response:
    """The answer to a request that ended in `exc` (status and body from
    `fstransport.network.wire.ERRORS`, unless `status` overrides it), logged in one line."""
    code, body = encode_error(exc, snapshot_id, hide=hide)
    if status is not None:
        code = status
    where = f"{request.method} {request.path[:120]!a} from {request.remote}" if request else "?"
    level = logging.WARNING
    if code in _QUIET_STATUSES:
        level = logging.INFO
    elif code >= 500:
        level = logging.ERROR
    log.log(level, "%d %s: %s: %s", code, where, type(exc).__name__, _one_line(exc))
    return web.json_response(body, status=code)


def _authorization_check(token: str | None) -> Callable[[web.Request], bool]:
    """Whether a request carries exactly one ``Authorization: Bearer <token>`` header (always
    true for no token).  Compared as bytes in constant time; a header that is not valid
    UTF-8, or that comes twice, is simply not the token: authentication fails closed."""
    if token is None:
        return lambda request: True
    expected = f"Bearer {token}".encode("ascii")

    def authorized(request: web.Request) -> bool:
        try:
            given = request.headers.getall("Authorization", [])
            if len(given) != 1:
                return False
            # aiohttp decodes header bytes as UTF-8 with surrogate escapes: this gives them back
            raw = given[0].encode("utf-8", "surrogateescape")
        except (UnicodeError, ValueError, TypeError):
            return False
        return hmac.compare_digest(raw, expected)

    return authorized


def _int_header(request: web.Request, name: str) -> int:
    return parse_uint(request.headers.get(name, ""), name)


class _Watchdog:
    """Cancels the task reading a body of `length` bytes once it falls below `min_rate`.

    Every `seconds` it checks that `received` grew by ``min_rate * seconds`` bytes since the
    last check, or by what was left of the body then (at least one byte): one timer per body
    instead of a timeout around every read, which would cost a task and a timer per received
    piece (hundreds per chunk).  A body that stops dead is dropped `seconds` after its last
    check, at most twice `seconds` after its last byte."""

    def __init__(self, seconds: float, length: int, min_rate: float) -> None:
        self.received = 0
        self.fired = False
        self.reason = ""
        self._seconds = seconds
        self._length = length
        self._per_window = min_rate * seconds
        self._seen = 0
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(seconds, self._check)

    def _check(self) -> None:
        gained = self.received - self._seen
        needed = max(1.0, min(self._per_window, self._length - self._seen))
        if gained < needed and self._task is not None:
            self.fired = True
            self.reason = (
                f"body received {self.received} of {self._length} bytes; {gained} in the last "
                f"{self._seconds:g} s, below the floor of {self._per_window:.0f} per window"
                if gained
                else f"no body bytes for {self._seconds:g} s"
            )
            self._task.cancel()
        else:
            self._seen = self.received
            self._timer = self._loop.call_later(self._seconds, self._check)

    def close(self) -> None:
        self._timer.cancel()

    def stalled(self) -> BodyStalled | None:
        """After a cancellation: the error to raise instead if this watchdog caused it."""
        if not self.fired:
            return None
        uncancel = getattr(self._task, "uncancel", None)  # Python 3.11+ counts cancellations
        if uncancel is not None:
            uncancel()
        return BodyStalled(self.reason, field="data")


async def _read_body(
    content: StreamReader, length: int, idle_timeout: float, min_rate: float = MIN_BODY_RATE
) -> tuple[Pieces, int]:
    """The request's body of `length` bytes as the pieces it arrived in, and its CRC32C.

    The pieces are never joined into one buffer: copying 8 MiB into one costs more than
    receiving it (it runs at memory speed, not cache speed), and the local file sink writes
    the pieces with ``pwritev`` (other sinks join them).  Each piece is checksummed while it is
    still in the CPU's cache, as it arrives.  `BodyStalled` once the body falls below
    `min_rate` over an `idle_timeout` window (a peer that stops or trickles would otherwise
    hold what it sent so far, and its share of the server's budget, for ever)."""
    watchdog = _Watchdog(idle_timeout, length, min_rate)
    try:
        return await _read_pieces(content, length, watchdog)
    except asyncio.CancelledError:
        stalled = watchdog.stalled()
        if stalled is None:
            raise
        raise stalled from None
    finally:
        watchdog.close()


async def _read_pieces(
    content: StreamReader, length: int, watchdog: _Watchdog
) -> tuple[Pieces, int]:
    parts: list[Buffer] = []
    small = bytearray()
    crc = 0
    filled = 0
    while filled < length:
        try:
            piece, _ = await content.readchunk()  # one received piece, never joined to others
        except ConnectionError:  # the peer went away mid-body: nobody to answer, no traceback
            piece = b""
        except (RequestPayloadError, HttpProcessingError) as exc:  # e.g. a broken chunked body
            raise InvalidRequest(f"body cannot be read: {exc}", field="data") from None
        if not piece:
            raise InvalidRequest(f"body ended after {filled} of {length} bytes", field="data")
        filled += len(piece)
        watchdog.received = filled
        if filled > length:
            raise InvalidRequest("body longer than its Content-Length", field="data")
        crc = crc32c(piece, crc, gil_release_mode=0)  # ~20 µs: releasing the GIL costs more
        if len(piece) >= SMALL_PIECE:
            if small:
                parts.append(small)
                small = bytearray()
            parts.append(piece)
        else:
            small += piece
            if len(small) >= SMALL_PIECE:
                parts.append(small)
                small = bytearray()
    if small:
        parts.append(small)
    return Pieces(parts), crc


IDLE_TIMEOUT = 60.0
"""Seconds a request body may go without a byte before the server gives up on it (408)."""
MAX_BUFFERED = 1024**3
"""Bytes of chunk bodies the server holds at once, by default: a request that would go beyond
it is answered 503 before its body is read, and its sender tries again after a pause."""


class _Budget:
    """The bytes of request bodies the server has taken on, against `limit`.

    A request reserves its whole Content-Length before its body is read and gives it back
    when it is answered.  One request is always let in when nothing is reserved, so that a
    chunk larger than the budget still goes through, alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, length: int) -> bool:
        if self.used and self.used + length > self.limit:
            return False
        self.used += length
        return True

    def give(self, length: int) -> None:
        self.used -= length


class _OneLineLog(logging.Logger):
    """aiohttp's request-handler log (bad request lines, oversized headers, a peer gone while
    answered) as one line per event under ``fstransport.server``, never a traceback: a hostile
    peer must not be able to fill the log with stacks."""

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.pop("exc_info", None)
        if isinstance(exc_info, BaseException):  # e.g. a request line that is not HTTP at all
            self.exception(msg, *args, exc_info=exc_info)
        else:
            super().debug(msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = sys.exc_info()[1] if exc_info is True else exc_info
        text = str(msg) % args if args else str(msg)
        detail = f"{type(exc).__name__}: {_one_line(exc)}" if isinstance(exc, BaseException) else ""
        self.warning("%s: %s", text, detail)


def _one_line_log() -> logging.Logger:
    handler_log = _OneLineLog("fstransport.server.http")
    handler_log.parent = log  # propagates to whatever handles fstransport's log
    return handler_log


class _AcceptGuard:
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


class _ConnectionCap:
    """Takes the place of ``Server.connection_made``: at most `limit` connections stay open,
    so that connections alone can never use up the descriptors the store needs.  When a new
    connection would pass the limit, the oldest connection that is not in the middle of a
    request (`busy`) is closed to make room — a flood of idle connections evicts itself, not
    the senders that are sending — and if every one is busy, the new connection is closed.
    Noted once a minute."""

    def __init__(self, server: Any, limit: int, busy: set[Any], quiet: float = 60.0) -> None:
        self._server = server
        self._register = server.connection_made
        self._limit = limit
        self._busy = busy
        self._quiet = quiet
        self._last = -quiet
        self._closed = 0

    def __call__(self, handler: Any, transport: asyncio.Transport) -> None:
        connections = self._server.connections
        self._register(handler, transport)
        if len(connections) < self._limit:
            return
        idle = [h for h in connections if h.transport not in self._busy]
        victim = idle[0] if idle else handler
        loop = asyncio.get_running_loop()
        # closed once aiohttp has started the connection's handler, as if the peer had gone
        # (closed here and now, a new connection's handler would start on a lost one)
        if victim.transport is not None:
            loop.call_soon(victim.transport.abort)
        self._closed += 1
        now = loop.time()
        if now - self._last >= self._quiet:
            log.warning(
                "%d connections open (the limit): closing the oldest idle one for each new "
                "one, noted at most once a minute (%d closed so far)",
                self._limit,
                self._closed,
            )
            self._last = now


class _Runner(web.AppRunner):
    """An `web.AppRunner` whose server keeps at most `max_connections` connections open."""

    def __init__(self, app: web.Application, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    async def setup(self) -> None:
        await super().setup()
        server = self.server
        if server is not None:
            server.connection_made = _ConnectionCap(  # type: ignore[method-assign]
                server, self._max_connections, self.app[BUSY_KEY]
            )


def make_runner(
    app: web.Application, *, max_connections: int | None = None, **kwargs: Any
) -> web.AppRunner:
    """An aiohttp runner for an app of `create_app`, with the server's connection limits:
    a request's headers must arrive within the app's `idle_timeout` (aiohttp closes a
    connection still waiting for them then), at most `MAX_HEADERS` headers of
    `MAX_HEADER_LINE` bytes, no transparent decompression of bodies, and its request-handler
    errors logged in one line, and at most `max_connections` connections open at once
    (default: `default_max_connections`, the descriptor limit less `FD_RESERVE`; connections
    beyond it are closed at once).  `kwargs` go to `web.AppRunner` as they are."""
    settings: dict[str, Any] = {
        "keepalive_timeout": app.get(IDLE_TIMEOUT_KEY, IDLE_TIMEOUT),
        "max_line_size": MAX_HEADER_LINE,
        "max_field_size": MAX_HEADER_LINE,
        "max_headers": MAX_HEADERS,
        "auto_decompress": False,
        "logger": _one_line_log(),
        "access_log": None,
    }
    limit = default_max_connections() if max_connections is None else max_connections
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"max_connections must be a positive integer, got {limit!r}")
    return _Runner(app, limit, **{**settings, **kwargs})


def create_app(
    store: SnapshotStore,
    *,
    token: str | None = None,
    no_auth: bool = False,
    receiver: Receiver | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
    max_buffered: int = MAX_BUFFERED,
    on_request: Callable[[web.Request, web.StreamResponse], None] | None = None,
    limits: ReceiverLimits | None = None,
    min_body_rate: float = MIN_BODY_RATE,
) -> web.Application:
    """An aiohttp app receiving snapshots into `store` (or through `receiver`).

    Every request must carry ``Authorization: Bearer <token>`` (else 401).  Accepting requests
    from anyone who can connect takes ``no_auth=True`` instead of a token; an empty token, or
    neither, is a `ConfigurationError`: a mistyped or unset token never turns authentication off.

    Without `receiver`, the app's receiver keeps votes per snapshot id
    (``Receiver(store, vote_scope="snapshot")``): a standalone server has no Raft term to
    protect, and one sender's vote must not refuse another sender's snapshots.  A Raft node
    passes its own receiver, with one vote for the node.

    A request whose body arrives slower than `min_body_rate` bytes per second, averaged over
    `idle_timeout` seconds, is answered with 408 and dropped.  The bodies held at once (each is
    kept whole until it is verified and written) stay within `max_buffered` bytes: a request
    beyond that is answered 503 before it is read, and retried by its sender.  A transfer that
    receives no chunk for `idle_timeout` is let go, its partial data kept (the app runs
    `Receiver.expire_idle`; a `receiver` without an ``idle_timeout`` of its own takes this one).
    `limits` are the receiver's when the app makes it.  `on_request`, if given, is called with
    every chunk request and the response it got (for a log of transfers and refusals).  Run it
    with `make_runner`.  Errors are answered as `fstransport.network.wire.ERRORS` says, never
    naming the store's root."""
    if not isinstance(no_auth, bool):
        raise ConfigurationError(f"no_auth must be True or False, got {no_auth!r}")
    if token is None and not no_auth:
        raise ConfigurationError(
            "create_app needs a token (token=...), or no_auth=True to accept requests from "
            "anyone who can connect"
        )
    if token is not None:
        if no_auth:
            raise ConfigurationError("give a token or no_auth=True, not both")
        check_token(token)
    else:
        log.warning("accepting snapshots without authentication (no_auth=True)")
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)):
        raise ConfigurationError(f"idle_timeout must be a number, got {idle_timeout!r}")
    if not idle_timeout > 0:
        raise ConfigurationError(f"idle_timeout must be positive, got {idle_timeout!r}")
    if isinstance(max_buffered, bool) or not isinstance(max_buffered, int) or max_buffered < 1:
        raise ConfigurationError(f"max_buffered must be a positive int, got {max_buffered!r}")
    if not min_body_rate >= 0:
        raise ConfigurationError(f"min_body_rate must not be negative, got {min_body_rate!r}")
    budget = _Budget(max_buffered)
    if receiver is None:
        receiver = Receiver(store, limits=limits, idle_timeout=idle_timeout, vote_scope="snapshot")
    elif receiver.idle_timeout is None:
        receiver.idle_timeout = idle_timeout
    limit = receiver.limits.max_chunk_size
    app = web.Application(
        client_max_size=(limit or 1024**3) + 1, middlewares=[_mark_busy, _last_resort]
    )
    app[BUSY_KEY] = set()
    app[RECEIVER_KEY] = receiver
    app[IDLE_TIMEOUT_KEY] = float(idle_timeout)
    app.cleanup_ctx.append(_expiring(receiver))
    app.cleanup_ctx.append(_guarding_accept)
    authorized = _authorization_check(token)
    # never in an answer: where the store keeps its data on this host
    hide = tuple(
        str(value) for value in (getattr(store, "root", None), getattr(store, "url", None)) if value
    )

    async def install(request: web.Request) -> web.Response:
        snapshot_id: str | None = None
        if not authorized(request):
            return _answer_error(Unauthorized("missing or wrong bearer token"), request)
        try:
            snapshot_id = check_snapshot_id(request.match_info["snapshot_id"])
            _check_headers(request)
            length = request.content_length
            if length is None:
                raise InvalidRequest("Content-Length is required", field="data")
            if limit is not None and length > limit:
                too_large = PayloadTooLarge(f"chunk of {length} bytes exceeds {limit}", limit=limit)
                return _answer_error(too_large, request, snapshot_id, hide)
            vote = decode_vote(request.headers.get(H_VOTE, ""))
            meta = decode_meta(snapshot_id, request.headers.get(H_META, "{}"))
            offset = _int_header(request, H_OFFSET)
            if H_CRC not in request.headers:  # only an in-process copy may leave it out
                raise InvalidRequest(f"header {H_CRC} (the body's CRC32C) is required", field=H_CRC)
            sent_crc = _int_header(request, H_CRC)
            done = _done_header(request)
            staged_header = request.headers.get(H_STAGED)
            staged = None if staged_header is None else decode_staged(staged_header)
            # (a staged chunk's bytes are fetched into memory by the receiver: count them too)
            reserved = length + (staged.length if staged is not None else 0)
            if not budget.take(reserved):
                raise TooManyTransfers(
                    f"the server holds {budget.used} bytes of chunks (at most {budget.limit}); "
                    "try again"
                )
            try:
                with receiver.in_use(snapshot_id):  # its transfer must not expire meanwhile
                    body, crc = await _read_body(
                        request.content, length, idle_timeout, min_body_rate
                    )
                if sent_crc == crc:
                    # The CRC was just computed here from the bytes received: the receiver
                    # takes it instead of reading the whole chunk once more.
                    req = InstallSnapshotRequest(vote, meta, offset, body, done, crc, staged)
                    response = await receiver.handle(req, trust_crc=True)
                else:  # corrupted on the way: the receiver refuses it with its usual checks
                    req = InstallSnapshotRequest(vote, meta, offset, body, done, sent_crc, staged)
                    response = await receiver.handle(req)
            finally:
                budget.give(reserved)
        except BodyStalled as exc:
            stalled = _answer_error(exc, request, snapshot_id, hide)
            stalled.force_close()  # the rest of the body may still come: never read it as a request
            return stalled
        except _Unsupported as exc:
            unsupported = InvalidRequest(str(exc), field=exc.field)
            return _answer_error(unsupported, request, snapshot_id, hide, status=415)
        except InvalidRequest as exc:
            answer = _answer_error(exc, request, snapshot_id, hide)
            if exc.field == "data":  # the body was not read to its end: the connection is spent
                answer.force_close()
            return answer
        except FstransportError as exc:
            return _answer_error(exc, request, snapshot_id, hide)
        held = [list(r) for r in response.held] if response.held else None
        return web.json_response({"vote": encode_vote(response.vote), "held": held})

    async def install_and_tell(request: web.Request) -> web.StreamResponse:
        response = await install(request)
        if on_request is not None:
            on_request(request, response)
        return response

    app.router.add_put(API_PREFIX + "{snapshot_id}", install_and_tell)
    return app


class _Unsupported(InvalidRequest):
    """A request the server understands but will not take (answered with 415)."""


def _check_headers(request: web.Request) -> None:
    """The protocol's headers are ASCII (anything else came from no client of ours), and the
    body comes as it is: no Content-Encoding (a compressed body could inflate past every limit)."""
    for name in _WIRE_HEADERS:
        value = request.headers.get(name)
        if value is not None and not value.isascii():
            raise InvalidRequest(f"header {name} must be ASCII", field=name)
        if len(request.headers.getall(name, ())) > 1:
            raise InvalidRequest(f"header {name} must be given once", field=name)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _Unsupported("compressed bodies are not accepted", field="Content-Encoding")


def _done_header(request: web.Request) -> bool:
    value = request.headers.get(H_DONE, "0")
    if value not in ("0", "1"):
        raise InvalidRequest(f"header {H_DONE} must be 0 or 1", field=H_DONE)
    return value == "1"


@web.middleware
async def _mark_busy(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Marks the request's connection busy while it is handled (see `_ConnectionCap`)."""
    busy: set[Any] = request.app[BUSY_KEY]
    transport = request.transport
    busy.add(transport)
    try:
        return await handler(request)
    finally:
        busy.discard(transport)


@web.middleware
async def _last_resort(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Whatever a handler did not foresee is still one line in the log, not a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:  # the router's 404 and 405: logged like the others
        if exc.status >= 400:
            where = f"{request.method} {request.path[:120]!a} from {request.remote}"
            log.warning("%d %s: %s", exc.status, where, exc.reason)
        raise
    except Exception as exc:  # the point of this middleware
        frames = traceback.extract_tb(exc.__traceback__)
        at = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        log.error("internal error: %s: %s (at %s)", type(exc).__name__, _one_line(exc), at)
        return _answer_error(FstransportError(f"internal error ({type(exc).__name__})"), request)


def _expiring(receiver: Receiver) -> Callable[[web.Application], AsyncIterator[None]]:
    """While the app runs: `Receiver.expire_idle` a few times per idle timeout."""

    async def expire(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(max(0.05, (receiver.idle_timeout or IDLE_TIMEOUT) / 4))
                try:
                    await receiver.expire_idle()
                except Exception as exc:  # it must go on; one line says why
                    log.error("expiring idle transfers failed: %s: %s", type(exc).__name__, exc)

        task = asyncio.ensure_future(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await receiver.close()  # its clients of staging buckets, if it opened any

    return expire


async def _guarding_accept(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    guard = _AcceptGuard(loop)
    loop.set_exception_handler(guard)
    try:
        yield
    finally:
        guard.close()
