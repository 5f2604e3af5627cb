"""The peak resident memory one copy adds to this process (Linux; elsewhere not measured)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from collections.abc import Iterator


def _proc_status(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def _reset_peak() -> bool:
    """Reset this process's peak resident size (Linux ``clear_refs``); False if impossible.

    Memory freed earlier is handed back to the system first (``malloc_trim``), or the next copy
    would reuse it without raising the peak and look free."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def peak_memory(out: list[int]) -> Iterator[None]:
    """Append the peak resident memory the block added above what was resident before it."""
    if not _reset_peak():
        yield
        return
    before = _proc_status("VmRSS")
    if before is None:
        yield
        return
    yield
    peak = _proc_status("VmHWM")
    if peak is not None:
        out.append(max(0, peak - before))
