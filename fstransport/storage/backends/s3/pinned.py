"""`PinnedObject`: GETs of one S3 object as it was when it was opened.

Every GET carries ``If-Match`` with the ETag the object had when it was opened, and each
answer's ETag is compared too (for servers that ignore ``If-Match``): an object replaced
mid-read ends in `SourceChanged`, never in bytes of two versions.  `fetch` reads a range into
a fresh buffer, asking again for the rest only after a GET breaks mid-way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fstransport.errors import FstransportError, StorageError
from fstransport.options import RetryPolicy
from fstransport.protocol.parts import HandedOver
from fstransport.storage.backends.s3.client import check_etag, precondition_failed, source_changed

__all__ = ["PinnedObject"]

log = logging.getLogger("fstransport.s3")


@dataclass
class PinnedObject:
    """``s3://bucket/key`` of `size` bytes with the ETag `etag`, read with the client `fs`."""

    fs: Any
    bucket: str
    key: str
    size: int
    description: str
    etag: str | None
    gets: int = 0
    """Ranged GETs `fetch` made (a range asked again after a break counts again)."""

    async def get(self, first: int, last: int | None = None) -> Any:
        """The answer to one GET of bytes ``first..last`` (to the end without `last`)."""
        match = {"IfMatch": self.etag} if self.etag else {}
        until = "" if last is None else str(last)
        try:
            response = await self.fs._call_s3(
                "get_object",
                Bucket=self.bucket,
                Key=self.key,
                Range=f"bytes={first}-{until}",
                **match,
            )
        except Exception as exc:
            if precondition_failed(exc):
                raise source_changed(self.description, exc) from exc
            raise
        check_etag(response, self.etag, self.description)
        return response

    async def fetch(
        self, start: int, end: int, retry: RetryPolicy, timed: Callable[[float, float], None]
    ) -> HandedOver:
        """Bytes ``[start, end)``, asked again from where a broken GET stopped, with `retry`'s
        backoff; `timed(answer, body)` hears the seconds a whole range's GET took."""
        buffer = HandedOver(end - start)  # never written again once handed out
        view = memoryview(buffer)
        filled = 0
        failures = 0
        while filled < len(buffer):
            try:
                filled = await self._get_into(view, start, filled, timed)
                continue
            except _Partial as partial:
                filled, exc = partial.filled, partial.error
            failures += 1
            error = StorageError(self.description, "read", exc)
            if not error.retryable or failures >= retry.max_attempts:
                raise error from exc
            log.warning(
                "%s (bytes %d-%d, attempt %d of %d); asking again from byte %d",
                error,
                start,
                end - 1,
                failures,
                retry.max_attempts,
                start + filled,
            )
            await asyncio.sleep(retry.backoff(failures))
        return buffer

    async def _get_into(
        self, view: memoryview, start: int, filled: int, timed: Callable[[float, float], None]
    ) -> int:
        """One ranged GET for ``view[filled:]`` (`view` begins at byte `start`); returns how
        much of `view` is filled when it ends, or raises with the bytes it read kept."""
        first, last = start + filled, start + len(view) - 1
        self.gets += 1
        body: Any = None
        asked = time.perf_counter()
        try:
            response = await self.get(first, last)
            body = response["Body"]
            answered = time.perf_counter()
            wanted = f"bytes {first}-{last}/{self.size}"
            if response.get("ContentRange", wanted) != wanted:
                raise OSError(f"asked for {wanted}, got {response.get('ContentRange')}")
            while filled < len(view):
                got = await body.readinto(view[filled:])
                if got == 0:
                    raise ConnectionResetError(
                        f"the answer for bytes {first}-{last} ended at byte {start + filled}"
                    )
                filled += got
        except FstransportError:
            raise
        except Exception as exc:
            raise _Partial(filled, exc) from exc
        finally:
            if body is not None:
                body.close()
        if first == start:  # a whole range in one GET: a fair sample of what a GET costs
            timed(answered - asked, time.perf_counter() - answered)
        return filled


class _Partial(Exception):
    """A GET that broke after filling its buffer up to `filled`."""

    def __init__(self, filled: int, error: Exception) -> None:
        super().__init__(str(error))
        self.filled = filled
        self.error = error
