"""`RangeSet` and `ChunkLedger` against naive models.  Pure data structures: no I/O at all."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import crc32c as reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport.protocol.ranges import ChunkLedger, ChunkRecord, RangeSet


def crc(data: bytes) -> int:
    return int(reference.crc32c(data))


# == RangeSet ================================================================================

POINT = st.integers(min_value=-3, max_value=60)
RANGE_OP = st.tuples(st.sampled_from(["add", "remove"]), POINT, POINT)


def as_ints(ranges: RangeSet) -> set[int]:
    return {i for start, end in ranges for i in range(start, end)}


def model_ranges(points: set[int]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive integers in `points`, as half-open ranges."""
    runs: list[tuple[int, int]] = []
    for i in sorted(points):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def check_rangeset(ranges: RangeSet, model: set[int]) -> None:
    listed = list(ranges)
    # sorted, disjoint, non-adjacent, non-empty
    for start, end in listed:
        assert start < end
    for (_, end_a), (start_b, _) in itertools.pairwise(listed):
        assert end_a < start_b
    assert listed == model_ranges(model)
    assert as_ints(ranges) == model
    assert ranges.total() == len(model)
    assert bool(ranges) == bool(model)
    assert ranges.first() == (listed[0] if listed else None)
    for i in range(-5, 66):
        assert (i in ranges) == (i in model)


def apply_op(ranges: RangeSet, model: set[int], op: tuple[str, int, int]) -> None:
    kind, start, end = op
    if kind == "add":
        ranges.add(start, end)
        model |= set(range(start, end))
    else:
        ranges.remove(start, end)
        model -= set(range(start, end))


@given(st.lists(RANGE_OP, max_size=30))
@settings(max_examples=200)
def test_rangeset_matches_set_of_ints(ops: list[tuple[str, int, int]]) -> None:
    ranges = RangeSet()
    model: set[int] = set()
    check_rangeset(ranges, model)
    for op in ops:
        apply_op(ranges, model, op)
        check_rangeset(ranges, model)


@given(st.lists(st.tuples(POINT, POINT), max_size=15))
@settings(max_examples=100)
def test_rangeset_constructor_equals_repeated_add(pairs: list[tuple[int, int]]) -> None:
    built = RangeSet(pairs)
    added = RangeSet()
    for start, end in pairs:
        added.add(start, end)
    assert built == added
    assert list(RangeSet(iter(pairs))) == list(added)
    check_rangeset(built, {i for s, e in pairs for i in range(s, e)})


@given(st.lists(st.tuples(POINT, POINT), max_size=10), st.permutations(list(range(10))))
@settings(max_examples=100)
def test_rangeset_add_order_does_not_matter(pairs: list[tuple[int, int]], order: list[int]) -> None:
    shuffled = [pairs[i] for i in order if i < len(pairs)]
    assert RangeSet(pairs) == RangeSet(shuffled)


@given(st.lists(RANGE_OP, max_size=20), POINT, POINT)
@settings(max_examples=100)
def test_rangeset_add_then_remove_same_range(
    ops: list[tuple[str, int, int]], start: int, end: int
) -> None:
    ranges = RangeSet()
    model: set[int] = set()
    for op in ops:
        apply_op(ranges, model, op)
    ranges.add(start, end)
    assert all(i in ranges for i in range(start, end))
    ranges.remove(start, end)
    assert not any(i in ranges for i in range(start, end))
    check_rangeset(ranges, model - set(range(start, end)))


def test_rangeset_merges_adjacent_and_overlapping() -> None:
    ranges = RangeSet([(0, 2), (4, 6)])
    assert list(ranges) == [(0, 2), (4, 6)]
    ranges.add(2, 4)  # touches both: one range
    assert list(ranges) == [(0, 6)]
    ranges.add(10, 12)
    ranges.add(5, 11)
    assert list(ranges) == [(0, 12)]
    assert ranges.total() == 12


def test_rangeset_remove_splits() -> None:
    ranges = RangeSet([(0, 10)])
    ranges.remove(3, 5)
    assert list(ranges) == [(0, 3), (5, 10)]
    ranges.remove(0, 3)
    assert list(ranges) == [(5, 10)]
    ranges.remove(9, 100)
    assert list(ranges) == [(5, 9)]
    ranges.remove(0, 100)
    assert list(ranges) == []
    assert not ranges
    assert ranges.first() is None
    assert ranges.total() == 0


