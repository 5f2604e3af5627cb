"""The packed stream of a directory snapshot: its header, its file table, and the naming rules.

A hostile sender's table is read by `parse_table` (strict JSON, every path checked by
`check_tree_path`, sizes that add up); `TreeTable.build` writes one; `copy_file` copies one
file's bytes out of the packed stream, checking its CRC32C.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from fstransport.checksum import chunk_crc, format_checksum, parse_checksum
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.protocol.receiver import check_snapshot_id

__all__ = [
    "FORMAT",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_PATH_LENGTH",
    "MAX_TABLE_SIZE",
    "TREE",
    "VERSION",
    "TreeFile",
    "TreeTable",
    "check_tree_path",
    "copy_file",
    "parse_header",
    "parse_table",
    "read_table",
    "tree_path_problem",
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
