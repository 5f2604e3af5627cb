"""Installing a verified tree: unpacked into a fresh local folder and swapped into place, or
written to an object store as a generation named by a manifest written last."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import IO, Any

from fstransport.tree.table import TreeTable, copy_file

__all__ = [
    "DIGESTS",
    "DIGEST_PREFIX",
    "MANIFEST_NAME",
    "STREAM_ABOVE",
    "TREE_UPLOADS",
    "install_local_tree",
    "load_manifest",
    "new_generation",
    "swap_into_place",
    "tree_manifest",
]

MANIFEST_NAME = "fstransport-tree.json"
"""The object that marks a complete tree on an object store: ``<target>/fstransport-tree.json``,
written after every file of the generation it names."""
STREAM_ABOVE = 32 * 1024 * 1024
"""Files larger than this are streamed into the object store, not held in memory whole."""
TREE_UPLOADS = 8
"""Files of a tree written to an object store at once."""
DIGESTS = "digests"
"""The manifest's key for the files' digests recorded at install (`tree_manifest`)."""
DIGEST_PREFIX = "blake3:"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def new_generation() -> str:
    """A fresh, sortable name for one installed version of a tree on an object store."""
    import secrets
    import time

    return f"g-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def tree_manifest(
    meta: Any,
    table: TreeTable,
    generation: str,
    digests: Mapping[str, tuple[str, bytes]] | None = None,
) -> bytes:
    """The manifest of a tree installed under `generation` (see ``docs/directories.md``);
    `digests` (``path -> (ETag as installed, BLAKE3 digest)``) adds ``"digests"``:
    ``[path, size, ETag, "blake3:<hex>"]`` per file that has one, in the table's order."""
    fields: dict[str, Any] = {
        **table.entries(),
        "snapshot_id": meta.snapshot_id,
        "checksum": meta.checksum,
        "size": meta.size,
        "generation": generation,
        "files_bytes": table.total_bytes,
    }
    if digests:
        fields[DIGESTS] = [
            [f.path, f.size, digests[f.path][0], f"{DIGEST_PREFIX}{digests[f.path][1].hex()}"]
            for f in table.files
            if f.path in digests and f.size
        ]
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
