"""Human sizes, durations and link speeds, as the command line takes them."""

from __future__ import annotations

import pytest

from fstransport.errors import ConfigurationError
from fstransport.units import (
    format_rate,
    format_size,
    parse_bandwidth,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("65536", 65536),
        ("64KiB", 64 * 1024),
        ("64k", 64_000),
        ("8MiB", 8 * 1024**2),
        ("8 mib", 8 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("2TB", 2 * 1000**4),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "8 parsecs", "-1MiB", "1.5", "0.1KiB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "soon", "10 fortnights", "-5s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "bytes_per_second"),
    [
        ("1Gbit", 125e6),
        ("1Gbps", 125e6),
        ("1Gb/s", 125e6),
        ("1Gbit/s", 125e6),
        ("100Mbit", 12.5e6),
        ("800kbit", 100e3),
        ("1.5Gbit", 187.5e6),
        ("125MB/s", 125e6),
        ("100MiB/s", 100 * 1024**2),
        ("10 Gbit", 1.25e9),
    ],
)
def test_parse_bandwidth(text: str, bytes_per_second: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(bytes_per_second)


@pytest.mark.parametrize("text", ["", "fast", "0Gbit", "-1Gbit", "1Gbps/s", "1 G", "1GHz"])
def test_parse_bandwidth_refuses(text: str) -> None:
    with pytest.raises(ConfigurationError, match="not a bandwidth"):
        parse_bandwidth(text)


def test_format_size_and_rate() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(8 * 1024**2) == "8.0 MiB"
    assert format_size(3 * 1024**4) == "3072.0 GiB"
    assert format_rate(1.5 * 1024**2) == "1.5 MiB/s"
