"""CRC32C of chunks, and the whole-snapshot CRC combined from chunk CRCs without re-reading data.

`chunk_crc` uses the hardware-accelerated ``crc32c`` package, which accepts any buffer
(``bytes``, ``bytearray``, ``memoryview``) without copying it.  `combine` joins
``crc(A)`` and ``crc(B)`` into ``crc(A + B)`` knowing only ``len(B)``: CRCs are linear over
GF(2), so ``crc(A + B) = crc(A) * x^(8 * len(B)) mod P  xor  crc(B)``.
"""

from __future__ import annotations

from functools import lru_cache

import crc32c as _crc32c

from fstransport.errors import ConfigurationError
from fstransport.messages import Buffer

__all__ = ["chunk_crc", "combine", "format_checksum", "parse_checksum"]

_POLY = 0x82F63B78  # CRC32C (Castagnoli), bit-reflected
_ONE = 1 << 31  # the polynomial "1" in reflected notation
_PREFIX = "crc32c:"
_HEX_DIGITS = frozenset("0123456789abcdef")


def chunk_crc(data: Buffer, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value` (the CRC of the bytes before it)."""
    return int(_crc32c.crc32c(data, value=value))


def _multiply(a: int, b: int) -> int:
    """``a * b mod P`` for two reflected polynomials over GF(2)."""
    product = 0
    bit = _ONE
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


@lru_cache(maxsize=64)
def _x_to_the_2_to_the(k: int) -> int:
    """``x^(2^k) mod P``."""
    if k == 0:
        return _ONE >> 1  # x^1
    half = _x_to_the_2_to_the(k - 1)
    return _multiply(half, half)


@lru_cache(maxsize=1024)
def _shift_operator(length: int) -> int:
    """``x^(8 * length) mod P``: what appending `length` zero bytes does to a CRC."""
    result = _ONE
    k = 3  # one byte is x^8 = x^(2^3)
    while length:
        if length & 1:
            result = _multiply(_x_to_the_2_to_the(k), result)
        length >>= 1
        k += 1
    return result


def combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """``crc(A + B)`` from ``crc(A)``, ``crc(B)`` and ``len(B)``."""
    if len_b < 0:
        raise ConfigurationError(f"length must not be negative, got {len_b}")
    if len_b == 0:
        return crc_a
    return _multiply(_shift_operator(len_b), crc_a) ^ crc_b


def format_checksum(crc: int) -> str:
    """The wire form of a whole-snapshot checksum: ``"crc32c:%08x"``."""
    return f"{_PREFIX}{crc:08x}"


def parse_checksum(text: str) -> int:
    """The CRC in a ``"crc32c:%08x"`` string; `ConfigurationError` for anything else."""
    digits = text[len(_PREFIX) :] if text.startswith(_PREFIX) else ""
    if len(digits) != 8 or not set(digits) <= _HEX_DIGITS:
        raise ConfigurationError(f"checksum must look like 'crc32c:%08x', got {text!r}")
    return int(digits, 16)
