"""S3 part geometry, the part assembler and the reorder buffer, without I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport import ConfigurationError, SnapshotMismatch
from fstransport.options import MiB
from fstransport.protocol.parts import (
    MAX_PARTS,
    MIN_PART_SIZE,
    PartAssembler,
    choose_part_size,
)
from fstransport.protocol.reorder import ReorderBuffer


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, 8 * MiB),
        (1, 8 * MiB),
        (80_000 * MiB, 8 * MiB),
        (80_000 * MiB + 1, 9 * MiB),
        (1024**4, 105 * MiB),
    ],
)
def test_part_size_depends_only_on_the_snapshot_size(size: int, expected: int) -> None:
    part = choose_part_size(size)
    assert part == expected
    assert part % MiB == 0
    assert part >= MIN_PART_SIZE
    assert -(-size // part) <= MAX_PARTS


def test_part_size_too_large_for_s3_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        choose_part_size(MAX_PARTS * 5 * 1024 * MiB + 1)


def assemble(
    size: int, part: int, writes: list[tuple[int, bytes]], max_open: int = 64
) -> dict[int, bytes]:
    assembler = PartAssembler("s", size, part, max_open)
    uploaded: dict[int, bytes] = {}
    for offset, data in writes:
        result = assembler.write(offset, data)
        for done in result.completed:
            uploaded[done.number] = bytes(done.data)
    return uploaded


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 300),
    part=st.integers(1, 64),
    chunk=st.integers(1, 90),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_chunking_in_any_order_yields_every_part_once(
    size: int, part: int, chunk: int, seed: int
) -> None:
    data = random.Random(seed).randbytes(size)
    writes = [(o, data[o : o + chunk]) for o in range(0, size, chunk)]
    random.Random(seed).shuffle(writes)
    assembler = PartAssembler("s", size, part, max_open_parts=10_000)
    uploaded: dict[int, bytes] = {}
    for offset, piece in writes:
        result = assembler.write(offset, piece)
        assert result.lost == []
        for done in result.completed:
            assert done.number not in uploaded, "a part completes only once"
            uploaded[done.number] = bytes(done.data)
    if size == 0:
        assert uploaded == {}
        return
    assert sorted(uploaded) == list(range(1, assembler.part_count + 1))
    assert b"".join(uploaded[n] for n in sorted(uploaded)) == data
    assert assembler.first_missing() is None


def test_chunk_straddling_two_parts_lands_in_both() -> None:
    data = bytes(range(20))
    uploaded = assemble(20, 8, [(0, data[:6]), (6, data[6:13]), (13, data[13:])])
    assert uploaded == {1: data[:8], 2: data[8:16], 3: data[16:]}


def test_a_resent_part_starts_over_and_completes_again() -> None:
    assembler = PartAssembler("s", 16, 8)
    first = assembler.write(0, b"A" * 8)
    assert [p.number for p in first.completed] == [1]
    again = assembler.write(0, b"B" * 4)
    assert again.completed == []
    assert again.lost == [(4, 8)], "the rest of the part must be sent again"
    assert assembler.first_missing() == 4
    done = assembler.write(4, b"C" * 4)
    assert [bytes(p.data) for p in done.completed] == [b"BBBBCCCC"]


def test_write_into_the_middle_of_a_completed_part_asks_for_its_start() -> None:
    assembler = PartAssembler("s", 16, 8)
    assembler.write(0, b"A" * 8)
    with pytest.raises(SnapshotMismatch) as info:
        assembler.write(3, b"x")
    assert info.value.expect.offset == 0
    assert assembler.completed == frozenset({1}), "a refused write changes nothing"


def test_open_parts_are_bounded() -> None:
    assembler = PartAssembler("s", 100, 10, max_open_parts=2)
    assembler.write(0, b"a")
    assembler.write(10, b"b")
    with pytest.raises(SnapshotMismatch) as info:
        assembler.write(20, b"c")
    assert info.value.expect.offset == 1
    assert assembler.open_parts == [1, 2]
    assembler.write(1, b"x" * 9)  # part 1 completes and frees its buffer
    assembler.write(20, b"c")
    assert assembler.open_parts == [2, 3]


def test_rewind_into_a_part_being_filled_forgets_what_follows() -> None:
    assembler = PartAssembler("s", 30, 10)
    assembler.write(0, b"a" * 3)
    assembler.write(6, b"b" * 4)  # part 1 holds [0,3) and [6,10)
    assembler.write(20, b"c" * 5)  # part 3 holds [20,25)
    point, lost = assembler.rewind(3)
    assert point == 3
    assert sorted(lost) == [(6, 10), (20, 25)]
    assert assembler.open_parts == [1]
    assert assembler.first_missing() == 3


def test_rewind_into_a_completed_part_starts_at_its_first_byte() -> None:
    assembler = PartAssembler("s", 30, 10)
    assembler.write(0, b"a" * 10)
    assert assembler.rewind(4) == (0, [])


def test_reorder_buffer_orders_and_bounds() -> None:
    buffer = ReorderBuffer("s", limit=10)
    assert buffer.push(4, b"EF") == []
    assert buffer.buffered == 2
    with pytest.raises(SnapshotMismatch) as info:
        buffer.push(8, b"XYZ")  # ends 11 bytes past the write position
    assert info.value.expect.offset == 0
    pieces = buffer.push(0, b"ABCD")
    assert b"".join(bytes(p) for p in pieces) == b"ABCDEF"
    assert buffer.position == 6
    assert buffer.buffered == 0
    assert buffer.push(2, b"CD") == [], "bytes already written are dropped"
    assert b"".join(bytes(p) for p in buffer.push(5, b"FGH")) == b"GH"


@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, 200), chunk=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_reorder_buffer_reassembles_any_order_within_the_limit(
    size: int, chunk: int, seed: int
) -> None:
    data = random.Random(seed).randbytes(size)
    writes = [(o, data[o : o + chunk]) for o in range(0, size, chunk)]
    random.Random(seed).shuffle(writes)
    buffer = ReorderBuffer("s", limit=size)
    out = bytearray()
    for offset, piece in writes:
        for ready in buffer.push(offset, piece):
            out += ready
    assert bytes(out) == data
    assert buffer.buffered == 0
