"""Delta transfer's assembly: building a new snapshot from a base plus the bytes that differ,
on a local file system (`local`) and on S3 without downloading the base (`s3`).  The maps and
recipes themselves are in `fstransport.protocol.delta` (sans I/O).  See ``docs/delta.md``."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["tree_segments"]


def tree_segments(file_offsets: Sequence[int]) -> list[int]:
    """Where CDC starts afresh in a packed tree: at every file body (``TreeFile.offset``), so
    that a file unchanged between two trees is cut into the same chunks wherever it lands and
    is never sent."""
    return sorted(set(file_offsets))
