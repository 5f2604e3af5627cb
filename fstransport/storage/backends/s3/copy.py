"""Server-side S3 -> S3 copies: the server assembles the target from the source's bytes.

When source and target are on one S3 endpoint, no byte needs to pass through this process:
``UploadPartCopy`` copies ranges of the source into parts of a multipart upload to the target
(several at once, with a bound), and ``CompleteMultipartUpload`` makes the target appear, whole,
in one step.  A copy the user asked for (``server_side=True``) of at most `copy_cutoff` bytes
(5 GiB by default), and any smaller than S3's 5 MiB part minimum, is one ``CopyObject``
instead (`copy_object`).

What such a copy can prove is what the server tells: where the source was stored with a
full-object CRC32C (``x-amz-checksum-crc32c`` without a ``-N`` part count) and the server
answers each part copy with the part's CRC32C, the parts' CRCs are combined here and compared
with the source's before the upload is completed.  Where it cannot be proved, `ship` copies on
the server only when asked (``server_side=True``); see ``docs/s3.md``.

Every copy names the source's ETag (``x-amz-copy-source-if-match``), and the source's ETag is
checked once more before completion: a source replaced mid-copy ends in `SourceChanged`.  A
copy that fails or is cancelled aborts its multipart upload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fstransport.checksum import combine, format_checksum
from fstransport.errors import ChecksumMismatch, ConfigurationError, SourceChanged, StorageError
from fstransport.options import MAX_COPY_OBJECT, MiB, RetryPolicy
from fstransport.protocol.parts import MAX_PARTS, MIN_PART_SIZE, choose_part_size
from fstransport.storage._errors import retrying
from fstransport.storage.backends.s3.client import (
    crc32c_header,
    precondition_failed,
    source_changed,
)
from fstransport.storage.backends.s3.copy_object import copy_whole, encryption_of

__all__ = [
    "DEFAULT_COPY_CONCURRENCY",
    "DEFAULT_COPY_PART_SIZE",
    "CopyResult",
    "S3Object",
    "combined_crc",
    "copies_whole",
    "copy_part_size",
    "copy_ranges",
    "parse_crc32c",
    "s3_endpoint",
    "server_side_copy",
    "stored_crc32c",
]

log = logging.getLogger("fstransport.s3")

DEFAULT_COPY_PART_SIZE = 64 * MiB
"""Bytes per ``UploadPartCopy`` (grown where 10,000 parts would not hold the object)."""
DEFAULT_COPY_CONCURRENCY = 8
"""Part copies in flight at once, by default."""

# -- pure parts --------------------------------------------------------------------------------


def copy_part_size(size: int, preferred: int = DEFAULT_COPY_PART_SIZE) -> int:
    """The part size for copying `size` bytes: at least `preferred` and 5 MiB, a whole number of
    MiB, large enough for at most 10,000 parts; `ConfigurationError` past 5 GiB parts."""
    if preferred < MIN_PART_SIZE:
        raise ConfigurationError(f"copy part size must be at least {MIN_PART_SIZE} bytes")
    return choose_part_size(size, preferred)


def copy_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges ``(first, last)`` of the parts of a `size`-byte copy."""
    if part_size < 1:
        raise ConfigurationError(f"part size must be positive, got {part_size}")
    ranges = [(o, min(size, o + part_size) - 1) for o in range(0, size, part_size)]
    if len(ranges) > MAX_PARTS:
        raise ConfigurationError(f"{len(ranges)} parts exceed S3's limit of {MAX_PARTS}")
    return ranges


