"""Starting the write-back of a file's dirty pages early (Linux ``sync_file_range``).

A delta's assembly copies most of a large file inside the kernel; those pages are dirty until
the kernel writes them back.  ext4 writes back a new file's data when it is renamed over an old
one (its ``auto_da_alloc`` rule), so without an early start the install's ``rename`` waits for
the whole file to reach the disk (about 0.8 s for 1 GiB on the machine in ``docs/delta.md``).
`start_writeback` asks the kernel to begin writing a range now (``SYNC_FILE_RANGE_WRITE``: it
does not wait for the disk), so the writing overlaps the copying of the next ranges.

It is a hint about timing, never about durability: ``fsync`` remains what makes data durable.
Where the call does not exist (not Linux, no libc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

__all__ = ["WRITEBACK_STEP", "Writeback", "start_writeback"]

WRITEBACK_STEP = 8 * 1024 * 1024
"""Bytes written before `Writeback` starts their write-back."""

_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # (a failure only loses the hint)

    return start


_start = _load()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + length)`` of `fd` to its disk."""
    if _start is not None and length > 0:
        _start(fd, offset, length)


class Writeback:
    """Starts the write-back of what is written to one descriptor, `WRITEBACK_STEP` at a time,
    for writes that move forward through the file (`wrote` after each)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._from: int | None = None
        self._to = 0

    def wrote(self, offset: int, length: int) -> None:
        """Note ``[offset, offset + length)`` written; start the write-back of the span noted
        since the last start once it is `WRITEBACK_STEP` long (or the write jumped back)."""
        if self._from is None or offset < self._to:
            self.flush()
            self._from = offset
        self._to = max(self._to, offset + length)
        if self._to - self._from >= WRITEBACK_STEP:
            self.flush()

    def flush(self) -> None:
        """Start the write-back of what was noted and not yet started."""
        if self._from is not None:
            start_writeback(self.fd, self._from, self._to - self._from)
        self._from, self._to = None, 0
