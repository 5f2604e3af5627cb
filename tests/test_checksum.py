"""CRC32C of chunks, combining chunk CRCs, and the ``crc32c:%08x`` wire form.  No I/O."""

from __future__ import annotations

import crc32c as reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport.checksum import chunk_crc, combine, format_checksum, parse_checksum
from fstransport.errors import ConfigurationError

U32 = st.integers(min_value=0, max_value=2**32 - 1)
CHUNK = st.binary(max_size=300)


def crc(data: bytes) -> int:
    """The reference CRC32C, straight from the ``crc32c`` package."""
    return int(reference.crc32c(data))


# -- chunk_crc ------------------------------------------------------------------------------


def test_chunk_crc_known_vector() -> None:
    # the CRC32C (Castagnoli) check value
    assert chunk_crc(b"123456789") == 0xE3069283


def test_chunk_crc_of_nothing_is_zero() -> None:
    assert chunk_crc(b"") == 0


@given(CHUNK)
@settings(max_examples=60)
def test_chunk_crc_accepts_every_buffer_type(data: bytes) -> None:
    expected = crc(data)
    assert chunk_crc(data) == expected
    assert chunk_crc(bytearray(data)) == expected
    assert chunk_crc(memoryview(data)) == expected


@given(CHUNK, CHUNK)
@settings(max_examples=60)
def test_chunk_crc_continues_from_value(a: bytes, b: bytes) -> None:
    assert chunk_crc(b, chunk_crc(a)) == crc(a + b)


# -- combine --------------------------------------------------------------------------------


@given(CHUNK, CHUNK)
@settings(max_examples=150)
def test_combine_equals_crc_of_concatenation(a: bytes, b: bytes) -> None:
    assert combine(crc(a), crc(b), len(b)) == crc(a + b)


@given(st.lists(CHUNK, max_size=8))
@settings(max_examples=60)
def test_combine_folds_many_chunks(chunks: list[bytes]) -> None:
    whole = 0  # the CRC of no bytes
    for chunk in chunks:
        whole = combine(whole, crc(chunk), len(chunk))
    assert whole == crc(b"".join(chunks))


@given(st.integers(min_value=0, max_value=200_000), st.binary(max_size=16))
@settings(max_examples=25)
def test_combine_long_second_part(length: int, head: bytes) -> None:
    tail = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    assert combine(crc(head), crc(tail), len(tail)) == crc(head + tail)


@given(U32)
def test_combine_with_empty_second_part_is_identity(a: int) -> None:
    assert combine(a, 0, 0) == a


@given(CHUNK)
@settings(max_examples=40)
def test_combine_with_empty_first_part(b: bytes) -> None:
    assert combine(0, crc(b), len(b)) == crc(b)


@given(U32, U32, U32, st.integers(1, 2**40), st.integers(1, 2**40))
@settings(max_examples=60)
def test_combine_is_associative_for_huge_lengths(
    a: int, b: int, c: int, len_b: int, len_c: int
) -> None:
    # crc(A+B+C) either way round; exercises shift operators far beyond any real data.
    # (Lengths >= 1: a zero length means "B is empty", whose CRC can only be 0.)
    left = combine(combine(a, b, len_b), c, len_c)
    right = combine(a, combine(b, c, len_c), len_b + len_c)
    assert left == right


@given(U32, U32, st.integers(0, 2**48))
@settings(max_examples=60)
def test_combine_stays_32_bit(a: int, b: int, len_b: int) -> None:
    assert 0 <= combine(a, b, len_b) < 2**32


@given(U32, U32, U32, U32, st.integers(0, 10_000))
@settings(max_examples=40)
def test_combine_is_linear(a1: int, a2: int, b1: int, b2: int, n: int) -> None:
    assert combine(a1 ^ a2, b1 ^ b2, n) == combine(a1, b1, n) ^ combine(a2, b2, n)


@pytest.mark.parametrize("length", [-1, -(2**40)])
def test_combine_rejects_negative_length(length: int) -> None:
    with pytest.raises(ConfigurationError, match="negative"):
        combine(1, 2, length)


def test_combine_negative_length_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        combine(0, 0, -1)


# -- format / parse -------------------------------------------------------------------------


def test_format_checksum_is_lowercase_zero_padded() -> None:
    assert format_checksum(0) == "crc32c:00000000"
    assert format_checksum(0xE3069283) == "crc32c:e3069283"
    assert format_checksum(0xAB) == "crc32c:000000ab"
    assert format_checksum(2**32 - 1) == "crc32c:ffffffff"


@given(U32)
def test_format_parse_round_trip(value: int) -> None:
    text = format_checksum(value)
    assert parse_checksum(text) == value
    assert format_checksum(parse_checksum(text)) == text


@given(CHUNK)
@settings(max_examples=30)
def test_format_of_real_data(data: bytes) -> None:
    assert parse_checksum(format_checksum(chunk_crc(data))) == crc(data)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "crc32c:",
        "crc32c",
        "crc32c:1234567",  # too short
        "crc32c:123456789",  # too long
        "crc32c:0000000g",
        "crc32c:zzzzzzzz",
        "CRC32C:00000000",  # the prefix is case sensitive
        "crc32:00000000",
        "md5:00000000",
        "00000000",
        " crc32c:00000000",
        "crc32c:00000000 ",
        "crc32c::0000000",
        "crc32c:0000 000",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigurationError, match="crc32c"):
        parse_checksum(text)


@pytest.mark.parametrize(
    "text",
    [
        "crc32c:-1234567",  # a sign: int() parses it, the result is negative
        "crc32c:+1234567",
        "crc32c: 1234567",  # int() strips whitespace
        "crc32c:1234567 ",
        "crc32c:1234567\n",
        "crc32c:\t1234567",
        "crc32c:0x123456",  # int(..., 16) accepts a 0x prefix
        "crc32c:0X123456",
        "crc32c:1234_567",  # int() accepts digit separators
        "crc32c:\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668",  # Arabic-Indic digits
        "crc32c:\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",  # fullwidth digits
    ],
)
def test_parse_rejects_non_hex_spellings_that_int_accepts(text: str) -> None:
    """Only ``crc32c:`` followed by exactly eight ASCII hex digits is a checksum."""
    with pytest.raises(ConfigurationError, match="crc32c"):
        parse_checksum(text)


# hex digits, plus what Python's int() also swallows: signs, separators, whitespace, "0x",
# non-ASCII decimal digits (and a few plainly wrong characters)
NEAR_HEX = "0123456789abcdefABCDEF" * 3 + "+-_ \t\nxXg\u0661\u0669\uff11\uff46"


@given(st.text(alphabet=NEAR_HEX, min_size=6, max_size=10).map(lambda s: "crc32c:" + s))
@settings(max_examples=300)
def test_parse_accepts_only_eight_ascii_hex_digits(text: str) -> None:
    digits = text[len("crc32c:") :]
    canonical = len(digits) == 8 and all(ch in "0123456789abcdef" for ch in digits)
    try:
        value = parse_checksum(text)
    except ConfigurationError:
        assert not canonical, f"{text!r} is what format_checksum writes"
        return
    # uppercase hex may be accepted or refused; anything else must be refused
    assert len(digits) == 8
    assert all(ch in "0123456789abcdefABCDEF" for ch in digits), f"{text!r} parsed as {value}"
    assert 0 <= value < 2**32
    assert format_checksum(value) == text.lower()


def test_parse_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="crc32c"):
        parse_checksum("nope")