@pytest.mark.parametrize(("start", "end"), [(3, 3), (5, 2), (0, 0), (-1, -1)])
def test_rangeset_empty_or_reversed_ranges_are_ignored(start: int, end: int) -> None:
    ranges = RangeSet([(0, 10)])
    ranges.add(start, end)
    assert list(ranges) == [(0, 10)]
    ranges.remove(start, end)
    assert list(ranges) == [(0, 10)]
    assert list(RangeSet([(start, end)])) == []


def test_rangeset_remove_from_empty_and_disjoint() -> None:
    ranges = RangeSet()
    ranges.remove(0, 10)
    assert list(ranges) == []
    ranges.add(20, 30)
    ranges.remove(0, 20)
    ranges.remove(30, 40)
    assert list(ranges) == [(20, 30)]


@pytest.mark.parametrize("probe", ["0", 0.0, None, (0, 1), 1.5])
def test_rangeset_contains_only_ints(probe: object) -> None:
    assert probe not in RangeSet([(0, 10)])


def test_rangeset_equality_and_repr() -> None:
    assert RangeSet([(0, 1), (1, 2)]) == RangeSet([(0, 2)])
    assert RangeSet([(0, 1)]) != RangeSet([(0, 2)])
    assert RangeSet() != [(0, 1)]
    assert RangeSet() == RangeSet()
    assert repr(RangeSet([(1, 3)])) == "RangeSet([(1, 3)])"


# == ChunkLedger =============================================================================


@dataclass
class NaiveLedger:
    """The ledger's rules, spelled out slowly: an overlapping add drops what it overlaps."""

    records: list[ChunkRecord] = field(default_factory=list)

    def add(self, offset: int, length: int, crc_value: int) -> None:
        if length <= 0:
            return
        end = offset + length
        self.records = [r for r in self.records if not (r.offset < end and r.end > offset)]
        self.records.append(ChunkRecord(offset, length, crc_value))
        self.records.sort(key=lambda r: r.offset)

    def discard_from(self, offset: int) -> None:
        self.records = [r for r in self.records if r.end <= offset]

    def covered(self) -> set[int]:
        return {i for r in self.records for i in range(r.offset, r.end)}

    def contiguous_end(self) -> int:
        covered = self.covered()
        end = 0
        while end in covered:
            end += 1
        return end

    def first_gap(self, end: int) -> int | None:
        covered = self.covered()
        return next((i for i in range(end) if i not in covered), None)

    def tiles(self, end: int) -> bool:
        """Whether the records that start below `end` chain from 0 to exactly `end`."""
        reached = 0
        for record in self.records:
            if record.offset >= end:
                break
            if record.offset != reached:
                return False
            reached = record.end
        return reached == end


def check_ledger(ledger: ChunkLedger, model: NaiveLedger, data: bytes | None, limit: int) -> None:
    assert ledger.records() == model.records
    assert len(ledger) == len(model.records)
    assert ledger.held() == RangeSet([(r.offset, r.end) for r in model.records])
    assert ledger.contiguous_end() == model.contiguous_end()
    for end in range(limit + 2):
        assert ledger.first_gap(end) == model.first_gap(end), end
        if data is not None and end <= len(data):
            expected = crc(data[:end]) if model.tiles(end) else None
            assert ledger.whole_crc(end) == expected, end
        elif not model.tiles(end):
            assert ledger.whole_crc(end) is None, end


LEDGER_OP = st.tuples(
    st.sampled_from(["add", "add", "add", "discard"]),
    st.integers(0, 40),
    st.integers(-1, 12),
)


@given(st.lists(LEDGER_OP, max_size=25))
@settings(max_examples=150)
def test_ledger_matches_naive_model(ops: list[tuple[str, int, int]]) -> None:
    ledger = ChunkLedger()
    model = NaiveLedger()
    for kind, offset, length in ops:
        if kind == "add":
            value = (offset * 7919 + length) & 0xFFFFFFFF  # any CRC will do for the structure
            ledger.add(offset, length, value)
            model.add(offset, length, value)
        else:
            ledger.discard_from(offset)
            model.discard_from(offset)
        check_ledger(ledger, model, None, 55)


