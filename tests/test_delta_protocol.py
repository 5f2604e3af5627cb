"""Delta maps and recipes (fstransport.protocol.delta): random edit scripts rebuild the new
content exactly, wire forms round-trip, and a peer's malformed map or recipe is refused."""

from __future__ import annotations

import itertools
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fstransport.checksum import chunk_crc
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.protocol.delta import (
    SEND,
    DeltaMap,
    MapBuilder,
    Recipe,
    apply_recipe,
    build_map,
    choose_block_size,
    copied_crcs,
    new_key,
    plan_recipe,
)
from fstransport.protocol.delta_wire import decode_map, decode_recipe, encode_map, encode_recipe
from fstransport.protocol.ranges import ChunkLedger

KEY = bytes(range(16))
GiB = 1 << 30


def rebuild(mode: str, base: bytes, new: bytes, key: bytes = KEY) -> tuple[bytes, Recipe]:
    """Everything a delta transfer does, through the wire forms."""
    base_map = decode_map(encode_map(build_map(mode, base, key=key)), max_size=len(base))
    source = build_map(mode, new, key=base_map.key, block_size=base_map.block_size or None)
    recipe = decode_recipe(
        encode_recipe(plan_recipe(base_map, source)), size=len(new), base_size=len(base)
    )
    sent = b"".join(new[a:b] for a, b in recipe.sends())
    return apply_recipe(recipe, base, sent), recipe


EDIT = st.tuples(
    st.sampled_from(["page", "insert", "delete"]),
    st.floats(0, 1),
    st.integers(1, 9000),
)


def edited(base: bytes, script: list[tuple[str, float, int]], seed: int) -> bytes:
    rng = random.Random(seed)
    data = bytearray(base)
    for kind, where, n in script:
        at = int(where * len(data))
        if kind == "page":
            page = (at // 4096) * 4096
            data[page : page + 4096] = rng.randbytes(len(data[page : page + 4096]))
        elif kind == "insert":
            data[at:at] = rng.randbytes(n)
        else:
            del data[at : at + n]
    return bytes(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["blocks", "cdc"]),
    size=st.integers(0, 300_000),
    script=st.lists(EDIT, max_size=6),
    seed=st.integers(0, 2**32),
)
def test_random_edit_scripts_rebuild_the_new_content(
    mode: str, size: int, script: list[tuple[str, float, int]], seed: int
) -> None:
    base = random.Random(seed).randbytes(size)
    new = edited(base, script, seed + 1)
    rebuilt, recipe = rebuild(mode, base, new)
    assert rebuilt == new
    assert recipe.reused + recipe.sent == len(new)
    if not script:
        assert recipe.sent == 0


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
def test_an_unchanged_file_sends_nothing_and_one_page_sends_little(mode: str) -> None:
    base = random.Random(1).randbytes(1 << 20)
    _, recipe = rebuild(mode, base, base)
    assert recipe.sent == 0
    assert recipe.ranges == ((len(base), 0),)
    new = bytearray(base)
    new[300_000:300_010] = b"0123456789"
    rebuilt, recipe = rebuild(mode, base, bytes(new))
    assert rebuilt == new
    assert recipe.sent == (4096 if mode == "blocks" else recipe.sent)
    assert recipe.sent <= 64 * 1024


def test_cdc_finds_content_that_moved_and_blocks_do_not() -> None:
    base = random.Random(2).randbytes(2 << 20)
    new = base[:1000] + b"x" * 100 + base[1000:]
    assert rebuild("cdc", base, new)[1].sent < 128 * 1024
    assert rebuild("blocks", base, new)[1].sent > len(new) // 2


def test_cdc_segments_make_whole_files_match_wherever_they_land() -> None:
    rng = random.Random(3)
    files = [rng.randbytes(rng.randrange(1, 200_000)) for _ in range(8)]
    new_files = [rng.randbytes(5000), *files[1:], rng.randbytes(70_000)]

    def packed(parts: list[bytes]) -> tuple[bytes, list[int]]:
        offsets, at = [], 0
        for part in parts:
            offsets.append(at)
            at += len(part)
        return b"".join(parts), offsets

    base, base_cuts = packed(files)
    new, new_cuts = packed(new_files)
    base_map = build_map("cdc", base, key=KEY, segments=base_cuts)
    recipe = plan_recipe(base_map, build_map("cdc", new, key=KEY, segments=new_cuts))
    assert recipe.sent == 5000 + 70_000  # only the new files
    sent = b"".join(new[a:b] for a, b in recipe.sends())
    assert apply_recipe(recipe, base, sent) == new


