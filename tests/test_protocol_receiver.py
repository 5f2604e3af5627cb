"""The receiver's rules without I/O: request validation, stream decisions, completion."""

from __future__ import annotations

import array
import itertools
import random
import unicodedata
from dataclasses import replace
from typing import Any

import crc32c as reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport.checksum import format_checksum
from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    InvalidRequest,
    SnapshotMismatch,
)
from fstransport.messages import (
    InstallSnapshotRequest,
    LogId,
    SnapshotMeta,
    SnapshotSegmentId,
    Vote,
)
from fstransport.protocol.receiver import (
    MAX_SNAPSHOT_ID_LENGTH,
    ReceiverLimits,
    StreamDecision,
    StreamState,
    check_snapshot_id,
    decide_stream,
    validate_request,
)

VOTE = Vote(term=3, node_id=1)
LIMITS = ReceiverLimits()


def crc(data: bytes) -> int:
    return int(reference.crc32c(data))


def meta(snapshot_id: str = "snap-1", **kwargs: Any) -> SnapshotMeta:
    return SnapshotMeta(snapshot_id, last_log_id=LogId(2, 10), **kwargs)


def request(
    data: Any = b"hello",
    offset: Any = 0,
    *,
    done: Any = False,
    snapshot_meta: Any = None,
    crc32c: Any = None,
    vote: Any = VOTE,
) -> InstallSnapshotRequest:
    """A request; any field may be given a wrong type on purpose."""
    return InstallSnapshotRequest(
        vote=vote,
        meta=meta() if snapshot_meta is None else snapshot_meta,
        offset=offset,
        data=data,
        done=done,
        crc32c=crc32c,
    )


