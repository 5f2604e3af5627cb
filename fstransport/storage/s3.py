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
import time
from typing import Any

from fstransport.errors import SourceChanged, StorageError
from fstransport.messages import Buffer
from fstransport.options import RetryPolicy
from fstransport.protocol.parts import HandedOver
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import retrying, storage_errors

__all__ = [
    "S3StreamSource",
    "check_etag",
    "crc32c_header",
    "is_s3",
    "open_s3",
    "precondition_failed",
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


def precondition_failed(exc: BaseException) -> bool:
    """Whether `exc` (or what it was made from) is S3's 412 PreconditionFailed answer: an
    ``If-Match`` / ``x-amz-copy-source-if-match`` that no longer holds."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        error = (getattr(seen, "response", None) or {}).get("Error", {})
        if error.get("Code") in ("PreconditionFailed", "412"):
            return True
        seen = seen.__cause__
    return False


def check_etag(response: dict[str, Any], etag: str | None, subject: str) -> None:
    """`SourceChanged` when an S3 answer names another ETag than the object had at first (for
    servers that ignore ``If-Match``)."""
    got = response.get("ETag")
    if etag and got and str(got).strip('"') != etag.strip('"'):
        raise SourceChanged(
            subject, "read", ValueError(f"the object's ETag changed from {etag} to {got}")
        )


def source_changed(subject: str, exc: BaseException) -> SourceChanged:
    return SourceChanged(
        subject, "read", ValueError(f"the object changed while it was read: {exc}")
    )


async def s3_object_info(url: str, storage_options: dict[str, Any]) -> tuple[Any, Any]:
    """A connected client for the object at `url` and its ``_info`` (size, ETag, ...); the
    caller closes the client (it is closed here when the object cannot be used)."""
    fs = await open_s3(storage_options)
    try:
        with storage_errors(url, "open"):
            bucket, key = split_bucket_key(fs._strip_protocol(url))
            info = await fs._info(f"{bucket}/{key}")
            if info.get("type") != "file":
                raise IsADirectoryError(url)
        return fs, info
    except BaseException:
        await close_async_filesystem(fs)
        raise


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
        self._fs = fs
        self._bucket = bucket
        self._key = key
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
        match = {"IfMatch": self.etag} if self.etag else {}
        asked = time.perf_counter()
        try:
            response = await self._fs._call_s3(
                "get_object",
                Bucket=self._bucket,
                Key=self._key,
                Range=f"bytes={offset}-",
                **match,
            )
        except Exception as exc:
            if precondition_failed(exc):
                raise source_changed(self.description, exc) from exc
            raise
        check_etag(response, self.etag, self.description)
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
        await close_async_filesystem(self._fs)
