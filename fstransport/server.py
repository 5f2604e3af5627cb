"""The receiver server: an aiohttp application that drives a `Receiver` over a store.

``create_app(store, token=...)`` builds it; ``fstransport serve ROOT`` runs it.  The wire format
is in `fstransport.network.wire`.  Every request is checked before its body is read: the bearer
token (compared in constant time), the snapshot id, the headers, and the body's declared length
against the receiver's chunk limit (413 without reading a byte).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from crc32c import crc32c

from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    FstransportError,
    InvalidRequest,
    SnapshotMismatch,
    StorageError,
    TooManyTransfers,
)
from fstransport.messages import Buffer, InstallSnapshotRequest, Pieces
from fstransport.network.wire import (
    API_PREFIX,
    H_CRC,
    H_DONE,
    H_META,
    H_OFFSET,
    H_VOTE,
    decode_meta,
    decode_vote,
    encode_vote,
)
from fstransport.protocol.receiver import check_snapshot_id
from fstransport.receiver import Receiver
from fstransport.storage.store import SnapshotStore

__all__ = ["IDLE_TIMEOUT", "MAX_BUFFERED", "BodyStalled", "create_app"]

RECEIVER_KEY = web.AppKey("receiver", Receiver)

SMALL_PIECE = 64 * 1024
"""Received pieces shorter than this are gathered into one buffer before they join a chunk's
`Pieces`: a peer that trickles a chunk a few bytes at a time costs a copy of those bytes, not
a Python object per trickle.  Longer pieces (aiohttp hands over up to 256 KiB) are kept as
they are."""


def _error(status: int, exc: BaseException, **extra: Any) -> web.Response:
    body = {"error": type(exc).__name__, "message": str(exc), **extra}
    return web.json_response(body, status=status)


def _int_header(request: web.Request, name: str) -> int:
    value = request.headers.get(name, "")
    if not value.isdigit():
        raise InvalidRequest(f"header {name} must be a non-negative integer", field=name)
    return int(value)


class BodyStalled(InvalidRequest):
    """No byte of a request's body arrived for the server's `idle_timeout` (answered with 408)."""


class _Watchdog:
    """Cancels the task reading a body once `progress` has not moved for `seconds`.

    One timer per body, re-armed while bytes arrive, instead of a timeout around every read:
    that would cost a task and a timer per received piece (hundreds per chunk).  It fires
    between `seconds` and twice that after the last byte."""

    def __init__(self, seconds: float) -> None:
        self.progress = 0
        self.fired = False
        self._seconds = seconds
        self._seen = -1
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(seconds, self._check)

    def _check(self) -> None:
        if self.progress == self._seen and self._task is not None:
            self.fired = True
            self._task.cancel()
        else:
            self._seen = self.progress
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
        return BodyStalled(f"no body bytes for {self._seconds:g} s", field="data")


async def _read_body(content: StreamReader, length: int, idle_timeout: float) -> tuple[Pieces, int]:
    """The request's body of `length` bytes as the pieces it arrived in, and its CRC32C.

    The pieces are never joined into one buffer: copying 8 MiB into one costs more than
    receiving it (it runs at memory speed, not cache speed), and the local file sink writes
    the pieces with ``pwritev`` (other sinks join them).  Each piece is checksummed while it is
    still in the CPU's cache, as it arrives.  `BodyStalled` once no byte came for
    `idle_timeout` seconds (a peer that stops sending would otherwise hold what it sent so far
    for ever)."""
    watchdog = _Watchdog(idle_timeout)
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
        if not piece:
            raise InvalidRequest(f"body ended after {filled} of {length} bytes", field="data")
        watchdog.progress += 1
        filled += len(piece)
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


def create_app(
    store: SnapshotStore,
    *,
    token: str | None = None,
    receiver: Receiver | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
    max_buffered: int = MAX_BUFFERED,
    on_request: Callable[[web.Request, web.StreamResponse], None] | None = None,
) -> web.Application:
    """An aiohttp app receiving snapshots into `store` (or through `receiver`).

    A request whose body stops for `idle_timeout` seconds is answered with 408 and dropped.
    The bodies held at once (each is kept whole until it is verified and written) stay within
    `max_buffered` bytes: a request beyond that is answered 503 before it is read, and retried
    by its sender.  `on_request`, if given, is called with every chunk request and the response
    it got (for a log of transfers and refusals)."""
    if not idle_timeout > 0:
        raise ConfigurationError(f"idle_timeout must be positive, got {idle_timeout!r}")
    if isinstance(max_buffered, bool) or not isinstance(max_buffered, int) or max_buffered < 1:
        raise ConfigurationError(f"max_buffered must be a positive int, got {max_buffered!r}")
    budget = _Budget(max_buffered)
    receiver = receiver or Receiver(store)
    limit = receiver.limits.max_chunk_size
    app = web.Application(client_max_size=(limit or 1024**3) + 1)
    app[RECEIVER_KEY] = receiver
    expected = f"Bearer {token}".encode() if token else None

    async def install(request: web.Request) -> web.Response:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _error(401, InvalidRequest("missing or wrong bearer token"))
        try:
            snapshot_id = check_snapshot_id(request.match_info["snapshot_id"])
            length = request.content_length
            if length is None:
                raise InvalidRequest("Content-Length is required", field="data")
            if limit is not None and length > limit:
                too_large = InvalidRequest(f"chunk of {length} bytes exceeds {limit}", field="data")
                return _error(413, too_large, limit=limit)
            vote = decode_vote(request.headers.get(H_VOTE, ""))
            meta = decode_meta(snapshot_id, request.headers.get(H_META, "{}"))
            offset = _int_header(request, H_OFFSET)
            if H_CRC not in request.headers:  # only an in-process copy may leave it out
                raise InvalidRequest(f"header {H_CRC} (the body's CRC32C) is required", field=H_CRC)
            sent_crc = _int_header(request, H_CRC)
            done = request.headers.get(H_DONE) == "1"
            if not budget.take(length):
                raise TooManyTransfers(
                    f"the server holds {budget.used} bytes of chunks (at most {budget.limit}); "
                    "try again"
                )
            try:
                body, crc = await _read_body(request.content, length, idle_timeout)
                if sent_crc == crc:
                    # The CRC was just computed here from the bytes received: the receiver
                    # takes it instead of reading the whole chunk once more.
                    req = InstallSnapshotRequest(vote, meta, offset, body, done, crc32c=crc)
                    response = await receiver.handle(req, trust_crc=True)
                else:  # corrupted on the way: the receiver refuses it with its usual checks
                    req = InstallSnapshotRequest(vote, meta, offset, body, done, crc32c=sent_crc)
                    response = await receiver.handle(req)
            finally:
                budget.give(length)
        except SnapshotMismatch as exc:
            return _error(409, exc, expect=exc.expect.offset, got=exc.got.offset)
        except TooManyTransfers as exc:
            return _error(503, exc)
        except BodyStalled as exc:
            stalled = _error(408, exc)
            stalled.force_close()  # the rest of the body may still come: never read it as a request
            return stalled
        except InvalidRequest as exc:
            return _error(400, exc, field=exc.field)
        except ChecksumMismatch as exc:
            return _error(422, exc, whole=exc.whole)
        except StorageError as exc:
            return _error(500, exc, retryable=exc.retryable)
        except FstransportError as exc:
            return _error(500, exc)
        held = [list(r) for r in response.held] if response.held else None
        return web.json_response({"vote": encode_vote(response.vote), "held": held})

    async def install_and_tell(request: web.Request) -> web.StreamResponse:
        response = await install(request)
        if on_request is not None:
            on_request(request, response)
        return response

    app.router.add_put(API_PREFIX + "{snapshot_id}", install_and_tell)
    return app
