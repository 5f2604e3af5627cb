"""The receiver server: an aiohttp application that drives a `Receiver` over a store.

``create_app(store, token=...)`` builds it; `make_runner` (`fstransport.http.runner`) wraps it
in an aiohttp runner with the connection limits; ``fstransport serve ROOT`` runs it.  The wire
format is in `fstransport.http.wire`, the error answers in `fstransport.http.statuses`.  Every
request is checked before its body is read (`fstransport.http.handler`).  Every malformed
request is answered with a 4xx and logged in one line (logger ``fstransport.server``,
`fstransport.http.logs`), never a traceback.

Time limits, all derived from `idle_timeout`: a connection must complete a request's headers
within it (from its start, or from the end of its previous answer); a body must keep arriving
at `MIN_BODY_RATE` on average over every `idle_timeout` (or end within it), else 408
(`fstransport.http.incoming`); a transfer that receives no chunk for `idle_timeout` gives back
its slot (`Receiver.expire_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fstransport.errors import ConfigurationError, FstransportError
from fstransport.http.handler import ChunkHandler, authorization_check
from fstransport.http.incoming import IDLE_TIMEOUT, MAX_BUFFERED, MIN_BODY_RATE, Budget
from fstransport.http.logs import answer_error, log, one_line
from fstransport.http.runner import BUSY_KEY, IDLE_TIMEOUT_KEY, guarding_accept
from fstransport.http.wire import API_PREFIX, check_token
from fstransport.protocol.receiver import ReceiverLimits
from fstransport.receiver import Receiver
from fstransport.storage.base import SnapshotStore

__all__ = ["RECEIVER_KEY", "create_app"]

RECEIVER_KEY = web.AppKey("receiver", Receiver)


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
    long_lived: bool = False,
) -> web.Application:
    """An aiohttp app receiving snapshots into `store` (or through `receiver`).

    Every request must carry ``Authorization: Bearer <token>`` (else 401).  Accepting requests
    from anyone who can connect takes ``no_auth=True`` instead of a token; an empty token, or
    neither, is a `ConfigurationError`: a mistyped or unset token never turns authentication off.

    Without `receiver`, the app's receiver keeps votes per snapshot id
    (``Receiver(store, vote_scope="snapshot")``): a standalone server has no Raft term to
    protect, and one sender's vote must not refuse another sender's snapshots.  A Raft node
    passes its own receiver, with one vote for the node.  `long_lived` makes that receiver
    ``Receiver(long_lived=True)`` (``serve --keep-delta-state``).

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
    _check_settings(token, no_auth, idle_timeout, max_buffered, min_body_rate)
    if token is None:
        log.warning("accepting snapshots without authentication (no_auth=True)")
    if receiver is None:
        receiver = Receiver(
            store,
            limits=limits,
            idle_timeout=idle_timeout,
            vote_scope="snapshot",
            long_lived=long_lived,
        )
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
    # never in an answer: where the store keeps its data on this host
    hide = tuple(
        str(value) for value in (getattr(store, "root", None), getattr(store, "url", None)) if value
    )
    handler = ChunkHandler(
        receiver,
        authorization_check(token),
        Budget(max_buffered),
        hide,
        float(idle_timeout),
        min_body_rate,
        on_request,
    )
    app.router.add_put(API_PREFIX + "{snapshot_id}", handler.answer)
    return app


def _check_settings(
    token: str | None,
    no_auth: bool,
    idle_timeout: float,
    max_buffered: int,
    min_body_rate: float,
) -> None:
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
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)):
        raise ConfigurationError(f"idle_timeout must be a number, got {idle_timeout!r}")
    if not idle_timeout > 0:
        raise ConfigurationError(f"idle_timeout must be positive, got {idle_timeout!r}")
    if isinstance(max_buffered, bool) or not isinstance(max_buffered, int) or max_buffered < 1:
        raise ConfigurationError(f"max_buffered must be a positive int, got {max_buffered!r}")
    if not min_body_rate >= 0:
        raise ConfigurationError(f"min_body_rate must not be negative, got {min_body_rate!r}")


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
