"""`BufferBody`: a chunk or an S3 part as an aiohttp request body, sent without copying it.

aiohttp would join the headers and a whole ``bytes`` body into one new ``bytes`` (on Python
before 3.12.9 it never uses ``writelines``), asyncio copies whatever the socket does not take at
once into its write buffer, an ``io.BytesIO`` body is copied whole and then again piece by
piece, and a raw buffer over 1 MiB makes aiohttp warn.  `BufferBody` sends the headers first,
then the buffer in `SLICE`-sized views, each once the previous one has drained.  Used for the
chunks `HttpNetwork` sends and for the parts `MultipartSink` uploads (through aiobotocore, which
hands it to aiohttp as it is).

The S3 backend imports it from here: it needs an aiohttp payload (that is what makes the part
go out without a copy), and it runs on aiobotocore, hence on aiohttp, anyway.  This module
imports nothing of the server or the client (``fstransport.http`` resolves its names lazily),
so storage depends on aiohttp's payload class and `fstransport.messages` only.
"""

from __future__ import annotations

import io

import aiohttp.payload
from aiohttp.abc import AbstractStreamWriter

from fstransport.messages import Buffer

__all__ = ["SLICE", "BufferBody"]


SLICE = 1 << 20
"""Bytes handed to the connection at a time (each slice once the socket took the previous one,
so asyncio never copies more than about this much into its write buffer)."""


class BufferBody(aiohttp.payload.Payload):
    """A buffer as an aiohttp request body, sent straight from the buffer: no copy of it.

    aiohttp sends it with `write_with_length`, in slices of `SLICE` bytes.  For S3 parts it is
    also the file-like body botocore needs (``read``, ``seek``, ``tell``; botocore reads one
    only to hash it, which our client settings turn off, and seeks back to 0 before every
    retry); aiobotocore hands it to aiohttp unwrapped.
    """

    def __init__(self, data: Buffer) -> None:
        self._view = memoryview(data).cast("B")
        super().__init__(self._view, content_type="application/octet-stream")
        self._size = self._view.nbytes
        self._position = 0

    def __len__(self) -> int:
        return self._view.nbytes

    # -- the file-like side, for botocore --------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        end = self._view.nbytes if size < 0 else min(self._view.nbytes, self._position + size)
        piece = self._view[self._position : end].tobytes()
        self._position = max(self._position, end)
        return piece

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._view.nbytes}
        self._position = max(0, base[whence] + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    # -- the payload side, for aiohttp -----------------------------------------------------

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._view.tobytes().decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        end = self._view.nbytes if content_length is None else min(content_length, len(self))
        send_headers = getattr(writer, "send_headers", None)
        if callable(send_headers):
            send_headers()  # else aiohttp joins the headers and the first slice into new bytes
        for start in range(0, end, SLICE):
            await writer.write(self._view[start : min(end, start + SLICE)])
