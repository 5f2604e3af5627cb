"""Reading a request's body on the server: its pieces, its CRC32C, its pace and its budget.

A body is kept as the pieces it arrived in and checksummed piece by piece (`read_body`); a
`Watchdog` drops a body that stops or trickles below `MIN_BODY_RATE` (`BodyStalled`, 408); a
`Budget` bounds the bytes of bodies the server holds at once (`MAX_BUFFERED`, else 503).
"""

from __future__ import annotations

import asyncio

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from crc32c import crc32c

from fstransport.errors import BodyStalled, InvalidRequest
from fstransport.messages import Buffer, Pieces

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BUFFERED",
    "MIN_BODY_RATE",
    "SMALL_PIECE",
    "Budget",
    "Watchdog",
    "read_body",
]

IDLE_TIMEOUT = 60.0
"""Seconds a request body may go without a byte before the server gives up on it (408)."""
MAX_BUFFERED = 1024**3
"""Bytes of chunk bodies the server holds at once, by default: a request that would go beyond
it is answered 503 before its body is read, and its sender tries again after a pause."""
MIN_BODY_RATE = 64 * 1024
"""Bytes per second a request body must average over every `idle_timeout` window, unless it
ends within the window: a slower body is answered 408 and its share of `max_buffered` given
back (four peers trickling a byte every few seconds would otherwise hold the whole budget)."""

SMALL_PIECE = 64 * 1024
"""Received pieces shorter than this are gathered into one buffer before they join a chunk's
`Pieces`: a peer that trickles a chunk a few bytes at a time costs a copy of those bytes, not
a Python object per trickle.  Longer pieces (aiohttp hands over up to 256 KiB) are kept as
they are."""


class Watchdog:
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


async def read_body(
    content: StreamReader, length: int, idle_timeout: float, min_rate: float = MIN_BODY_RATE
) -> tuple[Pieces, int]:
    """The request's body of `length` bytes as the pieces it arrived in, and its CRC32C.

    The pieces are never joined into one buffer: copying 8 MiB into one costs more than
    receiving it (it runs at memory speed, not cache speed), and the local file sink writes
    the pieces with ``pwritev`` (other sinks join them).  Each piece is checksummed while it is
    still in the CPU's cache, as it arrives.  `BodyStalled` once the body falls below
    `min_rate` over an `idle_timeout` window (a peer that stops or trickles would otherwise
    hold what it sent so far, and its share of the server's budget, for ever)."""
    watchdog = Watchdog(idle_timeout, length, min_rate)
    try:
        return await read_pieces(content, length, watchdog)
    except asyncio.CancelledError:
        stalled = watchdog.stalled()
        if stalled is None:
            raise
        raise stalled from None
    finally:
        watchdog.close()


async def read_pieces(content: StreamReader, length: int, watchdog: Watchdog) -> tuple[Pieces, int]:
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


class Budget:
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
