"""The delta exchange's rules without I/O (`fstransport.protocol.delta_session`) and the offer's
HTTP form (`fstransport.http.wire`): what a peer's offer or recipe may be."""

from __future__ import annotations

import random

import pytest

from fstransport.errors import InvalidRequest
from fstransport.http.wire import decode_key, decode_offer, encode_offer, offer_cap
from fstransport.messages import DeltaOffer, SnapshotMeta
from fstransport.protocol.delta import build_map, new_key, plan_recipe
from fstransport.protocol.delta_session import (
    ReceiverDelta,
    accept_recipe,
    max_map_bytes,
    max_recipe_bytes,
    read_offer,
)
from fstransport.protocol.delta_wire import encode_map, encode_recipe
from fstransport.protocol.ranges import ChunkLedger

SIZE = 256 * 1024
BASE = random.Random(1).randbytes(SIZE)


def offered(mode: str = "blocks") -> tuple[ReceiverDelta, DeltaOffer]:
    base_map = build_map(mode, BASE, key=new_key())
    delta = ReceiverDelta("old", SIZE, base_map)
    return delta, delta.offer(encode_map(base_map))


def test_an_accepted_recipe_records_the_copied_ranges_with_the_base_crcs() -> None:
    delta, offer = offered()
    new = bytearray(BASE)
    new[4096:4196] = b"z" * 100
    meta = SnapshotMeta("snap", size=SIZE)
    base_map = read_offer(offer, meta, "blocks")
    assert base_map is not None
    recipe = plan_recipe(base_map, build_map("blocks", bytes(new), key=base_map.key))
    ledger = ChunkLedger()
    held = accept_recipe(delta, meta, encode_recipe(recipe), ledger)
    assert held == ((0, 4096), (8192, SIZE))
    assert delta.reused == SIZE - 4096
    assert [r.offset for r in ledger.records()] == [0, 8192]
    assert delta.is_copied(0, 4096, ledger.records()[0].crc)
    assert len(delta.still_copied(ledger)) == 2
    ledger.add(0, 4096, 1)  # a chunk sent over a copied range replaces it
    assert len(delta.still_copied(ledger)) == 1


def test_a_recipe_for_other_sizes_is_refused() -> None:
    delta, _ = offered()
    meta = SnapshotMeta("snap", size=SIZE)
    recipe = plan_recipe(delta.base_map, delta.base_map)
    with pytest.raises(InvalidRequest):
        accept_recipe(
            delta, SnapshotMeta("snap", size=SIZE + 1), encode_recipe(recipe), ChunkLedger()
        )
    with pytest.raises(InvalidRequest):
        accept_recipe(delta, meta, b"FSTDRCP1" + b"\xff" * 24, ChunkLedger())


def test_an_offer_of_another_mode_or_a_lying_size_is_refused() -> None:
    _, offer = offered("cdc")
    meta = SnapshotMeta("snap", size=SIZE)
    with pytest.raises(InvalidRequest):
        read_offer(offer, meta, "blocks")
    _, offer = offered()
    lying = DeltaOffer(offer.base_id, offer.checksum, SIZE - 1, offer.map)
    with pytest.raises(InvalidRequest):
        read_offer(lying, meta, "blocks")
    with pytest.raises(InvalidRequest):
        read_offer(DeltaOffer("x", "y", SIZE, b"garbage"), meta, "blocks")


def test_an_offer_too_large_for_the_snapshot_is_ignored() -> None:
    meta = SnapshotMeta("snap", size=1024)
    huge = DeltaOffer("x", "crc32c:00000000", 10 << 30, b"\0" * 64)
    assert read_offer(huge, meta, "blocks") is None
    long_map = DeltaOffer("x", "crc32c:00000000", 4096, b"\0" * (max_map_bytes(4096) + 1))
    assert read_offer(long_map, meta, "blocks") is None
    assert read_offer(None, meta, "blocks") is None


def test_limits_grow_with_the_size() -> None:
    assert max_recipe_bytes(1 << 30) == 32 + 16 * (2 * (1 << 18) + 2)
    assert offer_cap(None, 1 << 20) == 1 << 20
    # a base of up to 4 GiB: 16 bytes per 4 KiB (a CDC extent's length, CRC32C, 64-bit tag),
    # 16 MiB of map, its base64 21.3 MiB, plus the 1 MiB answer
    assert max_map_bytes(4 << 30) == 48 + 16 * ((1 << 20) + 1)
    assert 22 << 20 < offer_cap(1 << 30, 1 << 20) < 23 << 20


def test_the_offer_round_trips_over_http_and_malformed_ones_are_refused() -> None:
    _, offer = offered()
    assert decode_offer(encode_offer(offer)) == offer
    assert decode_offer(None) is None
    bads: list[object] = [
        [],
        {"base_id": "x"},
        {**encode_offer(offer), "map": "not base64!"},
        {**encode_offer(offer), "size": -1},
        {**encode_offer(offer), "size": True},
        {**encode_offer(offer), "extra": 1},
    ]
    for bad in bads:
        with pytest.raises(InvalidRequest):
            decode_offer(bad)


def test_the_key_header_is_32_hex_digits() -> None:
    assert decode_key(None) is None
    assert decode_key("00" * 16) == bytes(16)
    for bad in ("00" * 15, "zz" * 16, "00" * 17, "+0" * 16):
        with pytest.raises(InvalidRequest):
            decode_key(bad)
