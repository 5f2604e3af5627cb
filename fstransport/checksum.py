"""CRC32C of chunks, and the whole-snapshot CRC combined from chunk CRCs without re-reading data.

`chunk_crc` uses the hardware-accelerated ``crc32c`` package, which accepts any buffer
(``bytes``, ``bytearray``, ``memoryview``) without copying it.  `combine` joins
``crc(A)`` and ``crc(B)`` into ``crc(A + B)`` knowing only ``len(B)``: CRCs are linear over
GF(2), so ``crc(A + B) = crc(A) * x^(8 * len(B)) mod P  xor  crc(B)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import crc32c as _crc32c

from fstransport.errors import ConfigurationError
from fstransport.messages import ChunkData, Pieces

__all__ = ["chunk_crc", "combine", "combine_equal", "format_checksum", "parse_checksum"]

_POLY = 0x82F63B78  # CRC32C (Castagnoli), bit-reflected
_ONE = 1 << 31  # the polynomial "1" in reflected notation
_PREFIX = "crc32c:"
_HEX_DIGITS = frozenset("0123456789abcdef")


def chunk_crc(data: ChunkData, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value` (the CRC of the bytes before it)."""
    if isinstance(data, Pieces):
        for part in data:
            value = _crc32c.crc32c(part, value=value)
        return int(value)
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


_TABLE_AFTER = 8  # combines of one length before it gets lookup tables
_MAX_TABLES = 16
_MAX_COUNTED = 1024
"""At most this many lengths are counted towards a table (a long-lived receiver sees many)."""
_uses: dict[int, int] = {}
_tables: dict[int, tuple[list[int], list[int], list[int], list[int]]] = {}


def _byte_tables(length: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Four 256-entry tables: ``T[k][b]`` is the shift by `length` of byte `b` at byte `k`.

    Shifting is linear over GF(2), so the shift of a CRC is the XOR of the shifts of its four
    bytes: four lookups instead of a 32-step polynomial multiplication.
    """
    operator = _shift_operator(length)
    columns = [_multiply(operator, _ONE >> bit) for bit in range(32)]  # reflected bit order
    tables: list[list[int]] = []
    for k in range(4):
        table = [0] * 256
        for byte in range(1, 256):
            low = byte & -byte
            # bit j of the CRC value is the coefficient of x^(31 - j) in reflected notation
            table[byte] = table[byte ^ low] ^ columns[31 - (8 * k + low.bit_length() - 1)]
        tables.append(table)
    return tables[0], tables[1], tables[2], tables[3]


def combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """``crc(A + B)`` from ``crc(A)``, ``crc(B)`` and ``len(B)``.

    A length combined often (the chunk size) gets lookup tables; others are multiplied out.
    """
    if len_b < 0:
        raise ConfigurationError(f"length must not be negative, got {len_b}")
    if len_b == 0:
        return crc_a
    tables = _tables.get(len_b)
    if tables is None:
        if len(_uses) >= _MAX_COUNTED:  # lengths seen once or twice: forget them
            _uses.clear()
        uses = _uses[len_b] = _uses.get(len_b, 0) + 1
        if uses < _TABLE_AFTER:
            return _multiply(_shift_operator(len_b), crc_a) ^ crc_b
        if len(_tables) >= _MAX_TABLES:
            _tables.clear()
            _uses.clear()
        tables = _tables[len_b] = _byte_tables(len_b)
    t0, t1, t2, t3 = tables
    return (
        t0[crc_a & 0xFF]
        ^ t1[(crc_a >> 8) & 0xFF]
        ^ t2[(crc_a >> 16) & 0xFF]
        ^ t3[crc_a >> 24]
        ^ crc_b
    )


def combine_equal(crc: int, crcs: Iterable[int], length: int) -> int:
    """`combine` of `crc` with each of `crcs` in turn, all of pieces `length` bytes long (a
    delta map's blocks): one set of lookup tables, no call per piece."""
    if length <= 0:
        raise ConfigurationError(f"length must be positive, got {length}")
    tables = _tables.get(length)
    if tables is None:
        tables = _tables[length] = _byte_tables(length)
    t0, t1, t2, t3 = tables
    for part in crcs:
        crc = t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24] ^ part
    return crc


def format_checksum(crc: int) -> str:
    """The wire form of a whole-snapshot checksum: ``"crc32c:%08x"``."""
    return f"{_PREFIX}{crc:08x}"


def parse_checksum(text: str) -> int:
    """The CRC in a ``"crc32c:%08x"`` string; `ConfigurationError` for anything else."""
    digits = text[len(_PREFIX) :] if text.startswith(_PREFIX) else ""
    if len(digits) != 8 or not set(digits) <= _HEX_DIGITS:
        raise ConfigurationError(f"checksum must look like 'crc32c:%08x', got {text!r}")
    return int(digits, 16)
