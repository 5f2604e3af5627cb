"""`BufferPool`: reusable chunk buffers, handed out again only once nobody else holds them.

A fresh multi-MiB `bytearray` is zeroed and page-faulted in on first touch, which costs several
times a copy into one that is mapped already.  Both ends reuse chunk buffers: the receiver
server reads request bodies into them, and the local file source reads chunks into them.
Reuse is safe by construction: a buffer given back is only handed out again once the pool's own
lists are its only referrers (a memoryview slice, a request, a sink or a worker thread that
still holds it keeps it out of reach).  The pool is not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import sys

__all__ = ["BufferPool"]


class BufferPool:
    """Chunk buffers kept for later chunks of the same length.

    A fresh 8 MiB `bytearray` is zeroed and page-faulted in on every chunk, which costs several
    times the copy of the body into it; a reused one is mapped already.  A buffer given back is
    reused only once nothing but the pool refers to it: a sink may keep a chunk after its
    ``write`` returns (a reorder buffer), and a worker thread may still hold one for a moment
    after its result is in (see `_reclaim`).  At most `max_bytes` are kept, oldest dropped
    first; `clear` drops them all.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: list[bytearray] = []  # oldest first
        self._pending: list[bytearray] = []  # given back, maybe still used elsewhere
        self._held = 0

    @property
    def held(self) -> int:
        """Bytes in the buffers the pool keeps (free or pending)."""
        return self._held

    def take(self, length: int) -> bytearray:
        """A buffer of exactly `length` bytes: a free one (its old bytes still in it) or new."""
        self._reclaim()
        for i in range(len(self._free) - 1, -1, -1):
            if len(self._free[i]) == length:
                self._held -= length
                return self._free.pop(i)
        return bytearray(length)

    def give(self, buffer: bytearray) -> None:
        """Keep `buffer` for a later `take` (once nobody else refers to it), room permitting."""
        while self._free and self._held + len(buffer) > self.max_bytes:
            self._held -= len(self._free.pop(0))
        if self._held + len(buffer) <= self.max_bytes:
            self._pending.append(buffer)
            self._held += len(buffer)

    def clear(self) -> None:
        self._free.clear()
        self._pending.clear()
        self._held = 0

    def _reclaim(self) -> None:
        """Move the pending buffers nobody else refers to any more to the free list.

        A buffer's references are counted beside those of a probe that only the pending list
        holds, the same way, so the count does not depend on how the interpreter counts."""
        if not self._pending or not hasattr(sys, "getrefcount"):  # no counts: never reuse
            return
        pending = self._pending
        pending.append(bytearray())
        counts = [sys.getrefcount(buffer) for buffer in pending]
        pending.pop()
        alone = counts.pop()
        self._pending = []
        for buffer, count in zip(pending, counts, strict=True):
            (self._free if count == alone else self._pending).append(buffer)
