"""The S3 edge: an s3fs client bound to this event loop, and a source that streams an object.

s3fs is used through its asynchronous API (``S3FileSystem(asynchronous=True)``), one instance
per event loop, never through its own background loop.  Unless the caller says otherwise the
client neither signs payloads nor adds a checksum of its own to every request: on plain-HTTP
endpoints botocore would hash every body on the event loop, and we send our own CRC32C with
each part anyway (AWS verifies it; moto and Ceph RGW 16 ignore it, and the receiver has
verified every chunk already).
"""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

from fstransport.errors import StorageError
from fstransport.messages import Buffer
from fstransport.options import RetryPolicy
from fstransport.protocol.parts import HandedOver
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import retrying, storage_errors

__all__ = [
    "S3StreamSource",
    "crc32c_header",
    "is_s3",
    "open_s3",
    "s3_storage_options",
    "split_bucket_key",
]

_FAST_CONFIG: dict[str, Any] = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    "s3": {"payload_signing_enabled": False},
}


def is_s3(fs: Any) -> bool:
    """Whether `fs` is an s3fs filesystem or class (without importing s3fs)."""
    cls = fs if isinstance(fs, type) else type(fs)
    return any(c.__module__.startswith("s3fs") for c in cls.__mro__)


def s3_storage_options(storage_options: dict[str, Any]) -> dict[str, Any]:
    """`storage_options` with our client defaults added where the caller set nothing."""
    options = copy.deepcopy(storage_options)
    config = options.setdefault("config_kwargs", {})
    for key, value in _FAST_CONFIG.items():
        if key == "s3":
            config.setdefault("s3", {})
            for s3_key, s3_value in value.items():
                config["s3"].setdefault(s3_key, s3_value)
        else:
            config.setdefault(key, value)
    return options


async def open_s3(storage_options: dict[str, Any]) -> Any:
    """A connected ``S3FileSystem(asynchronous=True)`` for the running loop; close it with
    `fstransport.storage.source.close_async_filesystem`."""
    import s3fs

    global _shared_session
    options = s3_storage_options(storage_options)
    if "session" not in options and not options.get("profile"):
        # Loading botocore's service models costs ~50 ms: share one session across clients.
        if _shared_session is None:
            from aiobotocore.session import AioSession

            _shared_session = AioSession()
        options["session"] = _shared_session
    with storage_errors("s3://", "connect"):
        fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **options)
        await fs.set_session()
    return fs


_shared_session: Any = None


def split_bucket_key(path: str) -> tuple[str, str]:
    """``"bucket/some/key"`` → ``("bucket", "some/key")``."""
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        raise StorageError(path, "parse", ValueError(f"not an S3 object path: {path!r}"))
    return bucket, key


def crc32c_header(crc: int) -> str:
    """A CRC32C as S3's ``x-amz-checksum-crc32c`` wants it: base64 of the big-endian bytes."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


class S3StreamSource:
    """Reads an S3 object with one streaming GET, re-opened only when a read jumps elsewhere.

    Some S3 servers (moto among them) read the whole object for every GET, ranged or not, so one
    ranged GET per chunk would cost a whole-object read each time.  Reads in offset order — what
    the sender does — cost one GET for the whole snapshot; a rewind opens one more GET at the
    new offset.  Reads are served one at a time, in the order they were asked for.
    """

    def __init__(self, fs: Any, bucket: str, key: str, size: int, description: str) -> None:
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self.size = size
        self.description = description
        self.gets = 0
        self.retry = RetryPolicy()
        self._body: Any = None
        self._position = -1
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, storage_options: dict[str, Any]) -> S3StreamSource:
        fs = await open_s3(storage_options)
        try:
            with storage_errors(url, "open"):
                bucket, key = split_bucket_key(fs._strip_protocol(url))
                info = await fs._info(f"{bucket}/{key}")
                if info.get("type") != "file":
                    raise IsADirectoryError(url)
                return cls(fs, bucket, key, int(info["size"]), url)
        except BaseException:
            await close_async_filesystem(fs)
            raise

    async def _reopen(self, offset: int) -> None:
        self._drop_body()
        response = await self._fs._call_s3(
            "get_object", Bucket=self._bucket, Key=self._key, Range=f"bytes={offset}-"
        )
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
            except BaseException:
                self._drop_body()  # a broken stream: the next attempt opens a new GET here
                raise
            return buffer if filled == length else buffer[:filled]

        async with self._lock:
            return await retrying(attempt, self.description, "read", self.retry)

    async def close(self) -> None:
        self._drop_body()
        await close_async_filesystem(self._fs)
