"""`MultipartSink`: seek/write semantics on S3 through a multipart upload.

s3fs write files cannot seek, and one that fails inside ``with fs.open(p, "wb")`` still commits
a partial object.  This sink writes chunks into part buffers (`PartAssembler`), uploads each
part as soon as all its bytes are in (several at once, with a bound), and completes the upload
— which is when the object appears, whole — only from `finish`.  A snapshot that fits in one
part goes up as a single PUT instead.  Memory stays bounded by (parts being filled + parts
uploading) x part size, whatever the snapshot's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fstransport.checksum import chunk_crc
from fstransport.errors import SnapshotMismatch, StorageError
from fstransport.messages import Buffer, SnapshotMeta, SnapshotSegmentId
from fstransport.options import RetryPolicy
from fstransport.protocol.parts import CompletedPart, PartAssembler, choose_part_size
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage._errors import storage_errors
from fstransport.storage.backends.s3.client import crc32c_header
from fstransport.storage.backends.s3.state import StateRecorder, UploadState
from fstransport.storage.backends.s3.upload import S3Upload, part_holds
from fstransport.storage.base import NOTHING_LOST, Lost, aborted

__all__ = ["DEFAULT_UPLOADS", "MultipartSink", "PartBody"]

if TYPE_CHECKING:
    from fstransport.storage.backends.s3.upload import PartBody


def __getattr__(name: str) -> Any:
    """`PartBody` (see `upload`), resolved on first use: it imports aiohttp."""
    if name == "PartBody":
        from fstransport.storage.backends.s3 import upload

        return upload.PartBody
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger("fstransport.s3")

DEFAULT_UPLOADS = 4
"""Part uploads in flight at once, by default (`FsspecSnapshotStore(upload_concurrency=...)`)."""


class MultipartSink:
    """Writes one snapshot to ``s3://bucket/key`` with a multipart upload (or one PUT).

    `fs` is a connected ``S3FileSystem(asynchronous=True)``.  At most `max_uploads` parts are
    uploaded at once (a write that completes a part waits for a free slot: back-pressure on
    the sender) and at most `max_open_parts` parts are being filled.  With `state_key`, the
    upload is recorded there (see `StateRecorder`); `resumed` continues an upload so recorded
    (its parts are claims until `verify` checked them: see `claimed`).
    """

    def __init__(
        self,
        fs: Any,
        bucket: str,
        key: str,
        meta: SnapshotMeta,
        *,
        part_size: int | None = None,
        max_uploads: int = DEFAULT_UPLOADS,
        max_open_parts: int = 8,
        state_key: str | None = None,
        retry: RetryPolicy | None = None,
        full_object_checksum: bool = False,
        resumed: UploadState | None = None,
    ) -> None:
        if meta.size is None:
            raise StorageError(
                f"s3://{bucket}/{key}", "begin", ValueError("S3 targets need meta.size")
            )
        self.path = f"{bucket}/{key}"
        self.url = f"s3://{self.path}"
        self.upload = S3Upload(
            fs, bucket, key, retry or RetryPolicy(), full_object_checksum=full_object_checksum
        )
        self.size = meta.size
        if resumed is not None:
            part_size = resumed.part_size
        self.part_size = part_size or choose_part_size(meta.size)
        self.single = self.size <= self.part_size
        self.parts = PartAssembler(meta.snapshot_id, self.size, self.part_size, max_open_parts)
        self.uploaded: dict[int, tuple[str, str]] = {}  # part number -> (ETag, CRC32C header)
        self.part_crcs: dict[int, int] = {}
        self._single_part: CompletedPart | None = None
        self._slots = asyncio.Semaphore(max_uploads)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._failure: BaseException | None = None
        self._closed = False
        self._state = (
            None if state_key is None else StateRecorder(fs, bucket, state_key, meta, self)
        )
        self.whole_crc: int | None = None
        """The whole snapshot's CRC32C, set before `finish`: S3 then checks the object too."""
        self._claimed: list[ChunkRecord] = []
        if resumed is not None:
            self._take(resumed)

    @property
    def full_object(self) -> bool:
        """Whether the server took the full-object CRC32C (said so when the upload began)."""
        return self.upload.full_object

    @property
    def upload_calls(self) -> int:
        """Requests that carried a body (part uploads and PUTs, retries counted)."""
        return self.upload.calls_with_body

    # -- resuming ----------------------------------------------------------------------------

    def _take(self, state: UploadState) -> None:
        """Continue the recorded upload `state`, with the parts it claims (see `claimed`)."""
        self.upload.upload_id = state.upload_id
        self.upload.full_object = state.full_object
        if self._state is not None:
            self._state.written = True
        for number, etag, header, crc in state.claims():
            try:
                self.parts.mark_completed(number)
            except ValueError:
                continue  # a claim no upload of this snapshot can have made: no such part
            self.uploaded[number] = (etag, header)
            self.part_crcs[number] = crc
            start, end = self.parts.part_range(number)
            self._claimed.append(ChunkRecord(start, end - start, crc))
        self._claimed.sort(key=lambda r: r.offset)

    def claimed(self) -> list[ChunkRecord]:
        """The chunks the resumed upload's record claims (not checked: see `verify`)."""
        return list(self._claimed)

    def _part_holds(self, number: int, listed: dict[str, Any] | None) -> bool:
        """Whether the bucket's part `number` (`listed`) is the part this sink recorded."""
        start, end = self.parts.part_range(number)
        return part_holds(listed, end - start, *self.uploaded[number], self.part_crcs.get(number))

    async def verify(self, records: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        """The `records` the bucket still holds as recorded: parts uploaded are checked against
        ``ListParts`` (see `_part_holds`), and a part that is missing or differs is forgotten,
        to be filled and uploaded again (re-uploading a part number replaces it).  Parts being
        filled live in this process's memory and are kept.  If the upload itself is gone, a
        new one is started when the next part is ready."""
        if self._closed:
            raise aborted(self.url)
        if not self.uploaded:
            return list(records)
        listing = await self.upload.list_parts()
        if listing is None:
            self.upload.forget()
        bad = {n for n in self.uploaded if not self._part_holds(n, (listing or {}).get(n))}
        for number in bad:
            log.warning(
                "%s: part %d is not in the bucket as recorded; sending it again", self.url, number
            )
            del self.uploaded[number]
            self.part_crcs.pop(number, None)
            self.parts.forget(number)
        if bad:
            self._schedule_save()
        part_of = self.parts.part_of
        return [
            r for r in records if bad.isdisjoint(range(part_of(r.offset), part_of(r.end - 1) + 1))
        ]

    def _schedule_save(self) -> None:
        if self._state is not None:
            self._state.schedule()

    # -- SnapshotSink ------------------------------------------------------------------------

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        if self._closed:
            raise aborted(self.url)
        self._raise_failure()
        outcome = self.parts.write(offset, data, crc)
        for part in outcome.completed:
            if self.single:
                self._single_part = part
            else:
                await self._start_upload(part)
        for start, _ in outcome.lost:
            self.uploaded.pop(self.parts.part_of(start), None)
        return outcome.lost or NOTHING_LOST

    def rewind(self, offset: int) -> tuple[int, Lost]:
        return self.parts.rewind(offset)

    async def finish(self) -> None:
        """Upload what is left and complete the upload: the object appears now, whole."""
        self._raise_failure()
        missing = self.parts.first_missing()
        if missing is not None and self.size > 0:
            raise SnapshotMismatch(  # the receiver's ledger should have caught this already
                expect=SnapshotSegmentId(self.parts.snapshot_id, self.parts.rewind(missing)[0]),
                got=SnapshotSegmentId(self.parts.snapshot_id, self.size),
            )
        if self.single:
            await self.upload.put(self._single_part.data if self._single_part else b"")
        else:
            await self._complete()
        self._closed = True
        if self._state is not None:
            await self._state.stop()
            with storage_errors(self.url, "clean up"):
                await self._state.drop(only_ours=True)

    async def release(self) -> None:
        """Stop the part uploads in flight and let go, leaving the upload to be resumed (or
        cleaned up) later: what a receiver does when it shuts down mid-transfer."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._state is not None:
            await self._state.stop(final=True)  # the record names every part that landed

    async def abort(self) -> None:
        """Stop uploading and abort the multipart upload: nothing stays behind in the bucket."""
        await self.release()
        await self.upload.abort()
        if self._state is not None:
            with storage_errors(self.url, "clean up"):
                await self._state.drop()

    # -- uploads -----------------------------------------------------------------------------

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            # a part's StorageError already says what failed: keep its cause, so that whether
            # it can be retried is still seen (a 404 NoSuchUpload cannot; a 500 may)
            cause = failure.cause if isinstance(failure, StorageError) else failure
            raise StorageError(self.url, "upload", cause) from failure

    async def _start_upload(self, part: CompletedPart) -> None:
        previous = self._tasks.pop(part.number, None)
        if previous is not None:  # a re-sent part: the newest bytes win
            previous.cancel()
            with contextlib.suppress(BaseException):
                await previous
        await self._slots.acquire()
        try:
            upload_id = await self.upload.ensure()
        except BaseException:
            self._slots.release()
            raise
        self._tasks[part.number] = asyncio.create_task(self._upload(upload_id, part))

    async def _upload(self, upload_id: str, part: CompletedPart) -> None:
        try:
            crc = chunk_crc(part.data) if part.crc is None else part.crc
            checksum = crc32c_header(crc)
            response = await self.upload.call(
                f"upload part {part.number}",
                "upload_part",
                body=part.data,
                UploadId=upload_id,
                PartNumber=part.number,
                ChecksumCRC32C=checksum,
            )
            self.uploaded[part.number] = (str(response["ETag"]), checksum)
            self.part_crcs[part.number] = crc
            self.parts.recycle(part)  # the request is answered: its body is no longer read
            self._schedule_save()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("upload of part %d of %s failed: %s", part.number, self.url, exc)
            if self._failure is None:
                self._failure = exc
        finally:
            self._slots.release()

    async def _complete(self) -> None:
        tasks = list(self._tasks.values())
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._raise_failure()
        await self.upload.complete(self.uploaded, self.parts.part_count, self.whole_crc)
