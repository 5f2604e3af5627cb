"""Directory snapshots installed as objects (S3, ``memory://``, other fsspec filesystems).

The files go under a fresh generation prefix ``root/<snapshot_id>/g-.../``, several at once;
then the manifest ``root/<snapshot_id>/fstransport-tree.json`` is written, last (the commit
marker); then older generations are removed.  A failure before the manifest removes the new
generation: the tree a reader finds through the manifest is never a half one (see
``docs/directories.md``).  Local folders are installed by renames instead (`backends.local`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from fstransport.messages import Snapshot
from fstransport.protocol.delta_tags import EXTENT_HASH, extent_digest
from fstransport.tree import (
    MANIFEST_NAME,
    STREAM_ABOVE,
    TREE_UPLOADS,
    TreeFile,
    TreeTable,
    copy_file,
    new_generation,
    tree_manifest,
)

if TYPE_CHECKING:
    from fstransport.storage.backends.fsspec import FsspecBackend

__all__ = ["install_object_tree"]

log = logging.getLogger("fstransport.store")


async def install_object_tree(
    backend: FsspecBackend, snapshot: Snapshot, table: TreeTable, final: str
) -> None:
    """Write `table`'s files from `snapshot` under a new generation of `final`, then the
    manifest, then remove what it replaced (with `backend`'s filesystem calls)."""
    generation = new_generation()
    base = f"{final}/{generation}"
    reading = threading.Lock()  # one file object serves every read

    from fstransport.storage.backends.s3.client import is_s3

    hashing = is_s3(backend.fs) and bool(table.files)  # (where ETags pin a file's version)
    digests: dict[str, bytes] = {}  # path -> BLAKE3 of the bytes written (what S3 records)

    def read(entry: TreeFile) -> bytes:
        body = bytearray()
        with reading:
            copy_file(snapshot.data, entry, body.extend)
        if hashing and body:
            digests[entry.path] = extent_digest(body)
        return bytes(body)

    def stream(entry: TreeFile, target: str) -> None:
        """Copy a large file to `target` without holding it in memory (blocking)."""
        hasher = EXTENT_HASH() if hashing else None

        def write(data: bytes) -> None:
            out.write(data)
            if hasher is not None:
                hasher.update(data)

        with reading, backend.fs.open(target, "wb") as out:
            copy_file(snapshot.data, entry, write)
        if hasher is not None:
            digests[entry.path] = hasher.digest()

    async def put(entry: TreeFile) -> None:
        async with slots:
            target = f"{base}/{entry.path}"
            if entry.size <= STREAM_ABOVE:
                await backend.call("pipe_file", target, await asyncio.to_thread(read, entry))
            else:
                await asyncio.to_thread(stream, entry, target)

    slots = asyncio.Semaphore(TREE_UPLOADS)
    pending: set[asyncio.Task[None]] = set()
    held = backend.set_aside(final)
    try:
        for entry in table.files:
            pending.add(asyncio.ensure_future(put(entry)))
            if len(pending) >= 4 * TREE_UPLOADS:
                done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                for task in done:
                    task.result()
        while pending:
            done, pending = await asyncio.wait(pending, return_when="FIRST_EXCEPTION")
            for task in done:
                task.result()
        recorded = await _recorded(backend, base, digests) if hashing else None
        manifest = tree_manifest(snapshot.meta, table, generation, recorded)
        await backend.call("pipe_file", f"{final}/{MANIFEST_NAME}", manifest)
    except BaseException as exc:
        # stop the other writes first, so that none lands after the generation is removed
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        names: bool | None = None  # (unknown: the generation stays; unreferenced, it is garbage)
        with contextlib.suppress(Exception):
            names = await asyncio.shield(manifest_names(backend, final, generation))
        if names is False:
            with contextlib.suppress(Exception):
                await asyncio.shield(backend.call("rm", base, recursive=True))
        if not (names and isinstance(exc, Exception)):
            backend.put_back(final, held)
            raise
        log.info("the manifest of %s landed though its write failed (%s): installed", final, exc)
    backend.forget_listings(f"{final}/{MANIFEST_NAME}")
    await _remove_replaced(backend, final, generation)


async def _recorded(
    backend: FsspecBackend, folder: str, digests: dict[str, bytes]
) -> dict[str, tuple[str, bytes]]:
    """The digests of the files written under `folder` (on S3), each with the ETag one listing
    gives it: what the manifest records; none if the listing fails."""
    from fstransport.storage.backends.s3.copy_object import plain_etag

    prefix = f"{folder.removeprefix('s3://').strip('/')}/"
    try:
        found = await backend.call("find", folder, detail=True)
    except Exception as exc:  # (no record: the files are read at the next delta's offer)
        log.info("%s: not listed (%s): no digests recorded", folder, exc)
        return {}
    etags = {
        str(key).lstrip("/").removeprefix(prefix): plain_etag(info.get("ETag"))
        for key, info in found.items()
        if isinstance(info, dict)
    }
    return {path: (etags[path], d) for path, d in digests.items() if etags.get(path)}


async def manifest_names(backend: FsspecBackend, final: str, generation: str) -> bool | None:
    """After a failed or cancelled manifest write: whether the manifest at `final` names
    `generation` (True: the write landed and only its answer was lost, the tree is installed),
    names another or is not there (False: the generation may go), or cannot be read (None)."""
    import json

    backend.forget_listings(f"{final}/{MANIFEST_NAME}")
    try:
        text = await backend.call("cat_file", f"{final}/{MANIFEST_NAME}")
    except FileNotFoundError:
        return False
    except Exception:
        return None
    try:
        return bool(json.loads(text).get("generation") == generation)
    except (ValueError, AttributeError):
        return False


async def _remove_replaced(backend: FsspecBackend, final: str, generation: str) -> None:
    """After a tree's manifest is written: remove what it replaced under `final` (older
    generations, what a crashed install left) and a file snapshot stored at `final` itself."""
    try:
        await backend.drop_replaced_file(final)
        entries = await backend.call("ls", final, detail=False)
        for name in entries:
            path = str(name).rstrip("/")
            if not path.lstrip("/").startswith(f"{final.lstrip('/')}/"):
                continue  # (a listing of a file names the file itself)
            if path.rsplit("/", 1)[-1] not in (generation, MANIFEST_NAME):
                await backend.call("rm", path, recursive=True)
    except Exception as exc:
        log.warning("could not remove older generations of %s: %s", final, exc)
