"""Kept delta maps: tags derived from key-independent digests equal those of a map made afresh,
a receiver's sidecar serves the next offer without reading the base, and a sidecar that no
longer describes its file (rewritten, replaced, damaged) is never used."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import fstransport.delta.cache as cache
from fstransport import TransferOptions
from fstransport.delta.cache import MAPS_DIR, keep_assembled, kept_map, sidecar_path
from fstransport.delta.local import map_file
from fstransport.errors import ConfigurationError
from fstransport.network.loopback import LoopbackNetwork
from fstransport.protocol.delta import SEND, Recipe, build_map, new_key, plan_recipe
from fstransport.protocol.delta_wire import decode_map, encode_map
from fstransport.receiver import Receiver
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import ship

SIZE = 256 * 1024 + 1000  # a last partial block


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
def test_a_rekeyed_map_is_the_map_made_with_that_key(mode: str) -> None:
    data = random.Random(1).randbytes(SIZE)
    first, key = build_map(mode, data, key=new_key()), new_key()
    again = first.rekeyed(key)
    fresh = build_map(mode, data, key=key)
    assert (again.key, again.lengths, again.crcs, again.tags) == (
        fresh.key,
        fresh.lengths,
        fresh.crcs,
        fresh.tags,
    )
    assert again.tags != first.tags  # the tags do depend on the key
    assert again.whole_crc() == fresh.whole_crc()


def test_a_map_from_a_peer_cannot_be_rekeyed() -> None:
    data = random.Random(2).randbytes(SIZE)
    peer = decode_map(encode_map(build_map("blocks", data, key=new_key())), max_size=SIZE)
    with pytest.raises(ConfigurationError):
        peer.rekeyed(new_key())


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "snap.bin"
    path.write_bytes(random.Random(3).randbytes(SIZE))
    return path


def counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []

    def counted(path: str, mode: str, **kwargs: object) -> object:
        reads.append(path)
        return map_file(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "map_file", counted)
    return reads


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
def test_the_second_offer_comes_from_the_sidecar(
    mode: str, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counting_reads(monkeypatch)
    root, key = str(tmp_path), new_key()
    first = kept_map(root, str(base), mode, key=new_key())
    assert os.path.isfile(sidecar_path(root, str(base), mode))
    second = kept_map(root, str(base), mode, key=key)
    assert reads == [str(base)]  # read once
    fresh = build_map(mode, base.read_bytes(), key=key)
    assert (second.lengths, second.crcs, second.tags) == (fresh.lengths, fresh.crcs, fresh.tags)
    assert second.digests == first.digests


def test_a_base_rewritten_in_place_is_read_again(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counting_reads(monkeypatch)
    root = str(tmp_path)
    kept_map(root, str(base), "blocks", key=new_key())
    data = bytearray(base.read_bytes())
    data[5000:5100] = b"x" * 100  # same size
    with open(base, "r+b") as fh:
        fh.write(data)
    st = os.stat(base)
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # (a coarse clock: make sure)
    key = new_key()
    got = kept_map(root, str(base), "blocks", key=key)
    assert reads == [str(base)] * 2
    assert got.tags == build_map("blocks", bytes(data), key=key).tags


def test_a_replaced_base_is_read_again(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counting_reads(monkeypatch)
    root = str(tmp_path)
    kept_map(root, str(base), "blocks", key=new_key())
    st = os.stat(base)
    other = tmp_path / "other.bin"
    other.write_bytes(random.Random(4).randbytes(SIZE))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime, new inode
    os.replace(other, base)
    kept_map(root, str(base), "blocks", key=new_key())
    assert reads == [str(base)] * 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "count"])
def test_a_damaged_sidecar_is_ignored_and_replaced(
    damage: str, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counting_reads(monkeypatch)
    root = str(tmp_path)
    kept_map(root, str(base), "blocks", key=new_key())
    side = Path(sidecar_path(root, str(base), "blocks"))
    raw = side.read_bytes()
    if damage == "truncate":
        side.write_bytes(raw[:-7])
    elif damage == "garbage":
        side.write_bytes(os.urandom(len(raw)))
    else:  # a header that claims one block more
        at = cache._HEADER.size - 8  # the header's last field
        count = int.from_bytes(raw[at : at + 8], "little")
        side.write_bytes(raw[:at] + (count + 1).to_bytes(8, "little") + raw[at + 8 :] + bytes(36))
    key = new_key()
    got = kept_map(root, str(base), "blocks", key=key)
    assert reads == [str(base)] * 2
    assert got.tags == build_map("blocks", base.read_bytes(), key=key).tags
    assert side.read_bytes() == raw  # written again


def test_sidecars_live_under_the_stores_bookkeeping(base: Path, tmp_path: Path) -> None:
    kept_map(str(tmp_path), str(base), "blocks", key=new_key())
    assert os.listdir(tmp_path / MAPS_DIR) == [
        os.path.basename(sidecar_path("", str(base), "blocks"))
    ]


def test_a_kept_map_plans_the_same_recipe(base: Path, tmp_path: Path) -> None:
    new = bytearray(base.read_bytes())
    new[8192:8292] = b"y" * 100
    root = str(tmp_path)
    kept_map(root, str(base), "blocks", key=new_key())
    key = new_key()
    offered = kept_map(root, str(base), "blocks", key=key)
    recipe = plan_recipe(offered, build_map("blocks", bytes(new), key=key))
    assert recipe.sends() == [(8192, 12288)]


async def test_a_snapshot_assembled_from_a_delta_is_offered_without_a_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver keeps the map of what it assembles (the base's digests for copied blocks,
    the sent blocks hashed): the next offer reads neither the base nor the new snapshot."""
    root = tmp_path / "received"
    base = random.Random(5).randbytes(SIZE)
    new = bytearray(base)
    new[4096 * 3 : 4096 * 3 + 50] = b"z" * 50
    new[-10:] = b"w" * 10  # the short last block
    source = tmp_path / "snap.bin"
    source.write_bytes(base)
    options = TransferOptions(chunk_size=64 * 1024)
    await ship(str(source), str(root / "snap.bin"), options=options)  # full: nothing kept
    source.write_bytes(new)
    network = LoopbackNetwork(Receiver(FsspecSnapshotStore(str(root)), long_lived=True))
    report = await ship(str(source), str(root / "snap.bin"), options=options, network=network)
    assert report.bytes_reused > 0
    assert (root / "snap.bin").read_bytes() == new
    reads = counting_reads(monkeypatch)
    key = new_key()
    offered = kept_map(str(root), str(root / "snap.bin"), "blocks", key=key)
    assert reads == []  # kept at install
    fresh = build_map("blocks", bytes(new), key=key)
    assert (offered.lengths, offered.crcs, offered.tags) == (fresh.lengths, fresh.crcs, fresh.tags)


def test_a_kept_assembly_follows_copies_from_other_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer's recipe may copy a base block to another offset: the kept map takes that
    block's entry there; a block not copied whole is read back and hashed."""
    base = random.Random(6).randbytes(16 * 4096)
    new = base[3 * 4096 : 4 * 4096] + base[4096:] + b"tail"
    recipe = Recipe(len(new), len(base), ((4096, 3 * 4096), (15 * 4096, 4096), (4, SEND)))
    partial, final = tmp_path / "partial.bin", tmp_path / "snap.bin"
    partial.write_bytes(new)
    base_map = build_map("blocks", base, key=new_key())
    keep_assembled(str(tmp_path), str(final), str(partial), recipe, base_map)
    os.replace(partial, final)  # installing: a rename keeps what the sidecar checks
    reads = counting_reads(monkeypatch)
    key = new_key()
    got = kept_map(str(tmp_path), str(final), "blocks", key=key)
    fresh = build_map("blocks", new, key=key)
    assert (got.lengths, got.crcs, got.tags, got.size) == (
        fresh.lengths,
        fresh.crcs,
        fresh.tags,
        fresh.size,
    )
    assert reads == []  # from the sidecar
