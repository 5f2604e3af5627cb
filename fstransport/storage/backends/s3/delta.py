"""Installed S3 objects as delta bases (`S3Delta`), and the sink of a delta onto S3
(`S3DeltaSink`).

The base is mapped by reading the object once (`open_s3_source`: one streaming GET, or ranged
GETs for a large object) with ``If-Match`` on the ETag it had when it was opened; that ETag pins
it for the assembly.  Once a recipe came, the stream's `MultipartSink` (which has uploaded
nothing yet) is replaced by an `S3DeltaSink`: the sent ranges go to a spool file in the local
temporary folder (``TMPDIR``; a sparse file holding only what was sent, unlinked as soon as it
is opened so that nothing outlives the process), and the object is assembled at install by
`assemble_s3` (``UploadPartCopy`` from the base for unchanged ranges of at least 5 MiB, uploaded
parts for the rest), its CRC32C checked from the bytes uploaded and the base map before the
upload is completed.  A stream is offered a base only when the spool's folder has room for the
whole snapshot.  Why a spool rather than parts uploaded as they come: ``docs/delta.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fstransport.errors import StorageError
from fstransport.messages import Buffer, Pieces, SnapshotMeta
from fstransport.options import MiB, RetryPolicy
from fstransport.protocol.ranges import ChunkRecord
from fstransport.storage.backends.local.sink import PwriteSink
from fstransport.storage.backends.s3.client import split_bucket_key
from fstransport.storage.base import BaseTree, Lost, MappedBase, SnapshotSink, aborted

if TYPE_CHECKING:
    from fstransport.delta.s3 import S3Assembly
    from fstransport.delta.tree_s3_build import S3TreeBuild
    from fstransport.protocol.delta import DeltaMap, Recipe
    from fstransport.storage.backends.s3.backend import S3Backend
    from fstransport.storage.backends.s3.copy import S3Object

__all__ = ["SPOOL_RESERVE", "S3Delta", "S3DeltaSink"]

log = logging.getLogger("fstransport.receiver")

SPOOL_RESERVE = 256 * MiB
"""Free room the spool's folder keeps beyond a whole snapshot, or no base is offered."""
MAP_PIECE = 8 * MiB
"""Bytes of the base read at a time while it is mapped."""