def _crc_twin(block: bytes) -> bytes:
    """Another block of the same length and CRC32C: XOR in a non-zero pattern that the CRC's
    linear part maps to zero (found by elimination over GF(2))."""
    zero = chunk_crc(bytes(len(block)))
    rows: list[tuple[int, int]] = []  # (image, combination of bits)
    for bit in range(64):
        e = bytearray(len(block))
        e[bit // 8] = 1 << (bit % 8)
        image, combo = chunk_crc(bytes(e)) ^ zero, 1 << bit
        for row_image, row_combo in rows:
            if image ^ row_image < image:
                image, combo = image ^ row_image, combo ^ row_combo
        if image == 0:
            pattern = combo.to_bytes(8, "little")
            return bytes(a ^ b for a, b in zip(block, pattern + bytes(len(block) - 8), strict=True))
        rows.append((image, combo))
        rows.sort(reverse=True)
    raise AssertionError("no kernel found")


def test_a_crc32c_collision_is_not_reused() -> None:
    base = random.Random(4).randbytes(8 * 4096)
    twin = _crc_twin(base[4096:8192])
    assert twin != base[4096:8192]
    assert chunk_crc(twin) == chunk_crc(base[4096:8192])
    new = base[:4096] + twin + base[8192:]
    rebuilt, recipe = rebuild("blocks", base, new, key=new_key())
    assert rebuilt == new
    assert recipe.sent == 4096  # the twin block travels: its keyed tag differs


def test_map_costs_and_block_sizes() -> None:
    assert choose_block_size(GiB) == 4096
    assert choose_block_size(4 * GiB) == 4096
    assert choose_block_size(64 * GiB) == 64 * 1024
    data = random.Random(5).randbytes(1 << 20)
    # CRC32C 4 + tag 8 bytes a 4 KiB block, and as much a 64 KiB super-block
    assert len(encode_map(build_map("blocks", data, key=KEY))) == 48 + 256 * 12 + 16 * 12
    assert len(encode_map(build_map("blocks", data, key=KEY, supers=False))) == 48 + 256 * 12
    cdc = build_map("cdc", data, key=KEY)
    assert len(encode_map(cdc)) == 48 + 16 * len(cdc)  # length 4, CRC32C 4, tag 8
    zeros = build_map("blocks", bytes(1 << 20), key=KEY)
    packed = encode_map(zeros)
    assert len(packed) < 200  # zero pages deflate
    again = decode_map(packed, max_size=1 << 20)
    assert (again.crcs, again.tags, again.lengths) == (zeros.crcs, zeros.tags, zeros.lengths)
    assert again.whole_crc() == chunk_crc(bytes(1 << 20))
    assert again.crc_of(4096, 8192) == chunk_crc(bytes(8192))
    with pytest.raises(InvalidRequest):
        again.crc_of(100, 4096)


def test_misuse_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        build_map("off", b"x", key=KEY)
    with pytest.raises(ConfigurationError):
        build_map("blocks", b"x", key=b"short")
    a = build_map("blocks", b"x" * 5000, key=KEY)
    with pytest.raises(ConfigurationError):
        plan_recipe(a, build_map("blocks", b"x" * 5000, key=new_key()))


def _valid_map() -> bytes:
    return encode_map(build_map("cdc", random.Random(6).randbytes(100_000), key=KEY))


def _header(**kw: int | bytes) -> bytes:
    fields = {"magic": b"FSTDMAP3", "mode": 1, "flags": 0, "zero": 0, "block": 4096}
    fields.update({"size": 8192, "count": 2, "key": KEY})
    fields.update(kw)
    return struct.pack("<8sBBHIQQ16s", *fields.values())


def test_the_malformed_maps_edit_well_formed_ones() -> None:
    """The refusals below are for what each changes: the same header with its columns (two
    blocks: CRC32C 4 + tag 8 bytes each, plain or deflated; a CDC extent 16) decodes."""
    got = decode_map(_header() + bytes(24), max_size=1 << 30)
    assert (len(got), got.tags.typecode, list(got.tags)) == (2, "Q", [0, 0])
    assert len(decode_map(_header(flags=1) + zlib.compress(bytes(24)), max_size=1 << 30)) == 2
    tags = (1 << 64) - 2, 1 << 40
    got = decode_map(_header() + struct.pack("<IIQQ", 7, 8, *tags), max_size=1 << 30)
    assert (tuple(got.crcs), tuple(got.tags)) == ((7, 8), tags)
    cdc = _header(mode=2, block=0, size=10, count=1) + struct.pack("<IIQ", 10, 5, tags[0])
    assert tuple(decode_map(cdc, max_size=1 << 30).tags) == tags[:1]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"FSTDMAP3",
        _header(magic=b"FSTDMAP1") + bytes(24),
        _header(magic=b"FSTDMAP2") + bytes(16),  # 32-bit tags: its own length
        _header(magic=b"FSTDMAP2") + bytes(24),  # nor one that would fit 64-bit tags
        _header(mode=7) + bytes(24),
        _header(flags=4) + bytes(24),
        _header(zero=1) + bytes(24),
        _header(block=5000) + bytes(24),
        _header(block=1024, count=8) + bytes(96),
        _header(count=3) + bytes(36),
        _header() + bytes(16),  # two blocks with 32-bit tags
        _header() + bytes(23),
        _header() + bytes(25),
        _header(flags=1) + b"not zlib",
        _header(flags=1) + zlib.compress(bytes(1 << 20)),  # inflates far beyond its extents
        _header(flags=1) + zlib.compress(bytes(24)) + b"tail",
        _header(flags=1, size=0, count=0) + zlib.compress(bytes(1 << 20)),
        _header(size=1 << 40, count=(1 << 40) // 4096),
        _header(mode=2, block=0, size=10, count=1) + struct.pack("<IIQ", 9, 0, 0),
        _header(mode=2, block=0, size=0, count=1) + struct.pack("<IIQ", 0, 0, 0),
        _header(mode=2, block=4096, size=10, count=1) + struct.pack("<IIQ", 10, 0, 0),
    ],
)
def test_malformed_maps_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_map(raw, max_size=1 << 30)
    assert caught.value.field == "delta_map"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_maps_are_refused_or_well_formed(data: st.DataObject) -> None:
    raw = bytearray(_valid_map())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw))) :]
    try:
        got = decode_map(bytes(raw), max_size=1 << 20)
    except InvalidRequest:
        return
    assert sum(got.lengths) == got.size
    assert len(got.crcs) == len(got.tags) == len(got)


