"""Directory snapshots: a tree of regular files packed into one byte stream, and back.

The packed stream (see ``docs/directories.md``)::

    b"FSTTREE1"            8 bytes: magic and format version
    table length           8 bytes, unsigned big-endian
    table                  UTF-8 JSON: {"format": "fstransport-tree", "version": 1,
                                        "dirs": [path, ...], "files": [[path, size, crc], ...]}
    file bodies            each file's bytes, in the table's order, nothing between them

It is sent like any file snapshot (chunks, CRCs, window, resume), with ``SnapshotMeta(kind=
"tree")``; the receiver unpacks it only after the whole checksum is verified.  The table's
per-file sizes and CRC32Cs are what a later delta step compares against a base tree.

`TreeSource` reads a local (or any fsspec) directory as that stream; `parse_table` is the
receiver's strict reading of a table from a hostile sender; `check_tree_path` the naming rules
both sides apply.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from fstransport.checksum import chunk_crc, combine, format_checksum, parse_checksum
from fstransport.errors import (
    ConfigurationError,
    InvalidRequest,
    SourceChanged,
    StorageError,
    UnsupportedEntry,
)
from fstransport.messages import Buffer
from fstransport.protocol.receiver import check_snapshot_id

__all__ = [
    "MAGIC",
    "MAX_TABLE_SIZE",
    "TREE",
    "TreeFile",
    "TreeSource",
    "TreeTable",
    "check_tree_path",
    "load_manifest",
    "open_tree_source",
    "parse_table",
    "read_table",
]

TREE = "tree"
"""`SnapshotMeta.kind` of a directory snapshot."""
MAGIC = b"FSTTREE1"
_HEADER = struct.Struct(">8sQ")
HEADER_SIZE = _HEADER.size
FORMAT = "fstransport-tree"
VERSION = 1
MAX_TABLE_SIZE = 64 * 1024 * 1024
"""The largest file table a receiver reads (it is held in memory while the tree is unpacked)."""
MAX_PATH_LENGTH = 4096
"""Bytes of UTF-8 a path inside a tree may take (Linux's ``PATH_MAX``)."""
MAX_DEPTH = 256
"""How deeply folders may nest inside a tree."""
_COPY_BLOCK = 1024 * 1024


# -- names -----------------------------------------------------------------------------------------


def tree_path_problem(path: object) -> str | None:
    """Why `path` (``/``-separated, relative) is not safe inside a tree, or None if it is.

    Each component must pass `check_snapshot_id`'s rules (no ``.``, ``..``, ``.fstransport``,
    separators, control or format characters, white space at either end, leading ``-``,
    trailing ``.``, at most 255 bytes); the whole path is relative, at most `MAX_PATH_LENGTH`
    bytes and `MAX_DEPTH` components deep.
    """
    if not isinstance(path, str) or not path:
        return "a path must be a non-empty string"
    try:
        length = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "the name is not valid Unicode"
    if length > MAX_PATH_LENGTH:
        return f"the path is {length} bytes long; at most {MAX_PATH_LENGTH} are allowed"
    if path.startswith("/"):
        return "the path is absolute"
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        return f"the path is {len(parts)} folders deep; at most {MAX_DEPTH} are allowed"
    for part in parts:
        try:
            check_snapshot_id(part)
        except InvalidRequest as exc:
            return str(exc).replace("snapshot id", "name")
    return None


def check_tree_path(path: object) -> str:
    """`path` if it is safe inside a tree (see `tree_path_problem`), else `InvalidRequest`."""
    problem = tree_path_problem(path)
    if problem is not None:
        raise InvalidRequest(f"tree entry {str(path)[:200]!a}: {problem}", field="tree")
    assert isinstance(path, str)
    return path


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeFile:
    """One regular file of a tree: its path, size, CRC32C, and where its bytes begin in the
    packed stream."""

    path: str
    size: int
    crc32c: int
    offset: int


@dataclass(frozen=True)
class TreeTable:
    """A tree's folders and files, and the packed stream's layout."""

    dirs: tuple[str, ...]
    files: tuple[TreeFile, ...]
    body_offset: int
    """Where the first file's bytes begin (the header's and the table's length)."""

    @property
    def total_bytes(self) -> int:
        """The files' bytes together."""
        return sum(f.size for f in self.files)

    @property
    def size(self) -> int:
        """The packed stream's length."""
        return self.body_offset + self.total_bytes

    def entries(self) -> dict[str, Any]:
        """The table as JSON data (what the packed stream and an S3 manifest carry)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "dirs": list(self.dirs),
            "files": [[f.path, f.size, format_checksum(f.crc32c)] for f in self.files],
        }

    @classmethod
    def build(cls, dirs: list[str], files: list[tuple[str, int, int]]) -> tuple[TreeTable, bytes]:
        """The table of `dirs` and `files` (``(path, size, crc32c)``) and its packed header."""
        entries = {
            "format": FORMAT,
            "version": VERSION,
            "dirs": dirs,
            "files": [[path, size, format_checksum(crc)] for path, size, crc in files],
        }
        table = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        header = _HEADER.pack(MAGIC, len(table)) + table
        placed, offset = [], len(header)
        for path, size, crc in files:
            placed.append(TreeFile(path, size, crc, offset))
            offset += size
        return cls(tuple(dirs), tuple(placed), len(header)), header


def _bad(message: str) -> NoReturn:
    raise InvalidRequest(f"directory snapshot: {message}", field="tree")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields = dict(pairs)
    if len(fields) != len(pairs):
        _bad("its table repeats a key")
    return fields


def _no_float(text: str) -> NoReturn:
    _bad(f"its table holds a non-integer number {text[:32]!r}")


def parse_header(header: bytes, packed_size: int) -> int:
    """The table's length from the first `HEADER_SIZE` bytes; `InvalidRequest` unless it is a
    tree of format 1 whose table fits in `packed_size` and `MAX_TABLE_SIZE`."""
    if len(header) < HEADER_SIZE:
        _bad(f"{packed_size} bytes are too few for its header")
    magic, length = _HEADER.unpack(header[:HEADER_SIZE])
    if magic != MAGIC:
        _bad("it does not begin with the tree format's magic bytes")
    if length > MAX_TABLE_SIZE:
        _bad(f"its table of {length} bytes exceeds the limit of {MAX_TABLE_SIZE}")
    if HEADER_SIZE + length > packed_size:
        _bad(f"its table of {length} bytes reaches beyond its size {packed_size}")
    return int(length)


def parse_table(table: bytes, packed_size: int, max_files: int | None) -> TreeTable:
    """A hostile sender's table, checked: strict JSON of the documented shape, every path safe
    (`check_tree_path`), no path twice, no file where another entry needs a folder, at most
    `max_files` entries, and sizes that add up to exactly `packed_size`.

    Raises `InvalidRequest` (field ``tree``)."""
    try:
        data: Any = json.loads(
            table.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        _bad("its table is not UTF-8 JSON")
    if not isinstance(data, dict) or set(data) != {"format", "version", "dirs", "files"}:
        _bad("its table must be an object of format, version, dirs and files")
    if data["format"] != FORMAT or data["version"] != VERSION:
        _bad(f"unknown table format {data['format']!r} version {data['version']!r}")
    dirs, files = data["dirs"], data["files"]
    if not isinstance(dirs, list) or not isinstance(files, list):
        _bad("dirs and files must be lists")
    if max_files is not None and len(dirs) + len(files) > max_files:
        _bad(f"{len(dirs) + len(files)} entries exceed the receiver's limit of {max_files}")
    seen: set[str] = set()
    for path in dirs:
        check_tree_path(path)
        if path in seen:
            _bad(f"folder {path!a} is listed twice")
        seen.add(path)
    body_offset = HEADER_SIZE + len(table)
    offset = body_offset
    placed = []
    file_paths: set[str] = set()
    for entry in files:
        if not (isinstance(entry, list) and len(entry) == 3):
            _bad("each file must be [path, size, checksum]")
        path, size, checksum = entry
        check_tree_path(path)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            _bad(f"file {path!a} has a bad size {size!r}")
        if not isinstance(checksum, str):
            _bad(f"file {path!a} has a bad checksum")
        try:
            crc = parse_checksum(checksum)
        except ConfigurationError as exc:
            _bad(f"file {path!a}: {exc}")
        if path in seen:
            _bad(f"{path!a} is listed twice")
        seen.add(path)
        file_paths.add(path)
        placed.append(TreeFile(path, size, crc, offset))
        offset += size
    for path in seen:  # no entry may sit inside a file
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in file_paths:
                _bad(f"{path!a} lies inside the file {'/'.join(parts[:depth])!a}")
    if offset != packed_size:
        _bad(f"its table and files add up to {offset} bytes, not its size {packed_size}")
    return TreeTable(tuple(dirs), tuple(placed), body_offset)


def read_table(fileobj: IO[bytes], packed_size: int, max_files: int | None) -> TreeTable:
    """`parse_table` of the packed stream in `fileobj` (blocking: call it in a worker thread)."""
    fileobj.seek(0)
    length = parse_header(fileobj.read(HEADER_SIZE), packed_size)
    table = fileobj.read(length)
    if len(table) != length:
        _bad("its table ends early")
    return parse_table(table, packed_size, max_files)


def copy_file(src: IO[bytes], entry: TreeFile, write: Any) -> None:
    """Copy `entry`'s bytes from the packed stream `src` to ``write(block)``, checking them
    against the table's CRC32C (blocking).  Raises `InvalidRequest` when they differ."""
    src.seek(entry.offset)
    left, crc = entry.size, 0
    while left:
        block = src.read(min(left, _COPY_BLOCK))
        if not block:
            _bad(f"file {entry.path!a} ends early")
        crc = chunk_crc(block, crc)
        write(block)
        left -= len(block)
    if crc != entry.crc32c:
        _bad(
            f"file {entry.path!a} does not match its CRC32C "
            f"({crc:08x}, the table says {entry.crc32c:08x})"
        )


# -- reading a source tree ---------------------------------------------------------------------


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


# -- installing a tree -----------------------------------------------------------------------------

MANIFEST_NAME = "fstransport-tree.json"
"""The object that marks a complete tree on an object store: ``<target>/fstransport-tree.json``,
written after every file of the generation it names."""
STREAM_ABOVE = 32 * 1024 * 1024
"""Files larger than this are streamed into the object store, not held in memory whole."""
TREE_UPLOADS = 8
"""Files of a tree written to an object store at once."""
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def new_generation() -> str:
    """A fresh, sortable name for one installed version of a tree on an object store."""
    import secrets
    import time

    return f"g-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def tree_manifest(meta: Any, table: TreeTable, generation: str) -> bytes:
    """The manifest of a tree installed under `generation` (see ``docs/directories.md``)."""
    fields = {
        **table.entries(),
        "snapshot_id": meta.snapshot_id,
        "checksum": meta.checksum,
        "size": meta.size,
        "generation": generation,
        "files_bytes": table.total_bytes,
    }
    return json.dumps(fields, ensure_ascii=False, indent=1).encode("utf-8")


def load_manifest(fs: Any, tree_path: str) -> dict[str, Any]:
    """The manifest of the complete tree at `tree_path` on an object store (blocking).

    Its ``files`` are ``[path, size, "crc32c:%08x"]``; each file's bytes are the object
    ``<tree_path>/<generation>/<path>``.  Raises ``FileNotFoundError`` while there is no
    complete tree there."""
    text = fs.cat_file(f"{tree_path.rstrip('/')}/{MANIFEST_NAME}")
    manifest: dict[str, Any] = json.loads(text)
    return manifest


def _exchange(a: str, b: str) -> bool:
    """Swap `a` and `b` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the filesystem cannot, and nothing was done."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def swap_into_place(staging: str, final: str, old_root: str) -> None:
    """Make the folder `staging` appear as `final`, replacing what is there as atomically as
    the filesystem allows: one exchange where Linux has ``renameat2``, else rename the old
    away, the new in (putting the old back if that fails), then remove the old."""
    import tempfile

    try:
        os.rename(staging, final)  # nothing there (or an empty folder): one step
        return
    except FileNotFoundError:
        raise
    except OSError:
        if not os.path.lexists(final):
            raise
    if _exchange(staging, final):
        _remove(staging)  # (it holds the old tree now)
        return
    os.makedirs(old_root, exist_ok=True)
    old = tempfile.mkdtemp(prefix="old-", dir=old_root)
    moved = os.path.join(old, "tree")
    os.rename(final, moved)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(moved, final)
        raise
    finally:
        _remove(old)


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_local_tree(
    data: IO[bytes],
    table: TreeTable,
    final: str,
    staging_root: str,
    old_root: str,
    *,
    fsync: bool = False,
) -> None:
    """Unpack the packed stream `data` (whose `table` was checked) into a fresh folder under
    `staging_root`, checking every file's CRC32C, then swap it into place at `final`.  On any
    failure the staging folder is removed and `final` is as it was (blocking)."""
    import tempfile

    os.makedirs(staging_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="tree-", dir=staging_root)
    try:
        os.chmod(staging, 0o755)
        for folder in table.dirs:
            os.makedirs(os.path.join(staging, *folder.split("/")), exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        for entry in table.files:
            path = os.path.join(staging, *entry.path.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with os.fdopen(os.open(path, flags, 0o644), "wb") as out:
                copy_file(data, entry, out.write)
                if fsync:
                    out.flush()
                    os.fsync(out.fileno())
        if fsync:  # the folders' entries too, deepest first, before the tree becomes visible
            for folder in sorted(table.dirs, key=lambda d: d.count("/"), reverse=True):
                _fsync_folder(os.path.join(staging, *folder.split("/")))
            _fsync_folder(staging)
        swap_into_place(staging, final, old_root)
        if fsync:
            _fsync_folder(os.path.dirname(final) or ".")
    except BaseException:
        _remove(staging)
        raise
