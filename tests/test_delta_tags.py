"""64-bit tags (fstransport.protocol.delta_tags, map format ``FSTDMAP3``): every tag is the top
64 bits of ``a * digest mod 2**256``, both halves, for any key and digests; the 32 bits that maps
before ``FSTDMAP3`` dropped are really kept; a peer that offers a map of the older format
(``FSTDMAP2``, 32-bit tags) gets a full transfer with the right bytes, never a misread map."""

from __future__ import annotations

import random
import struct
from array import array
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport import TransferOptions
from fstransport.errors import InvalidRequest
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta, Vote
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.protocol.delta import DeltaMap, build_map, new_key, plan_recipe
from fstransport.protocol.delta_super import SketchBuilder
from fstransport.protocol.delta_tags import TAG_SIZE, derive_tags, tag_multiplier
from fstransport.protocol.delta_wire import decode_map, encode_map
from fstransport.receiver import Receiver
from fstransport.sender import send_source
from fstransport.storage.source import BufferSource
from fstransport.storage.store import FsspecSnapshotStore

MASK = (1 << 256) - 1


def reference(key: bytes, digest: bytes) -> int:
    """The tag of `digest` under `key`, one big-int product: bits 192..255 of ``a * x``."""
    product = tag_multiplier(key) * int.from_bytes(digest, "little") & MASK
    return product >> 192


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    digests=st.lists(st.binary(min_size=32, max_size=32), max_size=40),
    fill=st.sampled_from([None, 0x00, 0xFF]),
)
def test_every_tag_is_the_top_64_bits_of_the_product(
    key: bytes, digests: list[bytes], fill: int | None
) -> None:
    if fill is not None:  # the extreme digests (all zeros, all ones) too
        digests = [bytes([fill]) * 32, *digests]
    tags = derive_tags(key, b"".join(digests))
    assert (tags.typecode, tags.itemsize, len(tags)) == ("Q", TAG_SIZE, len(digests))
    a = tag_multiplier(key)
    for tag, digest in zip(tags, digests, strict=True):
        product = a * int.from_bytes(digest, "little") & MASK
        assert tag >> 32 == product >> 224  # the high half: the 32-bit tag of FSTDMAP2
        assert tag & 0xFFFF_FFFF == (product >> 192) & 0xFFFF_FFFF  # the low half
        assert tag == reference(key, digest)


def test_tags_past_one_batch_match_the_reference() -> None:
    rng = random.Random(1)
    digests = [rng.randbytes(32) for _ in range(4096 + 5)]  # the batch is 4,096 digests
    key = new_key()
    tags = derive_tags(key, b"".join(digests))
    for i in (0, 4094, 4095, 4096, 4100):
        assert tags[i] == reference(key, digests[i])


def test_digests_whose_32_bit_tags_agree_get_different_64_bit_tags() -> None:
    """Two digests whose products differ only in bit 192 (below the 32 bits an FSTDMAP2 tag
    kept): the old tags would agree, the new ones differ by exactly that bit."""
    key = new_key()
    a = tag_multiplier(key)
    inverse = pow(a, -1, 1 << 256)  # a is odd
    top = 0x5EED_0001 << 224 | 0x1234_5678 << 192  # no carry out of bit 223 when adding 2**192
    x, y = (inverse * top & MASK), (inverse * (top + (1 << 192)) & MASK)
    assert x != y
    raw = x.to_bytes(32, "little") + y.to_bytes(32, "little")
    tags = derive_tags(key, raw)
    assert tags[0] >> 32 == tags[1] >> 32 == 0x5EED_0001  # the old 32-bit tags: equal
    assert (tags[0], tags[1]) == (0x5EED_0001_1234_5678, 0x5EED_0001_1234_5679)
    # and so a map keeps the two extents apart: each tag travels whole
    made = build_map("cdc", bytes(100), key=key)
    both = replace(made, tags=array("Q", [tags[0]]))
    got = decode_map(encode_map(both), max_size=1 << 20)
    assert tuple(got.tags) == (tags[0],)


