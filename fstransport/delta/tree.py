"""Delta transfer for directory snapshots, the receiver's side (I/O): identify the files of a
base tree for its offer, map the base files a sender asks for, and fill the copied ranges of the
packed stream from the base tree's files before install.  The sender's side is
`fstransport.delta.tree_send`; the rules are in `fstransport.protocol.delta_tree` (sans I/O);
``docs/delta.md`` has the exchange.

Bases are trees installed in local folders (`PwriteSink` stores) and ``memory://`` stores (a
manifest and a generation); anything else offers nothing and the tree is sent in full.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.delta.local import copy_range, file_crc
from fstransport.delta.receive import _recipe_of
from fstransport.errors import (
    ChecksumMismatch,
    FstransportError,
    InvalidRequest,
    SourceChanged,
    StorageError,
)
from fstransport.messages import DeltaOffer, InstallSnapshotRequest
from fstransport.protocol.delta import SEND, DeltaMap, Recipe, choose_block_size, new_key
from fstransport.protocol.delta_session import max_offer_size
from fstransport.protocol.delta_tree import (
    TreeMap,
    TreeMapBuilder,
    TreeReceiverDelta,
    max_tree_offer_bytes,
    whole_tree_crc,
)
from fstransport.protocol.delta_tree_wire import decode_want, encode_tree_offer
from fstransport.tree.install import load_manifest
from fstransport.tree.source import _walk_local
from fstransport.tree.table import check_tree_path

__all__ = ["answer_want", "assemble_tree", "find_tree_base"]

log = logging.getLogger("fstransport.delta")

_PIECE = 8 * 1024 * 1024
BaseFiles = list[tuple[str, int]]
"""``(path relative to the base's root, size)`` of a base tree's files, in order."""
Reader = Callable[[str, int], Iterator[bytes]]
"""Reads a base file whole, in pieces; `SourceChanged` when it is no longer that size."""


# -- the receiver: a base tree and its offer --------------------------------------------------


def _kind(store: Any) -> str | None:
    """``"local"``, ``"memory"`` or None (no tree delta: S3 and generic stores) for `store`."""
    backend = getattr(store, "backend", None)
    if backend is None or getattr(store, "sink_kind", None) != "auto":
        return None
    from fstransport.storage.backends.local import LocalBackend
    from fstransport.storage.backends.memory import MemoryBackend

    if isinstance(backend, LocalBackend):
        return "local"
    if isinstance(backend, MemoryBackend):
        return "memory"
    return None


def _memory_file(store: Any, path: str) -> Any:
    from fstransport.storage.backends.memory import memory_file

    return memory_file(store.backend.fs, path)


def _local_reader(folder: str) -> Reader:
    def read(path: str, size: int) -> Iterator[bytes]:
        full = os.path.join(folder, *path.split("/"))
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, "rb", buffering=0) as fh:
            if os.fstat(fh.fileno()).st_size != size:
                raise SourceChanged(full, "map", ValueError("the file changed size"))
            left = size
            while left:
                piece = fh.read(min(_PIECE, left))
                if not piece:
                    raise SourceChanged(full, "map", EOFError("the file shrank"))
                left -= len(piece)
                yield piece

    return read


def _memory_reader(store: Any, root: str) -> Reader:
    def read(path: str, size: int) -> Iterator[bytes]:
        found = _memory_file(store, f"{root}/{path}")
        data = b"" if found is None else found.getvalue()
        if len(data) != size:
            raise SourceChanged(f"{root}/{path}", "map", ValueError("the file changed"))
        yield data

    return read


def _local_files(folder: str) -> tuple[BaseFiles, str, Reader] | None:
    """A local folder's files (sizes from the listing) and a reader of them; None if it is no
    folder.  `UnsupportedEntry` for anything but folders and regular files in it."""
    if not os.path.isdir(folder) or os.path.islink(folder):
        return None
    _, files = _walk_local(folder)
    return [(p, n) for p, n in files if n], folder, _local_reader(folder)


def _memory_files(store: Any, tree_path: str) -> tuple[BaseFiles, str, Reader] | None:
    """A ``memory://`` tree's files (from its manifest) and a reader of them; None if there
    is no complete tree."""
    try:
        manifest = load_manifest(store.backend.fs, tree_path)
    except FileNotFoundError:
        return None
    generation, listed = manifest.get("generation"), manifest.get("files")
    if not isinstance(generation, str) or "/" in generation or not isinstance(listed, list):
        return None
    root = f"{tree_path.rstrip('/')}/{generation}"
    files = [(str(check_tree_path(e[0])), int(e[1])) for e in listed if int(e[1])]
    return files, root, _memory_reader(store, root)


def _reader(store: Any, root: str) -> Reader:
    return _local_reader(root) if _kind(store) == "local" else _memory_reader(store, root)


def _identify(read: Reader, files: BaseFiles, mode: str, key: bytes) -> TreeMap:
    """The `TreeMap` of `files` with their identities only (extents: whole pieces)."""
    block = choose_block_size(sum(size for _, size in files))
    builder = TreeMapBuilder(mode, key=key, block_size=block, extents=False)
    for path, size in files:
        for piece in read(path, size):
            builder.update(piece)
        builder.end_file()
    return builder.finish()


async def find_tree_base(
    store: Any, candidates: list[str], mode: str, key: bytes | None, size: int
) -> tuple[TreeReceiverDelta, bytes] | None:
    """The first of `candidates` `store` holds as a tree, its files identified with `key`
    (the sender's, else a fresh one), with its encoded offer; None when there is none, the store
    cannot serve as a base, or the offer would be longer than a sender of a `size`-byte packed
    tree takes.  Extents of files come later, for the files a sender asks for (`answer_want`)."""
    key = key or new_key()
    kind = _kind(store)
    if kind is None:
        return None
    for base_id in dict.fromkeys(candidates):
        try:
            path = store.path(base_id)
            if kind == "local":
                found = await asyncio.to_thread(_local_files, path)
            else:
                found = await asyncio.to_thread(_memory_files, store, path)
            if found is None:
                continue
            files, root, read = found
            tree = await asyncio.to_thread(_identify, read, files, mode, key)
        except Exception as exc:  # a base that cannot be read whole is no base
            log.warning("tree delta base %r could not be read: %s", base_id, exc)
            continue
        if tree.size > max_offer_size(size):
            return None
        encoded = encode_tree_offer(tree)
        if len(encoded) > max_tree_offer_bytes(size):
            return None
        placed = tuple(
            (path, at, length)
            for (path, length), at in zip(files, tree.file_offsets(), strict=True)
        )
        crc = whole_tree_crc(0, list(zip(tree.sizes, tree.crcs, tree.tags, strict=True)))
        delta = TreeReceiverDelta(
            base_id, tree.size, _labelled(tree), files=placed, root=root, stream_crc=crc, tree=tree
        )
        return delta, encoded
    return None


def _labelled(tree: TreeMap) -> DeltaMap:
    """`tree`'s extents under the request's mode, which a recipe must name (only the extents
    are read on the receiver's side)."""
    return replace(tree.extents, mode=tree.mode)


async def answer_want(store: Any, state: Any, req: InstallSnapshotRequest) -> DeltaOffer | None:
    """A sender asks for the extents of some base files (`encode_want` as its recipe): cut them
    and answer with an offer of those files alone (`TreeMap.subset`), in the order asked; None
    when that would be too long."""
    delta = state.delta
    if not isinstance(delta, TreeReceiverDelta) or delta.tree is None or req.recipe is None:
        raise InvalidRequest("base extents asked for without a tree offer", field="recipe")
    tree = delta.tree
    asked = decode_want(req.recipe, len(delta.files))
    numbers = [n for n in asked if not tree.mapped[n]]
    cutter = TreeMapBuilder(tree.mode, key=tree.key, block_size=tree.block_size or 4096)

    def cut() -> dict[int, DeltaMap]:
        read, out = _reader(store, delta.root), {}
        for number in numbers:
            path, _, size = delta.files[number]
            builder = cutter.file_builder()
            for piece in read(path, size):
                builder.update(piece)
            out[number] = builder.finish()
        return out

    try:
        maps = await asyncio.to_thread(cut)
    except (OSError, FstransportError) as exc:  # the base changed: offer it no further
        log.warning("tree delta base %r could not be mapped: %s", delta.base_id, exc)
        return None
    tree = tree.with_maps(maps)
    delta.tree, delta.base_map = tree, _labelled(tree)
    part = tree.subset(asked)
    encoded = encode_tree_offer(part)
    if len(encoded) > max_tree_offer_bytes(state.meta.size or 0):
        return None
    return DeltaOffer(delta.base_id, format_checksum(delta.stream_crc), part.size, encoded)


# -- the receiver: assembly -------------------------------------------------------------------


def _pieces(delta: TreeReceiverDelta, recipe: Recipe) -> list[tuple[int, int, int, int]]:
    """``(target offset, length, base file index, offset in that file)`` of every copied byte
    range, split where the base stream passes from one file to the next."""
    starts = [at for _, at, _ in delta.files]
    out = []
    for at, length, base_at in recipe.targets():
        while base_at != SEND and length:
            index = bisect.bisect_right(starts, base_at) - 1
            _, start, size = delta.files[index]
            take = min(length, start + size - base_at)
            out.append((at, take, index, base_at - start))
            at, base_at, length = at + take, base_at + take, length - take
    return out


def _assemble_local(delta: TreeReceiverDelta, recipe: Recipe, target: str, fsync: bool) -> int:
    """Fill `target`'s copied ranges from the base tree's files (``copy_file_range``); return
    its CRC32C from its bytes.  `SourceChanged` when a base file is gone or of another size."""
    fds: dict[int, int] = {}
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        out = os.open(target, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise StorageError(target, "assemble", exc) from exc
    try:
        for at, length, index, file_at in _pieces(delta, recipe):
            path, _, size = delta.files[index]
            full = os.path.join(delta.root, *path.split("/"))
            if index not in fds:
                try:
                    fds[index] = os.open(full, flags)
                except OSError as exc:
                    raise SourceChanged(full, "reuse", exc) from exc
                if os.fstat(fds[index]).st_size != size:
                    raise SourceChanged(full, "reuse", ValueError("the base file changed size"))
            try:
                copy_range(fds[index], out, file_at, at, length, kernel=True)
            except EOFError as exc:
                raise SourceChanged(full, "reuse", exc) from exc
        os.ftruncate(out, recipe.size)
        crc = file_crc(out, recipe.size)
        if fsync:
            os.fsync(out)
        return crc
    except OSError as exc:
        raise StorageError(target, "assemble", exc) from exc
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)


def _assemble_memory(store: Any, delta: TreeReceiverDelta, recipe: Recipe, path: str) -> int:
    target = _memory_file(store, path)
    if target is None:
        raise SourceChanged(path, "assemble", FileNotFoundError(path))
    for at, length, index, file_at in _pieces(delta, recipe):
        name, _, size = delta.files[index]
        found = _memory_file(store, f"{delta.root}/{name}")
        changed = SourceChanged(f"{delta.root}/{name}", "reuse", ValueError("the base changed"))
        if found is None:
            raise changed
        with found.getbuffer() as data:  # (the piece alone is copied, not the whole file)
            if data.nbytes != size:
                raise changed
            target.seek(at)
            target.write(data[file_at : file_at + length])
    target.truncate(recipe.size)
    with target.getbuffer() as view:
        return chunk_crc(view[: recipe.size])


async def assemble_tree(
    store: Any, sink: Any, delta: TreeReceiverDelta, copied: Any, checksum: str
) -> int:
    """Fill the packed stream's copied ranges (those of `copied` the ledger still holds) from
    the base tree and check its CRC32C, from its bytes, against `checksum`; return the bytes
    copied.  `ChecksumMismatch` (``whole=True``) or `SourceChanged` when the base changed."""
    recipe = _recipe_of(delta, copied)
    if _kind(store) == "local":
        fsync = bool(getattr(store, "fsync", False))
        crc = await asyncio.to_thread(_assemble_local, delta, recipe, sink.path, fsync)
    else:
        crc = _assemble_memory(store, delta, recipe, sink.path)
    if format_checksum(crc) != checksum:
        raise ChecksumMismatch(
            f"directory snapshot assembled from base {delta.base_id!r}",
            checksum,
            format_checksum(crc),
            whole=True,
        )
    return recipe.reused
