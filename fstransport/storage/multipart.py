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
import json
import logging
from collections.abc import Sequence
from typing import Any

from fstransport.checksum import chunk_crc
from fstransport.errors import SnapshotMismatch, StorageError
from fstransport.messages import Buffer, SnapshotMeta, SnapshotSegmentId
from fstransport.options import RetryPolicy
from fstransport.payload import BufferBody
from fstransport.protocol.parts import CompletedPart, PartAssembler, choose_part_size
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage._errors import retrying, storage_errors
from fstransport.storage.journal import identity, matches
from fstransport.storage.s3 import crc32c_header
from fstransport.storage.sink import NOTHING_LOST, Lost, aborted

__all__ = ["DEFAULT_UPLOADS", "MultipartSink", "PartBody"]

log = logging.getLogger("fstransport.s3")

DEFAULT_UPLOADS = 4
"""Part uploads in flight at once, by default (`FsspecSnapshotStore(upload_concurrency=...)`)."""

STATE_INTERVAL = 1.0
"""Seconds between two records of an upload's state (a receiver that dies sends the parts of
at most the last second again when it resumes)."""


class MultipartSink:
    """Writes one snapshot to ``s3://bucket/key`` with a multipart upload (or one PUT).

    `fs` is a connected ``S3FileSystem(asynchronous=True)``.  At most `max_uploads` parts are
    uploaded at once (a write that completes a part waits for a free slot: back-pressure on
    the sender) and at most `max_open_parts` parts are being filled.
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
    ) -> None:
        if meta.size is None:
            raise StorageError(
                f"s3://{bucket}/{key}", "begin", ValueError("S3 targets need meta.size")
            )
        self.path = f"{bucket}/{key}"
        self.url = f"s3://{self.path}"
        self._retry = retry or RetryPolicy()
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self.size = meta.size
        self.part_size = part_size or choose_part_size(meta.size)
        self.single = self.size <= self.part_size
        self.parts = PartAssembler(meta.snapshot_id, self.size, self.part_size, max_open_parts)
        self.upload_id: str | None = None
        self.uploaded: dict[int, tuple[str, str]] = {}  # part number -> (ETag, CRC32C header)
        self.upload_calls = 0
        self._single_part: CompletedPart | None = None
        self._slots = asyncio.Semaphore(max_uploads)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._create_lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self._closed = False
        self._identity = identity(meta)
        self._checksum = meta.checksum
        self._state_key = state_key
        self._state_lock = asyncio.Lock()
        self._state_dirty = False
        self._state_written = False  # (set before the first PUT of the state: it may be there)
        self._saver: asyncio.Task[None] | None = None
        self.part_crcs: dict[int, int] = {}
        self.full_object = False
        """Whether the server took the full-object CRC32C (said so when the upload began)."""
        self._want_full_object = full_object_checksum
        self.whole_crc: int | None = None
        """The whole snapshot's CRC32C, set before `finish`: S3 then checks the object too."""

    # -- resuming ----------------------------------------------------------------------------

    @staticmethod
    async def read_state(fs: Any, bucket: str, state_key: str) -> tuple[bool, Any]:
        """Whether the state object `state_key` exists, and its JSON (None if it is not JSON)."""
        try:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=state_key)
            return True, json.loads(await response["Body"].read())
        except FileNotFoundError:
            return False, None
        except ValueError:
            return True, None

    @classmethod
    def from_state(
        cls,
        fs: Any,
        bucket: str,
        key: str,
        meta: SnapshotMeta,
        state_key: str,
        state: Any,
        retry: RetryPolicy | None = None,
        max_uploads: int = DEFAULT_UPLOADS,
    ) -> tuple[MultipartSink, list[ChunkRecord]] | None:
        """The upload an earlier sink recorded in the state `read_state` read, with the parts
        the state *claims* were uploaded, or None when it is not for this very snapshot (or is
        malformed): nothing to resume.  The claims are not checked against the bucket here:
        `verify` does that, and the store calls it before anything is trusted."""
        if not matches(state, meta):
            return None
        try:
            part_size = int(state["part_size"])
            upload_id = state["upload_id"]
            claimed = dict(state["parts"])
        except (KeyError, TypeError, ValueError):
            return None
        if part_size < 1 or not isinstance(upload_id, str) or not upload_id:
            return None
        sink = cls(
            fs,
            bucket,
            key,
            meta,
            part_size=part_size,
            max_uploads=max_uploads,
            state_key=state_key,
            retry=retry,
        )
        sink.upload_id = upload_id
        sink.full_object = bool(state.get("full_object", False))
        sink._state_written = True
        records = []
        for number_text, entry in claimed.items():
            try:
                number = int(number_text)
                etag, header, crc = entry
                crc = int(crc)
                sink.parts.mark_completed(number)  # ValueError for a part the snapshot lacks
            except (TypeError, ValueError):
                continue  # a claim no upload of this snapshot can have made
            sink.uploaded[number] = (str(etag), str(header))
            sink.part_crcs[number] = crc
            start, end = sink.parts.part_range(number)
            records.append(ChunkRecord(start, end - start, crc))
        return sink, sorted(records, key=lambda r: r.offset)

    async def list_parts(self) -> dict[int, dict[str, Any]] | None:
        """What the bucket holds of this upload (``ListParts``, every page), by part number;
        None when the upload is gone."""
        held: dict[int, dict[str, Any]] = {}
        if self.upload_id is None:
            return None
        marker = 0
        while True:
            try:
                response = await self._call(
                    "list parts", "list_parts", UploadId=self.upload_id, PartNumberMarker=marker
                )
            except StorageError as exc:
                if isinstance(exc.cause, FileNotFoundError):
                    return None  # NoSuchUpload: aborted, or completed
                raise
            for part in response.get("Parts") or []:
                held[int(part["PartNumber"])] = part
            following = int(response.get("NextPartNumberMarker") or 0)
            if not response.get("IsTruncated") or following <= marker:
                return held
            marker = following

    def _part_holds(self, number: int, listed: dict[str, Any] | None) -> bool:
        """Whether the bucket's part `number` (`listed`, from ``ListParts``) is the part this
        sink recorded: there, of the right size, with the recorded ETag, and — where the bucket
        reports one (AWS does; moto and Ceph RGW do not) — the recorded CRC32C, which must also
        agree with the CRC the ledger combines."""
        if listed is None:
            return False
        etag, header = self.uploaded[number]
        start, end = self.parts.part_range(number)
        if listed.get("Size") != end - start or _etag(listed.get("ETag")) != _etag(etag):
            return False
        crc = self.part_crcs.get(number)
        if crc is None or header != crc32c_header(crc):
            return False
        reported = listed.get("ChecksumCRC32C")
        return not reported or reported == header

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
        listing = await self.list_parts()
        if listing is None:
            self.upload_id = None
            self.full_object = False
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

    async def _save_state(self) -> None:
        """Write down the upload and its completed parts, so that it can be resumed."""
        if self._state_key is None or self.upload_id is None:
            return
        async with self._state_lock:
            state = {
                "identity": self._identity,
                "checksum": self._checksum,
                "upload_id": self.upload_id,
                "part_size": self.part_size,
                "full_object": self.full_object,
                "parts": {
                    str(n): [*self.uploaded[n], self.part_crcs[n]]
                    for n in sorted(self.uploaded)
                    if n in self.part_crcs
                },
            }
            self._state_written = True
            await self._fs._call_s3(
                "put_object",
                Bucket=self._bucket,
                Key=self._state_key,
                Body=json.dumps(state).encode(),
            )

    def _schedule_save(self) -> None:
        """Record the state soon, off the upload path: at most once per `STATE_INTERVAL`, so a
        snapshot of many parts costs a few small PUTs, not one per part."""
        if self._state_key is None:
            return
        self._state_dirty = True
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_while_dirty())

    async def _save_while_dirty(self) -> None:
        while self._state_dirty:
            await self._save_now()
            await asyncio.sleep(STATE_INTERVAL)

    async def _save_now(self) -> None:
        self._state_dirty = False
        try:
            await self._save_state()
        except Exception as exc:  # the upload goes on; only resuming it would re-send more
            log.warning("could not record the state of %s: %s", self.url, exc)

    async def _stop_saving(self, *, final: bool = False) -> None:
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
            self._saver = None
        if final and self._state_dirty:
            await self._save_now()

    async def _drop_state(self, *, only_ours: bool = False) -> None:
        """Delete the recorded state; with `only_ours`, only if this sink may have written it
        (the store removed any earlier record when the transfer began)."""
        if only_ours and not self._state_written:
            return
        if self._state_key is not None:
            with contextlib.suppress(FileNotFoundError):
                await self._fs._call_s3("delete_object", Bucket=self._bucket, Key=self._state_key)

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
            await self._put_whole()
        else:
            await self._complete()
        self._closed = True
        await self._stop_saving()
        with storage_errors(self.url, "clean up"):
            await self._drop_state(only_ours=True)

    async def release(self) -> None:
        """Stop the part uploads in flight and let go, leaving the upload to be resumed (or
        cleaned up) later: what a receiver does when it shuts down mid-transfer."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self._stop_saving(final=True)  # the record names every part that landed

    async def abort(self) -> None:
        """Stop uploading and abort the multipart upload: nothing stays behind in the bucket."""
        await self.release()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                await self._call("abort upload", "abort_multipart_upload", UploadId=upload_id)
            except StorageError as exc:
                if not isinstance(exc.cause, FileNotFoundError):
                    raise  # an upload already gone (completed, or aborted) is fine
        with storage_errors(self.url, "clean up"):
            await self._drop_state()

    # -- uploads -----------------------------------------------------------------------------

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            # a part's StorageError already says what failed: keep its cause, so that whether
            # it can be retried is still seen (a 404 NoSuchUpload cannot; a 500 may)
            cause = failure.cause if isinstance(failure, StorageError) else failure
            raise StorageError(self.url, "upload", cause) from failure

    async def _ensure_upload(self) -> str:
        async with self._create_lock:
            if self.upload_id is None:
                response = None
                if self._want_full_object:
                    try:  # ask S3 to verify the whole object's CRC32C too
                        response = await self._call(
                            "create upload",
                            "create_multipart_upload",
                            ChecksumAlgorithm="CRC32C",
                            ChecksumType="FULL_OBJECT",
                        )
                        # Only a server that answers with the checksum type has taken it:
                        # Ceph RGW 16 accepts the header and ignores it.
                        self.full_object = response.get("ChecksumType") == "FULL_OBJECT"
                        if not self.full_object:
                            log.info("%s: full-object checksum not taken by the server", self.url)
                    except StorageError as exc:
                        log.info("%s: no full-object checksums here (%s)", self.url, exc)
                if response is None:  # every part still carries its own CRC32C
                    response = await self._call(
                        "create upload", "create_multipart_upload", ChecksumAlgorithm="CRC32C"
                    )
                self.upload_id = str(response["UploadId"])
            return self.upload_id

    async def _start_upload(self, part: CompletedPart) -> None:
        previous = self._tasks.pop(part.number, None)
        if previous is not None:  # a re-sent part: the newest bytes win
            previous.cancel()
            with contextlib.suppress(BaseException):
                await previous
        await self._slots.acquire()
        try:
            upload_id = await self._ensure_upload()
        except BaseException:
            self._slots.release()
            raise
        self._tasks[part.number] = asyncio.create_task(self._upload(upload_id, part))

    async def _upload(self, upload_id: str, part: CompletedPart) -> None:
        try:
            crc = chunk_crc(part.data) if part.crc is None else part.crc
            checksum = crc32c_header(crc)
            response = await self._call(
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
        numbers = sorted(self.uploaded)
        expected = list(range(1, self.parts.part_count + 1))
        if numbers != expected:  # never trust the server to notice a missing or extra part
            raise StorageError(
                self.url,
                "complete upload",
                ValueError(f"parts {numbers[:5]}... do not match the expected 1..{expected[-1]}"),
            )
        parts = [
            {"PartNumber": n, "ETag": self.uploaded[n][0], "ChecksumCRC32C": self.uploaded[n][1]}
            for n in numbers
        ]
        upload_id = await self._ensure_upload()
        whole: dict[str, Any] = {}
        if self.full_object and self.whole_crc is not None:
            whole = {"ChecksumCRC32C": crc32c_header(self.whole_crc), "ChecksumType": "FULL_OBJECT"}
        await self._call(
            "complete upload",
            "complete_multipart_upload",
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **whole,
        )
        self.upload_id = None

    async def _put_whole(self) -> None:
        data: Buffer = self._single_part.data if self._single_part is not None else b""
        await self._call(
            "put", "put_object", body=data, ChecksumCRC32C=crc32c_header(chunk_crc(data))
        )

    async def _call(
        self, verb: str, operation: str, body: Buffer | None = None, **params: Any
    ) -> Any:
        """One S3 call on this object, retried per the policy; `StorageError` in the end."""

        async def attempt() -> Any:
            extra = {} if body is None else {"Body": _body(body)}  # a fresh body each attempt
            if body is not None:
                self.upload_calls += 1
            return await self._fs._call_s3(
                operation, Bucket=self._bucket, Key=self._key, **params, **extra
            )

        return await retrying(attempt, self.url, verb, self._retry)


def _etag(value: object) -> str:
    """An ETag without its quotes (S3 servers differ in whether they quote it)."""
    return str(value or "").strip().strip('"')


PartBody = BufferBody
"""A part's request body: sent straight from the part's buffer (see `BufferBody`)."""


def _body(data: Buffer) -> BufferBody:
    """A fresh request body over `data` (one per attempt: a retry starts from byte 0)."""
    return BufferBody(data)
