"""The receiver server: an aiohttp application that drives a `Receiver` over a store.

``create_app(store, token=...)`` builds it; `make_runner` (`fstransport.http.runner`) wraps it
in an aiohttp runner with the connection limits; ``fstransport serve ROOT`` runs it.  The wire
format is in `fstransport.http.wire`, the error answers in `fstransport.http.statuses`.  Every
request is checked before its body is read: the bearer token (compared in constant time), the
snapshot id, the headers, and the body's declared length against the receiver's chunk limit
(413 without reading a byte).  Every malformed request is answered with a 4xx and logged in
one line (logger ``fstransport.server``, `fstransport.http.logs`), never a traceback.

Time limits, all derived from `idle_timeout`: a connection must complete a request's headers
within it (from its start, or from the end of its previous answer); a body must keep arriving
at `MIN_BODY_RATE` on average over every `idle_timeout` (or end within it), else 408
(`fstransport.http.incoming`); a transfer that receives no chunk for `idle_timeout` gives back
its slot (`Receiver.expire_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fstransport.errors import (
    BodyStalled,
    ConfigurationError,
    FstransportError,
    InvalidRequest,
    PayloadTooLarge,
    TooManyTransfers,
    Unauthorized,
)
from fstransport.http.incoming import IDLE_TIMEOUT, MAX_BUFFERED, MIN_BODY_RATE, Budget, read_body
from fstransport.http.logs import answer_error, log, one_line
from fstransport.http.runner import BUSY_KEY, IDLE_TIMEOUT_KEY, guarding_accept
from fstransport.http.wire import (
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
    encode_vote,
    parse_uint,
)
from fstransport.messages import InstallSnapshotRequest
from fstransport.protocol.receiver import ReceiverLimits, check_snapshot_id
from fstransport.receiver import Receiver
from fstransport.storage.base import SnapshotStore

__all__ = ["RECEIVER_KEY", "create_app"]

RECEIVER_KEY = web.AppKey("receiver", Receiver)
_WIRE_HEADERS = (H_VOTE, H_META, H_OFFSET, H_DONE, H_CRC, H_STAGED)


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
    with `make_runner`.  Errors are answered as `fstransport.http.statuses.ERRORS` says, never
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
    budget = Budget(max_buffered)
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
    app.cleanup_ctx.append(guarding_accept)
    authorized = _authorization_check(token)
    # never in an answer: where the store keeps its data on this host
    hide = tuple(
        str(value) for value in (getattr(store, "root", None), getattr(store, "url", None)) if value
    )

    async def install(request: web.Request) -> web.Response:
        snapshot_id: str | None = None
        if not authorized(request):
            return answer_error(Unauthorized("missing or wrong bearer token"), request)
        try:
            snapshot_id = check_snapshot_id(request.match_info["snapshot_id"])
            _check_headers(request)
            length = request.content_length
            if length is None:
                raise InvalidRequest("Content-Length is required", field="data")
            if limit is not None and length > limit:
                too_large = PayloadTooLarge(f"chunk of {length} bytes exceeds {limit}", limit=limit)
                return answer_error(too_large, request, snapshot_id, hide)
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
                    body, crc = await read_body(
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
            stalled = answer_error(exc, request, snapshot_id, hide)
            stalled.force_close()  # the rest of the body may still come: never read it as a request
            return stalled
        except _Unsupported as exc:
            unsupported = InvalidRequest(str(exc), field=exc.field)
            return answer_error(unsupported, request, snapshot_id, hide, status=415)
        except InvalidRequest as exc:
            answer = answer_error(exc, request, snapshot_id, hide)
            if exc.field == "data":  # the body was not read to its end: the connection is spent
                answer.force_close()
            return answer
        except FstransportError as exc:
            return answer_error(exc, request, snapshot_id, hide)
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
    """Marks the request's connection busy while it is handled (see `ConnectionCap`)."""
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
        log.error("internal error: %s: %s (at %s)", type(exc).__name__, one_line(exc), at)
        return answer_error(FstransportError(f"internal error ({type(exc).__name__})"), request)


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
