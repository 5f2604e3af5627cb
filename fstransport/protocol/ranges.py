"""Sets of byte ranges, and a ledger of chunks with their CRCs.  Pure data structures, no I/O."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fstransport.checksum import combine

__all__ = ["ChunkLedger", "ChunkRecord", "RangeSet"]


class RangeSet:
    """A set of bytes kept as sorted, disjoint, non-adjacent half-open ranges ``[start, end)``."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with the ranges it touches."""
        if end <= start:
            return
        # ranges whose end >= start and whose start <= end touch the new one
        lo = bisect_left(self._ends, start)
        hi = bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def remove(self, start: int, end: int) -> None:
        """Remove ``[start, end)``."""
        if end <= start:
            return
        lo = bisect_right(self._ends, start)
        hi = bisect_left(self._starts, end)
        if lo >= hi:
            return
        keep: list[tuple[int, int]] = []
        if self._starts[lo] < start:
            keep.append((self._starts[lo], start))
        if self._ends[hi - 1] > end:
            keep.append((end, self._ends[hi - 1]))
        self._starts[lo:hi] = [s for s, _ in keep]
        self._ends[lo:hi] = [e for _, e in keep]

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The ranges of ``[start, end)`` that are not in the set, in order."""
        out: list[tuple[int, int]] = []
        i = bisect_right(self._ends, start)
        at = start
        while at < end and i < len(self._starts) and self._starts[i] < end:
            if self._starts[i] > at:
                out.append((at, self._starts[i]))
            at = max(at, self._ends[i])
            i += 1
        if at < end:
            out.append((at, end))
        return out

    def first(self) -> tuple[int, int] | None:
        """The lowest range, or None when empty."""
        return (self._starts[0], self._ends[0]) if self._starts else None

    def total(self) -> int:
        """Number of bytes in the set."""
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk known to be stored: where it is and the CRC32C of its bytes."""

    offset: int
    length: int
    crc: int

    @property
    def end(self) -> int:
        return self.offset + self.length


class ChunkLedger:
    """Which chunks are held, with their CRCs, so that the whole CRC needs no second read.

    A chunk that overlaps chunks already recorded replaces them: the bytes they covered outside
    the new chunk are no longer vouched for, and show up as a gap (the sender re-sends them).
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._records: dict[int, ChunkRecord] = {}

    def add(self, offset: int, length: int, crc: int) -> None:
        """Record that ``[offset, offset + length)`` holds bytes whose CRC32C is `crc`."""
        if length <= 0:
            return
        end = offset + length
        lo = bisect_left(self._starts, offset)
        if lo > 0 and self._records[self._starts[lo - 1]].end > offset:
            lo -= 1
        hi = bisect_left(self._starts, end)
        for start in self._starts[lo:hi]:
            del self._records[start]
        self._starts[lo:hi] = [offset]
        self._records[offset] = ChunkRecord(offset, length, crc)

    def covers(self, start: int, end: int) -> bool:
        """Whether one recorded chunk holds all of ``[start, end)``."""
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._records[self._starts[i]].end >= end

    def discard(self, start: int, end: int) -> None:
        """Forget every chunk that overlaps ``[start, end)``."""
        lo = bisect_left(self._starts, start)
        if lo > 0 and self._records[self._starts[lo - 1]].end > start:
            lo -= 1
        hi = bisect_left(self._starts, end)
        for key in self._starts[lo:hi]:
            del self._records[key]
        del self._starts[lo:hi]

    def discard_from(self, offset: int) -> None:
        """Forget every chunk that reaches beyond `offset`."""
        keep = [s for s in self._starts if self._records[s].end <= offset]
        for start in self._starts[len(keep) :]:
            del self._records[start]
        self._starts = keep

    def records(self) -> list[ChunkRecord]:
        """The recorded chunks in offset order."""
        return [self._records[s] for s in self._starts]

    def held(self) -> RangeSet:
        """The bytes held, as a `RangeSet`."""
        return RangeSet([(r.offset, r.end) for r in self.records()])

    def contiguous_end(self) -> int:
        """The end of the run of chunks that starts at byte 0 (0 if byte 0 is not held)."""
        end = 0
        for start in self._starts:
            if start != end:
                break
            end = self._records[start].end
        return end

    def first_gap(self, end: int) -> int | None:
        """The first offset below `end` that no chunk covers, or None if ``[0, end)`` is held."""
        reached = self.contiguous_end()
        return reached if reached < end else None

    def whole_crc(self, end: int) -> int | None:
        """The CRC32C of bytes ``[0, end)``, combined from chunk CRCs.

        None when the chunks do not tile ``[0, end)`` exactly (a gap, or a chunk crossing `end`).
        """
        crc = 0
        reached = 0
        for start in self._starts:
            if reached == end:
                break
            record = self._records[start]
            if start != reached or record.end > end:
                return None
            crc = combine(crc, record.crc, record.length)
            reached = record.end
        return crc if reached == end else None

    def __len__(self) -> int:
        return len(self._starts)
