"""Building a directory snapshot's new tree in an S3 bucket from a delta (`build_s3_tree`):
the files of a new generation copied from the base tree's objects or uploaded from the spooled
sent ranges, each checked before its upload is completed; see `fstransport.delta.tree_s3` for
the rules and ``docs/delta.md`` for the exchange."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fstransport.checksum import chunk_crc, combine, format_checksum
from fstransport.delta.s3 import Part, plan_parts, uploaded_crc
from fstransport.delta.tree_s3 import list_objects, remove_prefix
from fstransport.delta.tree_s3_digest import PartDigest, answer_etag, digest_of, fill_etags
from fstransport.errors import ChecksumMismatch, InvalidRequest, SourceChanged, StorageError
from fstransport.messages import Buffer
from fstransport.options import MAX_COPY_OBJECT, RetryPolicy
from fstransport.protocol.delta import SEND, DeltaMap, Recipe
from fstransport.protocol.receiver import ReceiverLimits
from fstransport.storage._errors import retrying
from fstransport.storage.backends.s3.client import (
    crc32c_header,
    precondition_failed,
    split_bucket_key,
)
from fstransport.storage.backends.s3.copy import S3Object, gather_all
from fstransport.storage.backends.s3.copy_object import encryption_of, same_version
from fstransport.storage.base import BaseTree
from fstransport.tree.install import TREE_UPLOADS, new_generation
from fstransport.tree.table import (
    HEADER_SIZE,
    TreeFile,
    TreeTable,
    parse_header,
    parse_table,
)

__all__ = ["S3TreeBuild", "build_s3_tree"]

PART_SLOTS = 4
"""Parts of one file's upload in flight at once (files go 8 at a time besides)."""
SETTLE = 30.0
"""Seconds a cancelled build waits for the answer to a request creating an upload, to abort it."""
ReadSent = Callable[[int, int], Awaitable[Buffer]]
"""``read_sent(start, end)``: the spooled bytes of the packed stream's sent range."""


@dataclass
class S3TreeBuild:
    """A new tree's generation written by `build_s3_tree`, waiting for its manifest."""

    final: str
    """``bucket/key`` of the tree (its manifest is ``final/fstransport-tree.json``)."""
    generation: str
    head: bytes
    """The packed stream's header and table, as received."""
    table: TreeTable
    files_copied: int = 0
    """Files made by one ``CopyObject`` of a whole base file."""
    bytes_copied: int = 0
    """Bytes copied inside the bucket (``CopyObject``, ``UploadPartCopy``)."""
    bytes_uploaded: int = 0
    bytes_read_from_base: int = 0
    """Reused bytes that travelled inside uploaded parts (pinned ranged GETs of the base)."""
    crc32c: int = 0
    committed: bool = False
    used: set[str] = field(default_factory=set)
    """Paths of the base files read or copied."""
    digests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    """``path -> (ETag as installed, BLAKE3 digest)`` of the new files whose digest is known
    (`fstransport.delta.tree_s3_digest`): what the manifest records."""


async def _head(recipe: Recipe, size: int, read_sent: ReadSent) -> tuple[bytes, TreeTable]:
    """The packed stream's header and table from the spool (they must have been sent), the
    table read as a hostile sender's."""
    sent_to = next((at for at, _, base in recipe.targets() if base != SEND), size)
    header = bytes(await read_sent(0, min(HEADER_SIZE, sent_to)))
    length = parse_header(header, size)
    if HEADER_SIZE + length > sent_to:
        raise InvalidRequest("a tree recipe must send the table", field="recipe")
    table = bytes(await read_sent(HEADER_SIZE, HEADER_SIZE + length))
    parsed = parse_table(table, size, None)  # (bounded by MAX_TABLE_SIZE)
    most = ReceiverLimits().max_tree_files
    if most is not None and len(parsed.files) > most:  # not built file by file: sent in full,
        raise SourceChanged(  # then checked against the receiver's own limit
            "tree delta", "build", ValueError(f"{len(parsed.files)} files are more than {most}")
        )
    return header + table, parsed


