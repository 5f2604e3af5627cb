"""The S3 edge: an s3fs client bound to this event loop, and the small helpers of S3 calls.

s3fs is used through its asynchronous API (``S3FileSystem(asynchronous=True)``), one instance
per event loop, never through its own background loop.  Unless the caller says otherwise the
client neither signs payloads nor adds a checksum of its own to every request: on plain-HTTP
endpoints botocore would hash every body on the event loop, and we send our own CRC32C with
each part anyway (AWS verifies it; moto and Ceph RGW 16 ignore it, and the receiver has
verified every chunk already).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import AsyncIterator
from typing import Any

from fstransport.errors import SourceChanged, StorageError, s3_error_code
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import storage_errors

__all__ = [
    "check_etag",
    "crc32c_header",
    "full_object_default",
    "is_s3",
    "list_uploads",
    "open_s3",
    "precondition_failed",
    "s3_object_info",
    "s3_storage_options",
    "source_changed",
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


def full_object_default(fs: Any, chosen: bool | None) -> bool:
    """Whether uploads to `fs` ask the bucket to verify the whole object's CRC32C as well.

    Unless `chosen`, on for AWS itself and off for other endpoints (``endpoint_url``): not every
    S3-compatible server has full-object checksums, and moto computes them slowly.
    """
    if chosen is not None:
        return chosen
    options = fs.storage_options
    client_kwargs = options.get("client_kwargs") or {}
    return not (options.get("endpoint_url") or client_kwargs.get("endpoint_url"))


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


async def list_uploads(
    s3: Any, bucket: str, prefix: str, *, page_size: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every incomplete multipart upload under `prefix` in `bucket`, page after page
    (ListMultipartUploads answers at most 1,000 at a time and says ``IsTruncated``).
    `FileNotFoundError` when the bucket does not exist."""
    markers: dict[str, str] = {}
    extra: dict[str, Any] = {} if page_size is None else {"MaxUploads": page_size}
    while True:
        listing = await s3._call_s3(
            "list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers, **extra
        )
        for upload in listing.get("Uploads", []):
            yield upload
        key_marker = listing.get("NextKeyMarker") or ""
        id_marker = listing.get("NextUploadIdMarker") or ""
        if not listing.get("IsTruncated") or not (key_marker or id_marker):
            return
        if markers == {"KeyMarker": key_marker, "UploadIdMarker": id_marker}:
            return  # a server that repeats its page would loop forever
        markers = {"KeyMarker": key_marker, "UploadIdMarker": id_marker}


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
    return s3_error_code(exc) in ("PreconditionFailed", "412")


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
