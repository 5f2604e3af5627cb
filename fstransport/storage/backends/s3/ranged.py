"""Reading a large S3 object with several ranged GETs at once, handed out in order.

`S3RangedSource` cuts the object into parts of `part_size` bytes and keeps up to `streams` of
them fetched or being fetched, starting at the lowest offset a read is waiting for (or, between
reads, where the last read ended: read-ahead).  The sender reads in offset order with a window
of chunks in flight, so the parts it is about to want are already on their way.  Bounds and
rules:

- Memory: at most `streams` part buffers are held at once (``streams x part_size`` bytes); a
  read that needs a part beyond that waits until a read below it is served.  A part leaves as
  soon as every read that needed it has moved past it, or when reads moved elsewhere (a rewind
  or a skip) and it lies outside the window.  A read that lies within one part is handed that
  part's buffer (or a view of it) without a copy; one that spans parts is joined into a buffer
  of its own.
- Retries: each part is fetched on its own, retried with the `RetryPolicy`'s backoff; a GET
  that breaks mid-way is asked again for the rest of its range only, from where it stopped.
- Consistency: every GET carries ``If-Match`` with the ETag the object had when it was opened,
  and each answer's ETag is compared too: an object replaced mid-transfer ends the read in
  `SourceChanged`, never in bytes of two versions.

`open_s3_source` (in the S3 backend) picks this source for objects of at least `threshold`
bytes and the one-GET `S3StreamSource` below that (and for servers that read the whole object
for every GET, as moto does, where ranged reads cost more than they bring; see ``docs/s3.md``).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

from fstransport.errors import ConfigurationError, StorageError
from fstransport.messages import Buffer
from fstransport.options import (  # the defaults live in options.py (no backend imported there)
    DEFAULT_RANGED_THRESHOLD,
    DEFAULT_READ_PART_SIZE,
    DEFAULT_READ_STREAMS,
    RetryPolicy,
)
from fstransport.protocol.parts import HandedOver
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage.backends.s3.pinned import PinnedObject
from fstransport.storage.backends.s3.stream import S3StreamSource
from fstransport.tasks import retrieve_exception

__all__ = [
    "DEFAULT_RANGED_THRESHOLD",
    "DEFAULT_READ_PART_SIZE",
    "DEFAULT_READ_STREAMS",
    "S3RangedSource",
    "check_read_options",
]

log = logging.getLogger("fstransport.s3")

FALLBACK_RATIO: float | None = 3.0
"""A server that takes more than this many times longer to answer a GET than to send a part
(moto: 5-50x, it reads the whole object first; real servers: a round trip, ~0.1-1.5x) is read
with one streaming GET.  None: always ranged GETs."""


def check_read_options(streams: int, part_size: int, threshold: int) -> None:
    """`ConfigurationError` unless the ranged-read settings are usable."""
    for name, value, least in (
        ("read_streams", streams, 1),
        ("read_part_size", part_size, 1),
        ("ranged_read_threshold", threshold, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigurationError(f"{name} must be a whole number >= {least}, got {value!r}")


class S3RangedSource:
    """An S3 object read with up to `streams` ranged GETs of `part_size` bytes at once."""

    def __init__(
        self,
        fs: Any,
        bucket: str,
        key: str,
        size: int,
        description: str,
        *,
        etag: str | None,
        streams: int = DEFAULT_READ_STREAMS,
        part_size: int = DEFAULT_READ_PART_SIZE,
        retry: RetryPolicy | None = None,
        fallback: bool = True,
    ) -> None:
        """`fallback`: start with one streaming GET and go over to ranged GETs only when the
        server answers it quickly (see `FALLBACK_RATIO`); else ranged GETs from the start."""
        check_read_options(streams, part_size, 0)
        self._object = PinnedObject(fs, bucket, key, size, description, etag)
        self.size = size
        self.description = description
        self.etag = etag
        self.streams = streams
        self.part_size = part_size
        self.retry = retry or RetryPolicy()
        self.part_count = -(-size // part_size)
        self.max_held = 0
        """Most bytes of part buffers held at once (at most `streams` x `part_size`)."""
        self._parts: dict[int, asyncio.Task[HandedOver]] = {}
        self._readers: dict[int, int] = {}  # read token -> next offset it needs
        self._tokens = 0
        self._cursor = 0  # where the last read ended: read-ahead starts here between reads
        self._changed = asyncio.Event()
        self._closed = False
        # "probe": reading the first part with one streaming GET, timing the server's answer;
        # "ranged": ranged GETs; "stream": one streaming GET (the server answers GETs slowly)
        self._mode = "probe" if fallback and FALLBACK_RATIO is not None else "ranged"
        self._timings: list[tuple[float, float]] = []  # (answer time, body time) of whole GETs
        self._stream: S3StreamSource | None = None
        self._stream_reads = 0

    # -- the window of parts ---------------------------------------------------------------------

    def _range(self, number: int) -> tuple[int, int]:
        start = number * self.part_size
        return start, min(self.size, start + self.part_size)

    def _held(self) -> int:
        return sum(end - start for start, end in map(self._range, self._parts))

    def _rebalance(self) -> None:
        """Drop parts no read needs any more, and start fetching what reads will want next."""
        positions = [p for p in self._readers.values() if p < self.size]
        needed = {p // self.part_size for p in positions}
        anchor = (min(positions) if positions else self._cursor) // self.part_size
        ahead = self.streams if self._mode == "ranged" else 0  # read-ahead in ranged mode only
        window = range(anchor, min(anchor + ahead, self.part_count))
        for number in list(self._parts):
            if number not in needed and number not in window:
                task = self._parts.pop(number)
                if not task.done():
                    task.cancel()
        for number in sorted(needed | set(window)):
            if len(self._parts) >= self.streams:
                break
            if number not in self._parts and not self._closed:
                task = asyncio.ensure_future(self._fetch(number))
                task.add_done_callback(retrieve_exception)
                self._parts[number] = task
        self.max_held = max(self.max_held, self._held())
        self._changed.set()
        self._changed = asyncio.Event()

    async def _part(self, number: int) -> HandedOver:
        """Part `number`'s bytes, once it is this read's turn to have it fetched."""
        while True:
            task = self._parts.get(number)
            if task is not None:
                return await asyncio.shield(task)  # another read may be waiting for it too
            if self._closed:
                raise StorageError(self.description, "read", ValueError("source closed"))
            self._rebalance()
            if number not in self._parts:  # beyond the window: wait for a read below it
                await self._changed.wait()

    async def _fetch(self, number: int) -> HandedOver:
        """GET part `number`'s range, again from where it broke off after a failure."""
        start, end = self._range(number)
        return await self._object.fetch(start, end, self.retry, self._judge)

    def _judge(self, answer_time: float, body_time: float) -> None:
        """After the first `streams` GETs: fall back to one streaming GET when the server takes
        far longer to answer a GET than to send its part (it reads the whole object for each,
        as moto does), so that ranged reads would cost more than they bring."""
        ratio = FALLBACK_RATIO
        if ratio is None or self._mode != "ranged" or len(self._timings) >= self.streams:
            return
        self._timings.append((answer_time, body_time))
        if len(self._timings) < self.streams:
            return
        answer = statistics.median(t for t, _ in self._timings)
        body = statistics.median(b for _, b in self._timings)
        if answer > ratio * max(body, 1e-3):
            log.info(
                "%s: a ranged GET takes %.0f ms to answer and %.0f ms to send its %d bytes; "
                "reading the rest with one streaming GET",
                self.description,
                answer * 1000,
                body * 1000,
                self.part_size,
            )
            self._mode = "stream"
            self._rebalance()

    def _stream_source(self) -> S3StreamSource:
        if self._stream is None:
            obj = self._object
            stream = S3StreamSource(
                obj.fs, obj.bucket, obj.key, self.size, self.description, self.etag
            )
            self._stream = stream
        self._stream.retry = self.retry
        return self._stream

    def _probe(self) -> None:
        """Once the first streaming GET has sent a part's worth: stay with it when the server
        took far longer to answer than to send that part, else go over to ranged GETs."""
        stream = self._stream
        if self._mode != "probe" or stream is None or stream.first_answer is None:
            return
        if stream.read_since_answer < min(self.part_size, self.size):
            return
        elapsed = time.perf_counter() - stream.answered_at
        per_part = elapsed * self.part_size / stream.read_since_answer
        ratio = FALLBACK_RATIO if FALLBACK_RATIO is not None else float("inf")
        slow = stream.first_answer > ratio * max(per_part, 1e-3)
        log.info(
            "%s: the first GET took %.0f ms to answer, %.0f ms per %d bytes after; %s",
            self.description,
            stream.first_answer * 1000,
            per_part * 1000,
            self.part_size,
            "keeping one streaming GET" if slow else f"reading {self.streams} ranges at once",
        )
        self._mode = "stream" if slow else "ranged"
        if not slow:
            self._cursor = stream._position if stream._position >= 0 else self._cursor
            self._rebalance()

    # -- ChunkSource -----------------------------------------------------------------------------

    @property
    def gets(self) -> int:
        """GET requests made (a part fetched again after a break counts again)."""
        return self._object.gets

    @property
    def fell_back(self) -> bool:
        """Whether this source reads with one streaming GET (see `_probe` and `_judge`)."""
        return self._mode == "stream"

    @property
    def mode(self) -> str:
        """``"probe"`` (the first part, one GET), ``"ranged"`` or ``"stream"``."""
        return self._mode

    async def read(self, offset: int, length: int) -> Buffer:
        end = min(self.size, offset + length)
        if end <= offset:
            return b""
        if self._mode != "ranged" and not self._parts_cover(offset, end):
            stream = self._stream_source()
            self._stream_reads += 1
            try:
                data = await stream.read(offset, length)
            finally:
                self._stream_reads -= 1
            self._cursor = offset + len(data)
            self._probe()
            if self._mode == "ranged" and self._stream_reads == 0:
                stream._drop_body()  # ranged GETs from here on: let the long GET go
            return data
        token = self._tokens = self._tokens + 1
        self._readers[token] = offset
        pieces: list[memoryview | HandedOver] = []
        try:
            position = offset
            while position < end:
                number = position // self.part_size
                part_start, part_end = self._range(number)
                data = await self._part(number)
                stop = min(end, part_end)
                whole = position == part_start and stop == part_end
                pieces.append(
                    data if whole else memoryview(data)[position - part_start : stop - part_start]
                )
                position = stop
                self._readers[token] = position
                self._rebalance()
        finally:
            del self._readers[token]
            self._cursor = end
            if not self._closed:
                self._rebalance()
        if len(pieces) == 1:
            return pieces[0]
        joined = HandedOver(end - offset)
        at = 0
        for piece in pieces:
            joined[at : at + len(piece)] = piece
            at += len(piece)
        return joined

    def _parts_cover(self, start: int, end: int) -> bool:
        """Whether every part holding bytes ``[start, end)`` is held or being fetched."""
        first, last = start // self.part_size, (end - 1) // self.part_size
        return all(n in self._parts for n in range(first, last + 1))

    async def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream._drop_body()  # (the filesystem is this source's, closed below)
        tasks = list(self._parts.values())
        self._parts.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._changed.set()
        await close_async_filesystem(self._object.fs)