@st.composite
def data_and_partition(draw: st.DrawFn, max_size: int = 160) -> tuple[bytes, list[int]]:
    """Random bytes and the sorted cut points of a random partition of them into chunks."""
    data = draw(st.binary(max_size=max_size))
    cuts = draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=12))
    points = sorted({0, len(data)} | {c for c in cuts if 0 < c < len(data)})
    return data, points


def chunks_of(points: list[int]) -> list[tuple[int, int]]:
    return [(a, b - a) for a, b in itertools.pairwise(points)]


@given(data_and_partition(), st.randoms(use_true_random=False))
@settings(max_examples=150)
def test_ledger_partition_in_any_order_gives_whole_crc(
    case: tuple[bytes, list[int]], rnd: random.Random
) -> None:
    data, points = case
    chunks = chunks_of(points)
    rnd.shuffle(chunks)
    ledger = ChunkLedger()
    for offset, length in chunks:
        ledger.add(offset, length, crc(data[offset : offset + length]))
    assert ledger.whole_crc(len(data)) == crc(data)
    assert ledger.first_gap(len(data)) is None
    assert ledger.contiguous_end() == len(data)
    assert ledger.held() == RangeSet([(0, len(data))])
    assert len(ledger) == len(chunks)
    # every prefix that ends on a chunk boundary is tiled too; any other prefix is not
    for end in range(len(data) + 1):
        expected = crc(data[:end]) if end in points else None
        assert ledger.whole_crc(end) == expected


@given(data_and_partition(), st.data())
@settings(max_examples=150)
def test_ledger_rechunked_resend_from_a_boundary_tiles(
    case: tuple[bytes, list[int]], draw: st.DataObject
) -> None:
    """A rewind to a chunk boundary, re-sent in order with another chunk size, still tiles."""
    data, points = case
    restart = draw.draw(st.sampled_from(points), label="restart")
    step = draw.draw(st.integers(1, 40), label="step")
    ledger = ChunkLedger()
    model = NaiveLedger()
    for offset, length in chunks_of(points):
        ledger.add(offset, length, crc(data[offset : offset + length]))
        model.add(offset, length, crc(data[offset : offset + length]))
    for offset in range(restart, len(data), step):
        length = min(step, len(data) - offset)
        ledger.add(offset, length, crc(data[offset : offset + length]))
        model.add(offset, length, crc(data[offset : offset + length]))
    check_ledger(ledger, model, data, len(data))
    assert ledger.whole_crc(len(data)) == crc(data)


@given(data_and_partition(), st.data())
@settings(max_examples=150)
def test_ledger_resend_from_inside_a_chunk_leaves_a_gap(
    case: tuple[bytes, list[int]], draw: st.DataObject
) -> None:
    """Re-sending from the middle of a recorded chunk drops that chunk: the head is a gap."""
    data, points = case
    inside = [i for i in range(len(data)) if i not in points]
    if not inside:
        return
    restart = draw.draw(st.sampled_from(inside), label="restart")
    step = draw.draw(st.integers(1, 40), label="step")
    ledger = ChunkLedger()
    for offset, length in chunks_of(points):
        ledger.add(offset, length, crc(data[offset : offset + length]))
    head = max(p for p in points if p < restart)
    for offset in range(restart, len(data), step):
        length = min(step, len(data) - offset)
        ledger.add(offset, length, crc(data[offset : offset + length]))
    assert ledger.first_gap(len(data)) == head
    assert ledger.contiguous_end() == head
    assert ledger.whole_crc(len(data)) is None
    assert ledger.whole_crc(head) == crc(data[:head])
    # re-sending the dropped head repairs it
    ledger.add(head, restart - head, crc(data[head:restart]))
    assert ledger.whole_crc(len(data)) == crc(data)


CHUNKING = st.lists(st.tuples(st.integers(0, 150), st.integers(0, 40)), max_size=25)


