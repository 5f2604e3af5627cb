"""Assembling a delta on S3 without downloading the base: a multipart upload whose unchanged
ranges of at least 5 MiB are ``UploadPartCopy`` parts copied inside the bucket from the base
object (pinned by its ETag), and whose other parts are uploaded.

`plan_parts` is pure: it cuts a `Recipe` into parts S3 accepts (every part but the last at least
5 MiB, none above 5 GiB, at most 10,000).  A reused range too short to be a copy part of its own
travels inside an uploaded part, read from the base with a ranged GET pinned by the same ETag.

`assemble_s3` runs a plan.  The target's CRC32C is known before anything is completed: reused
ranges from the base's map (their ETag guarantees the base is the one the map describes; their
keyed tags that the sender's bytes are the same), sent ranges from the very bytes uploaded.  It
must be the expected one, or nothing is completed.  A failure or a cancel aborts the upload;
the target appears only on completion.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fstransport.checksum import chunk_crc, combine
from fstransport.errors import ChecksumMismatch, ConfigurationError, SourceChanged, StorageError
from fstransport.messages import Buffer
from fstransport.options import RetryPolicy
from fstransport.protocol.delta import SEND, DeltaMap, Recipe
from fstransport.protocol.parts import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from fstransport.storage._errors import retrying
from fstransport.storage.backends.s3.client import crc32c_header, precondition_failed
from fstransport.storage.backends.s3.copy import (
    DEFAULT_COPY_CONCURRENCY,
    S3Object,
    copy_part_size,
    gather_all,
    head_source,
)
from fstransport.storage.backends.s3.upload import PartBody, etag_of

__all__ = ["Part", "S3Assembly", "assemble_s3", "plan_parts", "recipe_crc", "uploaded_crc"]

UPLOAD_PART_SIZE = 8 * 1024 * 1024
"""Preferred size of an uploaded part."""
COPY_SPLIT = 1024 * 1024 * 1024
"""Largest copy part by default.  Not the 64 MiB of a server-side copy: moto (and so the tests)
reads the whole base for every ``UploadPartCopy``; 1 GiB still lets a multi-GiB base's copies
run side by side (8 at once) where one 5 GiB part could outlast the install timeout."""


@dataclass(frozen=True)
class Part:
    """One part of the upload: target bytes ``[start, end)``; `base` is the base offset of a
    copied part, None for an uploaded one."""

    start: int
    end: int
    base: int | None = None

    @property
    def length(self) -> int:
        return self.end - self.start


def _split(start: int, end: int, size: int, *, most: bool) -> list[tuple[int, int]]:
    """``[start, end)`` in nearly equal pieces: the fewest of at most `size` bytes (`most`), or
    the most of at least `size` bytes (and below twice that), or one piece if it is shorter."""
    length = end - start
    count = max(1, -(-length // size) if most else length // size)
    step, extra = divmod(end - start, count)
    out, at = [], start
    for i in range(count):
        size = step + (1 if i < extra else 0)
        out.append((at, at + size))
        at += size
    return out


def plan_parts(
    recipe: Recipe, *, upload_part_size: int = UPLOAD_PART_SIZE, copy_size: int | None = None
) -> list[Part]:
    """The parts of a multipart upload that builds `recipe`'s target.  A reused range is cut
    into copy parts of at most `copy_size` bytes (default `COPY_SPLIT`, more where 10,000 parts
    need it), so that a large object's copies run side by side.

    `ConfigurationError` when they would exceed S3's 10,000 parts (upload the whole instead).
    """
    if not MIN_PART_SIZE <= upload_part_size <= MAX_PART_SIZE // 2:
        raise ConfigurationError(f"an uploaded part is 5 MiB to 2.5 GiB, not {upload_part_size}")
    copy_size = copy_size or copy_part_size(recipe.size, COPY_SPLIT)
    if not 2 * MIN_PART_SIZE <= copy_size <= MAX_PART_SIZE:
        raise ConfigurationError(f"a copied part is 10 MiB to 5 GiB, not {copy_size}")
    parts: list[Part] = []
    pending = 0  # the current uploaded stretch is [pending, at)

    def flush(end: int) -> None:
        if end > pending:
            parts.extend(Part(a, b) for a, b in _split(pending, end, upload_part_size, most=False))

    for at, length, base in recipe.targets():
        if base == SEND or length < MIN_PART_SIZE:
            continue
        short = at - pending
        take = MIN_PART_SIZE - short if 0 < short < MIN_PART_SIZE else 0
        if length - take < MIN_PART_SIZE and at + length < recipe.size:
            continue  # too short to give its head to the upload before it: upload it all
        flush(at + take)
        for a, b in _split(at + take, at + length, copy_size, most=True):
            parts.append(Part(a, b, base + (a - at)))
        pending = at + length
    flush(recipe.size)
    if len(parts) > MAX_PARTS:
        raise ConfigurationError(f"a delta upload of {len(parts)} parts exceeds S3's {MAX_PARTS}")
    return parts


def recipe_crc(recipe: Recipe, base_map: DeltaMap, sent_crcs: list[int]) -> int:
    """The CRC32C of the target: reused ranges from `base_map`, sent ranges from `sent_crcs`
    (one per sent range of the recipe, in order)."""
    crc, sent = 0, iter(sent_crcs)
    for _, length, base in recipe.targets():
        part = next(sent) if base == SEND else base_map.crc_of(base, length)
        crc = combine(crc, part, length)
    return crc


def uploaded_crc(
    recipe: Recipe, base_map: DeltaMap | None, pieces: list[tuple[int, int, int]]
) -> int:
    """The CRC32C of the target as uploaded: reused ranges from `base_map`, sent ranges from
    `pieces` (``(offset, length, crc)`` of the sent bytes as they went into uploaded parts,
    which must tile them); `StorageError` when they do not."""
    crc, sent, i = 0, sorted(pieces), 0
    for at, length, base in recipe.targets():
        if base != SEND:
            if base_map is None:
                raise ConfigurationError("a recipe that reuses ranges needs the base's map")
            crc = combine(crc, base_map.crc_of(base, length), length)
            continue
        end = at + length
        while at < end:
            if i >= len(sent) or sent[i][0] != at or at + sent[i][1] > end:
                raise StorageError("delta", "assemble", ValueError(f"sent bytes at {at} missing"))
            crc, at, i = combine(crc, sent[i][2], sent[i][1]), at + sent[i][1], i + 1
    return crc


@dataclass
class S3Assembly:
    """What `assemble_s3` did."""

    parts: int = 0
    bytes_copied: int = 0
    """Bytes copied inside the bucket (``UploadPartCopy``)."""
    bytes_uploaded: int = 0
    bytes_read_from_base: int = 0
    """Reused bytes that travelled inside uploaded parts (ranged GETs of the base)."""
    crc32c: int = 0


ReadSent = Callable[[int, int], Awaitable[Buffer]]
"""``read_sent(start, end)``: the received bytes of the target's sent range ``[start, end)``."""


