"""The staging bucket of a relay: immutable objects written once, read back by range.

A staging URL (any fsspec URL; S3 is the case that matters) holds one *area* per sender, vote
and snapshot::

    <staging>/<snapshot_id>/v<term>-<node>-<committed>/<nonce>/chunks/<offset>-<length>-<crc>
    <staging>/<snapshot_id>/v<term>-<node>-<committed>/<nonce>/manifest.json

`nonce` is fresh for every area a sender opens, so two senders never write the same key; on S3
every object is also written with ``If-None-Match: *`` (a conditional PUT: moto and Ceph RGW
honour it), so even a key that somebody else wrote is never replaced.  The manifest is written
last and is the commit marker: a receiver installs nothing from an area without one.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from fstransport.errors import ChecksumMismatch, StorageError
from fstransport.messages import Buffer, StagedChunk
from fstransport.storage._errors import storage_errors

__all__ = [
    "MANIFEST_NAME",
    "MAX_AREA_LENGTH",
    "StagingStore",
    "chunk_name",
    "cleanup_staging",
    "is_chunk_name",
    "trailer_of",
]

MANIFEST_NAME = "manifest.json"
MAX_AREA_LENGTH = 768
"""Characters a staging area's URL may have: a reference stays well under 1 KiB."""
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
"""Bytes of manifest a receiver reads at most (a hostile bucket cannot make it read more)."""
FETCH_PART = 8 << 20
"""Bytes per ranged GET when a staged object is fetched."""
FETCH_STREAMS = 4
"""Ranged GETs of one staged object at once."""

_CHUNK_NAME = re.compile(
    r"[0-9a-f]{16}-[0-9a-f]{1,16}-[0-9a-f]{8}(-t(?P<trailer>[0-9a-f]{64}))?(-r[0-9]{1,4})?"
)


def chunk_name(
    offset: int, length: int, crc: int, generation: int = 0, trailer: str | None = None
) -> str:
    """The object name of a staged chunk: its offset, length and CRC32C (hex), the SHA-256
    (hex) of the block map staged after its bytes when there is one (its *trailer*,
    `fstransport.protocol.relay_trailer`), and a generation when it had to be staged again
    (the earlier object was damaged)."""
    with_map = f"-t{trailer}" if trailer else ""
    suffix = f"-r{generation}" if generation else ""
    return f"{offset:016x}-{length:x}-{crc:08x}{with_map}{suffix}"


def trailer_of(name: str) -> str | None:
    """The SHA-256 (hex) of the trailer the staged chunk `name` carries; None: none."""
    found = _CHUNK_NAME.fullmatch(name)
    return None if found is None else found.group("trailer")


def is_chunk_name(name: object) -> bool:
    """Whether `name` is a well-formed staged chunk name (and nothing that leaves its area)."""
    return isinstance(name, str) and _CHUNK_NAME.fullmatch(name) is not None


