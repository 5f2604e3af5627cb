"""`S3Backend`: a store in a bucket, and the choice of how an S3 object is read.

A snapshot is uploaded straight to ``root/<snapshot_id>`` with a `MultipartSink` and appears
there when the upload completes (there is no rename on S3); a directory snapshot's packed
stream goes to ``root/.fstransport/packed/<snapshot_id>`` and is unpacked as objects.  The
upload's state object at the journal path lets a later receiver resume it.  Every S3 call of
the store goes through one ``S3FileSystem(asynchronous=True)`` per event loop (`client`);
clean-up also aborts the incomplete multipart uploads under the root.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from fstransport.checksum import parse_checksum
from fstransport.messages import Snapshot, SnapshotMeta
from fstransport.options import RetryPolicy
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.fsspec import Found, FsspecBackend
from fstransport.storage.backends.s3.client import (
    is_s3,
    list_uploads,
    open_s3,
    s3_object_info,
    split_bucket_key,
)
from fstransport.storage.backends.s3.delta import S3Delta, S3DeltaSink
from fstransport.storage.backends.s3.multipart import MultipartSink
from fstransport.storage.backends.s3.ranged import (
    DEFAULT_RANGED_THRESHOLD,
    DEFAULT_READ_PART_SIZE,
    DEFAULT_READ_STREAMS,
    S3RangedSource,
    check_read_options,
)
from fstransport.storage.backends.s3.state import UploadState, read_state
from fstransport.storage.backends.s3.stream import S3StreamSource
from fstransport.storage.base import ChunkSource, DeltaBase, SnapshotSink
from fstransport.storage.layout import PACKED_DIR

if TYPE_CHECKING:
    from fstransport.storage.source import ReadSettings
    from fstransport.storage.store import FsspecSnapshotStore

__all__ = ["ABSENT_FOR", "S3Backend", "open_s3_source"]

ABSENT_FOR = 5.0
"""Seconds for which an S3 store trusts having just seen no upload state for a snapshot, so that
`has_partial`, `resume` and `begin` of one transfer look it up once, not three times."""


class S3Backend(FsspecBackend):
    """s3fs filesystems: `MultipartSink` (``sink="auto"`` or ``"multipart"``) with its state
    object; with ``sink="seekable"``/``"sequential"`` the generic sinks write instead."""

    sink_kinds = ("auto", "seekable", "sequential", "multipart")

    def __init__(self, store: FsspecSnapshotStore) -> None:
        super().__init__(store)
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._no_state: dict[str, float] = {}  # snapshot id -> when its S3 state was missing
        self._tree_heads: dict[str, bytes] = {}  # packed path -> header + table (a tree delta)

    @classmethod
    def serves(cls, fs: Any) -> bool:
        return is_s3(fs)

    @property
    def multipart(self) -> bool:
        """Whether this store writes with multipart uploads (and keeps their state)."""
        return self.store.sink_kind in ("auto", "multipart")

    async def client(self) -> Any:
        """The store's ``S3FileSystem(asynchronous=True)`` for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            old, old_loop = self._client, self._client_loop
            if old is not None and old_loop is not None and not old_loop.is_closed():
                await close_async_filesystem(old)
            self._client = await open_s3(dict(self.fs.storage_options))
            self._client_loop = loop
        return self._client

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<method>(...)`` on the asynchronous client, with fresh listings every time."""
        s3 = await self.client()
        s3.invalidate_cache()
        return await getattr(s3, f"_{method}")(*args, **kwargs)

    async def close(self, sinks: Sequence[SnapshotSink], *, idle: bool) -> None:
        """Let the uploads in progress go (their state recorded) and close the client."""
        for sink in sinks:
            if isinstance(sink, (MultipartSink, S3DeltaSink)):
                await sink.release()
        if self._client is not None:
            client, self._client = self._client, None
            await close_async_filesystem(client)

    # -- receiving ----------------------------------------------------------------------------

    def delta_base(self, *, keep: bool = False) -> DeltaBase | None:
        return S3Delta(self) if self.multipart else None

    async def _sink(
        self, meta: SnapshotMeta, journal: str | None, resumed: UploadState | None = None
    ) -> MultipartSink:
        bucket, key = split_bucket_key(self.store.upload_path(meta))
        return MultipartSink(
            await self.client(),
            bucket,
            key,
            meta,
            part_size=self.store.part_size,
            max_uploads=self.store.upload_concurrency,
            state_key=split_bucket_key(journal)[1] if journal else None,
            retry=self.store.retry,
            full_object_checksum=self.store.full_object_checksum,
            resumed=resumed,
        )

    async def open_sink(self, meta: SnapshotMeta) -> SnapshotSink:
        if not self.multipart:
            return await super().open_sink(meta)
        journal = self.store.journal_path(meta.snapshot_id) if meta.size is not None else None
        return await self._sink(meta, journal)

    async def find_partial(self, meta: SnapshotMeta) -> Found | None:
        """The upload the state object records for exactly `meta`, with the parts it claims."""
        if not self.multipart or self._known_absent(meta.snapshot_id):
            return None
        journal = self.store.journal_path(meta.snapshot_id)
        bucket, state_key = split_bucket_key(journal)
        exists, recorded = await read_state(await self.client(), bucket, state_key)
        if not exists:
            self._no_state[meta.snapshot_id] = time.monotonic()
        state = UploadState.parse(recorded, meta)
        if state is None:
            return None
        sink = await self._sink(meta, journal, state)
        return sink, sink.claimed()

    async def has_partial(self, snapshot_id: str) -> bool:
        if not self.multipart:
            return await super().has_partial(snapshot_id)
        if self._known_absent(snapshot_id):
            return False
        # one HEAD (s3fs's ``exists`` would list the "folder" too when the object is missing)
        bucket, key = split_bucket_key(self.store.journal_path(snapshot_id))
        s3 = await self.client()
        try:
            await s3._call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            self._no_state[snapshot_id] = time.monotonic()
            return False
        return True

    def _known_absent(self, snapshot_id: str, *, forget: bool = False) -> bool:
        """Whether this store saw no S3 upload state for `snapshot_id` a moment ago."""
        table = self._no_state
        seen = table.pop(snapshot_id, None) if forget else table.get(snapshot_id)
        return seen is not None and time.monotonic() - seen < ABSENT_FOR

    async def finish_sink(self, meta: SnapshotMeta, sink: SnapshotSink) -> None:
        if isinstance(sink, (MultipartSink, S3DeltaSink)) and meta.checksum is not None:
            sink.whole_crc = parse_checksum(meta.checksum)
        await sink.finish()
        if isinstance(sink, S3DeltaSink) and sink.tree is not None:
            self._tree_heads[sink.path] = sink.tree.head  # (for open_finished, next)

    async def open_finished(self, path: str, size: int | None) -> IO[bytes]:
        """A tree built from a delta has no packed object: its header and table, as received
        (what the table checks read; its files are in the bucket already)."""
        head = self._tree_heads.pop(path, None)
        if head is not None:
            return io.BytesIO(head)
        return await super().open_finished(path, size)

    async def install(self, snapshot: Snapshot, sink: SnapshotSink, final: str) -> None:
        """A tree built from a delta (`S3DeltaSink.tree`): its manifest written, nothing else."""
        if not isinstance(sink, S3DeltaSink) or sink.tree is None:
            await super().install(snapshot, sink, final)
            return
        from fstransport.delta.tree_s3 import commit_s3_tree

        try:
            await commit_s3_tree(self, snapshot.meta, sink.tree)
        finally:
            snapshot.data.close()

    async def install_file(self, sink: SnapshotSink, final: str) -> None:
        if not isinstance(sink, (MultipartSink, S3DeltaSink)):  # the upload put the object there
            await super().install_file(sink, final)

    async def drop_replaced_file(self, final: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self.call("rm_file", final)  # one key: never the tree under it

    # -- discarding ---------------------------------------------------------------------------

    async def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self.call("rm_file", path)

    async def discard(self, snapshot_id: str) -> None:
        await super().discard(snapshot_id)
        await self._abort_uploads(self.store.path(snapshot_id))
        packed = self.store.folder(PACKED_DIR, snapshot_id)
        await self._abort_uploads(packed)
        with storage_errors(packed, "remove"):
            await self.remove(packed)

    async def discard_stale(self, snapshot_id: str) -> None:
        """Unlike `discard`, this does not list the bucket's uploads: it aborts the upload the
        recorded state names (if any); uploads that left no record are `cleanup`'s job."""
        if not self.multipart:
            await self.discard(snapshot_id)
            return
        if self._known_absent(snapshot_id, forget=True):
            return  # resume() or has_partial() just found no state: nothing to discard
        bucket, state_key = split_bucket_key(self.store.journal_path(snapshot_id))
        s3 = await self.client()
        with storage_errors(f"s3://{bucket}/{state_key}", "discard"):
            try:
                response = await s3._call_s3("get_object", Bucket=bucket, Key=state_key)
                state = json.loads(await response["Body"].read())
            except (FileNotFoundError, ValueError):
                return
            upload_id = state.get("upload_id") if isinstance(state, dict) else None
            if upload_id:
                _, key = split_bucket_key(self.store.path(snapshot_id))
                with contextlib.suppress(FileNotFoundError):
                    await s3._call_s3(
                        "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=str(upload_id)
                    )
            await s3._call_s3("delete_object", Bucket=bucket, Key=state_key)

    async def _abort_uploads(self, path: str) -> None:
        """Abort every incomplete multipart upload to `path`, this process's or an earlier one's."""
        bucket, key = split_bucket_key(path)
        s3 = await self.client()
        with storage_errors(f"s3://{path}", "abort uploads"):
            try:
                found = [
                    u["UploadId"]
                    async for u in list_uploads(s3, bucket, key)
                    if u.get("Key") == key
                ]
            except FileNotFoundError:  # no bucket, so no uploads
                return
            for upload_id in found:
                await self._abort_upload(s3, bucket, key, upload_id)

    @staticmethod
    async def _abort_upload(s3: Any, bucket: str, key: str, upload_id: str) -> None:
        await s3._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)

    # -- clean-up -----------------------------------------------------------------------------

    async def cleanup(
        self, folders: Sequence[str], cutoff: float, active: set[str], dry_run: bool
    ) -> list[str]:
        """The store's folders, then the incomplete multipart uploads under the root."""
        removed = await super().cleanup(folders, cutoff, active, dry_run)
        bucket, _, prefix = self.store.root.lstrip("/").partition("/")
        prefix = f"{prefix}/" if prefix else ""
        s3 = await self.client()
        with storage_errors(f"s3://{self.store.root}", "list uploads"):
            uploads = [upload async for upload in list_uploads(s3, bucket, prefix)]
        for upload in uploads:
            key = str(upload.get("Key", ""))
            name = key[len(prefix) :]
            if name.startswith(f"{PACKED_DIR}/"):  # a directory snapshot's packed stream
                name = name[len(PACKED_DIR) + 1 :]
            elif name.count("/") >= 2 and name.split("/")[1].startswith("g-"):
                name = name.split("/")[0]  # a large file of a tree's generation (a crashed install)
            started = upload.get("Initiated")
            if "/" in name or name in active:
                continue
            if started is not None and started.timestamp() >= cutoff:
                continue
            if not dry_run:
                with storage_errors(f"s3://{bucket}/{key}", "abort upload"):
                    await self._abort_upload(s3, bucket, key, upload["UploadId"])
            removed.append(f"s3://{bucket}/{key} (upload {upload['UploadId']})")
        return removed

    # -- sources ------------------------------------------------------------------------------

    @classmethod
    async def open_url(
        cls, fs_class: type, url: str, read: ReadSettings, options: dict[str, Any]
    ) -> ChunkSource | None:
        return await open_s3_source(
            url,
            options,
            streams=read.read_streams,
            part_size=read.read_part_size,
            threshold=read.ranged_read_threshold,
            retry=read.retry,
        )


async def open_s3_source(
    url: str,
    storage_options: dict[str, Any],
    *,
    streams: int = DEFAULT_READ_STREAMS,
    part_size: int = DEFAULT_READ_PART_SIZE,
    threshold: int = DEFAULT_RANGED_THRESHOLD,
    retry: RetryPolicy | None = None,
) -> S3StreamSource | S3RangedSource:
    """The S3 object at `url`, opened for reading: with `streams` ranged GETs of `part_size`
    bytes when it holds at least `threshold` bytes and `streams` > 1, else with one GET; a
    failed read is retried by `retry` (None: the source's default)."""
    check_read_options(streams, part_size, threshold)
    fs, info = await s3_object_info(url, storage_options)
    bucket, key = split_bucket_key(fs._strip_protocol(url))
    size = int(info["size"])
    etag = info.get("ETag") or None
    source: S3StreamSource | S3RangedSource
    if streams > 1 and size >= threshold and size > part_size:
        source = S3RangedSource(
            fs, bucket, key, size, url, etag=etag, streams=streams, part_size=part_size
        )
    else:
        source = S3StreamSource(fs, bucket, key, size, url, etag)
    if retry is not None:
        source.retry = retry
    return source
