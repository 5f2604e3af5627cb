"""Where a store keeps what is not an installed snapshot, under its root (see `store`)."""

from __future__ import annotations

__all__ = [
    "FOLDERS",
    "JOURNAL_DIR",
    "LATEST_FILE",
    "OLD_DIR",
    "PACKED_DIR",
    "PARTIAL_DIR",
    "STAGING_DIR",
]

PARTIAL_DIR = ".fstransport/partial"
"""Snapshots being received (never visible as installed ones)."""
JOURNAL_DIR = ".fstransport/journal"
"""What each partial snapshot holds (a journal; on S3 the upload's state)."""
PACKED_DIR = ".fstransport/packed"
"""On S3, a directory snapshot's packed stream being received."""
STAGING_DIR = ".fstransport/staging"
"""Local folders being unpacked."""
OLD_DIR = ".fstransport/old"
"""Local folders being replaced."""
FOLDERS = (PARTIAL_DIR, JOURNAL_DIR, PACKED_DIR, STAGING_DIR, OLD_DIR)
LATEST_FILE = ".fstransport/latest"
"""The id of the snapshot a long-lived receiver installed last (``Receiver(long_lived=True)``):
a delta's base for a new name after a restart."""
