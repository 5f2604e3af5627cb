"""`S3Upload`: the S3 requests of one object's upload — create, parts, complete, abort, list.

Every request is retried per the `RetryPolicy` and ends in `StorageError`; request bodies are
sent straight from the part's buffer (`PartBody`), a fresh body for each attempt.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fstransport.checksum import chunk_crc
from fstransport.errors import StorageError
from fstransport.messages import Buffer
from fstransport.options import RetryPolicy
from fstransport.storage._errors import retrying
from fstransport.storage.backends.s3.client import crc32c_header

__all__ = ["PartBody", "S3Upload", "etag_of", "part_holds"]

log = logging.getLogger("fstransport.s3")

if TYPE_CHECKING:
    from fstransport.http.body import BufferBody

    PartBody = BufferBody


def __getattr__(name: str) -> Any:
    """`PartBody`, a part's request body sent straight from the part's buffer (`BufferBody`).

    Resolved on first use: it is an aiohttp payload, and a process that never uploads a part
    (a local ship, say) need not import aiohttp for it."""
    if name == "PartBody":
        from fstransport.http.body import BufferBody

        return BufferBody
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def etag_of(value: object) -> str:
    """An ETag without its quotes (S3 servers differ in whether they quote it)."""
    return str(value or "").strip().strip('"')


def part_holds(
    listed: dict[str, Any] | None, size: int, etag: str, header: str, crc: int | None
) -> bool:
    """Whether a part as ``ListParts`` shows it (`listed`) is the part recorded as uploaded:
    there, of `size` bytes, with the recorded `etag`, and — where the bucket reports one (AWS
    does; moto and Ceph RGW do not) — the recorded CRC32C `header`, which must also agree
    with the `crc` the ledger combines."""
    if listed is None:
        return False
    if listed.get("Size") != size or etag_of(listed.get("ETag")) != etag_of(etag):
        return False
    if crc is None or header != crc32c_header(crc):
        return False
    reported = listed.get("ChecksumCRC32C")
    return not reported or reported == header


class S3Upload:
    """The multipart upload (or single PUT) of ``s3://bucket/key`` with the client `fs` (a
    connected ``S3FileSystem(asynchronous=True)``)."""

    def __init__(
        self,
        fs: Any,
        bucket: str,
        key: str,
        retry: RetryPolicy,
        *,
        full_object_checksum: bool = False,
    ) -> None:
        self.fs = fs
        self.bucket = bucket
        self.key = key
        self.url = f"s3://{bucket}/{key}"
        self.retry = retry
        self.upload_id: str | None = None
        self.full_object = False
        """Whether the server took the full-object CRC32C (said so when the upload began)."""
        self.want_full_object = full_object_checksum
        self.calls_with_body = 0
        self._create_lock = asyncio.Lock()

    async def call(
        self, verb: str, operation: str, body: Buffer | None = None, **params: Any
    ) -> Any:
        """One S3 call on this object, retried per the policy; `StorageError` in the end."""

        async def attempt() -> Any:
            from fstransport.http.body import BufferBody  # (aiohttp, loaded by aiobotocore anyway)

            extra = {} if body is None else {"Body": BufferBody(body)}  # fresh for each attempt
            if body is not None:
                self.calls_with_body += 1
            return await self.fs._call_s3(
                operation, Bucket=self.bucket, Key=self.key, **params, **extra
            )

        return await retrying(attempt, self.url, verb, self.retry)

    async def ensure(self) -> str:
        """The upload's id, creating the upload first if there is none."""
        async with self._create_lock:
            if self.upload_id is None:
                response = None
                if self.want_full_object:
                    try:  # ask S3 to verify the whole object's CRC32C too
                        response = await self.call(
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
                    response = await self.call(
                        "create upload", "create_multipart_upload", ChecksumAlgorithm="CRC32C"
                    )
                self.upload_id = str(response["UploadId"])
            return self.upload_id

    def forget(self) -> None:
        """The upload is gone (aborted, or completed): a new one is created when needed."""
        self.upload_id = None
        self.full_object = False

    async def abort(self) -> None:
        """Abort the upload, if there is one; one already gone is fine."""
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        try:
            await self.call("abort upload", "abort_multipart_upload", UploadId=upload_id)
        except StorageError as exc:
            if not isinstance(exc.cause, FileNotFoundError):
                raise  # an upload already gone (completed, or aborted) is fine

    async def put(self, data: Buffer) -> None:
        """Upload `data` as the whole object with one PUT (no multipart upload)."""
        crc = crc32c_header(chunk_crc(data))
        await self.call("put", "put_object", body=data, ChecksumCRC32C=crc)

    async def complete(
        self, uploaded: dict[int, tuple[str, str]], part_count: int, whole_crc: int | None
    ) -> None:
        """Complete the upload of parts ``1..part_count`` (`uploaded`: ETag and CRC32C header by
        number); with the server's full-object checksum, the whole object is checked against
        `whole_crc` too.  The object appears now, whole."""
        numbers = sorted(uploaded)
        expected = list(range(1, part_count + 1))
        if numbers != expected:  # never trust the server to notice a missing or extra part
            raise StorageError(
                self.url,
                "complete upload",
                ValueError(f"parts {numbers[:5]}... do not match the expected 1..{expected[-1]}"),
            )
        parts = [
            {"PartNumber": n, "ETag": uploaded[n][0], "ChecksumCRC32C": uploaded[n][1]}
            for n in numbers
        ]
        upload_id = await self.ensure()
        whole: dict[str, Any] = {}
        if self.full_object and whole_crc is not None:
            whole = {"ChecksumCRC32C": crc32c_header(whole_crc), "ChecksumType": "FULL_OBJECT"}
        await self.call(
            "complete upload",
            "complete_multipart_upload",
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **whole,
        )
        self.upload_id = None

    async def list_parts(self) -> dict[int, dict[str, Any]] | None:
        """What the bucket holds of this upload (``ListParts``, every page), by part number;
        None when the upload is gone."""
        held: dict[int, dict[str, Any]] = {}
        if self.upload_id is None:
            return None
        marker = 0
        while True:
            try:
                response = await self.call(
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
