"""Look before shipping: the source's size, the target's bucket, whether the target exists.

One quick request per location, through fsspec's public (synchronous) API in a worker thread,
with short botocore timeouts and no retries, so that a wrong endpoint, missing credentials or
a missing bucket end the command within seconds, with a hint, instead of after the transfer's
own patient retries.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

from fstransport.cli.args import is_s3_url
from fstransport.errors import StorageError

__all__ = ["PROBE_TIMEOUT", "S3_CLIENT_CONFIG", "Probe", "probe", "s3_cli_options"]

PROBE_TIMEOUT = 10.0
"""Seconds the whole look may take (DNS included) before the endpoint is called unreachable."""

S3_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "retries": {"max_attempts": 3, "mode": "standard"},
}
"""botocore settings the command line gives its S3 clients: an endpoint that does not answer
costs seconds, not botocore's default 60 s per attempt (the transfer retries on its own)."""


def s3_cli_options(storage_options: dict[str, Any]) -> dict[str, Any]:
    """`storage_options` with the command line's botocore timeouts where the user set none."""
    options = copy.deepcopy(storage_options)
    config = options.setdefault("config_kwargs", {})
    for key, value in S3_CLIENT_CONFIG.items():
        config.setdefault(key, value)
    return options


@dataclass(frozen=True)
class Probe:
    """What one look found: the file's size (None: no such file), whether it is a folder, and
    whether it is something else that is not a regular file (a device, a pipe)."""

    size: int | None
    is_dir: bool = False
    is_special: bool = False


def _look(url: str, storage_options: dict[str, Any], *, bucket_only: bool) -> Probe:
    import fsspec

    options = dict(storage_options)
    if is_s3_url(url):
        options = s3_cli_options(options)
        options["config_kwargs"]["retries"] = {"max_attempts": 1, "mode": "standard"}
        options["skip_instance_cache"] = True
    fs, path = fsspec.core.url_to_fs(url, **options)
    try:
        return _look_at(fs, str(path), url, bucket_only=bucket_only)
    finally:
        if is_s3_url(url):
            _close(fs)


def _look_at(fs: Any, path: str, url: str, *, bucket_only: bool) -> Probe:
    if is_s3_url(url):
        fs.retries = 1  # s3fs's own retry loop, on top of botocore's
        bucket, _, key = path.partition("/")
        try:
            fs.info(bucket)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"bucket {bucket!r} does not exist") from exc
        if bucket_only or not key:
            return Probe(None, is_dir=not key)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return Probe(None)
    if info.get("type") == "directory":
        return Probe(None, is_dir=True)
    if info.get("type") not in ("file", None):
        return Probe(None, is_special=True)
    size = info.get("size")
    return Probe(int(size) if isinstance(size, int) else None)


def _close(fs: Any) -> None:
    """Close an S3 filesystem's connections here, in the worker thread, on fsspec's own loop:
    left to its finalizer, it may be collected while the command's event loop runs, and then
    closes them on that loop, which they do not belong to (a traceback at exit)."""
    client = getattr(fs, "s3", None)
    if client is not None:
        type(fs).close_session(fs.loop, client)


async def probe(
    url: str, storage_options: dict[str, Any], *, verb: str = "open", bucket_only: bool = False
) -> Probe:
    """Look at `url` once; `StorageError(url, verb, ...)` if it cannot be looked at.

    On S3 the bucket is asked for first (a missing bucket is an error); with `bucket_only`
    nothing more is asked."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_look, url, storage_options, bucket_only=bucket_only),
            PROBE_TIMEOUT,
        )
    except TimeoutError as exc:
        cause = TimeoutError(f"no answer within {PROBE_TIMEOUT:g} s")
        raise StorageError(url, verb, cause) from exc
    except Exception as exc:
        raise StorageError(url, verb, exc) from exc
