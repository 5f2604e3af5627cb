"""Base trees of local folders and ``memory://`` stores (I/O): their files listed and read for
an offer, and a delta's packed stream filled from them before install.  `LocalDelta` and
`MemoryDelta` (each backend's `DeltaBase`) call these; S3's are in `fstransport.delta.tree_s3`.

A local base is the folder ``ROOT/<id>``, listed as the source side lists one (symbolic links,
devices or unsafe names: no base), its files opened with ``O_NOFOLLOW`` and checked for their
size.  A ``memory://`` base is the generation its manifest names.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Any

from fstransport.checksum import chunk_crc
from fstransport.delta.local import copy_range, file_crc
from fstransport.errors import SourceChanged, StorageError
from fstransport.protocol.delta import SEND, Recipe
from fstransport.storage.base import BaseTree, TreeReader
from fstransport.tree.install import load_manifest
from fstransport.tree.source import _walk_local
from fstransport.tree.table import check_tree_path

__all__ = [
    "PIECE",
    "assemble_local_tree",
    "assemble_memory_tree",
    "local_tree",
    "memory_tree",
    "tree_pieces",
]

PIECE = 8 * 1024 * 1024
"""Bytes of a base file read at a time."""


def tree_pieces(
    placed: tuple[tuple[str, int, int], ...], recipe: Recipe
) -> list[tuple[int, int, int, int]]:
    """``(target offset, length, base file index, offset in that file)`` of every copied byte
    range of `recipe`, split where the base stream (`placed`: ``(path, offset, size)`` of its
    files) passes from one file to the next."""
    starts = [at for _, at, _ in placed]
    out = []
    for at, length, base_at in recipe.targets():
        while base_at != SEND and length:
            index = bisect.bisect_right(starts, base_at) - 1
            _, start, size = placed[max(index, 0)]
            take = min(length, start + size - base_at)
            if index < 0 or take <= 0:  # (accept_recipe keeps copies inside the base)
                raise SourceChanged("delta base", "reuse", ValueError("a range outside the base"))
            out.append((at, take, index, base_at - start))
            at, base_at, length = at + take, base_at + take, length - take
    return out


# -- local folders ------------------------------------------------------------------------------


def _local_reader(folder: str) -> TreeReader:
    def read(path: str, size: int) -> Iterator[bytes]:
        full = os.path.join(folder, *path.split("/"))
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, "rb", buffering=0) as fh:
            if os.fstat(fh.fileno()).st_size != size:
                raise SourceChanged(full, "map", ValueError("the file changed size"))
            left = size
            while left:
                piece = fh.read(min(PIECE, left))
                if not piece:
                    raise SourceChanged(full, "map", EOFError("the file shrank"))
                left -= len(piece)
                yield piece

    return read


def local_tree(snapshot_id: str, folder: str) -> BaseTree | None:
    """The local folder `folder` as a base tree; None if it is no folder (blocking).
    `UnsupportedEntry` for anything but folders and regular files in it."""
    if not os.path.isdir(folder) or os.path.islink(folder):
        return None
    _, files = _walk_local(folder)
    listed = tuple((p, n) for p, n in files if n)
    return BaseTree(snapshot_id, listed, folder, _local_reader(folder))


def assemble_local_tree(base: BaseTree, recipe: Recipe, target: str, fsync: bool) -> int:
    """Fill `target`'s copied ranges from `base`'s files (``copy_file_range``); return its
    CRC32C from its bytes (blocking).  `SourceChanged` when a base file is gone or of another
    size."""
    placed = base.placed()
    fds: dict[int, int] = {}
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        out = os.open(target, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise StorageError(target, "assemble", exc) from exc
    try:
        for at, length, index, file_at in tree_pieces(placed, recipe):
            path, _, size = placed[index]
            full = os.path.join(base.root, *path.split("/"))
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


# -- memory:// ----------------------------------------------------------------------------------


def _memory_file(fs: Any, path: str) -> Any:
    from fstransport.storage.backends.memory import memory_file

    return memory_file(fs, path)


def _memory_reader(fs: Any, root: str) -> TreeReader:
    def read(path: str, size: int) -> Iterator[bytes]:
        found = _memory_file(fs, f"{root}/{path}")
        data = b"" if found is None else found.getvalue()
        if len(data) != size:
            raise SourceChanged(f"{root}/{path}", "map", ValueError("the file changed"))
        yield data

    return read


def memory_tree(snapshot_id: str, fs: Any, tree_path: str) -> BaseTree | None:
    """The ``memory://`` tree at `tree_path` (from its manifest) as a base tree; None if there
    is no complete tree."""
    try:
        manifest = load_manifest(fs, tree_path)
    except FileNotFoundError:
        return None
    generation, listed = manifest.get("generation"), manifest.get("files")
    if not isinstance(generation, str) or "/" in generation or not isinstance(listed, list):
        return None
    root = f"{tree_path.rstrip('/')}/{generation}"
    files = tuple((str(check_tree_path(e[0])), int(e[1])) for e in listed if int(e[1]))
    return BaseTree(snapshot_id, files, root, _memory_reader(fs, root))


def assemble_memory_tree(fs: Any, base: BaseTree, recipe: Recipe, path: str) -> int:
    """Fill the ``memory://`` file `path`'s copied ranges from `base`'s files, piece by piece;
    return its CRC32C from its bytes."""
    target = _memory_file(fs, path)
    if target is None:
        raise SourceChanged(path, "assemble", FileNotFoundError(path))
    placed = base.placed()
    for at, length, index, file_at in tree_pieces(placed, recipe):
        name, _, size = placed[index]
        found = _memory_file(fs, f"{base.root}/{name}")
        changed = SourceChanged(f"{base.root}/{name}", "reuse", ValueError("the base changed"))
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
