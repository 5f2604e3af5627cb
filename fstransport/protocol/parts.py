"""Cutting a snapshot into S3 multipart parts and filling them from chunks.  Pure, no I/O.

S3's rules (not all S3 servers check them, so we do): parts are numbered 1..10,000, every
part but the last is 5 MiB..5 GiB, and completion joins them in ascending order.  The part
size depends only on the snapshot's size, never on the chunk size: chunks smaller than a part,
larger than a part, or straddling two parts all land in the right places.

A chunk that covers whole parts and cannot change under us (``bytes``, a `HandedOver` buffer,
or a read-only view of a read-only ``mmap``) becomes those parts as it is, without a copy; other
data is copied into part buffers, which are reused once their upload is done
(`PartAssembler.recycle`).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

from fstransport.errors import ConfigurationError, SnapshotMismatch
from fstransport.messages import Buffer, SnapshotSegmentId
from fstransport.options import MiB
from fstransport.protocol.ranges import RangeSet

__all__ = [
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "CompletedPart",
    "HandedOver",
    "PartAssembler",
    "PartWrite",
    "choose_part_size",
    "immutable",
]

MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000


def choose_part_size(size: int, preferred: int = 8 * MiB) -> int:
    """The part size for `size` bytes: at least `preferred`, whole MiB, at most 10,000 parts."""
    if size < 0:
        raise ConfigurationError(f"size must not be negative, got {size}")
    needed = -(-size // MAX_PARTS)
    part = max(MIN_PART_SIZE, preferred, -(-needed // MiB) * MiB)
    if part > MAX_PART_SIZE:
        raise ConfigurationError(f"a snapshot of {size} bytes does not fit in {MAX_PARTS} S3 parts")
    return part


@dataclass(frozen=True)
class CompletedPart:
    """A part whose every byte is present: upload `data` as part `number`.

    `crc` is the part's CRC32C when one write brought exactly this part with its CRC (so it
    need not be computed again), else None.
    """

    number: int
    offset: int
    data: Buffer
    crc: int | None = None


@dataclass(frozen=True)
class PartWrite:
    """What one write did: parts it completed, and byte ranges it made the sink forget.

    A write into a part that was already completed starts that part over (the last write wins);
    the part's other bytes must then be sent again, so they are reported in `lost`.
    """

    completed: list[CompletedPart] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _OpenPart:
    buffer: bytearray
    filled: RangeSet


class PartAssembler:
    """Collects chunks into part buffers and hands out each part once all its bytes are in.

    Rules, which keep a part's bytes from two different passes from being mixed:

    - A write that begins a part (its piece starts at the part's first byte) starts that part
      afresh when it was already completed: the last write wins, and the part is uploaded again.
    - A write into the middle of a completed part is refused with `SnapshotMismatch` expecting
      the part's first byte, so that the whole part is sent again in order.
    - At most `max_open_parts` parts are held in memory while being filled; a chunk that would
      open one more is refused with `SnapshotMismatch` naming the first byte still missing.
    - `rewind` forgets bytes the sender is about to send again, so a part is not completed early
      from stale bytes and then hit mid-way by the rest of the new pass.

    A refused write changes nothing.
    """

    def __init__(
        self, snapshot_id: str, size: int, part_size: int, max_open_parts: int = 8
    ) -> None:
        if part_size < 1 or max_open_parts < 1:
            raise ConfigurationError("part_size and max_open_parts must be positive")
        self.snapshot_id = snapshot_id
        self.size = size
        self.part_size = part_size
        self.max_open_parts = max_open_parts
        self.part_count = max(1, -(-size // part_size))
        self.spare_limit = max_open_parts
        self._open: dict[int, _OpenPart] = {}
        self._completed: set[int] = set()
        self._spare: list[bytearray] = []
        self.copied_parts = 0
        """Parts assembled by copying chunks into a part buffer (the others were adopted)."""

    def part_range(self, number: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of part `number` (1-based)."""
        start = (number - 1) * self.part_size
        return start, min(self.size, start + self.part_size)

    def part_of(self, offset: int) -> int:
        """The number of the part holding byte `offset`."""
        return offset // self.part_size + 1

    @property
    def completed(self) -> frozenset[int]:
        return frozenset(self._completed)

    @property
    def open_parts(self) -> list[int]:
        return sorted(self._open)

    def first_missing(self) -> int | None:
        """The first byte no completed part holds, or None when every part is complete."""
        for number in range(1, self.part_count + 1):
            if number not in self._completed:
                start, end = self.part_range(number)
                part = self._open.get(number)
                if part is None or start == end:
                    return start
                first = part.filled.first()
                return end if first is None else (first[1] if first[0] == start else start)
        return None

    def _mismatch(self, expect: int, got: int) -> SnapshotMismatch:
        return SnapshotMismatch(
            expect=SnapshotSegmentId(self.snapshot_id, expect),
            got=SnapshotSegmentId(self.snapshot_id, got),
        )

    def write(self, offset: int, data: Buffer, crc: int | None = None) -> PartWrite:
        """Put `data` (which belongs at `offset`, CRC32C `crc` if known) into its parts; report
        what completed.  Whole parts of immutable data are taken as they are, the rest copied."""
        view = memoryview(data).cast("B")
        end = offset + view.nbytes
        if offset < 0 or end > self.size:
            raise ValueError(f"write [{offset}, {end}) outside the snapshot of {self.size} bytes")
        if view.nbytes == 0:
            return PartWrite()
        touched = range(self.part_of(offset), self.part_of(end - 1) + 1)
        adoptable = immutable(data)
        opening = 0
        for number in touched:
            start, stop = self.part_range(number)
            if number in self._completed and max(start, offset) != start:
                raise self._mismatch(start, offset)
            if number not in self._open and not (adoptable and offset <= start and stop <= end):
                opening += 1  # (a part adopted whole is never open)
        if len(self._open) + opening > self.max_open_parts:
            expect = self.first_missing()
            raise self._mismatch(offset if expect is None else expect, offset)
        result = PartWrite()
        for number in touched:
            start, stop = self.part_range(number)
            lo, hi = max(start, offset), min(stop, end)
            part = self._open.get(number)
            if part is None and adoptable and (lo, hi) == (start, stop):
                self._completed.add(number)  # (again, if it was: the last write wins)
                whole = crc if (offset, end) == (start, stop) else None
                result.completed.append(
                    CompletedPart(number, start, view[lo - offset : hi - offset], whole)
                )
                continue
            if part is None:
                part = _OpenPart(self._buffer(stop - start), RangeSet())
                self._open[number] = part
                if number in self._completed:  # the last write wins: this part starts over
                    self._completed.discard(number)
                    if hi < stop:
                        result.lost.append((hi, stop))
            part.buffer[lo - start : hi - start] = view[lo - offset : hi - offset]
            part.filled.add(lo, hi)
            if part.filled.first() == (start, stop):
                del self._open[number]
                self._completed.add(number)
                self.copied_parts += 1
                result.completed.append(CompletedPart(number, start, part.buffer))
        return result

    def _buffer(self, length: int) -> bytearray:
        """A part buffer of `length` bytes: a spare one if there is one of that size (its old
        bytes are all overwritten before the part completes), else a new one."""
        for index, spare in enumerate(self._spare):
            if len(spare) == length:
                return self._spare.pop(index)
        return bytearray(length)

    def recycle(self, part: CompletedPart) -> None:
        """`part` was uploaded and nothing refers to its buffer any more: keep the buffer for a
        later part (at most `spare_limit` are kept).  Adopted data is left alone."""
        data = part.data
        if type(data) is not bytearray or len(data) != self.part_size:
            return
        if len(self._spare) < self.spare_limit and all(s is not data for s in self._spare):
            self._spare.append(data)

    def rewind(self, offset: int) -> tuple[int, list[tuple[int, int]]]:
        """The sender will send everything from some point on again: return that point for a
        sender missing byte `offset`, and the ranges forgotten to make room for the new pass.

        In a completed part the point is the part's first byte (all of it is sent again).  In a
        part being filled it is `offset`, and the part's bytes after `offset` are forgotten, as
        are all parts being filled further on.
        """
        number = self.part_of(offset)
        if number in self._completed:
            return self.part_range(number)[0], []
        lost: list[tuple[int, int]] = []
        for other in sorted(self._open):
            if other < number:
                continue
            part = self._open[other]
            start, stop = self.part_range(other)
            cut = max(start, offset)
            dropped = RangeSet(part.filled)
            dropped.remove(start, cut)
            lost.extend(dropped)
            part.filled.remove(cut, stop)
            if not part.filled:
                del self._open[other]
        return offset, lost

    def mark_completed(self, number: int) -> None:
        """Record that part `number` is complete elsewhere (an upload being resumed)."""
        if not 1 <= number <= self.part_count:
            raise ValueError(f"no part {number} in a snapshot of {self.part_count} parts")
        self._open.pop(number, None)
        self._completed.add(number)

    def forget(self, number: int) -> None:
        """Part `number` is not complete after all (its upload is gone, or differs from what
        was recorded): it is filled again from the chunks sent next."""
        self._completed.discard(number)

    def reset(self) -> None:
        """Forget every part, open or completed."""
        self._open.clear()
        self._completed.clear()
        self._spare.clear()


class HandedOver(bytearray):
    """A buffer its producer fills once and then gives away for good: nobody writes to it after
    handing it out (the S3 source reads each chunk into one), so a sink may keep it as a part
    without copying it."""


def immutable(data: Buffer) -> bool:
    """Whether `data` cannot change while a part holds it: ``bytes`` or a `HandedOver` buffer, a
    view of either, or a read-only view of a read-only ``mmap`` (a file mapped by the source)."""
    if isinstance(data, (bytes, HandedOver)):
        return True
    if isinstance(data, memoryview):
        base = data.obj
        if isinstance(base, HandedOver) or (isinstance(base, bytes) and data.readonly):
            return True
        if not data.readonly:
            return False
        if isinstance(base, mmap.mmap):
            try:
                with memoryview(base) as whole:
                    return whole.readonly
            except ValueError:  # a closed mapping
                return False
    return False
