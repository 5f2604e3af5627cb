"""Delta transfer inside the protocol, sans I/O: the rules of both ends (see ``docs/delta.md``).

The exchange, before any chunk data: the sender's first request carries no data and names the
mode (``delta="blocks"|"cdc"``); the receiver answers with an offer (`DeltaOffer`: a base it
holds and its map) or none.  The sender plans a recipe against the map and sends it in a second
data-less request; the receiver checks it against the sizes it knows, records every copied range
as held (with the CRC32C the base map gives it) and answers with what it holds, which the sender
then skips as it skips what a resumed transfer holds.  The copied ranges are filled from the base
just before install, and the assembled bytes are checked against the whole checksum.

Here: what a delta request may look like (`check_delta_request`), what a receiver keeps of an
accepted recipe (`ReceiverDelta`, `accept_recipe`), how a sender reads an offer (`read_offer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fstransport.checksum import format_checksum
from fstransport.errors import InvalidRequest
from fstransport.messages import DeltaOffer, InstallSnapshotRequest, SnapshotMeta
from fstransport.protocol.delta import KEY_SIZE, DeltaMap, Recipe, copied_crcs
from fstransport.protocol.delta_pack import SentRanges
from fstransport.protocol.delta_wire import decode_map, decode_recipe

if TYPE_CHECKING:
    from fstransport.protocol.ranges import ChunkLedger

__all__ = [
    "MAX_OFFER_FACTOR",
    "WIRE_MODES",
    "ReceiverDelta",
    "accept_recipe",
    "check_delta_request",
    "max_map_bytes",
    "max_offer_size",
    "max_recipe_bytes",
    "read_offer",
]

WIRE_MODES = ("blocks", "cdc")
"""The modes a delta request may name (``"off"`` sends no delta request at all)."""
MAX_OFFER_FACTOR = 4
"""A sender takes an offered base of at most this many times its snapshot's size (and 64 MiB)."""
_MIN_EXTENT = 4096  # the smallest block; CDC extents are at least 8 KiB but the last


def max_offer_size(size: int) -> int:
    """The largest base a sender of a `size`-byte snapshot takes (`MAX_OFFER_FACTOR`)."""
    return max(MAX_OFFER_FACTOR * size, 64 * 1024 * 1024)


