"""Reading a source directory as its packed stream: `open_tree_source` lists the tree (refusing
what it cannot carry), reads every file once for its CRC32C, and returns a `TreeSource`."""

from __future__ import annotations

import asyncio
import bisect
import os
import stat
from collections.abc import Iterator
from typing import Any

from fstransport.checksum import chunk_crc, combine, format_checksum
from fstransport.errors import SourceChanged, StorageError, UnsupportedEntry
from fstransport.messages import Buffer
from fstransport.tree.table import _COPY_BLOCK, TreeFile, TreeTable, tree_path_problem

__all__ = ["TreeSource", "open_tree_source", "scan_summary"]


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "it is a symbolic link"
    if stat.S_ISSOCK(mode):
        return "it is a socket"
    if stat.S_ISFIFO(mode):
        return "it is a FIFO"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "it is a device"
    return "it is not a regular file"


def _walk_local(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The folders and regular files (with sizes) under `root`, sorted, or `UnsupportedEntry`."""
    dirs: list[str] = []
    files: list[tuple[str, int]] = []

    def walk(folder: str, prefix: str) -> None:
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            raise StorageError(folder, "list", exc) from exc
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            shown = os.path.join(root, rel)
            problem = tree_path_problem(rel)
            if problem is not None:
                raise UnsupportedEntry(ascii(shown), f"its name is not safe at a target: {problem}")
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise StorageError(shown, "stat", exc) from exc
            if stat.S_ISDIR(info.st_mode):
                dirs.append(rel)
                walk(entry.path, f"{rel}/")
            elif stat.S_ISREG(info.st_mode):
                files.append((rel, info.st_size))
            else:
                raise UnsupportedEntry(shown, _kind_of(info.st_mode))

    walk(root, "")
    return dirs, files


def _walk_fsspec(fs: Any, root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """`_walk_local` for any fsspec filesystem (object stores have no links or devices)."""
    base = root.rstrip("/")
    try:
        found = fs.find(base, withdirs=True, detail=True)
    except (OSError, ValueError) as exc:
        raise StorageError(fs.unstrip_protocol(base), "list", exc) from exc
    dirs: list[str] = []
    files: list[tuple[str, int]] = []
    for name, info in sorted(found.items()):
        rel = str(name).rstrip("/")[len(base) + 1 :]
        if not rel:
            continue
        shown = fs.unstrip_protocol(str(name))
        problem = tree_path_problem(rel)
        if problem is not None:
            raise UnsupportedEntry(ascii(shown), f"its name is not safe at a target: {problem}")
        kind = info.get("type")
        if kind == "directory":
            dirs.append(rel)
        elif kind == "file":
            files.append((rel, int(info.get("size") or 0)))
        else:
            raise UnsupportedEntry(shown, f"it is of type {kind!r}, not a regular file")
    # a "folder" an object store only implies by its files' names is listed as well
    implied = {"/".join(p.split("/")[:d]) for p, _ in files for d in range(1, p.count("/") + 1)}
    dirs = sorted(set(dirs) | implied)
    files.sort()
    return dirs, files


class TreeSource:
    """A directory read as its packed stream (a `ChunkSource`).

    Open it with `open_tree_source`, which lists the tree (refusing what it cannot carry) and
    reads every file once for its CRC32C, so that the table and the whole checksum are known
    before the first chunk is sent.  A file that changes size afterwards fails the read
    (`SourceChanged`); one that changes its bytes fails the receiver's checks, never installed.
    """

    def __init__(
        self,
        description: str,
        table: TreeTable,
        header: bytes,
        checksum: str,
        opener: Any,
        local_root: str | None,
    ) -> None:
        self.description = description
        self.table = table
        self.size = table.size
        self.checksum = checksum
        self._header = header
        self._starts = [f.offset for f in table.files]
        self._open = opener  # (path) -> (offset, length) -> bytes, for non-local trees
        self._root = local_root

    @property
    def file_count(self) -> int:
        return len(self.table.files)

    def _read_file(self, entry: TreeFile, start: int, length: int) -> bytes:
        if self._root is not None:
            path = os.path.join(self._root, *entry.path.split("/"))
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    grown = os.fstat(fd).st_size != entry.size
                    data = b"" if grown else os.pread(fd, length, start)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StorageError(path, "read", exc) from exc
            if grown:
                raise SourceChanged(
                    path, "read", RuntimeError("the file changed size while shipped")
                )
        else:
            path = entry.path
            data = self._open(entry.path, start, length)
        if len(data) != length:
            raise SourceChanged(path, "read", RuntimeError("the file shrank while it was shipped"))
        return data

    def _pieces(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        end = min(offset + length, self.size)
        if offset < len(self._header):
            yield memoryview(self._header)[offset : min(end, len(self._header))]
        index = max(0, bisect.bisect_right(self._starts, offset) - 1)
        files = self.table.files
        while index < len(files) and files[index].offset < end:
            entry = files[index]
            start = max(offset, entry.offset)
            stop = min(end, entry.offset + entry.size)
            if stop > start:
                yield self._read_file(entry, start - entry.offset, stop - start)
            index += 1

    def _read(self, offset: int, length: int) -> bytes:
        return b"".join(self._pieces(offset, length))

    async def read(self, offset: int, length: int) -> Buffer:
        return await asyncio.to_thread(self._read, offset, length)

    async def close(self) -> None:
        return None


def _local_crc(path: str, size: int) -> int:
    crc, left = 0, size
    try:
        with open(path, "rb", buffering=0) as fileobj:
            while left:
                block = fileobj.read(min(left, 8 * _COPY_BLOCK))
                if not block:
                    raise SourceChanged(
                        path, "read", RuntimeError("the file shrank while it was read")
                    )
                crc = chunk_crc(block, crc)
                left -= len(block)
    except OSError as exc:
        raise StorageError(path, "read", exc) from exc
    return crc


def _scan(url: str, storage_options: dict[str, Any]) -> TreeSource:
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
    except (OSError, ValueError, ImportError) as exc:
        raise StorageError(url, "open", exc) from exc
    root = str(root)
    local = isinstance(fs, LocalFileSystem)
    if local:
        dirs, sized = _walk_local(root)
        crcs = [_local_crc(os.path.join(root, *p.split("/")), size) for p, size in sized]
    else:
        dirs, sized = _walk_fsspec(fs, root)
        crcs = []
        for path, size in sized:
            full = f"{root.rstrip('/')}/{path}"
            crc, seen = 0, 0
            try:
                with fs.open(full, "rb") as fileobj:  # in blocks: a file may be large
                    while block := fileobj.read(8 * _COPY_BLOCK):
                        crc = chunk_crc(block, crc)
                        seen += len(block)
            except (OSError, ValueError) as exc:
                raise StorageError(fs.unstrip_protocol(full), "read", exc) from exc
            if seen != size:
                raise SourceChanged(full, "read", RuntimeError("the file changed while read"))
            crcs.append(crc)
    table, header = TreeTable.build(
        dirs, [(p, s, c) for (p, s), c in zip(sized, crcs, strict=True)]
    )
    whole = chunk_crc(header)
    for entry in table.files:
        whole = combine(whole, entry.crc32c, entry.size)

    def read_remote(path: str, start: int, length: int) -> bytes:
        full = f"{root.rstrip('/')}/{path}"
        try:
            return bytes(fs.cat_file(full, start=start, end=start + length))
        except (OSError, ValueError) as exc:
            raise StorageError(fs.unstrip_protocol(full), "read", exc) from exc

    return TreeSource(
        url, table, header, format_checksum(whole), read_remote, root if local else None
    )


async def open_tree_source(url: str, **storage_options: Any) -> TreeSource:
    """The directory at `url` as a `TreeSource`: listed, checked and read once for its CRCs.

    Raises `UnsupportedEntry` (a symlink, device, socket, FIFO or unsafe name: nothing is
    sent) and `StorageError`."""
    return await asyncio.to_thread(_scan, url, storage_options)


def scan_summary(url: str, **storage_options: Any) -> tuple[int, int]:
    """How many files and bytes the directory at `url` holds (blocking; no file is read).
    Raises what `open_tree_source` raises."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
    except (OSError, ValueError, ImportError) as exc:
        raise StorageError(url, "open", exc) from exc
    if isinstance(fs, LocalFileSystem):
        _, files = _walk_local(str(root))
    else:
        _, files = _walk_fsspec(fs, str(root))
    return len(files), sum(size for _, size in files)