def _modified(entry: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
    return None


class StagingStore:
    """The objects under one staging URL's filesystem, opened with `storage_options`.

    S3 goes through s3fs's asynchronous client on the running loop (conditional PUTs, parallel
    ranged GETs); any other fsspec filesystem through its synchronous API in worker threads.
    Backend errors come out as `StorageError`.  Close with `close`.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec.core

        protocol, _ = fsspec.core.split_protocol(url)
        self.protocol = protocol or "file"
        self.storage_options = dict(storage_options or {})
        self.s3 = self.protocol in ("s3", "s3a")
        self._fs: Any = None
        self._lock = asyncio.Lock()
        self.puts = 0
        """Objects this store wrote (chunks and manifests)."""

    async def fs(self) -> Any:
        if self._fs is None:
            async with self._lock:
                if self._fs is None:
                    if self.s3:
                        from fstransport.storage.backends.s3 import open_s3

                        self._fs = await open_s3(self.storage_options)
                    else:
                        import fsspec

                        with storage_errors(f"{self.protocol}://", "open"):
                            self._fs = fsspec.filesystem(self.protocol, **self.storage_options)
        return self._fs

    async def path(self, url: str) -> str:
        fs = await self.fs()
        return str(fs._strip_protocol(url)).rstrip("/")

    async def url(self, path: str) -> str:
        fs = await self.fs()
        return str(fs.unstrip_protocol(path))

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fs = await self.fs()
        if self.s3:
            return await getattr(fs, "_" + name)(*args, **kwargs)
        return await asyncio.to_thread(getattr(fs, name), *args, **kwargs)

    async def put_once(self, url: str, data: Buffer, crc: int, trailer: bytes = b"") -> bool:
        """Write `data` (whose CRC32C is `crc`), followed by `trailer` (a chunk's block map),
        to `url` unless an object is there already; True when this call wrote it.  One PUT on
        S3 (``If-None-Match: *``, never multipart); its ``ChecksumCRC32C`` covers the whole
        object, its ``fstransport-crc32c`` metadata the chunk's bytes."""
        path = await self.path(url)
        whole = crc
        if trailer:
            from fstransport.checksum import chunk_crc, combine

            whole = combine(crc, chunk_crc(trailer), len(trailer))
            data = b"".join((data, trailer))  # (one copy of the chunk: one body, one PUT)
        with storage_errors(url, "stage"):
            if self.s3:
                from fstransport.storage.backends.s3.client import (
                    crc32c_header,
                    precondition_failed,
                    split_bucket_key,
                )
                from fstransport.storage.backends.s3.upload import PartBody

                fs = await self.fs()
                bucket, key = split_bucket_key(path)
                try:
                    await fs._call_s3(
                        "put_object",
                        Bucket=bucket,
                        Key=key,
                        Body=PartBody(data),  # sent from the chunk's buffer: no copy
                        IfNoneMatch="*",
                        ChecksumCRC32C=crc32c_header(whole),
                        Metadata={"fstransport-crc32c": f"{crc:08x}"},
                    )
                except Exception as exc:
                    if precondition_failed(exc):
                        return False  # written before, by us or by somebody else: never replaced
                    raise
                self.puts += 1
                return True
            if await self._call("exists", path):
                return False
            parent = path.rsplit("/", 1)[0]
            await self._call("makedirs", parent, exist_ok=True)
            await self._call("pipe_file", path, bytes(data))
            self.puts += 1
            return True

    async def fetch(self, ref: StagedChunk) -> Buffer:
        """The bytes of the staged object `ref`, fetched by ranged GETs (several at once) and
        checked against its CRC32C: `ChecksumMismatch` when they differ (the object was
        altered or cut short), `StorageError` when it cannot be read."""
        from fstransport.checksum import chunk_crc

        url = ref.url
        path = await self.path(url)
        if ref.length <= FETCH_PART:  # one GET: its answer is the chunk, not copied again
            whole: Buffer = b""  # (no GET for 0 bytes: RGW refuses that range)
            if ref.length:
                with storage_errors(url, "fetch"):
                    whole = await self._call("cat_file", path, start=0, end=ref.length)
            self._check_fetched(
                ref, len(whole), chunk_crc(whole) if len(whole) == ref.length else None
            )
            return whole
        buffer = bytearray(ref.length)
        view = memoryview(buffer)
        gate = asyncio.Semaphore(FETCH_STREAMS)
        got = [0]

        async def part(start: int) -> None:
            end = min(ref.length, start + FETCH_PART)
            async with gate:
                with storage_errors(url, "fetch"):
                    piece = await self._call("cat_file", path, start=start, end=end)
            view[start : start + len(piece)] = piece[: end - start]
            got[0] += min(len(piece), end - start)

        await asyncio.gather(*(part(s) for s in range(0, ref.length, FETCH_PART)))
        self._check_fetched(ref, got[0], chunk_crc(buffer) if got[0] == ref.length else None)
        return buffer

    async def fetch_range(self, url: str, start: int, end: int) -> Buffer:
        """Bytes ``[start, end)`` of the object `url` (fewer at its end), with one ranged GET;
        `StorageError` (verb ``fetch``) when it cannot be read."""
        path = await self.path(url)
        with storage_errors(url, "fetch"):
            piece: Buffer = await self._call("cat_file", path, start=start, end=end)
        return piece

    @staticmethod
    def _check_fetched(ref: StagedChunk, got: int, crc: int | None) -> None:
        """`ChecksumMismatch` unless the `got` bytes fetched (whose CRC32C is `crc`; None: cut
        short) are what `ref` names."""
        if crc != ref.crc32c:
            actual = "short object" if crc is None else f"{crc:08x}"
            raise ChecksumMismatch(
                f"staged object {ref.url} ({got} of {ref.length} bytes)",
                f"{ref.crc32c:08x}",
                actual,
            )

    async def write_json(self, url: str, document: dict[str, Any]) -> bool:
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")
        from fstransport.checksum import chunk_crc

        return await self.put_once(url, body, chunk_crc(body))

    async def read_json(self, url: str) -> dict[str, Any] | None:
        """The JSON object at `url`; None when there is none.  `StorageError` when it cannot
        be read or is not a JSON object of at most `MAX_MANIFEST_BYTES`."""
        path = await self.path(url)
        try:
            with storage_errors(url, "read"):
                body = await self._call("cat_file", path, start=0, end=MAX_MANIFEST_BYTES + 1)
        except StorageError as exc:
            if isinstance(exc.cause, FileNotFoundError):
                return None
            raise
        if len(body) > MAX_MANIFEST_BYTES:
            raise StorageError(url, "read", ValueError("manifest is too large"))
        try:
            document = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise StorageError(url, "read", ValueError(f"not JSON: {exc}")) from exc
        if not isinstance(document, dict):
            raise StorageError(url, "read", ValueError("not a JSON object"))
        return document

    async def remove(self, urls: Sequence[str]) -> None:
        """Delete `urls` (those already gone are fine)."""
        for url in urls:
            path = await self.path(url)
            try:
                with storage_errors(url, "remove"):
                    await self._call("rm_file", path)
            except StorageError as exc:
                if not isinstance(exc.cause, FileNotFoundError):
                    raise
            if not self.s3:
                fs = await self.fs()
                fs.invalidate_cache(path.rsplit("/", 1)[0])

    async def prune(self, url: str, root: str) -> None:
        """Remove the folder `url` and the folders above it up to `root` (not included) while
        they are empty (S3 has no folders: nothing to do)."""
        if self.s3:
            return
        path, stop = await self.path(url), await self.path(root)
        while path.startswith(stop + "/"):
            try:
                await self._call("rmdir", path)
            except FileNotFoundError:
                pass
            except OSError:
                return  # not empty: somebody else's area, or new objects
            path = path.rsplit("/", 1)[0]

    async def find(self, url: str) -> dict[str, dict[str, Any]]:
        """Every object under `url` (path → listing entry); empty when there is none."""
        path = await self.path(url)
        fs = await self.fs()
        fs.invalidate_cache(path)
        with storage_errors(url, "list"):
            try:
                found = await self._call("find", path, detail=True)
            except FileNotFoundError:
                return {}
        return {str(k): v for k, v in dict(found).items() if v.get("type", "file") == "file"}

    async def close(self) -> None:
        if self._fs is not None and self.s3:
            from fstransport.storage._aio import close_async_filesystem

            fs, self._fs = self._fs, None
            await close_async_filesystem(fs)


def manifest_url(area: str) -> str:
    return f"{area}/{MANIFEST_NAME}"


def _expired(manifest: dict[str, Any], now: float, older_than: float) -> bool:
    expires = manifest.get("expires")
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        return expires <= now
    created = manifest.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return created + older_than <= now
    return False


async def cleanup_staging(
    staging_url: str,
    older_than: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
    **storage_options: Any,
) -> list[str]:
    """Remove staging areas under `staging_url` that nobody needs any more; return their URLs.

    An area goes when its manifest's TTL (``expires``) has passed, when its manifest names no
    TTL and was written more than `older_than` seconds ago (its sender died before the
    receivers acknowledged), or when it has no manifest and nothing in it was written for
    `older_than` seconds (a sender died while staging).  An area whose manifest is live is
    never touched, whatever the age of its objects: receivers may still fetch them.
    """
    if older_than < 0:
        from fstransport.errors import ConfigurationError

        raise ConfigurationError(f"older_than must not be negative, got {older_than}")
    now = time.time() if now is None else now
    store = StagingStore(staging_url, storage_options)
    removed: list[str] = []
    try:
        root = await store.path(staging_url)
        objects = await store.find(staging_url)
        areas: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for path, entry in objects.items():
            relative = path[len(root) + 1 :].split("/")
            if len(relative) < 4:
                continue  # not ours
            area = "/".join([root, *relative[:3]])
            areas.setdefault(area, []).append((path, entry))
        for area_path, entries in sorted(areas.items()):
            area = await store.url(area_path)
            manifest = await store.read_json(manifest_url(area))
            if manifest is not None:
                if not _expired(manifest, now, older_than):
                    continue
            else:
                times = [_modified(entry) for _, entry in entries]
                newest = max((t for t in times if t is not None), default=None)
                if newest is not None and newest + older_than > now:
                    continue
            # the manifest first: an area is never left with a manifest and missing chunks
            urls = [manifest_url(area)] if manifest is not None else []
            urls += [await store.url(p) for p, _ in entries if not p.endswith("/" + MANIFEST_NAME)]
            if not dry_run:
                await store.remove(urls)
                await store.prune(f"{area}/chunks", staging_url)
            removed.append(area)
    finally:
        await store.close()
    return removed
