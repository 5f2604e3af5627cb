"""A bounded reorder buffer for targets that can only be written front to back.  Pure, no I/O.

Chunks arrive out of order when several are in flight.  `ReorderBuffer` hands back the bytes
that can be written now, in order, keeps chunks that arrived early (up to `limit` bytes past
the write position), and refuses a chunk further ahead with `SnapshotMismatch` naming the
write position, so the sender continues from there.  Bytes before the write position are
already written and cannot change: re-sent copies of them are dropped.
"""

from __future__ import annotations

from fstransport.errors import ConfigurationError, SnapshotMismatch
from fstransport.messages import Buffer, SnapshotSegmentId

__all__ = ["ReorderBuffer"]


class ReorderBuffer:
    """Orders chunks for a sequential writer; see the module docstring."""

    def __init__(self, snapshot_id: str, limit: int) -> None:
        if limit < 0:
            raise ConfigurationError(f"limit must not be negative, got {limit}")
        self.snapshot_id = snapshot_id
        self.limit = limit
        self.position = 0
        self._early: dict[int, memoryview] = {}
        self._held = 0

    @property
    def buffered(self) -> int:
        """Bytes held for later."""
        return self._held

    def push(self, offset: int, data: Buffer) -> list[memoryview]:
        """Accept a chunk; return the pieces to write now, in order (possibly none)."""
        view = memoryview(data).cast("B")
        end = offset + view.nbytes
        if end <= self.position or view.nbytes == 0:
            return []  # already written
        if offset > self.position:
            if end - self.position > self.limit:
                raise SnapshotMismatch(
                    expect=SnapshotSegmentId(self.snapshot_id, self.position),
                    got=SnapshotSegmentId(self.snapshot_id, offset),
                )
            old = self._early.get(offset)
            if old is None or old.nbytes < view.nbytes:
                self._held += view.nbytes - (old.nbytes if old is not None else 0)
                self._early[offset] = view
            return []
        ready = [view[self.position - offset :]]
        self.position = end
        while self._early:
            progressed = False
            for start in sorted(self._early):
                piece = self._early[start]
                if start > self.position:
                    break
                del self._early[start]
                self._held -= piece.nbytes
                if start + piece.nbytes > self.position:
                    ready.append(piece[self.position - start :])
                    self.position = start + piece.nbytes
                progressed = True
            if not progressed:
                break
        return ready
