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

The package has one module per step:

- `fstransport.tree.table`: the format (header, table, naming rules): `TreeTable`,
  `parse_table` (the receiver's strict reading of a hostile sender's table), `check_tree_path`
  (the naming rules both sides apply), `copy_file`;
- `fstransport.tree.source`: `TreeSource`, a local (or any fsspec) directory read as that stream;
- `fstransport.tree.install`: unpacking a verified stream into place (a local folder swapped in,
  or an object store generation with its manifest written last).

Every name is importable from `fstransport.tree` itself.
"""

from __future__ import annotations

from fstransport.tree.install import (
    MANIFEST_NAME,
    STREAM_ABOVE,
    TREE_UPLOADS,
    install_local_tree,
    load_manifest,
    new_generation,
    swap_into_place,
    tree_manifest,
)
from fstransport.tree.source import (
    TreeSource,
    open_tree_source,
    scan_summary,
)
from fstransport.tree.table import (
    FORMAT,
    HEADER_SIZE,
    MAGIC,
    MAX_DEPTH,
    MAX_PATH_LENGTH,
    MAX_TABLE_SIZE,
    TREE,
    VERSION,
    TreeFile,
    TreeTable,
    check_tree_path,
    copy_file,
    parse_header,
    parse_table,
    read_table,
    tree_path_problem,
)

__all__ = [
    "FORMAT",
    "HEADER_SIZE",
    "MAGIC",
    "MANIFEST_NAME",
    "MAX_DEPTH",
    "MAX_PATH_LENGTH",
    "MAX_TABLE_SIZE",
    "STREAM_ABOVE",
    "TREE",
    "TREE_UPLOADS",
    "VERSION",
    "TreeFile",
    "TreeSource",
    "TreeTable",
    "check_tree_path",
    "copy_file",
    "install_local_tree",
    "load_manifest",
    "new_generation",
    "open_tree_source",
    "parse_header",
    "parse_table",
    "read_table",
    "scan_summary",
    "swap_into_place",
    "tree_manifest",
    "tree_path_problem",
]
