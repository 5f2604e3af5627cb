"""Two-level block maps (fstransport.protocol.delta_super): a sender that hashes its source by
64 KiB super-blocks and block by block only where a super-block differs plans exactly the recipe
of a one-level map; a super-block is never reused on a CRC32C match alone; the second level
travels and is kept (sidecars) and checked as a peer's like the rest of the map."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fstransport.delta.cache as cache
from fstransport.checksum import chunk_crc
from fstransport.delta.cache import kept_map, sidecar_path
from fstransport.delta.local import map_file
from fstransport.delta.source_map import plan_source, start_map
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.protocol.delta import (
    SUPER_SHIFT,
    MapBuilder,
    apply_recipe,
    build_map,
    new_key,
    plan_recipe,
)
from fstransport.protocol.delta_session import max_map_bytes
from fstransport.protocol.delta_super import (
    Sketch,
    SketchBuilder,
    plan_two_level,
    refine,
    two_level,
)
from fstransport.protocol.delta_tags import derive_tags, hash_pieces, tag_multiplier
from fstransport.protocol.delta_wire import decode_map, encode_map
from fstransport.storage.source import BufferSource
from tests.test_delta_protocol import _crc_twin

UNIT = 4096 << SUPER_SHIFT


def sketch_of(data: bytes, key: bytes, pieces: list[int]) -> Sketch:
    builder, at = SketchBuilder(key=key, block_size=4096), 0
    for n in pieces:
        builder.update(data[at : at + n])
        at += n
    builder.update(data[at:])
    return builder.finish()


def two_level_recipe(base: bytes, new: bytes, pieces: list[int]) -> tuple[object, Sketch]:
    """Everything the sender does with a two-level base map, its map through the wire form."""
    offered = decode_map(encode_map(build_map("blocks", base, key=new_key())), max_size=1 << 30)
    sketch = sketch_of(new, offered.key, pieces)
    wanted = sketch.differing(offered)
    refined = refine(offered.key, 4096, [(i, new[i * UNIT : (i + 1) * UNIT]) for i in wanted])
    return plan_two_level(offered, sketch, refined), sketch


@settings(max_examples=40, deadline=None)
@given(
    base_size=st.integers(2 * UNIT + 1, 9 * UNIT),
    new_size=st.integers(1, 9 * UNIT),
    pages=st.lists(st.integers(0, 10**6), max_size=12),
    pieces=st.lists(st.integers(1, 3 * UNIT), max_size=4),
    seed=st.integers(0, 1000),
)
def test_two_levels_plan_the_one_level_recipe(
    base_size: int, new_size: int, pages: list[int], pieces: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    base = rng.randbytes(base_size)
    new = bytearray(base[:new_size].ljust(new_size, b"n"))
    for page in pages:
        at = page % new_size
        new[at] ^= 0xFF
    new_bytes = bytes(new)
    recipe, sketch = two_level_recipe(base, new_bytes, pieces)
    key = sketch.key
    one_level = plan_recipe(build_map("blocks", base, key=key), build_map("blocks", new, key=key))
    assert recipe == one_level  # (a Recipe compares by its ranges)
    sent = b"".join(new_bytes[a:b] for a, b in one_level.sends())
    assert apply_recipe(one_level, base, sent) == new_bytes
    assert sketch.whole_crc() == chunk_crc(new_bytes)


def test_only_the_super_blocks_that_differ_are_hashed_block_by_block() -> None:
    base = random.Random(1).randbytes(64 * UNIT)
    new = bytearray(base)
    for i in (3, 40, 41):
        new[i * UNIT + 5000] ^= 1
    recipe, sketch = two_level_recipe(base, bytes(new), [])
    offered = build_map("blocks", base, key=sketch.key)
    assert sketch.differing(offered) == [3, 40, 41]
    assert [(a, b - a) for a, b in recipe.sends()] == [  # type: ignore[attr-defined]
        (i * UNIT + 4096, 4096) for i in (3, 40, 41)
    ]


def test_a_super_block_with_the_same_crc32c_is_not_reused() -> None:
    """A crafted block leaves its super-block's CRC32C as it was (CRCs are linear): the keyed
    tag of the super-block's digest tells it apart, and only that block travels."""
    base = random.Random(4).randbytes(4 * UNIT)
    twin = _crc_twin(base[UNIT + 4096 : UNIT + 8192])
    new = base[: UNIT + 4096] + twin + base[UNIT + 8192 :]
    recipe, sketch = two_level_recipe(base, new, [])
    offered = build_map("blocks", base, key=sketch.key)
    assert offered.supers is not None
    assert sketch.crcs[1] == offered.supers.crcs[1]  # the collision is real at both levels
    assert sketch.differing(offered) == [1]
    assert recipe.sends() == [(UNIT + 4096, UNIT + 8192)]  # type: ignore[attr-defined]


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 5 * UNIT), cuts=st.lists(st.integers(1, 2 * UNIT), max_size=6))
def test_a_map_fed_in_pieces_has_the_second_level_of_the_whole(size: int, cuts: list[int]) -> None:
    data = random.Random(size).randbytes(size)
    key = new_key()
    builder, at = MapBuilder("blocks", key=key, block_size=4096, supers=True), 0
    for n in cuts:
        builder.update(data[at : at + n])
        at += n
    builder.update(data[at:])
    fed, whole = builder.finish(), build_map("blocks", data, key=key)
    assert (fed.crcs, fed.tags) == (whole.crcs, whole.tags)
    if size <= UNIT:
        assert fed.supers is None
        assert whole.supers is None
        return
    assert fed.supers is not None
    assert whole.supers is not None
    crcs, digests = hash_pieces(data, UNIT)
    assert (fed.supers.crcs, fed.supers.digests) == (crcs, digests)
    assert (fed.supers.tags, fed.supers.digests) == (whole.supers.tags, whole.supers.digests)
    assert fed.supers.tags == sketch_of(data, key, cuts).tags


