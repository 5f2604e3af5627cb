"""Delta transfer together with the relay (docs/relay.md, "Delta and the relay"): each staged
chunk carries its block map (a trailer named by its SHA-256 in the reference); a receiver that
holds a base fetches only the ranges its base lacks, checks them and the chunk's CRC32C, and
fills the rest from its base.  Real parts: local folders, memory://, moto over HTTP, a real
``fstransport serve``.  Stage once holds: every receiver uses the same staged objects."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import (
    Chunked,
    FsspecSnapshotStore,
    Receiver,
    TransferOptions,
    ship,
)
from fstransport.checksum import chunk_crc
from fstransport.errors import ConfigurationError, InvalidRequest
from fstransport.http.client import HttpNetwork
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, Vote
from fstransport.network.base import carries_delta
from fstransport.network.loopback import LoopbackNetwork
from fstransport.network.relay import RelayNetwork
from fstransport.options import KiB
from fstransport.protocol.delta import build_map
from fstransport.protocol.relay_trailer import (
    build_trailer,
    decode_trailer,
    max_trailer_bytes,
    plan_chunk,
)
from fstransport.storage.staging import trailer_of
from tests.test_http_e2e import StartServer, serve
from tests.test_relay import installed, snapshot

__all__ = ["serve"]  # the fixture, used by name below

SIZE = 1024 * KiB
CHUNK = 64 * KiB
OPTIONS = TransferOptions(chunk_size=CHUNK, delta="blocks")
MAPS = {"block_maps": True}  # (`ship`'s relay stages no block maps unless asked)
PAGE = 4096
TRAILER = 28 + 32 * (CHUNK // PAGE)
"""The block map staged after each 64 KiB chunk: header and one SHA-256 per 4 KiB block."""
CHANGED = (3, 100, 200)


def versions(seed: int, size: int = SIZE, pages: tuple[int, ...] = CHANGED) -> tuple[bytes, bytes]:
    """A base and a new version of it with `pages` (4 KiB pages) changed."""
    rng = random.Random(seed)
    base = rng.randbytes(size)
    new = bytearray(base)
    for page in pages:
        new[page * PAGE : page * PAGE + 64] = rng.randbytes(64)
    return base, bytes(new)


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def fetched_for(pages: int, size: int = SIZE, chunk: int = CHUNK) -> int:
    """Bytes a receiver holding the base fetches: every block map, and the changed pages."""
    maps = sum(28 + 32 * -(-min(chunk, size - at) // PAGE) for at in range(0, size, chunk))
    return maps + pages * PAGE


class Tap:
    """A network between the relay and the receiver that runs `before` on each reference
    before delivering it and `after` on each answer."""

    def __init__(self, inner: LoopbackNetwork, before: Any = None, after: Any = None) -> None:
        self.inner, self.before, self.after = inner, before, after
        self.answers: dict[int, InstallSnapshotResponse] = {}  # by offset

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        if self.before is not None:
            self.before(req)
        answer = await self.inner.install_snapshot(req, option)
        self.answers[req.offset] = answer
        if self.after is not None:
            self.after(req)
        return answer


def test_a_relay_network_does_not_carry_delta_requests(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    inner = LoopbackNetwork(Receiver(store, relay_options={}))
    assert carries_delta(inner)
    relay = RelayNetwork(inner, str(tmp_path / "stage"), block_maps=True)
    assert not carries_delta(relay), "the receivers plan against their bases, not the sender"


async def test_a_relayed_ship_onto_a_base_fetches_only_what_the_base_lacks(tmp_path: Path) -> None:
    base, new = versions(1)
    source, target = tmp_path / "snap.bin", tmp_path / "r" / "snap.bin"
    stage = tmp_path / "stage"
    stage.mkdir()
    source.write_bytes(base)
    await ship(str(source), str(target), options=OPTIONS)
    source.write_bytes(new)
    report = await ship(
        str(source), str(target), options=OPTIONS, relay=str(stage), relay_options=MAPS
    )
    assert target.read_bytes() == new
    assert report.bytes_reused == SIZE - len(CHANGED) * PAGE, "every unchanged page from the base"
    assert report.bytes_fetched == fetched_for(len(CHANGED)), "the maps and the changed pages"
    assert report.bytes_uploaded == SIZE, "the chunks are staged whole, once"
    assert report.bytes_read == SIZE
    assert report.bytes_sent == SIZE  # every chunk went, by reference
    assert files(stage) == [], "nothing stays staged"


async def test_a_receiver_without_a_base_fetches_exactly_the_chunks(tmp_path: Path) -> None:
    _, new = versions(2)
    source, target, stage = tmp_path / "snap.bin", tmp_path / "r" / "snap.bin", tmp_path / "stage"
    stage.mkdir()
    source.write_bytes(new)
    report = await ship(
        str(source), str(target), options=OPTIONS, relay=str(stage), relay_options=MAPS
    )
    assert target.read_bytes() == new
    assert (report.bytes_reused, report.bytes_fetched) == (0, SIZE), "no map is even read"
    off = await ship(
        str(source),
        str(tmp_path / "o" / "snap.bin"),
        options=TransferOptions(chunk_size=CHUNK, delta="off"),
        relay=str(stage),
        relay_options=MAPS,
    )
    assert (off.bytes_reused, off.bytes_fetched) == (0, SIZE)


async def test_delta_off_stages_no_maps(tmp_path: Path) -> None:
    base, new = versions(3)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    await store.install(await _finished(store, "snap", base))
    receiver = Receiver(store, relay_options={})
    names: list[str] = []
    tap = Tap(LoopbackNetwork(receiver), before=lambda req: names.append(req.staged.name))
    relay = RelayNetwork(tap, str(tmp_path / "stage"), block_maps=True)
    options = TransferOptions(chunk_size=CHUNK, delta="off")
    await Chunked.send_snapshot(relay, Vote(1, 1), snapshot(new), option=options)
    assert await installed(store, "snap") == new
    assert names
    assert all(trailer_of(n) is None for n in names)
    assert relay.own_bytes_reused == 0
    assert relay.own_bytes_fetched == SIZE
    await relay.close()
    await receiver.close()


async def _finished(store: FsspecSnapshotStore, snapshot_id: str, data: bytes) -> Any:
    from fstransport.checksum import chunk_crc, format_checksum
    from fstransport.messages import SnapshotMeta

    meta = SnapshotMeta(snapshot_id, size=len(data), checksum=format_checksum(chunk_crc(data)))
    sink = await store.begin(meta)
    await sink.write(0, data, chunk_crc(data))
    return await store.finish(meta, sink)


async def test_a_relayed_fan_out_onto_different_bases_stages_once(tmp_path: Path) -> None:
    base, new = versions(4)
    _, other = versions(5)  # the second target holds an unrelated snapshot under the same name
    targets = [tmp_path / "r0" / "snap.bin", tmp_path / "r1" / "snap.bin", tmp_path / "r2" / "s"]
    for target, held in zip(targets, (base, other, None), strict=True):
        target.parent.mkdir()
        if held is not None:
            target.write_bytes(held)
    targets[2] = targets[2].parent / "snap.bin"  # the third holds nothing
    source, stage = tmp_path / "snap.bin", tmp_path / "stage"
    stage.mkdir()
    source.write_bytes(new)
    report = await ship(
        str(source),
        [str(t) for t in targets],
        options=OPTIONS,
        relay=str(stage),
        relay_options=MAPS,
    )
    for target in targets:
        assert target.read_bytes() == new
    assert report.bytes_read == SIZE
    assert report.bytes_uploaded == SIZE, "one upload for three receivers, maps included"
    reused = [t.bytes_reused for t in report.targets]
    fetched = [t.bytes_fetched for t in report.targets]
    assert reused == [SIZE - len(CHANGED) * PAGE, 0, 0]
    assert fetched[0] == fetched_for(len(CHANGED))
    assert fetched[1] >= SIZE, "an unrelated base gives nothing: each chunk fetched whole"
    assert fetched[2] == SIZE, "no base: the chunks, not their maps"
    assert report.bytes_reused == sum(reused)
    assert report.bytes_fetched == sum(fetched)
    assert files(stage) == []


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
async def test_a_one_percent_changed_page_file_through_s3(
    mode: str, tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    size, chunk = 4 << 20, 1 << 20
    pages = tuple(sorted(random.Random(6).sample(range(size // PAGE), size // PAGE // 100)))
    base, new = versions(6, size, pages)
    source, target = tmp_path / "snap.bin", tmp_path / "r" / "snap.bin"
    options = TransferOptions(chunk_size=chunk, delta=mode)
    source.write_bytes(base)
    await ship(str(source), str(target), options=options)
    source.write_bytes(new)
    report = await ship(
        str(source),
        str(target),
        options=options,
        relay=f"s3://{s3_bucket}/stage",
        relay_options={**s3_storage_options, "block_maps": True},
    )
    assert target.read_bytes() == new
    assert report.bytes_uploaded == size
    if mode == "blocks":
        assert report.bytes_fetched == fetched_for(len(pages), size, chunk)
        assert report.bytes_reused == size - len(pages) * PAGE
    else:  # CDC extents are ~24 KiB: each changed page costs its extent, maps are smaller
        assert report.bytes_reused > 0.5 * size
        assert report.bytes_fetched < 0.5 * size
    assert report.bytes_fetched < 0.03 * size or mode == "cdc", "~1% changed + 0.8% maps"
    listing = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="stage/")
    assert listing.get("Contents", []) == []


async def test_an_s3_target_holding_a_base_fetches_only_what_it_lacks(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    base, new = versions(14)
    source, stage = tmp_path / "snap.bin", tmp_path / "stage"
    stage.mkdir()
    target = f"s3://{s3_bucket}/r/snap.bin"
    source.write_bytes(base)
    await ship(str(source), target, options=OPTIONS, target_options=s3_storage_options)
    source.write_bytes(new)
    report = await ship(
        str(source),
        target,
        options=OPTIONS,
        target_options=s3_storage_options,
        relay=str(stage),
        relay_options=MAPS,
    )
    fs = fsspec.filesystem("s3", **s3_storage_options)
    assert fs.cat_file(target.removeprefix("s3://")) == new
    assert report.bytes_reused == SIZE - len(CHANGED) * PAGE, "read from the base object"
    assert report.bytes_fetched == fetched_for(len(CHANGED))
    assert files(stage) == []


async def test_a_base_changed_after_its_map_is_never_installed(tmp_path: Path) -> None:
    base, new = versions(7)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    await store.install(await _finished(store, "snap", base))
    receiver = Receiver(store, relay_options={})
    held = Path(store.path("snap"))
    assert await installed(store, "snap") == base

    def change_the_base(req: InstallSnapshotRequest) -> None:
        if req.offset == 0:  # the base's map is made: now its bytes change under it
            held.write_bytes(bytes(b ^ 0x55 for b in base[: SIZE // 2]) + base[SIZE // 2 :])

    tap = Tap(LoopbackNetwork(receiver), after=change_the_base)
    relay = RelayNetwork(tap, str(tmp_path / "stage"), block_maps=True)
    await Chunked.send_snapshot(relay, Vote(1, 1), snapshot(new), option=OPTIONS)
    assert await installed(store, "snap") == new, "chunks whose base bytes changed fetched whole"
    reused = [tap.answers[at].reused for at in range(0, SIZE, CHUNK)]
    half = SIZE // 2 // CHUNK
    assert reused[0] > 0, "the first chunk was planned and filled before the change"
    assert all(r == 0 for r in reused[1:half]), "the changed half of the base gave nothing"
    assert sum(reused[half:]) > 0.4 * SIZE, "the unchanged half was still used"
    await relay.close()
    await receiver.close()


async def test_a_base_removed_while_it_is_used_costs_whole_chunks(tmp_path: Path) -> None:
    base, new = versions(8)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    receiver = Receiver(store, relay_options={})
    direct = LoopbackNetwork(receiver)
    await Chunked.send_snapshot(direct, Vote(1, 1), snapshot(base, "old"), option=OPTIONS)
    old = Path(store.path("old"))  # installed last by this receiver: the base of "new"

    def remove_the_base(req: InstallSnapshotRequest) -> None:
        if req.offset == 0:
            old.unlink()

    tap = Tap(direct, after=remove_the_base)
    relay = RelayNetwork(tap, str(tmp_path / "stage"), block_maps=True)
    await Chunked.send_snapshot(relay, Vote(1, 1), snapshot(new, "new"), option=OPTIONS)
    assert await installed(store, "new") == new
    assert tap.answers[0].reused > 0, "the base of another name (installed last) was used"
    assert all(tap.answers[at].reused == 0 for at in range(CHUNK, SIZE, CHUNK)), "then gone"
    await relay.close()
    await receiver.close()


@pytest.mark.parametrize("part", ["map", "chunk"])
async def test_an_altered_map_or_chunk_in_the_bucket_is_never_installed(
    part: str, tmp_path: Path
) -> None:
    base, new = versions(9)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    await store.install(await _finished(store, "snap", base))
    receiver = Receiver(store, relay_options={})
    stage = tmp_path / "stage"
    altered: list[str] = []

    def forge(req: InstallSnapshotRequest) -> None:
        ref = req.staged
        assert ref is not None
        path = Path(ref.url)
        if altered or req.offset != 0 or not path.exists():
            return
        body = bytearray(path.read_bytes())
        if part == "map":  # the map says: take every block from the base (the old bytes)
            old_map = build_trailer("blocks", PAGE, base[:CHUNK])
            body[ref.length :] = old_map
        else:  # a changed page's bytes altered (and the map left alone)
            body[3 * PAGE] ^= 0xFF
        path.write_bytes(bytes(body))
        altered.append(ref.url)

    tap = Tap(LoopbackNetwork(receiver), before=forge)
    relay = RelayNetwork(tap, str(stage), block_maps=True)
    await Chunked.send_snapshot(relay, Vote(1, 1), snapshot(new), option=OPTIONS)
    assert altered, "the bucket was forged"
    assert await installed(store, "snap") == new, "never the forged bytes"
    if part == "map":  # refused: the chunk was fetched whole, the forged map never used
        assert (tap.answers[0].reused, relay.bytes_uploaded) == (0, SIZE)
    else:  # the fetched page is not the map's, the whole object not the CRC: staged again
        assert relay.bytes_uploaded == SIZE + CHUNK
    assert sum(a.reused for a in tap.answers.values()) >= SIZE - CHUNK - len(CHANGED) * PAGE
    await relay.close()
    await receiver.close()


async def test_an_object_cut_to_its_chunk_in_s3_is_fetched_whole(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    base, new = versions(13)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    await store.install(await _finished(store, "snap", base))
    receiver = Receiver(store, relay_options=s3_storage_options)
    cut: list[str] = []

    def cut_the_map(req: InstallSnapshotRequest) -> None:
        ref = req.staged
        assert ref is not None
        if req.offset == CHUNK and not cut:  # the map goes: a GET past the chunk finds nothing
            key = ref.url.split(f"{s3_bucket}/", 1)[1]
            body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
            s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body[: ref.length])
            cut.append(key)

    tap = Tap(LoopbackNetwork(receiver), before=cut_the_map)
    relay = RelayNetwork(tap, f"s3://{s3_bucket}/stage", **s3_storage_options, block_maps=True)
    await Chunked.send_snapshot(relay, Vote(1, 1), snapshot(new), option=OPTIONS)
    assert cut
    assert await installed(store, "snap") == new
    assert (tap.answers[CHUNK].reused, tap.answers[CHUNK].fetched) == (0, CHUNK)
    assert tap.answers[0].reused > 0, "the other chunks still came from the base"
    assert relay.bytes_uploaded == SIZE, "nothing staged again: the chunk itself was intact"
    await relay.close()
    await receiver.close()


async def test_a_server_holding_a_base_fetches_only_what_it_lacks(
    serve: StartServer, tmp_path: Path
) -> None:
    base, new = versions(10)
    stage, root = tmp_path / "stage", tmp_path / "root"
    stage.mkdir()
    server = serve(str(root), "--no-auth", "--relay-prefix", str(stage))
    source = tmp_path / "snap.bin"
    net = HttpNetwork(server.url)
    try:
        source.write_bytes(base)
        await ship(str(source), "snap.bin", network=net, options=OPTIONS)
        assert (root / "snap.bin").read_bytes() == base
        source.write_bytes(new)
        report = await ship(
            str(source),
            "snap.bin",
            network=net,
            options=OPTIONS,
            relay=str(stage),
            relay_options=MAPS,
        )
    finally:
        await net.close()
    assert (root / "snap.bin").read_bytes() == new
    assert report.bytes_uploaded == SIZE
    assert report.bytes_reused == SIZE - len(CHANGED) * PAGE, "counted by the server, over HTTP"
    assert report.bytes_fetched == fetched_for(len(CHANGED))
    assert files(stage) == []


# -- the block map itself ---------------------------------------------------------------------


def test_a_trailer_round_trips_and_plans_against_a_base() -> None:
    base, new = versions(11, 256 * KiB, (1, 2, 40))
    raw = build_trailer("blocks", PAGE, new[64 * KiB : 192 * KiB])
    assert len(raw) <= max_trailer_bytes(128 * KiB)
    trailer = decode_trailer(raw, 128 * KiB)
    base_map = build_map("blocks", base, key=bytes(16))
    pieces = plan_chunk(trailer, 64 * KiB, base_map)
    fetch = [(at, n) for at, n, where in pieces if where is None]
    assert fetch == [(40 * PAGE - 64 * KiB, PAGE)], "only page 40 lies in this chunk"
    assert all(where == 64 * KiB + at for at, _, where in pieces if where is not None)


@pytest.mark.parametrize(
    "damage",
    ["short", "magic", "mode", "length", "count", "block size", "extra byte", "cdc lengths"],
)
def test_a_malformed_trailer_is_refused(damage: str) -> None:
    data = random.Random(12).randbytes(40_000)
    raw = bytearray(build_trailer("blocks", PAGE, data))
    if damage == "cdc lengths":
        raw = bytearray(build_trailer("cdc", 0, data))
        raw[28:32] = (1).to_bytes(4, "little")  # the extents no longer tile the chunk
    elif damage == "short":
        raw = raw[:20]
    elif damage == "magic":
        raw[0] ^= 1
    elif damage == "mode":
        raw[8] = 9
    elif damage == "length":
        raw[16] ^= 1
    elif damage == "count":
        raw[24] += 1
    elif damage == "block size":
        raw[12:16] = (5000).to_bytes(4, "little")
    else:
        raw += b"\0"
    with pytest.raises(InvalidRequest) as caught:
        decode_trailer(bytes(raw), 40_000)
    assert caught.value.field == "staged"


@pytest.mark.parametrize("value", ["12", -1, True, 1.5, 1 << 63, [1]])
def test_an_answer_with_a_bad_byte_count_is_malformed(value: object) -> None:
    from fstransport.http.client import _count

    assert _count(None) == 0
    assert _count(7) == 7
    with pytest.raises(ValueError, match="not a byte count"):
        _count(value)


async def test_block_maps_are_staged_only_when_asked(tmp_path: Path) -> None:
    """By default a relayed send stages the chunks alone (no map costs the sender, docs/relay.md):
    a receiver holding a base fetches every chunk whole; `block_maps` turns the maps on."""
    base, new = versions(31)
    source, target, stage = tmp_path / "snap.bin", tmp_path / "r" / "snap.bin", tmp_path / "stage"
    stage.mkdir()
    source.write_bytes(base)
    await ship(str(source), str(target), options=OPTIONS)
    source.write_bytes(new)
    plain = await ship(str(source), str(target), options=OPTIONS, relay=str(stage))
    assert target.read_bytes() == new
    assert (plain.bytes_reused, plain.bytes_fetched) == (0, SIZE)
    source.write_bytes(base)
    mapped = await ship(
        str(source), str(target), options=OPTIONS, relay=str(stage), relay_options=MAPS
    )
    assert target.read_bytes() == base
    assert mapped.bytes_reused == SIZE - len(CHANGED) * PAGE
    for wrong in ("yes", 1, None):
        with pytest.raises(ConfigurationError, match="block_maps"):
            await ship(
                str(source), str(target), relay=str(stage), relay_options={"block_maps": wrong}
            )
        with pytest.raises(ConfigurationError, match="block_maps"):
            RelayNetwork(
                LoopbackNetwork(Receiver(FsspecSnapshotStore(str(tmp_path)))),
                str(stage),
                block_maps=wrong,  # type: ignore[arg-type]
            )


def _with_same_crc(original: bytes, changed: bytes, at: int) -> bytes:
    """`changed` with the 32 bits at byte `at` set so that its CRC32C is `original`'s (CRC32C is
    affine in the bits of a fixed-length input: solve for them over GF(2))."""
    out = bytearray(changed)
    start = chunk_crc(bytes(out))

    def flipped(bit: int) -> int:
        trial = bytearray(out)
        trial[at + bit // 8] ^= 1 << (bit % 8)
        return chunk_crc(bytes(trial)) ^ start

    basis: list[tuple[int, int]] = []  # (effect on the CRC, bits flipped), reduced
    for bit in range(32):
        effect, bits = flipped(bit), 1 << bit
        for b_effect, b_bits in basis:
            if effect ^ b_effect < effect:
                effect, bits = effect ^ b_effect, bits ^ b_bits
        if effect:
            basis.append((effect, bits))
            basis.sort(reverse=True)
    want, bits = start ^ chunk_crc(original), 0
    for b_effect, b_bits in basis:
        if want ^ b_effect < want:
            want, bits = want ^ b_effect, bits ^ b_bits
    assert want == 0, "32 free bits always reach any CRC32C"
    for bit in range(32):
        if bits >> bit & 1:
            out[at + bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


async def test_a_base_changed_to_keep_each_chunks_crc_is_never_installed(tmp_path: Path) -> None:
    """A base rewritten after its map was made so that every chunk keeps its CRC32C (four
    chosen bytes do it: CRC32C is linear): the map's digests catch what the CRC cannot."""
    base, new = versions(9)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    await store.install(await _finished(store, "snap", base))
    receiver = Receiver(store, relay_options={})
    held = Path(store.path("snap"))
    chunk = base[CHUNK : 2 * CHUNK]
    forged_chunk = _with_same_crc(chunk, b"FORGED" + chunk[6:], 10 * PAGE)
    assert chunk_crc(forged_chunk) == chunk_crc(chunk)
    assert forged_chunk != chunk

    def forge_the_base(req: InstallSnapshotRequest) -> None:
        if req.offset == 0:  # the base's map is made: now one chunk of it is forged
            held.write_bytes(base[:CHUNK] + forged_chunk + base[2 * CHUNK :])

    tap = Tap(LoopbackNetwork(receiver), after=forge_the_base)
    relay = RelayNetwork(tap, str(tmp_path / "stage"), block_maps=True)
    await Chunked.send_snapshot(relay, Vote(1, 1), snapshot(new), option=OPTIONS)
    assert await installed(store, "snap") == new
    assert tap.answers[CHUNK].reused == 0, "the forged chunk was fetched whole"
    await relay.close()
    await receiver.close()
