"""Delta transfer together with the relay, as it is today: a relayed send makes no delta
exchange (`RelayNetwork` does not declare ``carries_delta``), so a target that holds a base gets
the whole snapshot staged and fetched, and installs exactly the new bytes; the report says so
(``bytes_reused`` 0, ``bytes_uploaded`` the whole size).  In process (loopback, one target and a
fan-out) and through real ``fstransport serve`` processes.  See docs/relay.md ("Delta and the
relay")."""

from __future__ import annotations

import random
from pathlib import Path

from fstransport import FsspecSnapshotStore, Receiver, TransferOptions, ship
from fstransport.http.client import HttpNetwork
from fstransport.network.base import carries_delta
from fstransport.network.loopback import LoopbackNetwork
from fstransport.network.relay import RelayNetwork
from fstransport.options import KiB
from tests.test_http_e2e import StartServer, serve

__all__ = ["serve"]  # the fixture, used by name below

SIZE = 1024 * KiB
OPTIONS = TransferOptions(chunk_size=64 * KiB, delta="blocks")


def versions(seed: int) -> tuple[bytes, bytes]:
    """A base and a new version of it with three 4 KiB pages changed (a delta's best case)."""
    rng = random.Random(seed)
    base = rng.randbytes(SIZE)
    new = bytearray(base)
    for page in (3, 100, 200):
        new[page * 4096 : page * 4096 + 64] = rng.randbytes(64)
    return base, bytes(new)


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_a_relay_network_does_not_carry_delta_requests(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    inner = LoopbackNetwork(Receiver(store, relay_options={}))
    assert carries_delta(inner)
    relay = RelayNetwork(inner, str(tmp_path / "stage"))
    assert not carries_delta(relay), "a relayed send stages whole snapshots (docs/relay.md)"


async def test_a_relayed_ship_onto_a_base_installs_the_new_bytes_in_full(tmp_path: Path) -> None:
    base, new = versions(1)
    source, target = tmp_path / "snap.bin", tmp_path / "r" / "snap.bin"
    stage = tmp_path / "stage"
    stage.mkdir()
    source.write_bytes(base)
    await ship(str(source), str(target), options=OPTIONS)
    source.write_bytes(new)
    report = await ship(str(source), str(target), options=OPTIONS, relay=str(stage))
    assert target.read_bytes() == new
    assert report.bytes_reused == 0, "no delta through the relay: nothing is taken from the base"
    assert report.bytes_uploaded == SIZE
    assert report.bytes_read == SIZE
    assert report.bytes_sent == SIZE  # every chunk went, by reference
    assert files(stage) == [], "nothing stays staged"
    # the same ship without the relay does use the base: the contrast the docs describe
    source.write_bytes(base)
    direct = await ship(str(source), str(target), options=OPTIONS)
    assert target.read_bytes() == base
    assert direct.bytes_reused > 0.9 * SIZE


async def test_a_relayed_fan_out_onto_different_bases_installs_the_new_bytes(
    tmp_path: Path,
) -> None:
    base, new = versions(2)
    _, other = versions(3)  # the second target holds an unrelated snapshot under the same name
    targets = [tmp_path / "r0" / "snap.bin", tmp_path / "r1" / "snap.bin"]
    for target, held in zip(targets, (base, other), strict=True):
        target.parent.mkdir()
        target.write_bytes(held)
    source, stage = tmp_path / "snap.bin", tmp_path / "stage"
    stage.mkdir()
    source.write_bytes(new)
    report = await ship(str(source), [str(t) for t in targets], options=OPTIONS, relay=str(stage))
    for target in targets:
        assert target.read_bytes() == new
    assert report.bytes_read == SIZE
    assert report.bytes_uploaded == SIZE
    assert [t.bytes_reused for t in report.targets] == [0, 0]
    assert files(stage) == []


async def test_a_server_holding_a_base_installs_a_relayed_snapshot_in_full(
    serve: StartServer, tmp_path: Path
) -> None:
    base, new = versions(4)
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
        report = await ship(str(source), "snap.bin", network=net, options=OPTIONS, relay=str(stage))
        assert (root / "snap.bin").read_bytes() == new
        assert (report.bytes_reused, report.bytes_uploaded) == (0, SIZE)
        assert files(stage) == []
        # directly, the server's base is used: only the changed pages, map and recipe travel
        source.write_bytes(base)
        direct = await ship(str(source), "snap.bin", network=net, options=OPTIONS)
    finally:
        await net.close()
    assert (root / "snap.bin").read_bytes() == base
    assert direct.bytes_reused > 0.9 * SIZE
    assert direct.bytes_sent < 0.1 * SIZE