def _raw_map(size: int, *, shift: int = SUPER_SHIFT, mode: int = 1, extra: int = 0) -> bytes:
    block = 4096 if mode == 1 else 0
    count = -(-size // 4096)
    supers = -(-size // UNIT)
    head = struct.pack("<8sBBHIQQ16s", b"FSTDMAP3", mode, 0, shift, block, size, count, bytes(16))
    return head + bytes(12 * count + 12 * supers + extra)  # CRC32C 4 + tag 8 each


@pytest.mark.parametrize(
    "raw",
    [
        _raw_map(3 * UNIT, shift=3),
        _raw_map(3 * UNIT, shift=5),
        _raw_map(3 * UNIT, extra=4),
        _raw_map(3 * UNIT)[:-4],
        _raw_map(UNIT),  # one super-block carries no second level
        struct.pack("<8sBBHIQQ16s", b"FSTDMAP3", 2, 0, SUPER_SHIFT, 0, 10, 1, bytes(16))
        + struct.pack("<IIQ", 10, 0, 0)
        + bytes(12),  # CDC has no super-blocks
    ],
)
def test_malformed_second_levels_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_map(raw, max_size=1 << 30)
    assert caught.value.field == "delta_map"


def test_the_second_level_travels_and_a_peers_cannot_be_rekeyed() -> None:
    made = build_map("blocks", random.Random(2).randbytes(3 * UNIT + 7), key=new_key())
    got = decode_map(encode_map(made), max_size=1 << 30)
    assert two_level(got)
    assert got.supers is not None
    assert made.supers is not None
    assert (got.supers.crcs, got.supers.tags) == (made.supers.crcs, made.supers.tags)
    with pytest.raises(ConfigurationError):
        got.supers.rekeyed(new_key())
    flat = build_map("blocks", bytes(3 * UNIT), key=new_key(), supers=False)
    assert not two_level(decode_map(encode_map(flat), max_size=1 << 30))


def test_an_old_sidecar_is_read_again_never_misread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sidecar of the format before the second level (FSTDSUM1) describing the very same
    file is ignored: the base is read and the sidecar written anew, with its second level."""
    path = tmp_path / "snap.bin"
    data = random.Random(3).randbytes(5 * UNIT)
    path.write_bytes(data)
    kept_map(str(tmp_path), str(path), "blocks", key=new_key())
    side = Path(sidecar_path(str(tmp_path), str(path), "blocks"))
    st_ = os.stat(path)
    made = map_file(str(path), "blocks", key=new_key())
    old = struct.pack(
        "<8sBIQQQqQ", b"FSTDSUM1", 1, 4096, st_.st_size, st_.st_ino, st_.st_dev,
        st_.st_mtime_ns, len(made),
    )  # fmt: skip
    side.write_bytes(old + made.crcs.tobytes() + made.digests)
    reads: list[str] = []

    def counted(p: str, mode: str, **kwargs: object) -> object:
        reads.append(p)
        return map_file(p, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "map_file", counted)
    key = new_key()
    got = kept_map(str(tmp_path), str(path), "blocks", key=key)
    assert reads == [str(path)]
    assert side.read_bytes()[:8] == b"FSTDSUM2"
    again = kept_map(str(tmp_path), str(path), "blocks", key=key)  # from the new sidecar
    assert reads == [str(path)]
    fresh = build_map("blocks", data, key=key)
    for m in (got, again):
        assert m.supers is not None
        assert fresh.supers is not None
        assert (m.crcs, m.tags, m.supers.crcs, m.supers.tags) == (
            fresh.crcs,
            fresh.tags,
            fresh.supers.crcs,
            fresh.supers.tags,
        )


def test_a_kept_assembly_has_the_second_level_of_the_new_file(tmp_path: Path) -> None:
    from fstransport.delta.cache import keep_assembled

    base = random.Random(7).randbytes(6 * UNIT + 100)
    new = bytearray(base)
    new[2 * UNIT + 10] ^= 1  # one super-block changed; the rest copied whole
    new += b"more"
    base_map = build_map("blocks", base, key=new_key())
    sketch = sketch_of(bytes(new), base_map.key, [])
    wanted = sketch.differing(base_map)
    refined = refine(base_map.key, 4096, [(i, new[i * UNIT : (i + 1) * UNIT]) for i in wanted])
    recipe = plan_two_level(base_map, sketch, refined)
    partial, final = tmp_path / "partial.bin", tmp_path / "snap.bin"
    partial.write_bytes(new)
    keep_assembled(str(tmp_path), str(final), str(partial), recipe, base_map)
    os.replace(partial, final)
    key = new_key()
    got, fresh = (
        kept_map(str(tmp_path), str(final), "blocks", key=key),
        build_map("blocks", bytes(new), key=key),
    )
    assert got.supers is not None
    assert fresh.supers is not None
    assert (got.crcs, got.tags) == (fresh.crcs, fresh.tags)
    assert (got.supers.crcs, got.supers.tags) == (fresh.supers.crcs, fresh.supers.tags)


@pytest.mark.parametrize("second_level", [True, False])
def test_the_sender_plans_with_or_without_the_bases_second_level(second_level: bool) -> None:
    """The sender sketches its source early; a base map without a second level (a peer that
    sends none) makes it map the source whole instead, with the same recipe."""
    base = random.Random(8).randbytes(10 * UNIT)
    new = bytearray(base)
    new[7 * UNIT] ^= 1
    key = new_key()
    offered = decode_map(
        encode_map(build_map("blocks", base, key=key, supers=second_level)), max_size=1 << 30
    )

    async def run() -> tuple[object, int]:
        source = BufferSource(bytes(new))
        early = start_map(source, "blocks", key=key, block_size=4096, piece=3 * UNIT)
        try:
            return await plan_source(source, "blocks", offered, early, (key, 4096), 3 * UNIT)
        finally:
            early.cancel()

    recipe, crc = asyncio.run(run())
    assert crc == chunk_crc(bytes(new))
    assert recipe.sends() == [(7 * UNIT, 7 * UNIT + 4096)]  # type: ignore[attr-defined]


def test_tags_are_the_multiply_shift_hash_of_the_digests() -> None:
    """Each tag is the top 64 bits of ``a * digest mod 2**256`` whatever batch it falls in (the
    batched product must never carry from one digest's slot into the next)."""
    digests = os.urandom(32 * 4100) + b"\xff" * 32 * 3  # past one batch; all-ones digests too
    key = new_key()
    tags, a = derive_tags(key, digests), tag_multiplier(key)
    assert a % 2 == 1
    assert len(tags) == 4103
    for i in [*range(0, 4103, 97), 4095, 4096, 4102]:
        x = int.from_bytes(digests[32 * i : 32 * i + 32], "little")
        assert tags[i] == (a * x) % (1 << 256) >> 192
    assert derive_tags(new_key(), digests) != tags  # another key, other tags
    with pytest.raises(ValueError, match="32-byte"):
        derive_tags(key, b"x" * 33)


@pytest.mark.parametrize("size", [1, 4096, UNIT, UNIT + 1, 2 * UNIT, 17 * 4096 + 1, 33 * UNIT - 1])
def test_a_two_level_map_stays_within_the_offer_bound(size: int) -> None:
    """`max_map_bytes` (16 bytes per 4 KiB, the sender's and the HTTP client's bound) holds with
    a block's 12 bytes and the second level's 12 per super-block (random content: nothing
    deflates)."""
    made = build_map("blocks", random.Random(size).randbytes(size), key=new_key())
    assert (made.supers is not None) == (size > UNIT)
    assert len(encode_map(made)) <= max_map_bytes(size)


class RemoteLike:
    """A source that is not cheap to read twice (as an S3 object): counts the bytes read."""

    def __init__(self, data: bytes) -> None:
        self._inner, self.size, self.description = BufferSource(data), len(data), "remote"
        self.read_bytes = 0

    async def read(self, offset: int, length: int) -> object:
        self.read_bytes += length
        return await self._inner.read(offset, length)

    async def close(self) -> None:
        await self._inner.close()


@pytest.mark.parametrize("cheap", [True, False])
def test_a_source_costly_to_read_twice_is_mapped_in_one_read(cheap: bool) -> None:
    """A local file (or a buffer) is sketched, then its differing super-blocks read again; a
    source such as an S3 object is read once, its blocks hashed on the way, as before."""
    base = random.Random(9).randbytes(12 * UNIT)
    new = bytearray(base)
    for i in range(0, 12, 2):
        new[i * UNIT + 100] ^= 1  # half the super-blocks differ
    key = new_key()
    offered = build_map("blocks", base, key=key)
    buffer = BufferSource(bytes(new))
    source = buffer if cheap else RemoteLike(bytes(new))

    async def run() -> tuple[object, int]:
        early = start_map(source, "blocks", key=key, block_size=4096, piece=4 * UNIT)  # type: ignore[arg-type]
        return await plan_source(source, "blocks", offered, early, (key, 4096), 4 * UNIT)  # type: ignore[arg-type]

    recipe, _ = asyncio.run(run())
    assert recipe.sends() == [(i * UNIT, i * UNIT + 4096) for i in range(0, 12, 2)]  # type: ignore[attr-defined]
    if not cheap:
        assert isinstance(source, RemoteLike)
        assert source.read_bytes == len(new)  # once, not once more for the refinement


async def test_ship_sketches_a_local_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ship()` reads its source through a `SharedReader`: a local file behind one is still
    sketched (and only the differing super-blocks hashed block by block)."""
    import fstransport.delta.source_map as source_map
    from fstransport import TransferOptions, ship
    from fstransport.network.loopback import LoopbackNetwork
    from fstransport.receiver import Receiver
    from fstransport.storage.store import FsspecSnapshotStore

    sketched: list[int] = []
    real = source_map.plan_against_sketch

    async def spy(*args: object, **kwargs: object) -> object:
        sketched.append(1)
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(source_map, "plan_against_sketch", spy)
    data = bytearray(random.Random(10).randbytes(40 * UNIT))
    root = tmp_path / "target"
    root.mkdir()
    (root / "snap.bin").write_bytes(data)
    data[17 * UNIT + 3] ^= 1
    (tmp_path / "snap.bin").write_bytes(data)
    network = LoopbackNetwork(Receiver(FsspecSnapshotStore(str(root))))
    options = TransferOptions(chunk_size=8 * UNIT)
    report = await ship(
        str(tmp_path / "snap.bin"), str(root / "snap.bin"), options=options, network=network
    )
    assert sketched == [1]
    assert report.bytes_reused == len(data) - 4096
    assert (root / "snap.bin").read_bytes() == data
