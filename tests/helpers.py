"""Small helpers several test modules share: looking at a bucket, and hooking this process's
S3 calls (s3fs's ``S3FileSystem._call_s3``) to count, change or break them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import s3fs

Before = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Runs ahead of an S3 call: ``await before(method, kwargs)``."""
Answer = Callable[[str, dict[str, Any], Any], Any]
"""May change an S3 call's answer: ``answer(method, kwargs, response) -> response``."""


def object_bytes(client: Any, bucket: str, key: str) -> bytes:
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def keys(client: Any, bucket: str) -> list[str]:
    """The keys of the objects in `bucket`, sorted."""
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """The multipart uploads still open in `bucket`."""
    found: list[dict[str, Any]] = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return found


def staged_files() -> list[str]:
    """What a relay left in the staging area ``memory://stage``."""
    fs = fsspec.filesystem("memory")
    return sorted(fs.find("/stage")) if fs.exists("/stage") else []


@contextmanager
def s3_calls(answer: Answer | None = None, before: Before | None = None) -> Iterator[Counter[str]]:
    """Count this process's S3 operations; `before(method, kwargs)` runs ahead of each call and
    `answer(method, kwargs, response)` may change each answer (a server double)."""
    calls: Counter[str] = Counter()
    real = s3fs.S3FileSystem._call_s3

    async def recording(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        calls[method] += 1
        if before is not None:
            await before(method, kwargs)
        response = await real(self, method, *args, **kwargs)
        return answer(method, kwargs, response) if answer is not None else response

    s3fs.S3FileSystem._call_s3 = recording
    try:
        yield calls
    finally:
        s3fs.S3FileSystem._call_s3 = real
