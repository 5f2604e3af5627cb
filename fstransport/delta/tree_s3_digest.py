"""The digests a tree installed in an S3 bucket records in its manifest (I/O): each file's
BLAKE3 digest, known at install without reading the file back, and the ETag it was installed
with, so that a later offer of that tree as a delta base derives the file's identity from the
record instead of a download (`fstransport.delta.tree_s3`; ``docs/delta.md``, Directory
snapshots onto S3).

Where a digest comes from: a file copied whole from the base has the base file's digest (read
or recorded at the offer, for the version the copy is pinned to); an uploaded file is hashed
from the bytes that go up, its parts fed in order (`PartDigest`); a file with parts copied by
``UploadPartCopy`` gets none (its bytes never pass through here) and is read at its next offer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from fstransport.messages import Buffer
from fstransport.protocol.delta_tags import EXTENT_HASH, extent_digest
from fstransport.storage.backends.s3.copy_object import plain_etag

__all__ = ["PartDigest", "answer_etag", "digest_of", "fill_etags", "with_etags"]

log = logging.getLogger("fstransport.delta")

_IN_THREAD = 1024 * 1024
"""Bytes above which a digest is computed in a worker thread, off the event loop."""


async def digest_of(data: Buffer) -> bytes:
    """The BLAKE3 digest of `data` (a worker thread hashes a large one)."""
    if memoryview(data).nbytes > _IN_THREAD:
        return await asyncio.to_thread(extent_digest, data)
    return extent_digest(data)


class PartDigest:
    """A file's BLAKE3 digest fed with its uploaded parts in order (1, 2, ...), whatever order
    they are ready in: part *n* waits for part *n - 1*'s turn.  The parts take their upload
    slots in order, so a waiting part only ever waits for parts that hold one."""

    def __init__(self) -> None:
        self._hasher = EXTENT_HASH()
        self._next = 1
        self._turn = asyncio.Condition()

    async def feed(self, number: int, data: Buffer) -> None:
        async with self._turn:
            await self._turn.wait_for(lambda: self._next == number)
            if memoryview(data).nbytes > _IN_THREAD:
                await asyncio.to_thread(self._hasher.update, data)
            else:
                self._hasher.update(data)
            self._next += 1
            self._turn.notify_all()

    def digest(self, parts: int) -> bytes:
        """The digest, once all `parts` parts were fed."""
        if self._next != parts + 1:
            raise ValueError(f"{self._next - 1} of {parts} parts hashed")
        return bytes(self._hasher.digest())


async def fill_etags(
    fs: Any, bucket: str, prefix: str, digests: Mapping[str, tuple[str, bytes]]
) -> dict[str, tuple[str, bytes]]:
    """`digests` whose ETags the answers did not give (Ceph RGW 16 answers a multipart
    completion with none) taken from one listing of the new generation `prefix`; those still
    without one, or all of them if the listing fails, are left out."""
    from fstransport.delta.tree_s3 import list_objects

    if all(etag for etag, _ in digests.values()):
        return dict(digests)
    try:
        listed = await list_objects(fs, bucket, f"{prefix}/")
    except Exception as exc:  # (no record: those files are read at their next offer)
        log.info("s3://%s/%s: not listed (%s): some digests are not recorded", bucket, prefix, exc)
        listed = {}
    etags = {key[len(prefix) + 1 :]: plain_etag(etag) for key, (_, etag) in listed.items()}
    return with_etags(digests, etags)


def with_etags(
    digests: Mapping[str, tuple[str, bytes]], etags: Mapping[str, str]
) -> dict[str, tuple[str, bytes]]:
    """`digests` (``path -> (ETag, digest)``) with each empty ETag taken from `etags` (a listing
    made after the writes); a file with none is left out (no record: read at its next offer)."""
    out = {}
    for path, (etag, digest) in digests.items():
        etag = etag or etags.get(path, "")
        if etag:
            out[path] = (etag, digest)
    return out


def answer_etag(answer: Any) -> str:
    """The unquoted ETag of a PUT, a multipart completion or a copy's answer ("" if none)."""
    if not isinstance(answer, dict):
        return ""
    copied = answer.get("CopyObjectResult") or {}
    return plain_etag(answer.get("ETag") or copied.get("ETag") or "")