class _Run:
    """The requests of one `build_s3_tree`."""

    def __init__(
        self, fs: Any, build: S3TreeBuild, base: BaseTree, base_map: DeltaMap, retry: RetryPolicy
    ) -> None:
        self.fs, self.build, self.base, self.base_map, self.retry = fs, build, base, base_map, retry
        self.bucket, key = split_bucket_key(build.final)
        self.prefix = f"{key}/{build.generation}"
        pins = base.pin if isinstance(base.pin, dict) else {}
        self.placed = base.placed()
        self.starts = [at for _, at, _ in self.placed]
        self.pins: list[S3Object] = [pins[path] for path, _, _ in self.placed]

    async def call(
        self, verb: str, operation: str, *, reads_base: bool = False, **params: Any
    ) -> Any:
        async def attempt() -> Any:
            try:
                return await self.fs._call_s3(operation, **params)
            except Exception as exc:
                if precondition_failed(exc) or (reads_base and isinstance(exc, FileNotFoundError)):
                    raise SourceChanged(self.base.root, "reuse", exc) from exc
                raise

        return await retrying(attempt, f"s3://{self.build.final}", verb, self.retry)

    def pieces(self, entry: TreeFile, targets: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """`entry`'s ranges of the recipe ``(length, base offset or SEND)``, in order, copied
        ones split where the base stream passes from one base file to the next."""
        out: list[tuple[int, int]] = []
        start, end = entry.offset, entry.offset + entry.size
        first_range = max(bisect.bisect_right(targets, (start, SEND, SEND)) - 1, 0)
        for i in range(first_range, len(targets)):
            at, length, base = targets[i]
            if at >= end:
                break
            a, b = max(at, start), min(at + length, end)
            if a >= b:
                continue
            if base == SEND:
                out.append((b - a, SEND))
                continue
            base_at = base + (a - at)
            while a < b:
                index = bisect.bisect_right(self.starts, base_at) - 1
                _, first, size = self.placed[max(index, 0)]
                take = min(b - a, first + size - base_at)
                if index < 0 or take <= 0:
                    raise SourceChanged(self.base.root, "reuse", ValueError("outside the base"))
                out.append((take, base_at))
                a, base_at = a + take, base_at + take
        return out

    def pin_of(self, base_at: int) -> tuple[S3Object, int]:
        """The base file holding base-stream byte `base_at`, and that byte's offset in it."""
        index = bisect.bisect_right(self.starts, base_at) - 1
        self.build.used.add(self.placed[index][0])
        return self.pins[index], base_at - self.starts[index]

    async def read_base(self, base_at: int, length: int) -> bytes:
        pin, at = self.pin_of(base_at)
        answer = await self.call(
            "read the delta base",
            "get_object",
            reads_base=True,
            Bucket=pin.bucket,
            Key=pin.key,
            Range=f"bytes={at}-{at + length - 1}",
            IfMatch=pin.etag,
        )
        async with answer["Body"] as body:
            data = bytes(await body.read())
        if len(data) != length:
            raise SourceChanged(self.base.root, "reuse", EOFError("a base file ended early"))
        self.build.bytes_read_from_base += length
        return data

    async def body(
        self, entry: TreeFile, recipe: Recipe, part: Part, read_sent: ReadSent, sent: list[Any]
    ) -> bytearray:
        """An uploaded part's bytes; the sent pieces' ``(offset, length, crc)`` go to `sent`."""
        data = bytearray()
        for at, length, base in recipe.targets():
            a, b = max(at, part.start), min(at + length, part.end)
            if a >= b:
                continue
            if base == SEND:
                piece = await read_sent(entry.offset + a, entry.offset + b)
                if len(piece) != b - a:
                    raise StorageError(self.build.final, "assemble", EOFError("sent range short"))
                sent.append((a, b - a, chunk_crc(piece)))
                data += piece
            else:
                data += await self.read_base(base + (a - at), b - a)
        return data

    async def copy_whole(self, entry: TreeFile, base_at: int) -> None:
        pin, _ = self.pin_of(base_at)
        answer = await self.call(
            f"copy {entry.path!a}",
            "copy_object",
            reads_base=True,
            Bucket=self.bucket,
            Key=f"{self.prefix}/{entry.path}",
            CopySource={"Bucket": pin.bucket, "Key": pin.key},
            CopySourceIfMatch=pin.etag,
        )
        etag = (answer.get("CopyObjectResult") or {}).get("ETag")
        if same_version(pin, etag, encryption_of(answer)) is False:
            raise SourceChanged(self.base.root, "reuse", ValueError(f"{pin.key} was replaced"))
        digest = self.base.digests.get(self.placed[self.starts.index(base_at)][0])
        if digest is not None:  # (the offer's, for the version the copy was pinned to)
            self.build.digests[entry.path] = (answer_etag(answer), digest)
        self.build.files_copied += 1
        self.build.bytes_copied += entry.size

    async def file(
        self, entry: TreeFile, pieces: list[tuple[int, int]], read_sent: ReadSent
    ) -> None:
        """Write `entry` under the new generation from its `pieces`, its CRC32C checked first."""
        recipe = Recipe(entry.size, self.base_map.size, tuple(pieces))
        sent: list[tuple[int, int, int]] = []
        key = f"{self.prefix}/{entry.path}"
        first = pieces[0][1] if len(pieces) == 1 else SEND
        index = bisect.bisect_left(self.starts, first)
        whole = index < len(self.starts) and self.starts[index] == first
        if whole and self.placed[index][2] == entry.size <= MAX_COPY_OBJECT:  # a base file
            self.check(entry, uploaded_crc(recipe, self.base_map, sent))
            await self.copy_whole(entry, first)
            return
        plan = plan_parts(recipe) if entry.size else [Part(0, 0)]
        if len(plan) == 1 and plan[0].base is None:  # one PUT
            data = await self.body(entry, recipe, plan[0], read_sent, sent)
            self.check(entry, uploaded_crc(recipe, self.base_map, sent))
            answer = await self.call(
                f"put {entry.path!a}",
                "put_object",
                Bucket=self.bucket,
                Key=key,
                Body=bytes(data),
                ChecksumCRC32C=crc32c_header(chunk_crc(data)),
            )
            if data:
                self.build.digests[entry.path] = (answer_etag(answer), await digest_of(data))
            self.build.bytes_uploaded += len(data)
            return
        await self.multipart(entry, recipe, plan, read_sent, key)

    async def multipart(
        self, entry: TreeFile, recipe: Recipe, plan: list[Part], read_sent: ReadSent, key: str
    ) -> None:
        target: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        creating = asyncio.ensure_future(
            self.call(
                "create upload", "create_multipart_upload", ChecksumAlgorithm="CRC32C", **target
            )
        )
        try:
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:  # the upload may exist already: wait for it, abort it
            done, _ = await asyncio.wait({creating}, timeout=SETTLE)
            if done and not creating.cancelled() and creating.exception() is None:
                upload_id = creating.result()["UploadId"]
                with contextlib.suppress(Exception):
                    await self.fs._call_s3("abort_multipart_upload", UploadId=upload_id, **target)
            raise
        upload: dict[str, Any] = {"UploadId": str(created["UploadId"]), **target}
        sent: list[tuple[int, int, int]] = []
        listed: dict[int, dict[str, Any]] = {}
        slots = asyncio.Semaphore(PART_SLOTS)
        hashed = None if any(p.base is not None for p in plan) else PartDigest()

        async def one(number: int, part: Part) -> None:
            async with slots:
                if part.base is not None:
                    pin, at = self.pin_of(part.base)
                    answer = await self.call(
                        f"copy part {number} of {entry.path!a}",
                        "upload_part_copy",
                        reads_base=True,
                        PartNumber=number,
                        CopySource={"Bucket": pin.bucket, "Key": pin.key},
                        CopySourceRange=f"bytes={at}-{at + part.length - 1}",
                        CopySourceIfMatch=pin.etag,
                        **upload,
                    )
                    etag = str((answer.get("CopyPartResult") or {})["ETag"])
                    listed[number] = {"PartNumber": number, "ETag": etag}
                    self.build.bytes_copied += part.length
                    return
                data = await self.body(entry, recipe, part, read_sent, sent)
                if hashed is not None:
                    await hashed.feed(number, data)
                header = crc32c_header(chunk_crc(data))
                answer = await self.call(
                    f"upload part {number} of {entry.path!a}",
                    "upload_part",
                    PartNumber=number,
                    Body=bytes(data),
                    ChecksumCRC32C=header,
                    **upload,
                )
                etag = str(answer["ETag"])
                listed[number] = {"PartNumber": number, "ETag": etag, "ChecksumCRC32C": header}
                self.build.bytes_uploaded += len(data)

        try:
            await gather_all([one(n, p) for n, p in enumerate(plan, start=1)])
            self.check(entry, uploaded_crc(recipe, self.base_map, sent))
            parts = {"Parts": [listed[n] for n in sorted(listed)]}
            done = await self.call(
                "complete upload", "complete_multipart_upload", MultipartUpload=parts, **upload
            )
            if hashed is not None:
                self.build.digests[entry.path] = (answer_etag(done), hashed.digest(len(plan)))
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.fs._call_s3("abort_multipart_upload", **upload))
            raise

    def check(self, entry: TreeFile, crc: int) -> None:
        if crc != entry.crc32c:
            raise ChecksumMismatch(
                f"s3://{self.build.final}/{self.build.generation}/{entry.path}",
                format_checksum(entry.crc32c),
                format_checksum(crc),
                whole=True,
            )

    async def check_pins(self) -> None:
        """Every base file used still has the ETag and size it was pinned at."""
        if not self.build.used:
            return
        bucket, root = split_bucket_key(self.base.root)

        async def attempt() -> dict[str, tuple[int, str]]:
            return await list_objects(self.fs, bucket, f"{root}/")

        listed = await retrying(attempt, f"s3://{self.base.root}", "list", self.retry)
        for index, (path, _, size) in enumerate(self.placed):
            pin = self.pins[index]
            if path in self.build.used and listed.get(pin.key) != (size, pin.etag):
                raise SourceChanged(self.base.root, "reuse", ValueError(f"{path!a} changed"))


