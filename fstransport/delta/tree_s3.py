"""Directory-snapshot delta onto S3 (I/O): a tree installed in a bucket as a delta base, and the
new tree built in the bucket from it, without a packed object and without downloading the base.

**The base** is the tree the manifest ``ROOT/<id>/fstransport-tree.json`` names (the same id,
else the one the store installed last): its generation's objects are listed once, and each
file is pinned by the ETag the listing gave it.  A file whose digest the manifest records
for that ETag and size (``"digests"``, written at install: `fstransport.delta.tree_s3_digest`)
is identified from the record, without a read; every other read of a base file for the offer
(its identity, its extents) is a GET with ``If-Match`` on that ETag.  A file missing from the
listing or of another size means no base.

**The new tree** is written as a new generation, file by file (`build_s3_tree`, in
`fstransport.delta.tree_s3_build`), from the
recipe of the packed stream, whose sent ranges wait in the stream's spool (`S3DeltaSink`):

- a file that is one whole base file (unchanged, renamed or moved) is one ``CopyObject``
  inside the bucket (``x-amz-copy-source-if-match``; the answer's ETag compared too, for
  servers that ignore the condition), nothing uploaded;
- any other file is planned like a file delta (`plan_parts`): its unchanged ranges of at
  least 5 MiB are ``UploadPartCopy`` parts of the base files, the rest is uploaded (one PUT
  when it is one part), short unchanged pieces read from the base with pinned ranged GETs.

Each file's CRC32C is combined from the bytes uploaded (the spooled sent ranges, as they went
up) and the base map's CRCs of the copied ranges, and must be the table's before its upload is
completed; the whole stream's CRC32C (header and table as received, then the files) must be
the snapshot's; and every base file used is listed again and must show the ETag and size it
was pinned at.  Only then may the manifest be written (`commit_s3_tree`, at install).  Any
failure or cancel aborts the file uploads in flight and removes the new generation: no
manifest, no multipart upload left, nothing a reader can see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fstransport.checksum import parse_checksum
from fstransport.delta.tree_bases import PIECE
from fstransport.errors import ConfigurationError, InvalidRequest, SourceChanged
from fstransport.messages import SnapshotMeta
from fstransport.options import RetryPolicy
from fstransport.protocol.delta_tags import DIGEST_SIZE
from fstransport.protocol.delta_tree_ident import PIECE as WHOLE
from fstransport.storage.backends.s3.client import (
    split_bucket_key,
)
from fstransport.storage.backends.s3.copy import S3Object
from fstransport.storage.backends.s3.copy_object import plain_etag
from fstransport.storage.backends.s3.pinned import PinnedObject
from fstransport.storage.base import BaseTree
from fstransport.tree.install import DIGEST_PREFIX, DIGESTS, MANIFEST_NAME, tree_manifest
from fstransport.tree.table import (
    MAX_TABLE_SIZE,
    check_tree_path,
)

if TYPE_CHECKING:
    from fstransport.delta.tree_s3_build import S3TreeBuild

__all__ = ["commit_s3_tree", "list_objects", "remove_prefix", "s3_tree"]

log = logging.getLogger("fstransport.delta")

WAIT_FOR_READ = 600.0
"""Seconds a worker thread waits for one pinned GET of a base file before giving up."""


# -- the base -----------------------------------------------------------------------------------


async def list_objects(fs: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """``key -> (size, ETag)`` of every object under `prefix`."""
    out: dict[str, tuple[int, str]] = {}
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        answer = await fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **extra)
        for item in answer.get("Contents") or ():
            out[str(item["Key"])] = (int(item["Size"]), str(item.get("ETag") or ""))
        token = answer.get("NextContinuationToken")
        if not answer.get("IsTruncated") or not token:
            return out


def _untimed(answer: float, body: float) -> None:
    """(`PinnedObject.fetch` reports each GET's time; nothing keeps it here.)"""


class _PinnedReader:
    """A `TreeReader` of pinned base files, for a worker thread: each piece is a GET with
    ``If-Match`` run on `loop`, the next one asked for while the last is hashed; read in the
    order `files` (those an offer reads: the tree's files without a usable recorded digest), the
    first pieces of the next files are asked for too (up to `AHEAD` bytes), so that a tree of
    small files is not read one round trip per file."""

    AHEAD = 32 * 1024 * 1024

    def __init__(
        self,
        fs: Any,
        files: list[tuple[str, int]],
        pins: dict[str, S3Object],
        loop: asyncio.AbstractEventLoop,
        retry: RetryPolicy,
    ) -> None:
        self.fs, self.files, self.pins, self.loop, self.retry = fs, files, pins, loop, retry
        self.number = {path: n for n, (path, _) in enumerate(files)}
        self.ahead: dict[int, Any] = {}  # file number -> its first piece, asked for
        self.last = -1

    def _fetch(self, path: str, at: int) -> Any:
        pin = self.pins[path]
        url = f"s3://{pin.bucket}/{pin.key}"
        got = PinnedObject(self.fs, pin.bucket, pin.key, pin.size, url, pin.etag)
        job = got.fetch(at, min(at + PIECE, pin.size), self.retry, _untimed)
        return asyncio.run_coroutine_threadsafe(job, self.loop)

    def _read_ahead(self, number: int) -> None:
        if number != self.last + 1:  # (not in order: a sender's choice of files)
            return
        budget = self.AHEAD - sum(min(self.files[n][1], PIECE) for n in self.ahead)
        for later in range(number + 1, len(self.files)):
            path, size = self.files[later]
            if later in self.ahead:
                continue
            if min(size, PIECE) > budget:
                break
            self.ahead[later] = self._fetch(path, 0)
            budget -= min(size, PIECE)

    def drop(self) -> None:
        """Forget the pieces asked for ahead."""
        for pending in self.ahead.values():
            pending.cancel()
        self.ahead.clear()

    def __call__(self, path: str, size: int) -> Iterator[bytes]:
        pin, number = self.pins.get(path), self.number.get(path)
        if pin is None or pin.size != size:
            raise SourceChanged(path, "map", ValueError("not a file of the base"))
        pending = (self.ahead.pop(number, None) if number is not None else None) or self._fetch(
            path, 0
        )
        if number is not None:  # (a file outside the order: no read-ahead)
            self._read_ahead(number)
            self.last = number
        at = 0
        try:
            while pending is not None:
                data = pending.result(timeout=WAIT_FOR_READ)
                at += len(data)
                pending = self._fetch(path, at) if at < size else None
                yield bytes(data)
        except BaseException:
            self.drop()
            raise
        finally:
            if pending is not None:
                pending.cancel()


def _manifest_files(raw: bytes) -> tuple[str, list[tuple[str, int]], dict[str, Any]] | None:
    """The generation and the non-empty files ``(path, size)`` a manifest names, and the
    manifest itself; None when it is not a manifest as `tree_manifest` writes them (a bucket is
    anyone's to write)."""
    try:
        manifest = json.loads(raw)
        generation, listed = manifest["generation"], manifest["files"]
        if not isinstance(generation, str) or "/" in generation or not isinstance(listed, list):
            return None
        check_tree_path(generation)
        files = [(check_tree_path(entry[0]), entry[1]) for entry in listed]
    except (ValueError, TypeError, LookupError, InvalidRequest):
        return None
    if not all(type(size) is int and size >= 0 for _, size in files):
        return None
    return generation, [(path, size) for path, size in files if size], manifest


def _recorded(manifest: dict[str, Any]) -> dict[str, tuple[int, str, int, bytes]]:
    """``path -> (size, ETag, crc32c, digest)`` of the files whose digest the manifest records
    (``"digests"``, beside its ``"files"`` and their CRC32Cs); an entry of another shape is
    left out, and a manifest without digests (an older one) records none."""
    crcs: dict[str, int] = {}
    for entry in manifest["files"]:
        with contextlib.suppress(ValueError, TypeError, LookupError, ConfigurationError):
            crcs[entry[0]] = parse_checksum(entry[2])
    out: dict[str, tuple[int, str, int, bytes]] = {}
    records = manifest.get(DIGESTS)
    for entry in records if isinstance(records, list) else ():
        if not (isinstance(entry, list) and len(entry) == 4):
            continue
        path, size, etag, text = entry
        if not (isinstance(path, str) and type(size) is int and isinstance(etag, str)):
            continue
        if not isinstance(text, str) or not text.startswith(DIGEST_PREFIX):
            continue
        try:
            digest = bytes.fromhex(text[len(DIGEST_PREFIX) :])
        except ValueError:
            continue
        if len(digest) == DIGEST_SIZE and etag and path in crcs:
            out[path] = (size, etag, crcs[path], digest)
    return out


async def s3_tree(snapshot_id: str, fs: Any, tree_path: str, retry: RetryPolicy) -> BaseTree | None:
    """The tree installed at ``bucket/key`` `tree_path` as a base tree (its files pinned by the
    ETags a listing gives them; `BaseTree.pin` maps each path to its `S3Object`), read with
    `fs` (an ``S3FileSystem(asynchronous=True)``); None without a complete tree there."""
    bucket, key = split_bucket_key(tree_path)
    try:
        answer = await fs._call_s3("get_object", Bucket=bucket, Key=f"{key}/{MANIFEST_NAME}")
    except FileNotFoundError:
        return None
    async with answer["Body"] as body:
        if int(answer.get("ContentLength") or 0) > 2 * MAX_TABLE_SIZE:
            return None  # (no manifest of ours is that long)
        found = _manifest_files(await body.read())
    if found is None:
        log.info("tree %s: its manifest is not one of ours: no base", tree_path)
        return None
    generation, listed, manifest = found
    recorded = _recorded(manifest)
    prefix = f"{key}/{generation}/"
    objects = await list_objects(fs, bucket, prefix)
    files, pins, known = [], {}, {}
    for path, size in listed:
        held = objects.get(prefix + path)
        if held is None or held[0] != size or not held[1]:
            log.info("tree %s: %r is not in its generation as listed: no base", tree_path, path)
            return None
        files.append((path, size))
        pins[path] = S3Object(bucket, prefix + path, size, held[1], None)
        record = recorded.get(path)  # used only for the version it was recorded for
        if record is not None and (size, plain_etag(held[1])) == record[:2] and size <= WHOLE:
            known[path] = record[2:]
    unread = [(path, size) for path, size in files if path not in known]
    read = _PinnedReader(fs, unread, pins, asyncio.get_running_loop(), retry)
    root = f"{bucket}/{prefix.rstrip('/')}"
    return BaseTree(snapshot_id, tuple(files), root, read, pins, known)


async def remove_prefix(fs: Any, bucket: str, prefix: str) -> None:
    """Delete every object under `prefix` (a generation that will never be named)."""
    keys = list(await list_objects(fs, bucket, f"{prefix}/"))
    for start in range(0, len(keys), 1000):
        batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
        await fs._call_s3("delete_objects", Bucket=bucket, Delete=batch)


async def commit_s3_tree(backend: Any, meta: SnapshotMeta, build: S3TreeBuild) -> None:
    """Write `build`'s manifest (the tree becomes visible), then remove what it replaced; on a
    failure before the manifest, remove the new generation."""
    from fstransport.storage.backends.objects import _remove_replaced, manifest_names

    manifest = tree_manifest(meta, build.table, build.generation, build.digests)
    try:
        await backend.call("pipe_file", f"{build.final}/{MANIFEST_NAME}", manifest)
    except BaseException as exc:
        bucket, key = split_bucket_key(build.final)
        names: bool | None = None  # (unknown: the generation stays; unreferenced, it is garbage)
        with contextlib.suppress(Exception):
            names = await asyncio.shield(manifest_names(backend, build.final, build.generation))
        if names is False:
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    remove_prefix(await backend.client(), bucket, f"{key}/{build.generation}")
                )
        if not (names and isinstance(exc, Exception)):
            raise
    build.committed = True
    backend.forget_listings(f"{build.final}/{MANIFEST_NAME}")
    await _remove_replaced(backend, build.final, build.generation)
