"""What an S3 upload records beside itself so that a later receiver can resume it.

The record is a small JSON object at the store's journal path: the snapshot's identity and
checksum, the upload id, the part size and, per part uploaded, its ETag, CRC32C header and
CRC.  It is a claim, never proof: `MultipartSink.verify` checks every part against
``ListParts`` before anything is trusted.  `StateRecorder` writes it off the upload path, at
most once per `STATE_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fstransport.messages import SnapshotMeta
from fstransport.storage.journal import identity, matches

if TYPE_CHECKING:
    from fstransport.storage.backends.s3.multipart import MultipartSink

__all__ = ["STATE_INTERVAL", "StateRecorder", "UploadState", "read_state"]

log = logging.getLogger("fstransport.s3")

STATE_INTERVAL = 1.0
"""Seconds between two records of an upload's state (a receiver that dies sends the parts of
at most the last second again when it resumes)."""


@dataclass(frozen=True)
class UploadState:
    """A recorded upload: its id, part size, whether the server took a full-object checksum,
    and the parts it claims, by number: ``(ETag, CRC32C header, CRC)``."""

    upload_id: str
    part_size: int
    full_object: bool
    parts: dict[str, Any]

    @classmethod
    def parse(cls, state: Any, meta: SnapshotMeta) -> UploadState | None:
        """The record `read_state` read, if it is for this very snapshot and well formed."""
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
        return cls(upload_id, part_size, bool(state.get("full_object", False)), claimed)

    def claims(self) -> Iterator[tuple[int, str, str, int]]:
        """The parts the record claims, well formed: ``(number, ETag, CRC32C header, CRC)``."""
        for number_text, entry in self.parts.items():
            try:
                number = int(number_text)
                etag, header, crc = entry
                yield number, str(etag), str(header), int(crc)
            except (TypeError, ValueError):
                continue  # a claim no upload of this snapshot can have made


async def read_state(fs: Any, bucket: str, state_key: str) -> tuple[bool, Any]:
    """Whether the state object `state_key` exists, and its JSON (None if it is not JSON)."""
    try:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=state_key)
        return True, json.loads(await response["Body"].read())
    except FileNotFoundError:
        return False, None
    except ValueError:
        return True, None


class StateRecorder:
    """Writes the record of `sink`'s upload to ``s3://bucket/key`` soon after each change, at
    most once per `STATE_INTERVAL`, and deletes it when asked."""

    def __init__(
        self, fs: Any, bucket: str, key: str, meta: SnapshotMeta, sink: MultipartSink
    ) -> None:
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self._identity = identity(meta)
        self._checksum = meta.checksum
        self._sink = sink
        self._url = sink.url
        self._lock = asyncio.Lock()
        self._dirty = False
        self.written = False  # (set before the first PUT of the state: it may be there)
        self._saver: asyncio.Task[None] | None = None

    def _describe(self) -> dict[str, Any] | None:
        """The record of the upload and its completed parts (None before it began)."""
        sink = self._sink
        if sink.upload.upload_id is None:
            return None
        return {
            "identity": self._identity,
            "checksum": self._checksum,
            "upload_id": sink.upload.upload_id,
            "part_size": sink.part_size,
            "full_object": sink.upload.full_object,
            "parts": {
                str(n): [*sink.uploaded[n], sink.part_crcs[n]]
                for n in sorted(sink.uploaded)
                if n in sink.part_crcs
            },
        }

    async def _save(self) -> None:
        state = self._describe()
        if state is None:
            return
        async with self._lock:
            self.written = True
            await self._fs._call_s3(
                "put_object", Bucket=self._bucket, Key=self._key, Body=json.dumps(state).encode()
            )

    def schedule(self) -> None:
        """Record the state soon, off the upload path: a snapshot of many parts costs a few
        small PUTs, not one per part."""
        self._dirty = True
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_while_dirty())

    async def _save_while_dirty(self) -> None:
        while self._dirty:
            await self._save_now()
            await asyncio.sleep(STATE_INTERVAL)

    async def _save_now(self) -> None:
        self._dirty = False
        try:
            await self._save()
        except Exception as exc:  # the upload goes on; only resuming it would re-send more
            log.warning("could not record the state of %s: %s", self._url, exc)

    async def stop(self, *, final: bool = False) -> None:
        """Stop recording; with `final`, write down a change not recorded yet."""
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
            self._saver = None
        if final and self._dirty:
            await self._save_now()

    async def drop(self, *, only_ours: bool = False) -> None:
        """Delete the record; with `only_ours`, only if this recorder may have written it
        (the store removed any earlier record when the transfer began)."""
        if only_ours and not self.written:
            return
        with contextlib.suppress(FileNotFoundError):
            await self._fs._call_s3("delete_object", Bucket=self._bucket, Key=self._key)
