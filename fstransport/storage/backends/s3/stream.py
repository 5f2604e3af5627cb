"""`S3StreamSource`: an S3 object read with one streaming GET (see its docstring)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fstransport.messages import Buffer
from fstransport.options import RetryPolicy
from fstransport.protocol.parts import HandedOver
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import retrying
from fstransport.storage.backends.s3.client import s3_object_info, split_bucket_key
from fstransport.storage.backends.s3.pinned import PinnedObject

__all__ = ["S3StreamSource"]


class S3StreamSource:
    """Reads an S3 object with one streaming GET, re-opened only when a read jumps elsewhere.

    Some S3 servers (moto among them) read the whole object for every GET, ranged or not, so one
    ranged GET per chunk would cost a whole-object read each time.  Reads in offset order — what
    the sender does — cost one GET for the whole snapshot; a rewind opens one more GET at the
    new offset.  Reads are served one at a time, in the order they were asked for.  Every GET
    after the first carries ``If-Match`` with the ETag the object had when it was opened: a
    source replaced mid-transfer ends in `SourceChanged`, never in bytes of two versions.
    Large objects are read by `S3RangedSource` instead (see `open_s3_source`).
    """

    def __init__(
        self,
        fs: Any,
        bucket: str,
        key: str,
        size: int,
        description: str,
        etag: str | None = None,
    ) -> None:
        self._object = PinnedObject(fs, bucket, key, size, description, etag)
        self.size = size
        self.description = description
        self.etag = etag
        self.gets = 0
        self.retry = RetryPolicy()
        self.first_answer: float | None = None
        """Seconds the first GET took to be answered (headers, before any of the body)."""
        self.answered_at = 0.0
        self.read_since_answer = 0
        """Bytes read from the first GET, since `answered_at` (``time.perf_counter()``)."""
        self._body: Any = None
        self._position = -1
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, storage_options: dict[str, Any]) -> S3StreamSource:
        fs, info = await s3_object_info(url, storage_options)
        bucket, key = split_bucket_key(fs._strip_protocol(url))
        return cls(fs, bucket, key, int(info["size"]), url, info.get("ETag"))

    async def _reopen(self, offset: int) -> None:
        self._drop_body()
        asked = time.perf_counter()
        response = await self._object.get(offset)
        if self.first_answer is None:
            self.answered_at = time.perf_counter()
            self.first_answer = self.answered_at - asked
        self._body = response["Body"]
        self._position = offset
        self.gets += 1

    def _drop_body(self) -> None:
        if self._body is not None:
            body, self._body = self._body, None
            body.close()
        self._position = -1

    async def read(self, offset: int, length: int) -> Buffer:
        if length == 0:
            return b""

        async def attempt() -> Buffer:
            try:
                if self._body is None or self._position != offset:
                    await self._reopen(offset)
                buffer = HandedOver(length)  # never written again once returned
                view = memoryview(buffer)
                filled = 0
                while filled < length:
                    got = await self._body.readinto(view[filled:])
                    if got == 0:
                        break
                    filled += got
                self._position = offset + filled
                if self.gets == 1:
                    self.read_since_answer += filled
            except BaseException:
                self._drop_body()  # a broken stream: the next attempt opens a new GET here
                raise
            return buffer if filled == length else buffer[:filled]

        async with self._lock:
            return await retrying(attempt, self.description, "read", self.retry)

    async def close(self) -> None:
        self._drop_body()
        await close_async_filesystem(self._object.fs)
