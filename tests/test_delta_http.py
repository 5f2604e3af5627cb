"""Delta transfer over real HTTP: ``fstransport serve`` in its own process (its fixture is
`tests.test_http_e2e.serve`), onto a local folder and a memory store."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from fstransport import TransferOptions
from fstransport.http.client import HttpNetwork
from fstransport.options import KiB
from fstransport.transfer import ship
from tests.test_delta_ship import edited, inserted
from tests.test_http_e2e import SHIP_TIMEOUT, TOKEN, StartServer, serve

__all__ = ["serve"]  # the fixture, used by name

SIZE = 2048 * KiB


@pytest.mark.parametrize(
    ("mode", "flags"), [("blocks", ()), ("blocks", ("--no-prefill",)), ("cdc", ())]
)
async def test_delta_through_a_server_process(
    serve: StartServer, tmp_path: Path, mode: str, flags: tuple[str, ...]
) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN, *flags)
    base = random.Random(21).randbytes(SIZE)
    new = edited(base, 4, seed=22) if mode == "blocks" else inserted(base, 10_000, 100)
    source = tmp_path / "snap.bin"
    options = TransferOptions(chunk_size=128 * KiB, delta=mode)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        source.write_bytes(base)
        first = await asyncio.wait_for(
            ship(str(source), "snap.bin", network=net, options=options), SHIP_TIMEOUT
        )
        source.write_bytes(new)
        second = await asyncio.wait_for(
            ship(str(source), "snap.bin", network=net, options=options), SHIP_TIMEOUT
        )
    assert (root / "snap.bin").read_bytes() == new
    assert first.bytes_reused == 0
    assert first.bytes_sent == SIZE
    assert second.bytes_reused > 0.9 * len(new)
    assert second.bytes_sent < 0.05 * len(new)


async def test_an_unchanged_snapshot_over_http_sends_the_map(
    serve: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN)
    data = random.Random(23).randbytes(SIZE)
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    options = TransferOptions(chunk_size=128 * KiB)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        for _ in range(2):
            report = await asyncio.wait_for(
                ship(str(source), "snap.bin", network=net, options=options), SHIP_TIMEOUT
            )
    assert (root / "snap.bin").read_bytes() == data
    assert report.bytes_reused == SIZE
    assert report.bytes_sent <= 0.005 * SIZE


async def test_a_restarted_server_offers_what_it_installed_last(
    serve: StartServer, tmp_path: Path
) -> None:
    """``serve --keep-delta-state``, killed and started again, still offers the snapshot it
    installed last as the base for a snapshot under a new name (without the flag, ROOT holds
    only snapshots and the partial data of transfers in progress)."""
    root = tmp_path / "received"
    base = random.Random(24).randbytes(SIZE)
    source = tmp_path / "snap.bin"
    options = TransferOptions(chunk_size=128 * KiB)
    first = serve(str(root), "--token", TOKEN, "--keep-delta-state")
    source.write_bytes(base)
    async with HttpNetwork(first.url, token=TOKEN) as net:
        await asyncio.wait_for(ship(str(source), "term-7", network=net, options=options), 60)
    first.kill()
    again = serve(str(root), "--token", TOKEN, "--keep-delta-state")
    source.write_bytes(edited(base, 3, seed=25))
    async with HttpNetwork(again.url, token=TOKEN) as net:
        report = await asyncio.wait_for(
            ship(str(source), "term-8", network=net, options=options), SHIP_TIMEOUT
        )
    assert (root / "term-8").read_bytes() == source.read_bytes()
    assert report.bytes_reused > 0.9 * SIZE
    assert (root / ".fstransport" / "latest").read_text() == "term-8"