async def build_s3_tree(
    fs: Any,
    *,
    final: str,
    base: BaseTree,
    base_map: DeltaMap,
    recipe: Recipe,
    read_sent: ReadSent,
    expected_crc: int,
    retry: RetryPolicy,
) -> S3TreeBuild:
    """Write the tree of the packed stream `recipe` builds (sent ranges from `read_sent`, the
    spool; copied ones from `base`'s files, their CRCs from `base_map`) as a new generation of
    ``bucket/key`` `final`, checked as the module says; return it (its manifest not written).
    Raises `ChecksumMismatch` (``whole=True``), `SourceChanged` (a base file changed),
    `InvalidRequest`, `StorageError`; the new generation is removed first."""
    head, table = await _head(recipe, recipe.size, read_sent)
    build = S3TreeBuild(final, new_generation(), head, table)
    run = _Run(fs, build, base, base_map, retry)
    targets = recipe.targets()
    entries = iter(table.files)

    async def worker() -> None:
        for entry in entries:  # (one iterator: each file is taken by one worker)
            await run.file(entry, run.pieces(entry, targets), read_sent)

    tasks = [asyncio.ensure_future(worker()) for _ in range(TREE_UPLOADS)]
    try:
        await asyncio.gather(*tasks)
        crc = chunk_crc(head)
        for entry in sorted(table.files, key=lambda e: e.offset):
            crc = combine(crc, entry.crc32c, entry.size)  # (each one checked as it went up)
        build.crc32c = crc
        if crc != expected_crc:
            raise ChecksumMismatch(
                f"s3://{final} assembled from a delta",
                format_checksum(expected_crc),
                format_checksum(crc),
                whole=True,
            )
        await run.check_pins()
        build.digests = await fill_etags(fs, run.bucket, run.prefix, build.digests)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.shield(remove_prefix(fs, run.bucket, run.prefix))
        raise
    return build
