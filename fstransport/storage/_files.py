"""Opening local files when descriptors run short for a moment."""

from __future__ import annotations

import errno
import os
import time

__all__ = ["open_fd"]

SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE})
ATTEMPTS = 10
WAIT = 0.01
"""Seconds before the second attempt; each later wait is one `WAIT` longer (0.45 s in all)."""


def open_fd(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open``, tried again for about half a second while the process (EMFILE) or the
    system (ENFILE) has no descriptor free.

    A server under a flood of connections closes the surplus ones within a turn of its event
    loop (see `fstransport.server.make_runner`), but a burst of accepts can hold every
    descriptor for that moment; a store's file opened just then would fail a chunk that a short
    wait lets through.  Call it from a worker thread, never on the event loop: the wait would
    keep the loop from closing the connections that free the descriptors.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return os.open(path, flags, mode)
        except OSError as exc:
            if exc.errno not in SHORTAGE or attempt == ATTEMPTS:
                raise
        time.sleep(WAIT * attempt)
    raise AssertionError("unreachable")  # the last attempt returned or raised
