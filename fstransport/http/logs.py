"""The server's log: one line per event under ``fstransport.server``, never a traceback.

A hostile peer must not be able to fill the log with stacks: every refused request, every
error aiohttp's request handler meets (a request line that is not HTTP, oversized headers, a
peer gone while answered) is one line, cut at a few hundred characters.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp import web

from fstransport.errors import FstransportError
from fstransport.http.statuses import encode_error

__all__ = ["OneLineLog", "answer_error", "log", "one_line", "one_line_log"]

log = logging.getLogger("fstransport.server")
"""The server's logger (its name predates `fstransport.http`; ``fstransport serve`` and users'
log settings refer to it)."""

_QUIET_STATUSES = frozenset({409, 503})
"""Answers that are part of the protocol's normal flow: logged at INFO, the others at WARNING."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`exc`'s text on one line, cut at `limit` characters (aiohttp's span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def answer_error(
    exc: FstransportError,
    request: web.Request | None = None,
    snapshot_id: str | None = None,
    hide: tuple[str, ...] = (),
    *,
    status: int | None = None,
) -> web.Response:
    """The answer to a request that ended in `exc` (status and body from
    `fstransport.http.statuses.ERRORS`, unless `status` overrides it), logged in one line."""
    code, body = encode_error(exc, snapshot_id, hide=hide)
    if status is not None:
        code = status
    where = f"{request.method} {request.path[:120]!a} from {request.remote}" if request else "?"
    level = logging.WARNING
    if code in _QUIET_STATUSES:
        level = logging.INFO
    elif code >= 500:
        level = logging.ERROR
    log.log(level, "%d %s: %s: %s", code, where, type(exc).__name__, one_line(exc))
    return web.json_response(body, status=code)


class OneLineLog(logging.Logger):
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
        detail = f"{type(exc).__name__}: {one_line(exc)}" if isinstance(exc, BaseException) else ""
        self.warning("%s: %s", text, detail)


def one_line_log() -> logging.Logger:
    handler_log = OneLineLog("fstransport.server.http")
    handler_log.parent = log  # propagates to whatever handles fstransport's log
    return handler_log