class _Run:
    def __init__(
        self, fs: Any, base: S3Object | None, bucket: str, key: str, retry: RetryPolicy
    ) -> None:
        self.fs, self.bucket, self.key, self.retry = fs, bucket, key, retry
        self.base = base or S3Object(bucket, key, 0, "", None)  # (none: nothing is reused)
        self.url = f"s3://{bucket}/{key}"
        self.base_url = f"s3://{self.base.bucket}/{self.base.key}"
        self.sent: list[tuple[int, int, int]] = []
        """``(offset, length, crc)`` of the sent bytes that went into uploaded parts."""

    async def call(
        self, verb: str, operation: str, *, body: Buffer | None = None, **params: Any
    ) -> Any:
        async def attempt() -> Any:
            extra = {} if body is None else {"Body": PartBody(body)}  # fresh for each attempt
            try:
                return await self.fs._call_s3(operation, **params, **extra)
            except Exception as exc:
                if precondition_failed(exc):
                    raise SourceChanged(self.base_url, "reuse", exc) from exc
                raise

        return await retrying(attempt, self.url, verb, self.retry)

    async def read_base(self, start: int, end: int) -> bytes:
        answer = await self.call(
            "read the delta base",
            "get_object",
            Bucket=self.base.bucket,
            Key=self.base.key,
            Range=f"bytes={start}-{end - 1}",
            IfMatch=self.base.etag,
        )
        async with answer["Body"] as body:
            data = bytes(await body.read())
        if len(data) != end - start:
            raise SourceChanged(self.base_url, "reuse", EOFError("the base ended early"))
        return data


async def _body(
    run: _Run, part: Part, targets: list[tuple[int, int, int]], read_sent: ReadSent
) -> tuple[bytearray, int]:
    """An uploaded part's bytes and how many of them came from the base; the sent pieces'
    CRCs go to ``run.sent``.  The reused pieces are read from the base with one ranged GET
    over all of them where they lie close together (a few between changed pages), else one
    GET each."""
    data = bytearray(part.length)
    first = bisect_right(targets, (part.start, SEND, SEND)) - 1
    pieces: list[tuple[int, int, int]] = []  # (target start, target end, base start)
    for at, length, base in targets[max(first, 0) :]:
        if at >= part.end:
            break
        a, b = max(at, part.start), min(at + length, part.end)
        if a < b:
            pieces.append((a, b, SEND if base == SEND else base + (a - at)))
    reused = [(a, b, base) for a, b, base in pieces if base != SEND]
    span: tuple[int, bytes] | None = None
    if len(reused) > 1:
        low, high = min(p[2] for p in reused), max(p[2] + p[1] - p[0] for p in reused)
        if high - low <= 2 * part.length:
            span = (low, await run.read_base(low, high))
    for a, b, base in pieces:
        if base == SEND:
            piece: Buffer = await read_sent(a, b)
            if len(piece) != b - a:
                raise StorageError(run.url, "assemble", EOFError("a sent range is incomplete"))
            run.sent.append((a, b - a, chunk_crc(piece)))
        elif span is not None:
            piece = memoryview(span[1])[base - span[0] : base - span[0] + b - a]
        else:
            piece = await run.read_base(base, base + b - a)
        data[a - part.start : b - part.start] = piece
    return data, sum(b - a for a, b, _ in reused)