def max_recipe_bytes(size: int) -> int:
    """The longest recipe a snapshot of `size` bytes may need: header plus 16 bytes for each of
    at most two ranges per smallest extent (a copy and a send alternating), plus one."""
    return 32 + 16 * (2 * (size // _MIN_EXTENT) + 2)


def max_map_bytes(base_size: int) -> int:
    """The longest encoded map of a base of `base_size` bytes: header plus 16 bytes per
    extent (CDC: length 4, CRC 4, tag 8), extents being at least 4 KiB but the last (a block
    map's 12 bytes a block and 12 a super-block of 16 blocks stay below)."""
    return 48 + 16 * (base_size // _MIN_EXTENT + 1)


def check_delta_request(req: InstallSnapshotRequest) -> None:
    """`InvalidRequest` unless `req`'s delta fields are absent or well formed: a known mode, no
    data, offset 0, not final, a named size, a recipe of bytes no longer than the size needs."""
    if req.delta is None:
        if req.recipe is not None or req.delta_key is not None:
            raise InvalidRequest("a recipe or key comes only with a delta request", field="delta")
        return
    if req.delta_key is not None and (
        not isinstance(req.delta_key, bytes) or len(req.delta_key) != KEY_SIZE
    ):
        raise InvalidRequest(f"a delta key is {KEY_SIZE} bytes", field="delta_key")
    if req.delta not in WIRE_MODES:
        raise InvalidRequest(f"delta must be one of {', '.join(WIRE_MODES)}", field="delta")
    if len(req.data) or req.offset != 0 or req.done or req.staged is not None:
        raise InvalidRequest(
            "a delta request carries no data, is at offset 0 and is not final", field="delta"
        )
    if req.meta.size is None or req.meta.kind not in ("file", "tree"):
        raise InvalidRequest("a delta request names a snapshot's size", field="delta")
    if req.recipe is not None:
        if not isinstance(req.recipe, bytes):
            raise InvalidRequest("the recipe must be bytes", field="recipe")
        if len(req.recipe) > max_recipe_bytes(req.meta.size):
            raise InvalidRequest(
                f"a recipe of {len(req.recipe)} bytes is too long for a snapshot of "
                f"{req.meta.size} bytes",
                field="recipe",
            )


@dataclass
class ReceiverDelta:
    """What a receiver keeps of a delta: the base it offered (`base_id`, its `size`, its map as
    offered) and, once accepted, the recipe and the ranges it copies (target offset, length,
    CRC32C)."""

    base_id: str
    size: int
    base_map: DeltaMap
    recipe: Recipe | None = None
    copied: tuple[tuple[int, int, int], ...] = ()
    _copied_set: frozenset[tuple[int, int, int]] = field(default=frozenset(), repr=False)
    sent: SentRanges | None = field(default=None, repr=False)  # the recipe's, for extents

    def offer(self, encoded_map: bytes) -> DeltaOffer:
        """The offer naming this base, with its encoded map."""
        return DeltaOffer(
            self.base_id, format_checksum(self.base_map.whole_crc()), self.size, encoded_map
        )

    def still_copied(self, ledger: ChunkLedger) -> list[tuple[int, int, int]]:
        """The copied ranges the ledger still records as they were accepted (a chunk sent over
        one replaced it: those bytes came from the sender and stay)."""
        held = {(r.offset, r.length, r.crc) for r in ledger.records()}
        return [c for c in self.copied if c in held]

    def is_copied(self, offset: int, length: int, crc: int) -> bool:
        """Whether the ledger record ``(offset, length, crc)`` is a copied range (its bytes are
        not in the partial data until assembly: never re-read as a written chunk)."""
        return (offset, length, crc) in self._copied_set

    @property
    def reused(self) -> int:
        """Bytes the accepted recipe copies from the base."""
        return 0 if self.recipe is None else self.recipe.reused


def accept_recipe(
    delta: ReceiverDelta, meta: SnapshotMeta, raw: bytes, ledger: ChunkLedger
) -> tuple[tuple[int, int], ...]:
    """Decode the sender's recipe for `meta` against the offered base (`InvalidRequest` for a
    malformed or hostile one), record its copied ranges in `ledger` (replacing whatever was
    recorded there) and return what the ledger holds: the sender's ``held``."""
    assert meta.size is not None
    recipe = decode_recipe(raw, size=meta.size, base_size=delta.size)
    copied = tuple(copied_crcs(recipe, delta.base_map))  # InvalidRequest: not whole extents
    for at, length, crc in copied:
        ledger.discard(at, at + length)
        ledger.add(at, length, crc)
    delta.recipe, delta.copied, delta._copied_set = recipe, copied, frozenset(copied)
    delta.sent = SentRanges(recipe.sends())
    return tuple(ledger.held())


def read_offer(offer: object, meta: SnapshotMeta, mode: str) -> DeltaMap | None:
    """The base map of a receiver's `offer` for the sender's `meta` in `mode`, checked as a
    peer's; None when there is no usable offer (none, another mode, a base too large).
    `InvalidRequest` for a malformed one."""
    if offer is None or meta.size is None:
        return None
    if not isinstance(offer, DeltaOffer) or not isinstance(offer.map, bytes):
        raise InvalidRequest("malformed delta offer", field="delta_map")
    if not isinstance(offer.size, int) or offer.size < 0:
        raise InvalidRequest("malformed delta offer size", field="delta_map")
    limit = max_offer_size(meta.size)
    if offer.size > limit or len(offer.map) > max_map_bytes(offer.size):
        return None
    base_map = decode_map(offer.map, max_size=limit)
    if base_map.size != offer.size or base_map.mode != mode:
        raise InvalidRequest("the delta offer does not match its map", field="delta_map")
    return base_map
