"""Delta recipes, sans I/O: the target's ranges in order, each copied from the base or sent, and
how neighbours coalesce (``fstransport.protocol.delta`` re-exports these names; the wire form is
in `fstransport.protocol.delta_wire`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fstransport.errors import InvalidRequest
from fstransport.messages import Buffer

if TYPE_CHECKING:
    from fstransport.protocol.delta import DeltaMap

__all__ = ["SEND", "Recipe", "apply_recipe", "coalesce", "copied_crcs"]

SEND = (1 << 64) - 1
"""The base offset of a recipe range that is sent rather than copied."""


@dataclass(frozen=True)
class Recipe:
    """The target, in order: ``(length, base_offset)``, `SEND` for bytes that are sent."""

    size: int
    base_size: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def reused(self) -> int:
        """Bytes copied from the base."""
        return sum(n for n, base in self.ranges if base != SEND)

    @property
    def sent(self) -> int:
        """Bytes the sender sends."""
        return self.size - self.reused

    def targets(self) -> list[tuple[int, int, int]]:
        """``(target_offset, length, base_offset)`` of each range."""
        out, at = [], 0
        for length, base in self.ranges:
            out.append((at, length, base))
            at += length
        return out

    def sends(self) -> list[tuple[int, int]]:
        """The target ranges ``(start, end)`` the sender sends."""
        return [(t, t + n) for t, n, base in self.targets() if base == SEND]


def coalesce(pieces: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for length, base in pieces:
        if out:
            last_length, last_base = out[-1]
            sends = base == SEND and last_base == SEND
            if sends or (base != SEND and last_base != SEND and last_base + last_length == base):
                out[-1] = (last_length + length, last_base)
                continue
        out.append((length, base))
    return tuple(out)


def apply_recipe(recipe: Recipe, base: Buffer, sent: Buffer) -> bytes:
    """The target built in memory: base ranges and `sent` (the sent ranges, in order, joined)."""
    base_view, sent_view = memoryview(base).cast("B"), memoryview(sent).cast("B")
    if len(base_view) != recipe.base_size or len(sent_view) != recipe.sent:
        raise InvalidRequest("the base or the sent bytes do not fit the recipe", field="delta")
    out = bytearray()
    at = 0
    for length, base_at in recipe.ranges:
        if base_at == SEND:
            out += sent_view[at : at + length]
            at += length
        else:
            out += base_view[base_at : base_at + length]
    return bytes(out)


def copied_crcs(recipe: Recipe, base_map: DeltaMap) -> list[tuple[int, int, int]]:
    """``(target_offset, length, crc32c)`` of each copied range, the CRC from the base's map:
    what a receiver records in its `ChunkLedger`, so that the whole CRC32C combines as for sent
    chunks (the assembled bytes are then checked against it)."""
    return [
        (at, length, base_map.crc_of(base, length))
        for at, length, base in recipe.targets()
        if base != SEND
    ]