async def assemble_s3(
    fs: Any,
    recipe: Recipe,
    plan: list[Part],
    *,
    base: S3Object | None,
    base_map: DeltaMap | None = None,
    bucket: str,
    key: str,
    read_sent: ReadSent,
    expected_crc: int,
    concurrency: int = DEFAULT_COPY_CONCURRENCY,
    retry: RetryPolicy | None = None,
) -> S3Assembly:
    """Build ``s3://bucket/key`` from `plan` (`plan_parts` of `recipe`) with `fs` (a connected
    ``S3FileSystem(asynchronous=True)``), `base` as its HEAD described it when its map
    `base_map` was made (both None for a recipe that reuses nothing).

    `expected_crc` is the snapshot's CRC32C.  The target's is computed as the parts go up: the
    sent bytes' from the bytes uploaded (`read_sent` gives them), the reused ranges' from
    `base_map` (the ETag pin proves the bytes copied are the ones it describes); the upload is
    completed only when the two agree.  Each uploaded part carries its CRC32C (S3 refuses a
    part that arrives otherwise).  Raises `ChecksumMismatch` (``whole=True``), `SourceChanged`
    (the base's ETag changed), `StorageError`.  No multipart upload is left behind.
    """
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
    if recipe.reused and (base is None or base_map is None):
        raise ConfigurationError("a recipe that reuses ranges needs its base and the base's map")
    run = _Run(fs, base, bucket, key, retry or RetryPolicy())
    result = S3Assembly(parts=len(plan))
    targets = recipe.targets()
    target: dict[str, Any] = {"Bucket": bucket, "Key": key}
    created = await run.call(
        "create upload", "create_multipart_upload", ChecksumAlgorithm="CRC32C", **target
    )
    upload_id = str(created["UploadId"])
    etags: dict[int, tuple[str, int | None]] = {}
    slots = asyncio.Semaphore(concurrency)

    async def one(number: int, part: Part) -> None:
        async with slots:
            if part.base is not None:
                answer = await run.call(
                    f"copy part {number}",
                    "upload_part_copy",
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": run.base.bucket, "Key": run.base.key},
                    CopySourceRange=f"bytes={part.base}-{part.base + part.length - 1}",
                    CopySourceIfMatch=run.base.etag,
                    **target,
                )
                etags[number] = (str((answer.get("CopyPartResult") or {})["ETag"]), None)
                result.bytes_copied += part.length
                return
            data, from_base = await _body(run, part, targets, read_sent)
            crc = chunk_crc(data)
            answer = await run.call(
                f"upload part {number}",
                "upload_part",
                body=data,
                UploadId=upload_id,
                PartNumber=number,
                ChecksumCRC32C=crc32c_header(crc),
                **target,
            )
            etags[number] = (str(answer["ETag"]), crc)
            result.bytes_uploaded += len(data)
            result.bytes_read_from_base += from_base

    try:
        await gather_all([one(n, p) for n, p in enumerate(plan, start=1)])
        result.crc32c = uploaded_crc(recipe, base_map, run.sent)
        if result.crc32c != expected_crc:
            raise ChecksumMismatch(
                f"{run.url} assembled from a delta",
                f"crc32c:{expected_crc:08x}",
                f"crc32c:{result.crc32c:08x}",
                whole=True,
            )
        if base is not None:
            now = await head_source(fs, base.bucket, base.key, run.retry)
            if (etag_of(now.etag), now.size) != (etag_of(base.etag), base.size):
                raise SourceChanged(run.base_url, "reuse", ValueError("the base changed mid-copy"))
        listed: list[dict[str, Any]] = []
        for number in range(1, len(plan) + 1):
            etag, crc = etags[number]
            entry: dict[str, Any] = {"PartNumber": number, "ETag": etag}
            if crc is not None:
                entry["ChecksumCRC32C"] = crc32c_header(crc)
            listed.append(entry)
        await run.call(
            "complete upload",
            "complete_multipart_upload",
            UploadId=upload_id,
            MultipartUpload={"Parts": listed},
            **target,
        )
    except BaseException:
        with contextlib.suppress(StorageError):  # gone already, or the bucket is unreachable
            await run.call("abort upload", "abort_multipart_upload", UploadId=upload_id, **target)
        raise
    return result