class S3DeltaSink:
    """The sent ranges of a delta onto ``s3://bucket/key``, spooled to a local file until the
    object is assembled (`assemble`) or, if no recipe holds any more, uploaded whole (`finish`).
    Nothing is uploaded before then: aborting it leaves nothing in the bucket."""

    concurrent_writes = True

    def __init__(
        self, fs: Any, bucket: str, key: str, meta: SnapshotMeta, spool: PwriteSink, fd: int
    ) -> None:
        assert meta.size is not None
        self.path = f"{bucket}/{key}"
        self.url = f"s3://{self.path}"
        self.fs, self.bucket, self.key, self.size = fs, bucket, key, meta.size
        self.snapshot_id = meta.snapshot_id
        self.spool = spool
        self.retry = RetryPolicy()
        self.whole_crc: int | None = None
        """The snapshot's CRC32C, set before `finish` (the store's backend does it)."""
        self.assembly: S3Assembly | None = None
        self.tree: S3TreeBuild | None = None
        """A directory snapshot's new tree, built in the bucket from a delta (`assemble_tree`),
        its manifest not written yet: removed by `abort` until it is."""
        self._fd = fd

    @classmethod
    async def create(
        cls, fs: Any, bucket: str, key: str, meta: SnapshotMeta, retry: RetryPolicy
    ) -> S3DeltaSink:
        """A sink with a fresh spool file in the temporary folder (unlinked at once)."""
        fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="fstransport-delta-")
        try:
            spool = await PwriteSink.create(name)
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)  # (both descriptors stay valid)
        sink = cls(fs, bucket, key, meta, spool, fd)
        sink.retry = retry
        return sink

    async def write(self, offset: int, data: Buffer, crc: int) -> Lost:
        return await self.spool.write(offset, data, crc)

    async def write_pieces(self, offset: int, data: Pieces, crc: int) -> Lost:
        return await self.spool.write_pieces(offset, data, crc)

    async def write_checked(self, offset: int, data: Buffer) -> tuple[Lost, int]:
        return await self.spool.write_checked(offset, data)

    async def write_checked_many(self, pieces: Sequence[tuple[int, Buffer]]) -> list[int]:
        return await self.spool.write_checked_many(pieces)

    def rewind(self, offset: int) -> tuple[int, Lost]:
        return self.spool.rewind(offset)

    async def verify(self, records: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        return await self.spool.verify(records)

    async def read_sent(self, start: int, end: int) -> bytearray:
        """The spooled bytes ``[start, end)``."""
        if self._fd < 0:
            raise aborted(self.url)

        def read() -> bytearray:
            out = bytearray()
            while len(out) < end - start:
                got = os.pread(self._fd, end - start - len(out), start + len(out))
                if not got:
                    break
                out += got
            return out

        return await asyncio.to_thread(read)

    async def assemble(
        self, recipe: Recipe, base: S3Object | None, base_map: DeltaMap | None, expected: int
    ) -> S3Assembly:
        """Build the object from `recipe`: copies of `base`, and the spooled sent ranges."""
        from fstransport.delta.s3 import assemble_s3, plan_parts

        if self._fd < 0:
            raise aborted(self.url)
        self.assembly = await assemble_s3(
            self.fs,
            recipe,
            plan_parts(recipe),
            base=base,
            base_map=base_map,
            bucket=self.bucket,
            key=self.key,
            read_sent=self.read_sent,
            expected_crc=expected,
            retry=self.retry,
        )
        return self.assembly

    async def assemble_tree(
        self, recipe: Recipe, base: BaseTree, base_map: DeltaMap, final: str, expected: int
    ) -> S3TreeBuild:
        """Build the tree of the packed stream `recipe` under a new generation of `final`:
        copies of `base`'s files, and the spooled sent ranges (`build_s3_tree`)."""
        from fstransport.delta.tree_s3_build import build_s3_tree

        if self._fd < 0:
            raise aborted(self.url)
        self.tree = await build_s3_tree(
            self.fs,
            final=final,
            base=base,
            base_map=base_map,
            recipe=recipe,
            read_sent=self.read_sent,
            expected_crc=expected,
            retry=self.retry,
        )
        return self.tree

    async def finish(self) -> None:
        """The object, if not assembled yet (no recipe holds): the spool uploaded whole."""
        from fstransport.protocol.delta import SEND, Recipe

        if self.assembly is None and self.tree is None:
            if self.whole_crc is None:
                raise StorageError(self.url, "finish", ValueError("no checksum to check against"))
            whole = Recipe(self.size, 0, ((self.size, SEND),) if self.size else ())
            await self.assemble(whole, None, None, self.whole_crc)
        await self._drop_spool()  # the object (or the tree's files) is in the bucket now

    async def _drop_spool(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        await self.spool.abort()

    async def abort(self) -> None:
        """Drop the spool (nothing was left in the bucket: `assemble_s3` aborts its upload), and
        a tree built whose manifest was not written."""
        await self._drop_spool()
        tree, self.tree = self.tree, None
        if tree is not None and not tree.committed:
            from fstransport.delta.tree_s3 import remove_prefix

            bucket, key = split_bucket_key(tree.final)
            try:
                await remove_prefix(self.fs, bucket, f"{key}/{tree.generation}")
            except Exception as exc:  # (unreferenced: the next install of the id removes it)
                log.warning("could not remove %s/%s: %s", tree.final, tree.generation, exc)

    async def release(self) -> None:
        """A spool is never resumed (it does not outlive its receiver): dropped."""
        await self.abort()


class S3Delta:
    """The `DeltaBase` of an S3 store (``sink="auto"``/``"multipart"``)."""

    def __init__(self, backend: S3Backend) -> None:
        self.backend = backend
        self.store = backend.store

    def takes_delta(self, meta: SnapshotMeta, sink: SnapshotSink, holds: bool) -> bool:
        if isinstance(sink, S3DeltaSink):
            return True
        if holds or meta.size is None:  # parts uploaded already: resumed as a full transfer
            return False
        try:
            free = shutil.disk_usage(tempfile.gettempdir()).free
        except OSError:
            return False
        if free < meta.size + SPOOL_RESERVE:
            log.info("snapshot %r: no room to spool a delta; received in full", meta.snapshot_id)
            return False
        return True

    async def map_base(self, snapshot_id: str, mode: str, key: bytes) -> MappedBase | None:
        from fstransport.storage.backends.s3.backend import open_s3_source
        from fstransport.storage.backends.s3.copy import S3Object

        try:
            path = self.store.path(snapshot_id)
        except Exception:  # an id the store would refuse: never a base
            return None
        url = f"s3://{path}"
        options = dict(self.backend.fs.storage_options)
        try:
            source = await open_s3_source(url, options, retry=self.store.retry)
        except StorageError as exc:
            if not isinstance(exc.cause, (FileNotFoundError, IsADirectoryError)):
                log.warning("delta base %r could not be opened: %s", snapshot_id, exc)
            return None
        try:
            if not source.etag:  # nothing to pin it by: never a base
                return None
            base_map = await _map(source, mode, key)
        except Exception as exc:  # a base that cannot be read (or changed meanwhile) is no base
            log.warning("delta base %r could not be mapped: %s", snapshot_id, exc)
            return None
        finally:
            await source.close()
        bucket, object_key = split_bucket_key(path)
        pin = S3Object(bucket, object_key, source.size, str(source.etag), None)
        return MappedBase(snapshot_id, base_map, pin)

    async def delta_sink(self, meta: SnapshotMeta, sink: SnapshotSink) -> SnapshotSink:
        from fstransport.storage.store import replace_sink

        if isinstance(sink, S3DeltaSink):
            return sink
        bucket, key = split_bucket_key(self.store.upload_path(meta))
        client = await self.backend.client()
        new = await S3DeltaSink.create(client, bucket, key, meta, self.store.retry)
        try:
            await replace_sink(self.store, meta.snapshot_id, sink, new)
        except BaseException:
            await new.abort()
            raise
        return new

    async def assemble(
        self, sink: SnapshotSink, base: MappedBase, recipe: Recipe, expected: int
    ) -> tuple[int, int]:
        from fstransport.storage.backends.s3.copy import S3Object

        if not isinstance(sink, S3DeltaSink) or not isinstance(base.pin, S3Object):
            raise StorageError(sink.path, "assemble", TypeError("not a delta onto S3"))
        done = await sink.assemble(recipe, base.pin, base.map, expected)
        log.info(
            "%s: %d bytes uploaded (%d of them read from the base), %d copied in the bucket "
            "from %r",
            sink.url,
            done.bytes_uploaded,
            done.bytes_read_from_base,
            done.bytes_copied,
            base.snapshot_id,
        )
        return done.crc32c, recipe.reused

    async def tree_base(self, snapshot_id: str) -> BaseTree | None:
        from fstransport.delta.tree_s3 import s3_tree

        path = self.store.path(snapshot_id)
        return await s3_tree(snapshot_id, await self.backend.client(), path, self.store.retry)

    async def assemble_tree(
        self, sink: SnapshotSink, base: BaseTree, base_map: DeltaMap, recipe: Recipe, expected: int
    ) -> tuple[int, int]:
        if not isinstance(sink, S3DeltaSink):
            raise StorageError(sink.path, "assemble", TypeError("not a delta onto S3"))
        final = self.store.path(sink.snapshot_id)
        done = await sink.assemble_tree(recipe, base, base_map, final, expected)
        log.info(
            "%s/%s: %d files copied whole, %d bytes copied in the bucket, %d uploaded (%d of "
            "them read from the base %r)",
            final,
            done.generation,
            done.files_copied,
            done.bytes_copied,
            done.bytes_uploaded,
            done.bytes_read_from_base,
            base.snapshot_id,
        )
        return done.crc32c, recipe.reused


async def _map(source: Any, mode: str, key: bytes) -> DeltaMap:
    """The map of `source` (an S3 source), read once in order, the next piece fetched while
    the last one is mapped in a worker thread."""
    from fstransport.protocol.delta import MapBuilder, choose_block_size

    size = source.size
    builder = MapBuilder(mode, key=key, block_size=choose_block_size(size), supers=True)
    at = 0
    pending = asyncio.ensure_future(source.read(0, min(MAP_PIECE, size))) if size else None
    try:
        while pending is not None:
            data = await pending
            if not len(data):
                raise StorageError(source.description, "map", EOFError(f"ended at {at}"))
            at += len(data)
            pending = None
            if at < size:
                pending = asyncio.ensure_future(source.read(at, min(MAP_PIECE, size - at)))
            await asyncio.to_thread(builder.update, data)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
    builder.segment()
    return await asyncio.to_thread(builder.finish)  # (derives a tag per extent)
