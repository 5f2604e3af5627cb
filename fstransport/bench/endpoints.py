"""Where a benchmark's source lies and its targets go: ``memory://``, a temporary folder, or S3
(a moto server in a child process, or a given bucket and endpoint), all removed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from fstransport.bench.plan import BenchPlan, Kind
from fstransport.errors import StorageError
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.s3 import open_s3
from fstransport.storage.store import FsspecSnapshotStore


@dataclass
class Endpoints:
    """Where the source lies and the targets go, and the storage options to reach them."""

    plan: BenchPlan
    run_id: str
    workdir: str | None = None
    s3_options: dict[str, Any] = field(default_factory=dict)
    s3_prefix: str = ""

    def url(self, kind: Kind, name: str) -> str:
        if kind == "memory":
            return f"memory://fstransport-bench-{self.run_id}/{name}"
        if kind == "file":
            assert self.workdir is not None
            return os.path.join(self.workdir, name)
        return f"{self.s3_prefix}/{name}"

    def options(self, kind: Kind) -> dict[str, Any]:
        return dict(self.s3_options) if kind == "s3" else {}


@contextlib.asynccontextmanager
async def endpoints(plan: BenchPlan) -> AsyncIterator[Endpoints]:
    ends = Endpoints(plan, run_id=uuid.uuid4().hex[:8])
    kinds = {plan.source, plan.target}
    with contextlib.ExitStack() as stack:
        if "file" in kinds:
            ends.workdir = tempfile.mkdtemp(prefix="fstransport-bench-", dir=plan.directory)
            stack.callback(shutil.rmtree, ends.workdir, True)
        if "memory" in kinds:
            memory = fsspec.filesystem("memory")
            root = f"/fstransport-bench-{ends.run_id}"
            stack.callback(lambda: memory.rm(root, recursive=True) if memory.exists(root) else None)
        if "s3" not in kinds:
            yield ends
            return
        await _setup_s3(plan, ends, stack)
        try:
            yield ends
        finally:
            await _remove_s3_prefix(ends)


async def _setup_s3(plan: BenchPlan, ends: Endpoints, stack: contextlib.ExitStack) -> None:
    if plan.bucket is None:
        from fstransport.moto_server import moto_process, storage_options_for

        endpoint = await asyncio.to_thread(stack.enter_context, moto_process())
        ends.s3_options = storage_options_for(endpoint)
        bucket = "fstransport-bench"
        await _s3_call(ends, f"s3://{bucket}", "create", "create_bucket", Bucket=bucket)
    else:
        bucket = plan.bucket
        if plan.endpoint_url:
            ends.s3_options = {"client_kwargs": {"endpoint_url": plan.endpoint_url}}
    ends.s3_prefix = f"s3://{bucket}/fstransport-bench-{ends.run_id}"


async def _s3_call(
    ends: Endpoints, subject: str, verb: str, method: str, *args: Any, **kw: Any
) -> None:
    """``S3FileSystem.<method>`` (``_call_s3`` for an S3 API call) on a client of its own."""
    s3 = await open_s3(ends.s3_options)
    try:
        with storage_errors(subject, verb):
            if method.startswith("_"):
                await getattr(s3, method)(*args, **kw)
            else:
                await s3._call_s3(method, *args, **kw)
    finally:
        await close_async_filesystem(s3)


async def _remove_s3_prefix(ends: Endpoints) -> None:
    """Remove every object and incomplete multipart upload under the run's prefix."""
    path = ends.s3_prefix.removeprefix("s3://")
    with contextlib.suppress(StorageError):
        async with FsspecSnapshotStore(ends.s3_prefix, **ends.s3_options) as store:
            await store.cleanup(older_than=0)
    with contextlib.suppress(StorageError):
        await _s3_call(ends, ends.s3_prefix, "remove", "_rm", path, recursive=True)


async def write_source(ends: Endpoints, data: bytes) -> str:
    kind = ends.plan.source
    url = ends.url(kind, "source.bin")
    if kind == "s3":
        await _s3_call(ends, url, "write", "_pipe_file", url.removeprefix("s3://"), data)
        return url
    with storage_errors(url, "write"):
        fs, path = fsspec.core.url_to_fs(url)
        await asyncio.to_thread(fs.pipe_file, path, data)
    return url


async def remove(url: str, ends: Endpoints) -> None:
    if url.startswith("s3://"):
        await _s3_call(ends, url, "remove", "_rm_file", url.removeprefix("s3://"))
        return
    with storage_errors(url, "remove"):
        fs, path = fsspec.core.url_to_fs(url)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(fs.rm_file, path)