def as_fstdmap2(raw: bytes) -> bytes:
    """The map `raw` (FSTDMAP3) as a peer before 64-bit tags wrote it: the same header under
    the magic ``FSTDMAP2``, u32 columns, each tag its top 32 bits (undeflated)."""
    got: DeltaMap = decode_map(raw, max_size=1 << 40)
    head = b"FSTDMAP2" + raw[8:9] + b"\0" + raw[10:48]
    columns = [got.crcs, array("I", [t >> 32 for t in got.tags])]
    if got.mode == "cdc":
        columns.insert(0, got.lengths)
    if got.supers is not None:
        columns += [got.supers.crcs, array("I", [t >> 32 for t in got.supers.tags])]
    return head + b"".join(struct.pack(f"<{len(c)}I", *c) for c in columns)


def test_the_old_form_is_what_an_old_peer_sent() -> None:
    """`as_fstdmap2` writes the old layout exactly (a block map of 1 MiB: 8 bytes a block and
    8 a super-block), and this version refuses it."""
    raw = encode_map(build_map("blocks", random.Random(2).randbytes(1 << 20), key=new_key()))
    old = as_fstdmap2(raw)
    assert (len(raw), len(old)) == (48 + 256 * 12 + 16 * 12, 48 + 256 * 8 + 16 * 8)
    assert struct.unpack_from("<8sBBH", old) == (b"FSTDMAP2", 1, 0, 4)
    with pytest.raises(InvalidRequest, match="not a delta map of a known format"):
        decode_map(old, max_size=1 << 30)


SIZE = 1024 * KiB


async def _done() -> None:
    return None


class OldPeer:
    """A receiver of the version before 64-bit tags: its offers carry FSTDMAP2 maps."""

    carries_delta = True

    def __init__(self, inner: LoopbackNetwork, *, old: bool) -> None:
        self.inner, self.old, self.offers = inner, old, 0

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await self.inner.install_snapshot(req, option)
        if answer.offer is None:
            return answer
        self.offers += 1
        if not self.old:
            return answer
        return replace(answer, offer=replace(answer.offer, map=as_fstdmap2(answer.offer.map)))


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
@pytest.mark.parametrize("old", [True, False])
async def test_an_fstdmap2_offer_means_a_full_transfer(
    mode: str, old: bool, tmp_path: Path
) -> None:
    """The same receiver, base and new snapshot: its offer in this version's form saves all but
    the changed pages; in the old form it is refused and the snapshot is sent whole, right."""
    rng = random.Random(3)
    base = rng.randbytes(SIZE)
    new = bytearray(base)
    new[8192:8292] = rng.randbytes(100)
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    options = TransferOptions(chunk_size=64 * KiB, delta=mode)
    meta = SnapshotMeta("snap.bin")
    first = await send_source(loop, Vote(1, 0), meta, BufferSource(base, "b"), None, options)
    assert first.completed
    await receiver._io.installing.get("snap.bin", _done())
    peer = OldPeer(loop, old=old)
    result = await send_source(peer, Vote(1, 0), meta, BufferSource(new, "n"), None, options)
    await receiver._io.installing.get("snap.bin", _done())
    assert result.completed
    assert peer.offers == 1
    assert (tmp_path / "received" / "snap.bin").read_bytes() == new
    if old:
        assert (result.stats.bytes_reused, result.stats.bytes_sent) == (0, SIZE)
    else:
        assert result.stats.bytes_reused >= SIZE - 64 * KiB


def test_a_plan_compares_all_64_bits() -> None:
    """Maps that agree in every length, CRC32C and top 32 bits of every tag but differ in the
    lowest bit of one tag: that block is sent, the rest copied; that super-block is refined."""
    data = random.Random(4).randbytes(40 * 4096)
    key = new_key()
    base = decode_map(encode_map(build_map("blocks", data, key=key)), max_size=1 << 30)
    tags = array("Q", base.tags)
    tags[7] ^= 1
    recipe = plan_recipe(base, replace(base, tags=tags))
    assert recipe.sends() == [(7 * 4096, 8 * 4096)]
    builder = SketchBuilder(key=key, block_size=4096)
    builder.update(data)
    sketch = builder.finish()
    assert sketch.differing(base) == []
    tags = array("Q", sketch.tags)
    tags[1] ^= 1
    assert replace(sketch, tags=tags).differing(base) == [1]