def parse_crc32c(value: object) -> int | None:
    """An ``x-amz-checksum-crc32c`` value (base64 of 4 big-endian bytes) as an int, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


def stored_crc32c(head: dict[str, Any]) -> int | None:
    """The full-object CRC32C a HEAD (``ChecksumMode=ENABLED``) says the object was stored
    with, or None: a composite checksum (``...-N``, the CRC of the parts' CRCs) is not one."""
    value = head.get("ChecksumCRC32C")
    kind = head.get("ChecksumType")
    if not isinstance(value, str) or "-" in value:
        return None
    if kind not in (None, "FULL_OBJECT"):
        return None
    return parse_crc32c(value)


def combined_crc(parts: Sequence[tuple[int | None, int]]) -> int | None:
    """The CRC32C of the concatenation of parts given as ``(crc, length)``; None when any
    part's CRC is unknown."""
    crc = 0
    for part_crc, length in parts:
        if part_crc is None:
            return None
        crc = combine(crc, part_crc, length)
    return crc


def s3_endpoint(storage_options: dict[str, Any]) -> str:
    """The S3 endpoint `storage_options` point at, normalised for comparison ("" for AWS)."""
    client_kwargs = storage_options.get("client_kwargs") or {}
    url = storage_options.get("endpoint_url") or client_kwargs.get("endpoint_url") or ""
    if not url:
        return ""
    parts = urlsplit(str(url).strip())
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (
        f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"
    )


# -- the copy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Object:
    """A source object as its HEAD described it."""

    bucket: str
    key: str
    size: int
    etag: str
    crc32c: int | None
    """The full-object CRC32C the server keeps for it, if any."""
    encryption: str | None = None
    """Its server-side encryption (``AES256``, ``aws:kms``, ``SSE-C``), if the HEAD named one."""


@dataclass(frozen=True)
class CopyResult:
    """What a server-side copy did."""

    parts: int
    """Part copies (0: one ``CopyObject``)."""
    verified: bool
    """Whether the server's CRC32C of the copy matched the expected one."""
    checksum: str | None
    """``"crc32c:%08x"`` of the copy when known (verified, or the source's stored one)."""


class Unverifiable(Exception):
    """The server does not say what it copied (no part CRC32C): the copy cannot be proved."""


async def head_source(fs: Any, bucket: str, key: str, retry: RetryPolicy) -> S3Object:
    """HEAD the source, asking for its stored checksum too."""
    subject = f"s3://{bucket}/{key}"

    async def attempt() -> Any:
        return await fs._call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")

    head = await retrying(attempt, subject, "stat", retry)
    return S3Object(
        bucket,
        key,
        int(head["ContentLength"]),
        str(head.get("ETag", "")),
        stored_crc32c(head),
        encryption_of(head),
    )


class _Copy:
    def __init__(
        self,
        fs: Any,
        source: S3Object,
        bucket: str,
        key: str,
        *,
        expected: int | None,
        require_proof: bool,
        part_size: int,
        concurrency: int,
        retry: RetryPolicy,
    ) -> None:
        self.fs = fs
        self.source = source
        self.bucket = bucket
        self.key = key
        self.expected = expected
        self.require_proof = require_proof
        self.part_size = part_size
        self.concurrency = concurrency
        self.retry = retry
        self.source_url = f"s3://{source.bucket}/{source.key}"
        self.url = f"s3://{bucket}/{key}"
        self.copy_source = {"Bucket": source.bucket, "Key": source.key}

    async def call(self, verb: str, operation: str, **params: Any) -> Any:
        async def attempt() -> Any:
            try:
                return await self.fs._call_s3(operation, Bucket=self.bucket, Key=self.key, **params)
            except Exception as exc:
                if precondition_failed(exc):
                    raise source_changed(self.source_url, exc) from exc
                raise

        return await retrying(attempt, self.url, verb, self.retry)

    async def check_source_unchanged(self) -> None:
        now = await head_source(self.fs, self.source.bucket, self.source.key, self.retry)
        if now.etag != self.source.etag or now.size != self.source.size:
            raise SourceChanged(
                self.source_url,
                "copy",
                ValueError(f"its ETag changed from {self.source.etag} to {now.etag} mid-copy"),
            )

    def judge(self, crc: int | None) -> bool:
        """Whether the server's `crc` of the copy proves it; `ChecksumMismatch` if it refutes it,
        `Unverifiable` when there is no proof and one is required."""
        if crc is not None and self.expected is not None:
            if crc != self.expected:
                raise ChecksumMismatch(
                    f"server-side copy of {self.source_url} to {self.url}",
                    format_checksum(self.expected),
                    format_checksum(crc),
                    whole=True,
                )
            return True
        if self.require_proof:
            raise Unverifiable(f"{self.url}: the server did not report the copy's CRC32C")
        return False

    def checksum_of(self, crc: int | None) -> str | None:
        """The report's checksum: the server's CRC32C of the copy, else the expected one."""
        known = crc if crc is not None else self.expected
        return None if known is None else format_checksum(known)

    async def multipart(self) -> CopyResult:
        ranges = copy_ranges(self.source.size, self.part_size)
        created = await self.call(
            "create upload", "create_multipart_upload", ChecksumAlgorithm="CRC32C"
        )
        upload_id = str(created["UploadId"])
        try:
            return await self._copy_parts(upload_id, ranges)
        except BaseException:
            await self._abort(upload_id)
            raise

    async def _abort(self, upload_id: str) -> None:
        try:
            await self.call("abort upload", "abort_multipart_upload", UploadId=upload_id)
        except StorageError as exc:
            if not isinstance(exc.cause, FileNotFoundError):  # gone already is fine
                log.warning("could not abort the copy's upload to %s: %s", self.url, exc)

    async def _copy_parts(self, upload_id: str, ranges: list[tuple[int, int]]) -> CopyResult:
        results: dict[int, dict[str, Any]] = {}
        slots = asyncio.Semaphore(self.concurrency)

        async def part(number: int) -> None:
            first, last = ranges[number - 1]
            async with slots:
                answer = await self.call(
                    f"copy part {number}",
                    "upload_part_copy",
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=self.copy_source,
                    CopySourceRange=f"bytes={first}-{last}",
                    CopySourceIfMatch=self.source.etag,
                )
            results[number] = answer.get("CopyPartResult") or {}

        # The first part alone: when its answer carries no CRC32C and proof is required, stop
        # before the rest is copied for nothing.
        await part(1)
        self.judge_first(results[1])
        await gather_all([part(n) for n in range(2, len(ranges) + 1)])
        numbers = range(1, len(ranges) + 1)
        crcs = [parse_crc32c(results[n].get("ChecksumCRC32C")) for n in numbers]
        lengths = [last - first + 1 for first, last in ranges]
        whole = combined_crc(list(zip(crcs, lengths, strict=True)))
        verified = self.judge(whole)
        await self.check_source_unchanged()
        listed = []
        for number in range(1, len(ranges) + 1):
            entry: dict[str, Any] = {"PartNumber": number, "ETag": results[number]["ETag"]}
            if crcs[number - 1] is not None:
                entry["ChecksumCRC32C"] = crc32c_header(crcs[number - 1] or 0)
            listed.append(entry)
        await self.call(
            "complete upload",
            "complete_multipart_upload",
            UploadId=upload_id,
            MultipartUpload={"Parts": listed},
        )
        return CopyResult(len(ranges), verified, self.checksum_of(whole))

    def judge_first(self, first: dict[str, Any]) -> None:
        if self.require_proof and parse_crc32c(first.get("ChecksumCRC32C")) is None:
            raise Unverifiable(f"{self.url}: the server did not report part 1's CRC32C")


async def gather_all(jobs: list[Awaitable[None]]) -> None:
    """Run `jobs` at once; on the first failure cancel the others and raise it."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def copies_whole(size: int, copy_cutoff: int, require_proof: bool) -> bool:
    """Whether a `size`-byte server-side copy is one ``CopyObject`` (else ``UploadPartCopy``
    parts): objects up to `copy_cutoff` and below the 5 MiB part minimum, unless the copy
    must be proved before it appears (`require_proof`), which only a multipart copy can be."""
    return not require_proof and (size <= copy_cutoff or size < MIN_PART_SIZE)


async def server_side_copy(
    fs: Any,
    source: S3Object,
    bucket: str,
    key: str,
    *,
    expected: int | None = None,
    require_proof: bool = False,
    part_size: int | None = None,
    concurrency: int = DEFAULT_COPY_CONCURRENCY,
    retry: RetryPolicy | None = None,
    copy_cutoff: int = MAX_COPY_OBJECT,
    settle_timeout: float = 60.0,
) -> CopyResult | None:
    """Copy `source` to ``s3://bucket/key`` on the server, with `fs` (a connected
    ``S3FileSystem(asynchronous=True)`` of the endpoint both are on).

    Up to `copy_cutoff` bytes (and below the 5 MiB part minimum) with one ``CopyObject``,
    checked as soon as it is made (see `copy_object`); larger objects, and every copy made with
    `require_proof`, as a multipart upload of ``UploadPartCopy`` parts, checked before it is
    completed.  `expected` is the CRC32C the copy must have (the source's stored one, or the
    caller's).  With `require_proof`, a copy the server does not report a CRC32C for is
    abandoned (its upload aborted) and None is returned, so that the caller can copy through
    the client instead, and so is an object below the part minimum; a copy whose CRC differs
    from `expected` raises `ChecksumMismatch`.  `settle_timeout`: how long a cancelled
    ``CopyObject`` waits for the server's answer, to delete the copy it made.

    Raises `SourceChanged`, `ChecksumMismatch`, `StorageError`.  No multipart upload is left
    behind, whatever happens; the target appears only when the copy is complete, and a copy
    that fails its checks or is cancelled is removed.
    """
    if concurrency < 1:
        raise ConfigurationError(f"copy concurrency must be at least 1, got {concurrency}")
    if not 0 <= copy_cutoff <= MAX_COPY_OBJECT:
        raise ConfigurationError(f"copy_cutoff must be within [0, {MAX_COPY_OBJECT}]")
    size = copy_part_size(source.size, part_size or DEFAULT_COPY_PART_SIZE)
    job = _Copy(
        fs,
        source,
        bucket,
        key,
        expected=expected,
        require_proof=require_proof,
        part_size=size,
        concurrency=concurrency,
        retry=retry or RetryPolicy(),
    )
    if source.size < MIN_PART_SIZE and require_proof:
        return None  # a CopyObject's target appears before it can be proved; and it is small
    if (source.bucket, source.key) == (bucket, key) and not require_proof:
        return CopyResult(0, False, job.checksum_of(None))  # onto itself: nothing to copy
    if copies_whole(source.size, copy_cutoff, require_proof):
        return await copy_whole(job, settle_timeout)
    try:
        return await job.multipart()
    except Unverifiable as exc:
        log.info("%s; copying through the client instead", exc)
        return None
