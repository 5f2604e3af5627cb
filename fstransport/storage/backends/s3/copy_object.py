"""A server-side copy in one ``CopyObject`` request, and the checks made on its answer.

``CopyObject`` is atomic: the target appears whole when the server has copied the source, or
not at all; there is no upload to abort.  It is also the cheapest copy some servers make (Ceph
RGW copies within its pool by reference: 0.07 CPU-s for 384 MiB, against 2.1 s for the same
bytes copied with ``UploadPartCopy``).  But the target appears *before* anything here can look
at it, so `ship` uses it only where the user asked for a server-side copy (``server_side=True``)
and the object is at most `copy_cutoff` bytes (S3 allows 5 GiB); it is checked right after:

- the copy's CRC32C, where the server reports one (AWS and moto compute it for a copy asked
  with ``ChecksumAlgorithm=CRC32C``; Ceph RGW 16 ignores the request), against the source's
  stored CRC32C or the caller's `checksum`;
- the copy's ETag against the one the source had when it was looked at.  The copy names that
  ETag (``x-amz-copy-source-if-match``), but moto and Ceph RGW 16 ignore the condition, so
  the answer's ETag is compared as well: a server that keeps MD5 ETags gives the copy the
  source's ETag, so another ETag means other bytes were copied (`SourceChanged`).  Where an
  ETag is no MD5 of the bytes (SSE-KMS, SSE-C) or a multipart source's ``-N`` ETag was
  replaced by the copy's MD5 (moto does that), the ETags prove nothing either way, and the
  source is asked for its ETag once more instead.

A copy these checks refute is deleted before the error is raised.  A copy cancelled while its
request is with the server waits (up to `settle_timeout` seconds) for the server's answer and
deletes the copy if one was made, so that a cancelled `ship` leaves no target behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

from fstransport.errors import SourceChanged
from fstransport.storage.backends.s3.upload import etag_of
from fstransport.tasks import retrieve_exception

if TYPE_CHECKING:
    from fstransport.storage.backends.s3.copy import CopyResult, S3Object, _Copy

__all__ = ["copy_whole", "plain_etag", "same_version"]

log = logging.getLogger("fstransport.s3")

_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_OPAQUE_ENCRYPTION = ("aws:kms", "aws:kms:dsse", "SSE-C")
"""Encryptions under which an object's ETag is no MD5 of its bytes."""


def plain_etag(value: object) -> str:
    """An ETag without its quotes (moto quotes the ETag of a copy's answer, Ceph RGW does not)."""
    return etag_of(value).lower()


def encryption_of(answer: dict[str, Any]) -> str | None:
    """The server-side encryption a HEAD or copy answer names, ``"SSE-C"`` for a customer key."""
    if answer.get("SSECustomerAlgorithm"):
        return "SSE-C"
    value = answer.get("ServerSideEncryption")
    return str(value) if value else None


def same_version(source: S3Object, copy_etag: object, copy_encryption: str | None) -> bool | None:
    """Whether a copy whose answer named `copy_etag` holds the bytes `source` described: True
    (the ETags agree), False (both are MD5s of unencrypted bytes, and they differ), None (the
    ETags cannot tell: an encryption that hides the MD5, or a multipart ``-N`` ETag on one
    side only)."""
    mine, theirs = plain_etag(source.etag), plain_etag(copy_etag)
    if not mine or not theirs:
        return None
    if mine == theirs:
        return True
    opaque = source.encryption in _OPAQUE_ENCRYPTION or copy_encryption in _OPAQUE_ENCRYPTION
    if opaque or not (_MD5_ETAG.fullmatch(mine) and _MD5_ETAG.fullmatch(theirs)):
        return None
    return False


async def copy_whole(job: _Copy, settle_timeout: float) -> CopyResult:
    """Copy `job`'s source to its target with one ``CopyObject``, then check the answer."""
    from fstransport.storage.backends.s3.copy import CopyResult, parse_crc32c

    request = asyncio.ensure_future(
        job.call(
            "copy",
            "copy_object",
            CopySource=job.copy_source,
            CopySourceIfMatch=job.source.etag,
            ChecksumAlgorithm="CRC32C",
        )
    )
    request.add_done_callback(retrieve_exception)
    try:
        answer = await asyncio.shield(request)
    except asyncio.CancelledError:
        await _settle(job, request, settle_timeout)
        raise
    result = answer.get("CopyObjectResult") or {}
    crc = parse_crc32c(result.get("ChecksumCRC32C"))
    try:
        verified = job.judge(crc)
        same = same_version(job.source, result.get("ETag"), encryption_of(answer))
        if same is False:
            raise SourceChanged(
                job.source_url,
                "copy",
                ValueError(
                    f"the copy's ETag {plain_etag(result.get('ETag'))} is not the "
                    f"{plain_etag(job.source.etag)} it was asked to copy: the source was "
                    "replaced while it was copied"
                ),
            )
        if same is None:
            await job.check_source_unchanged()
    except BaseException:
        await _remove(job, "remove a refuted copy")
        raise
    return CopyResult(0, verified, job.checksum_of(crc))


async def _settle(job: _Copy, request: asyncio.Future[Any], timeout: float) -> None:
    """After a cancellation: wait for the server's answer to `request`, and delete the copy if
    it was made."""
    done, _ = await asyncio.wait({request}, timeout=timeout)
    if not done:
        request.cancel()
        log.warning(
            "cancelled while the server copied %s to %s; it did not answer within %.0f s and "
            "may still complete the copy",
            job.source_url,
            job.url,
            timeout,
        )
        return
    if not request.cancelled() and request.exception() is None:
        await _remove(job, "remove a cancelled copy")


async def _remove(job: _Copy, verb: str) -> None:
    with contextlib.suppress(Exception):  # never leave a copy that is known wrong
        await job.call(verb, "delete_object")