@given(st.binary(min_size=1, max_size=150), CHUNKING, CHUNKING)
@settings(max_examples=150)
def test_ledger_overlapping_resends_of_real_data(
    data: bytes, first: list[tuple[int, int]], second: list[tuple[int, int]]
) -> None:
    """Two random, overlapping chunkings of the same bytes, added one after the other."""
    ledger = ChunkLedger()
    model = NaiveLedger()
    for offset, length in first + second:
        offset %= len(data)
        length = min(length, len(data) - offset)
        value = crc(data[offset : offset + length])
        ledger.add(offset, length, value)
        model.add(offset, length, value)
        check_ledger(ledger, model, data, len(data))


@given(st.binary(min_size=1, max_size=120), st.integers(1, 30), st.integers(1, 30))
@settings(max_examples=100)
def test_ledger_full_second_chunking_replaces_the_first(
    data: bytes, step_a: int, step_b: int
) -> None:
    ledger = ChunkLedger()
    for step in (step_a, step_b):
        for offset in range(0, len(data), step):
            piece = data[offset : offset + step]
            ledger.add(offset, len(piece), crc(piece))
    assert ledger.whole_crc(len(data)) == crc(data)
    # the second chunking covers every byte, so it overlaps (and replaces) every first record
    assert [r.length for r in ledger.records()] == [
        min(step_b, len(data) - o) for o in range(0, len(data), step_b)
    ]


def test_ledger_overlap_replaces_neighbours() -> None:
    ledger = ChunkLedger()
    ledger.add(0, 4, 1)
    ledger.add(4, 4, 2)
    ledger.add(8, 4, 3)
    ledger.add(3, 6, 9)  # overlaps all three
    assert ledger.records() == [ChunkRecord(3, 6, 9)]
    assert ledger.first_gap(12) == 0
    assert ledger.contiguous_end() == 0
    assert ledger.whole_crc(9) is None


def test_ledger_adjacent_chunks_do_not_replace() -> None:
    ledger = ChunkLedger()
    ledger.add(0, 4, 1)
    ledger.add(8, 4, 3)
    ledger.add(4, 4, 2)
    assert [r.offset for r in ledger.records()] == [0, 4, 8]
    assert ledger.contiguous_end() == 12


def test_ledger_same_offset_replaces() -> None:
    ledger = ChunkLedger()
    ledger.add(0, 8, 1)
    ledger.add(0, 4, 2)
    assert ledger.records() == [ChunkRecord(0, 4, 2)]
    assert ledger.first_gap(8) == 4


@pytest.mark.parametrize("length", [0, -1, -100])
def test_ledger_ignores_empty_chunks(length: int) -> None:
    ledger = ChunkLedger()
    ledger.add(0, 4, 1)
    ledger.add(2, length, 5)
    assert ledger.records() == [ChunkRecord(0, 4, 1)]


def test_ledger_empty() -> None:
    ledger = ChunkLedger()
    assert len(ledger) == 0
    assert ledger.records() == []
    assert ledger.contiguous_end() == 0
    assert ledger.first_gap(0) is None
    assert ledger.first_gap(5) == 0
    assert ledger.whole_crc(0) == 0  # the CRC of no bytes
    assert ledger.whole_crc(1) is None
    assert not ledger.held()


def test_ledger_whole_crc_none_when_a_chunk_crosses_the_end() -> None:
    data = b"abcdefgh"
    ledger = ChunkLedger()
    ledger.add(0, 4, crc(data[:4]))
    ledger.add(4, 4, crc(data[4:]))
    assert ledger.whole_crc(8) == crc(data)
    assert ledger.whole_crc(4) == crc(data[:4])
    assert ledger.whole_crc(6) is None  # [4, 8) crosses 6
    assert ledger.whole_crc(9) is None  # a gap at 8
    assert ledger.first_gap(6) is None
    assert ledger.first_gap(9) == 8


def test_ledger_discard_from() -> None:
    ledger = ChunkLedger()
    for offset in range(0, 20, 5):
        ledger.add(offset, 5, offset)
    ledger.discard_from(12)  # [10, 15) reaches beyond 12: gone
    assert [r.offset for r in ledger.records()] == [0, 5]
    ledger.discard_from(10)
    assert [r.offset for r in ledger.records()] == [0, 5]
    ledger.discard_from(0)
    assert ledger.records() == []
    assert len(ledger) == 0


def test_chunk_record_end() -> None:
    assert ChunkRecord(offset=3, length=4, crc=0).end == 7