def test_malformed_recipes_are_refused() -> None:
    good = encode_recipe(Recipe(100, 50, ((50, 0), (50, SEND))))
    assert decode_recipe(good, size=100, base_size=50).reused == 50
    head = good[:32]
    bad = [
        good[:31],
        good + b"x",
        b"FSTDRCP2" + good[8:],
        good[:8] + struct.pack("<QQQ", 100, 50, 3) + good[32:],
        head + struct.pack("<QQ", 50, 1) + struct.pack("<QQ", 50, SEND),  # past the base
        head + struct.pack("<QQ", 0, 0) + struct.pack("<QQ", 100, SEND),
        head + struct.pack("<QQ", 50, 0) + struct.pack("<QQ", 49, SEND),
        head + struct.pack("<QQ", (1 << 64) - 60, SEND) + struct.pack("<QQ", 160, SEND),
    ]
    for raw in bad:
        with pytest.raises(InvalidRequest) as caught:
            decode_recipe(raw, size=100, base_size=50)
        assert caught.value.field == "delta_recipe"
    for size, base_size in [(101, 50), (100, 51)]:
        with pytest.raises(InvalidRequest):
            decode_recipe(good, size=size, base_size=base_size)


def test_apply_refuses_bytes_that_do_not_fit() -> None:
    recipe = Recipe(100, 50, ((50, 0), (50, SEND)))
    with pytest.raises(InvalidRequest):
        apply_recipe(recipe, bytes(50), bytes(49))
    with pytest.raises(InvalidRequest):
        apply_recipe(recipe, bytes(51), bytes(50))


def test_map_repr_hides_columns() -> None:
    m = build_map("blocks", bytes(10), key=KEY)
    assert isinstance(m, DeltaMap)
    assert "crcs" not in repr(m)


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["blocks", "cdc"]),
    size=st.integers(0, 400_000),
    cuts=st.lists(st.integers(0, 400_000), max_size=12),
    segments=st.lists(st.integers(1, 400_000), max_size=4),
    seed=st.integers(0, 2**32),
)
def test_a_map_fed_in_pieces_is_the_map_of_the_whole(
    mode: str, size: int, cuts: list[int], segments: list[int], seed: int
) -> None:
    data = random.Random(seed).randbytes(size)
    whole = build_map(mode, data, key=KEY, segments=segments)
    builder = MapBuilder(mode, key=KEY, block_size=whole.block_size or 4096)
    bounds = sorted({0, size, *(c for c in cuts if c < size)})
    starts = {s for s in segments if 0 < s < size}
    for start, end in itertools.pairwise(bounds):
        at = start
        for s in [*sorted(x for x in starts if start < x < end), end]:
            builder.update(data[at:s])
            if s in starts:
                builder.segment()
            at = s
    fed = builder.finish()
    assert (fed.size, fed.lengths, fed.crcs, fed.tags) == (
        whole.size,
        whole.lengths,
        whole.crcs,
        whole.tags,
    )
    assert sum(fed.lengths) == size
    assert fed.whole_crc() == chunk_crc(data)


def test_builder_refuses_bad_parameters() -> None:
    for mode, block in [("off", 4096), ("blocks", 1000), ("blocks", 2048), ("blocks", 1 << 25)]:
        with pytest.raises(ConfigurationError):
            MapBuilder(mode, key=KEY, block_size=block)


def test_copied_ranges_and_sent_chunks_combine_to_the_whole_crc() -> None:
    base = random.Random(9).randbytes(600_000)
    new = edited(base, [("page", 0.3, 1), ("insert", 0.6, 50)], 10)
    for mode in ("blocks", "cdc"):
        base_map = build_map(mode, base, key=KEY)
        recipe = plan_recipe(
            base_map, build_map(mode, new, key=KEY, block_size=base_map.block_size or None)
        )
        ledger = ChunkLedger()
        for at, length, crc in copied_crcs(recipe, base_map):
            ledger.add(at, length, crc)
        for a, b in recipe.sends():
            ledger.add(a, b - a, chunk_crc(new[a:b]))
        assert ledger.whole_crc(len(new)) == chunk_crc(new)