def refused(req: Any, limits: ReceiverLimits = LIMITS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        validate_request(req, limits)
    return info.value


# == check_snapshot_id =======================================================================


@pytest.mark.parametrize(
    "snapshot_id",
    [
        "a",
        "snap-1",
        "1-1-1-1",
        ".hidden",
        "x..y",
        "fstransport",
        ".fstransport2",
        "snäpshot-ü",
        "日本語",
        "a" * MAX_SNAPSHOT_ID_LENGTH,
        "with space",
    ],
)
def test_safe_ids_are_returned(snapshot_id: str) -> None:
    assert check_snapshot_id(snapshot_id) == snapshot_id


@pytest.mark.parametrize(
    "snapshot_id",
    [
        "",
        "/",
        "a/b",
        "/etc/passwd",
        "../x",
        "a\\b",
        "\\",
        "..\\..\\x",
        "..",
        ".",
        ".fstransport",
        "a" * (MAX_SNAPSHOT_ID_LENGTH + 1),
        "a" * 1000,
        "nul\x00byte",
        "new\nline",
        "tab\there",
        "\r",
        "esc\x1b[31m",
        "del\x7f",
        "\x1f",
        "lone\ud800surrogate",
        "...",
        "trailing.",
        "-rf",
        "--help",
        " ",
        "   ",
        "trailing ",
        " leading",
        "bidi\u202eexe.txt",
        "zero\u200bwidth",
        "line\u2028separator",
        "para\u2029graph",
        "nbsp\u00a0x",
        "ideographic\u3000space",
        "private\ue000use",
        "unassigned\U000e0fff",
        "\u00e9" * 128,  # 128 characters, 256 bytes
    ],
)
def test_unsafe_ids_are_refused(snapshot_id: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_snapshot_id(snapshot_id)
    assert info.value.field == "snapshot_id"


@pytest.mark.parametrize("snapshot_id", [None, 1, b"snap", ["a"], 1.5, True])
def test_non_string_ids_are_refused(snapshot_id: object) -> None:
    with pytest.raises(InvalidRequest, match="string") as info:
        check_snapshot_id(snapshot_id)
    assert info.value.field == "snapshot_id"


def test_id_of_exactly_256_characters_is_refused() -> None:
    assert check_snapshot_id("x" * 255) == "x" * 255
    with pytest.raises(InvalidRequest, match="255"):
        check_snapshot_id("x" * 256)


def test_id_length_is_counted_in_utf8_bytes() -> None:
    assert check_snapshot_id("\u00e9" * 127 + "x") == "\u00e9" * 127 + "x"  # 255 bytes
    with pytest.raises(InvalidRequest, match="256 bytes"):
        check_snapshot_id("\u00e9" * 128)
    with pytest.raises(InvalidRequest, match="400 bytes"):
        check_snapshot_id("\u00e9" * 200)


@pytest.mark.parametrize("code", [*range(0x00, 0x20), 0x7F])
def test_ascii_control_characters_are_refused(code: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_snapshot_id(f"id{chr(code)}x")
    assert info.value.field == "snapshot_id"


def test_c1_control_characters_are_refused() -> None:
    """Unicode's control characters (category Cc) include C1, U+0080..U+009F: NEL (U+0085)
    breaks lines and CSI (U+009B) starts terminal escape sequences, just like their C0 kin."""
    accepted = []
    for code in range(0x80, 0xA0):
        assert unicodedata.category(chr(code)) == "Cc"
        try:
            check_snapshot_id(f"id{chr(code)}x")
        except InvalidRequest:
            continue
        accepted.append(f"U+{code:04X}")
    assert accepted == []


@given(st.text(min_size=1, max_size=40))
@settings(max_examples=200)
def test_accepted_ids_are_single_safe_names(snapshot_id: str) -> None:
    try:
        result = check_snapshot_id(snapshot_id)
    except InvalidRequest as exc:
        field = exc.field
        assert field == "snapshot_id"
        return
    assert result == snapshot_id
    assert "/" not in result
    assert "\\" not in result
    assert result not in {".", "..", ".fstransport"}
    assert all(ord(ch) >= 32 and ord(ch) != 127 for ch in result)  # (C1: see above)
    assert len(result.encode("utf-8")) <= 255
    assert result == result.strip()
    assert not result.startswith("-")
    assert not result.endswith(".")
    assert all(unicodedata.category(ch) not in {"Cf", "Zl", "Zp", "Cs"} for ch in result)


# == validate_request: valid requests =======================================================


@given(st.binary(max_size=200), st.integers(0, 256 * 2**30 - 200), st.booleans())
@settings(max_examples=100)
def test_valid_request_returns_data_crc(data: bytes, offset: int, with_crc: bool) -> None:
    req = request(data, offset, crc32c=crc(data) if with_crc else None)
    assert validate_request(req, LIMITS) == crc(data)


@given(st.binary(max_size=100))
@settings(max_examples=50)
def test_every_buffer_type_gives_the_same_crc(data: bytes) -> None:
    expected = crc(data)
    for buffer in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        assert validate_request(request(buffer, crc32c=expected), LIMITS) == expected


def test_contiguous_slice_of_memoryview_is_accepted() -> None:
    view = memoryview(b"0123456789")[2:7]
    assert validate_request(request(view), LIMITS) == crc(b"23456")


def test_signed_char_memoryview_is_accepted() -> None:
    view = memoryview(b"abc").cast("b")
    assert validate_request(request(view), LIMITS) == crc(b"abc")


def test_valid_final_chunk_of_announced_size() -> None:
    req = request(b"world", 5, done=True, snapshot_meta=meta(size=10))
    assert validate_request(req, LIMITS) == crc(b"world")


def test_valid_empty_final_chunk_of_empty_snapshot() -> None:
    req = request(b"", 0, done=True, snapshot_meta=meta(size=0))
    assert validate_request(req, LIMITS) == 0


def test_final_chunk_without_announced_size_is_accepted() -> None:
    assert validate_request(request(b"abc", 7, done=True), LIMITS) == crc(b"abc")


def test_chunk_ending_exactly_at_size_is_accepted() -> None:
    req = request(b"abc", 7, snapshot_meta=meta(size=10))
    assert validate_request(req, LIMITS) == crc(b"abc")


@pytest.mark.parametrize(
    "checksum", [format_checksum(0), format_checksum(0xDEADBEEF), "crc32c:0123abcd"]
)
def test_valid_checksum_strings_are_accepted(checksum: str) -> None:
    req = request(snapshot_meta=meta(checksum=checksum))
    assert validate_request(req, LIMITS) == crc(b"hello")


def test_crc_zero_is_in_range() -> None:
    assert validate_request(request(b"", crc32c=0), LIMITS) == 0


def test_largest_crc_is_in_range() -> None:
    # 2**32 - 1 is a valid CRC value: refused as a mismatch, not as out of range
    with pytest.raises(ChecksumMismatch):
        validate_request(request(b"hello", crc32c=2**32 - 1), LIMITS)


# == validate_request: every rule ===========================================================


@pytest.mark.parametrize("req", [None, "request", {"offset": 0}, object()])
def test_not_a_request(req: object) -> None:
    refused(req)


@pytest.mark.parametrize(
    "vote",
    [None, (3, 1), Vote("3", 1), Vote(3, None), Vote(True, 1), Vote(3, False), Vote(3.0, 1)],  # type: ignore[arg-type]
)
def test_bad_vote(vote: object) -> None:
    assert refused(request(vote=vote)).field == "vote"


@pytest.mark.parametrize("bad_meta", ["snap-1", None, {"snapshot_id": "x"}])
def test_bad_meta(bad_meta: object) -> None:
    req = replace(request(), meta=bad_meta)  # type: ignore[arg-type]
    assert refused(req).field == "meta"


@pytest.mark.parametrize(
    "snapshot_id", ["", "/", "\\", "..", ".", "a/../b", "x\x00", "a" * 256, ".fstransport"]
)
def test_unsafe_snapshot_id_in_request(snapshot_id: str) -> None:
    assert refused(request(snapshot_meta=SnapshotMeta(snapshot_id))).field == "snapshot_id"


@pytest.mark.parametrize("snapshot_id", [None, 7, b"snap"])
def test_non_string_snapshot_id_in_request(snapshot_id: object) -> None:
    req = request(snapshot_meta=SnapshotMeta(snapshot_id))  # type: ignore[arg-type]
    assert refused(req).field == "snapshot_id"


@pytest.mark.parametrize("offset", [-1, -(2**40)])
def test_negative_offset(offset: int) -> None:
    assert refused(request(offset=offset)).field == "offset"


@pytest.mark.parametrize("offset", [0.0, 1.5, "0", None, b"0", [0]])
def test_non_int_offset(offset: object) -> None:
    assert refused(request(offset=offset)).field == "offset"


@pytest.mark.parametrize("offset", [True, False])
def test_bool_offset(offset: bool) -> None:
    assert refused(request(offset=offset)).field == "offset"


@pytest.mark.parametrize(
    ("offset", "length", "size"), [(0, 11, 10), (10, 1, 10), (11, 0, 10), (5, 6, 10), (1, 0, 0)]
)
def test_chunk_beyond_size(offset: int, length: int, size: int) -> None:
    req = request(b"x" * length, offset, snapshot_meta=meta(size=size))
    assert refused(req).field == "offset"


@pytest.mark.parametrize(("offset", "length", "size"), [(0, 5, 10), (0, 0, 10), (4, 5, 10)])
def test_done_not_ending_at_size(offset: int, length: int, size: int) -> None:
    req = request(b"x" * length, offset, done=True, snapshot_meta=meta(size=size))
    assert refused(req).field == "done"


@pytest.mark.parametrize("done", [1, 0, None, "yes"])
def test_non_bool_done(done: object) -> None:
    assert refused(request(done=done)).field == "done"


@pytest.mark.parametrize("data", ["hello", None, [1, 2, 3], 5, array.array("B", b"abc")])
def test_data_not_a_byte_buffer(data: object) -> None:
    assert refused(request(data=data)).field == "data"


def test_non_contiguous_memoryview() -> None:
    view = memoryview(b"0123456789")[::2]
    assert not view.c_contiguous
    assert refused(request(data=view)).field == "data"


def test_multi_dimensional_memoryview() -> None:
    view = memoryview(b"012345").cast("B", (2, 3))
    assert view.ndim == 2
    assert refused(request(data=view)).field == "data"


def test_wide_item_memoryview() -> None:
    view = memoryview(array.array("I", [1, 2, 3]))
    assert view.itemsize == 4
    assert refused(request(data=view)).field == "data"


@pytest.mark.parametrize("value", [-1, 2**32, 2**64, True, False, 1.0, "0", b"\x00"])
def test_crc_out_of_range_or_wrong_type(value: object) -> None:
    assert refused(request(crc32c=value)).field == "crc32c"


@given(st.binary(max_size=64), st.integers(0, 2**32 - 1))
@settings(max_examples=60)
def test_wrong_crc_is_a_chunk_checksum_mismatch(data: bytes, claimed: int) -> None:
    actual = crc(data)
    req = request(data, 7, crc32c=claimed)
    if claimed == actual:
        assert validate_request(req, LIMITS) == actual
        return
    with pytest.raises(ChecksumMismatch) as info:
        validate_request(req, LIMITS)
    assert not info.value.whole
    assert info.value.expected == f"{claimed:08x}"
    assert info.value.actual == f"{actual:08x}"


def test_corrupted_data_is_detected() -> None:
    original = b"some chunk of a snapshot"
    corrupted = b"some chunk of a snapshoT"
    with pytest.raises(ChecksumMismatch):
        validate_request(request(corrupted, crc32c=crc(original)), LIMITS)


@pytest.mark.parametrize(
    "checksum",
    [
        "",
        "crc32c",
        "crc32c:xyz",
        "crc32c:1234567",
        "crc32c:123456789",
        "sha256:00000000",
        "00000000",
        "CRC32C:00000000",
    ],
)
def test_bad_checksum_string(checksum: str) -> None:
    assert refused(request(snapshot_meta=meta(checksum=checksum))).field == "checksum"


@pytest.mark.parametrize(
    "checksum", ["crc32c:-1234567", "crc32c:+1234567", "crc32c: 1234567", "crc32c:0x123456"]
)
def test_checksum_strings_that_only_int_accepts(checksum: str) -> None:
    """What `format_checksum` can never produce must not pass as a checksum."""
    assert refused(request(snapshot_meta=meta(checksum=checksum))).field == "checksum"


@pytest.mark.parametrize("checksum", [0, 0xDEADBEEF, b"crc32c:00000000"])
def test_non_string_checksum(checksum: object) -> None:
    assert refused(request(snapshot_meta=meta(checksum=checksum))).field == "checksum"


@pytest.mark.parametrize("size", [-1, 1.5, "10", True])
def test_bad_announced_size(size: object) -> None:
    assert refused(request(snapshot_meta=meta(size=size))).field == "size"


def test_max_snapshot_size() -> None:
    limits = ReceiverLimits(max_snapshot_size=100)
    ok = request(b"x", 99, snapshot_meta=meta(size=100))
    assert validate_request(ok, limits) == crc(b"x")
    too_big = request(b"x", 0, snapshot_meta=meta(size=101))
    assert refused(too_big, limits).field == "size"


def test_max_snapshot_size_zero() -> None:
    limits = ReceiverLimits(max_snapshot_size=0)
    assert validate_request(request(b"", 0, done=True, snapshot_meta=meta(size=0)), limits) == 0
    assert refused(request(b"", 0, snapshot_meta=meta(size=1)), limits).field == "size"


@pytest.mark.parametrize(("offset", "length"), [(100, 1), (99, 2), (10**12, 1), (0, 101)])
def test_max_snapshot_size_without_announced_size(offset: int, length: int) -> None:
    """A chunk that reaches beyond the receiver's size limit is refused even if no size is
    announced: otherwise a sender could write at any offset of a seekable sink."""
    limits = ReceiverLimits(max_snapshot_size=100, max_chunk_size=None)
    req = request(b"x" * length, offset)
    with pytest.raises(InvalidRequest):
        validate_request(req, limits)


def test_max_chunk_size() -> None:
    limits = ReceiverLimits(max_chunk_size=8)
    assert validate_request(request(b"x" * 8), limits) == crc(b"x" * 8)
    assert refused(request(b"x" * 9), limits).field == "data"
    assert refused(request(bytearray(9)), limits).field == "data"
    assert refused(request(memoryview(b"x" * 9)), limits).field == "data"


def test_no_limits() -> None:
    limits = ReceiverLimits(max_snapshot_size=None, max_chunk_size=None)
    big = b"\x00" * (1 << 20)
    req = request(big, 2**50, snapshot_meta=meta(size=2**50 + len(big)))
    assert validate_request(req, limits) == crc(big)


def test_default_chunk_limit_is_256_mib() -> None:
    assert ReceiverLimits().max_chunk_size == 256 * 1024 * 1024
    assert ReceiverLimits().max_snapshot_size == 256 * 1024**3


@pytest.mark.parametrize(
    "kwargs",
    [{"max_transfers": 0}, {"max_snapshot_size": -1}, {"max_chunk_size": -1}],
)
def test_receiver_limits_refuse_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError):
        ReceiverLimits(**kwargs)


@given(
    st.binary(max_size=40),
    st.integers(0, 80),
    st.one_of(st.none(), st.integers(0, 120)),
    st.booleans(),
)
@settings(max_examples=200)
def test_size_rules_against_a_model(data: bytes, offset: int, size: int | None, done: bool) -> None:
    end = offset + len(data)
    req = request(data, offset, done=done, snapshot_meta=meta(size=size))
    valid = size is None or (end <= size and (not done or end == size))
    if valid:
        assert validate_request(req, LIMITS) == crc(data)
    else:
        refused(req)


# == decide_stream ==========================================================================


def test_new_stream_at_offset_zero_starts() -> None:
    assert decide_stream(None, request(offset=0)) is StreamDecision.START


@given(st.integers(1, 2**40))
@settings(max_examples=30)
def test_new_stream_elsewhere_is_a_mismatch_expecting_zero(offset: int) -> None:
    with pytest.raises(SnapshotMismatch) as info:
        decide_stream(None, request(offset=offset))
    assert info.value.expect == SnapshotSegmentId("snap-1", 0)
    assert info.value.got == SnapshotSegmentId("snap-1", offset)


@given(st.integers(0, 2**40))
@settings(max_examples=30)
def test_same_snapshot_continues_at_any_offset(offset: int) -> None:
    assert decide_stream(meta(), request(offset=offset)) is StreamDecision.CONTINUE


@pytest.mark.parametrize(
    ("current", "incoming"),
    [
        (meta(), meta(checksum=format_checksum(5))),  # late-announced checksum
        (meta(checksum=format_checksum(5)), meta()),  # checksum left out later
        (meta(size=10), meta(size=10)),
    ],
)
def test_missing_checksum_matches_any(current: SnapshotMeta, incoming: SnapshotMeta) -> None:
    assert decide_stream(current, request(offset=3, snapshot_meta=incoming)) is (
        StreamDecision.CONTINUE
    )


OTHER_SNAPSHOTS = [
    SnapshotMeta("snap-1", last_log_id=LogId(2, 11)),
    SnapshotMeta("snap-1", last_log_id=None),
    SnapshotMeta("snap-1", last_log_id=LogId(2, 10), size=5),
    SnapshotMeta("snap-1", last_log_id=LogId(2, 10), last_membership={"a"}),
]


@pytest.mark.parametrize("other", OTHER_SNAPSHOTS)
def test_another_snapshot_under_the_same_id_restarts_at_zero(other: SnapshotMeta) -> None:
    assert decide_stream(meta(), request(offset=0, snapshot_meta=other)) is StreamDecision.RESTART


@pytest.mark.parametrize("other", OTHER_SNAPSHOTS)
def test_another_snapshot_elsewhere_is_a_mismatch(other: SnapshotMeta) -> None:
    with pytest.raises(SnapshotMismatch) as info:
        decide_stream(meta(), request(offset=4, snapshot_meta=other))
    assert info.value.expect == SnapshotSegmentId("snap-1", 0)
    assert info.value.got == SnapshotSegmentId("snap-1", 4)


def test_different_checksums_restart() -> None:
    current = meta(checksum=format_checksum(1))
    incoming = meta(checksum=format_checksum(2))
    assert decide_stream(current, request(snapshot_meta=incoming)) is StreamDecision.RESTART


# == StreamState ============================================================================


def stream_with(data: bytes, chunks: list[tuple[int, int]], **meta_kwargs: Any) -> StreamState:
    state = StreamState(meta(**meta_kwargs))
    for offset, length in chunks:
        piece = data[offset : offset + length]
        req = request(piece, offset, snapshot_meta=state.meta)
        state.record(req, validate_request(req, LIMITS))
    return state


DATA = bytes(range(40)) * 3  # 120 bytes


@given(st.sets(st.integers(1, len(DATA) - 1), max_size=10), st.randoms(use_true_random=False))
@settings(max_examples=60)
def test_complete_in_any_order(cuts: set[int], rnd: random.Random) -> None:
    points = sorted({0, len(DATA), *cuts})
    chunks = [(a, b - a) for a, b in itertools.pairwise(points)]
    rnd.shuffle(chunks)
    state = stream_with(DATA, chunks)
    final = state.complete(len(DATA))
    assert final.size == len(DATA)
    assert final.checksum == format_checksum(crc(DATA))
    assert final.snapshot_id == "snap-1"
    assert final.last_log_id == LogId(2, 10)


def test_complete_with_matching_announced_checksum() -> None:
    state = stream_with(DATA, [(0, 60), (60, 60)], checksum=format_checksum(crc(DATA)))
    assert state.complete(len(DATA)).checksum == format_checksum(crc(DATA))


def test_complete_empty_snapshot() -> None:
    state = StreamState(meta(size=0))
    req = request(b"", 0, done=True, snapshot_meta=state.meta)
    state.record(req, validate_request(req, LIMITS))
    final = state.complete(0)
    assert final.size == 0
    assert final.checksum == format_checksum(0)


@given(st.sets(st.integers(0, len(DATA) - 1), min_size=1, max_size=6))
@settings(max_examples=60)
def test_gap_is_a_mismatch_expecting_the_first_missing_byte(missing: set[int]) -> None:
    held = [i for i in range(len(DATA)) if i not in missing]
    state = stream_with(DATA, [(i, 1) for i in held])
    with pytest.raises(SnapshotMismatch) as info:
        state.complete(len(DATA))
    assert info.value.expect == SnapshotSegmentId("snap-1", min(missing))


def test_nothing_held_expects_zero() -> None:
    state = StreamState(meta())
    with pytest.raises(SnapshotMismatch) as info:
        state.complete(10)
    assert info.value.expect.offset == 0


def test_gap_then_refill_completes() -> None:
    state = stream_with(DATA, [(0, 10), (20, 100)])
    with pytest.raises(SnapshotMismatch) as info:
        state.complete(len(DATA))
    assert info.value.expect.offset == 10
    refill = request(DATA[10:20], 10, snapshot_meta=state.meta)
    state.record(refill, validate_request(refill, LIMITS))
    assert state.complete(len(DATA)).checksum == format_checksum(crc(DATA))


def test_wrong_announced_checksum_is_a_whole_mismatch() -> None:
    wrong = format_checksum(crc(DATA) ^ 1)
    state = stream_with(DATA, [(0, len(DATA))], checksum=wrong)
    with pytest.raises(ChecksumMismatch) as info:
        state.complete(len(DATA))
    assert info.value.whole
    assert info.value.expected == wrong
    assert info.value.actual == format_checksum(crc(DATA))


@pytest.mark.parametrize("correct", [True, False])
def test_late_announced_checksum_is_adopted(correct: bool) -> None:
    state = stream_with(DATA, [(0, 100)])
    assert state.meta.checksum is None
    announced = format_checksum(crc(DATA) if correct else crc(DATA) ^ 0xFF)
    final_meta = replace(state.meta, checksum=announced)
    last = request(DATA[100:], 100, done=True, snapshot_meta=final_meta)
    state.record(last, validate_request(last, LIMITS))
    assert state.meta.checksum == announced
    if correct:
        assert state.complete(len(DATA)).checksum == announced
    else:
        with pytest.raises(ChecksumMismatch) as info:
            state.complete(len(DATA))
        assert info.value.whole


def test_first_announced_checksum_is_kept() -> None:
    first = format_checksum(crc(DATA))
    state = stream_with(DATA, [(0, 10)], checksum=first)
    later = request(DATA[10:20], 10, snapshot_meta=meta(checksum=format_checksum(1)))
    state.record(later, crc(DATA[10:20]))
    assert state.meta.checksum == first


def test_data_crossing_the_end_is_invalid() -> None:
    state = stream_with(DATA, [(0, 50), (50, 50)])
    with pytest.raises(InvalidRequest):
        state.complete(70)  # [50, 100) crosses 70


def test_data_beyond_the_end_is_invalid() -> None:
    """`complete` promises `InvalidRequest` for data beyond `end`: a chunk written wholly past
    the final chunk (possible when no size is announced) would be installed with the file."""
    state = stream_with(DATA, [(0, 50), (80, 20), (50, 10)])
    with pytest.raises(InvalidRequest):
        state.complete(60)


@pytest.mark.parametrize("spelling", [str.upper, str.lower])
def test_checksum_accepted_by_validation_is_honoured_by_complete(
    spelling: Any,
) -> None:
    """A correct checksum either fails validation or completes: never a whole mismatch."""
    text = "crc32c:" + spelling(f"{crc(DATA):08x}")
    assert any(ch in "abcdef" for ch in f"{crc(DATA):08x}")  # the spelling matters
    announced = meta(checksum=text)
    try:
        validate_request(request(DATA, 0, done=True, snapshot_meta=announced), LIMITS)
    except InvalidRequest:
        return
    state = stream_with(DATA, [(0, len(DATA))], checksum=text)
    assert state.complete(len(DATA)).size == len(DATA)
