"""Human-readable sizes and rates: ``"8MiB"`` ⇄ 8388608."""

from __future__ import annotations

import re

from fstransport.errors import ConfigurationError

__all__ = ["format_rate", "format_size", "parse_bandwidth", "parse_duration", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"8MiB"`` → 8388608, ``"64k"`` → 64000, ``"1.5GiB"`` → 1610612736; whole bytes only."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigurationError(f"not a size: {text!r} (try 65536, 64KiB, 8MiB or 1GiB)")
    value = float(match.group(1)) * _UNITS[unit]
    if value != int(value):
        raise ConfigurationError(f"not a whole number of bytes: {text!r}")
    return int(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"`` → 90.0, ``"30m"`` → 1800.0, ``"1h"``, ``"2d"``, ``"250ms"``."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(f"not a duration: {text!r} (try 90s, 30m, 1h or 2d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)(bit|Bit|bps|b|B)(/s)?\s*$")
_PREFIX = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_bandwidth(text: str) -> float:
    """A link speed in bytes per second.  Bits (``bit``, ``bps``, ``b``) with decimal prefixes,
    as links are sold: ``"1Gbit"``, ``"1Gbps"``, ``"1Gb/s"`` → 125000000.0.  Bytes (``B``):
    ``"100MB/s"`` → 100000000.0, ``"100MiB/s"`` → 104857600.0."""
    match = _BANDWIDTH.match(text)
    if match is None or float(match.group(1)) <= 0 or (match.group(4) == "bps" and match.group(5)):
        raise ConfigurationError(
            f"not a bandwidth: {text!r} (try 1Gbit, 100Mbit, 125MB/s or 100MiB/s)"
        )
    number, prefix, binary, unit, _ = match.groups()
    value: float = float(number) * (1024 if binary else 1000) ** _PREFIX[prefix.lower()]
    return value if unit == "B" else value / 8


def format_size(size: float) -> str:
    """8388608 → ``"8.0 MiB"``."""
    if abs(size) < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if abs(size) < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def format_rate(bytes_per_second: float) -> str:
    """Bytes per second as ``"812.3 MiB/s"``."""
    return f"{format_size(bytes_per_second)}/s"
