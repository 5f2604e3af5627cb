"""Directory delta over real HTTP: ``fstransport serve`` in its own process (its fixture is
`tests.test_http_e2e.serve`) receives a tree, then a changed one, and installs it exactly."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from fstransport import TransferOptions
from fstransport.http.client import HttpNetwork
from fstransport.options import KiB
from fstransport.transfer import ship
from tests.test_delta_tree import installed, sst_files, write_tree
from tests.test_http_e2e import SHIP_TIMEOUT, TOKEN, StartServer, serve

__all__ = ["serve"]  # the fixture, used by name


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
async def test_tree_delta_through_a_server_process(
    serve: StartServer, tmp_path: Path, mode: str
) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN)
    rng = random.Random(31)
    base = sst_files(rng, 20, "db/")
    new = {p: d for p, d in base.items() if p != "db/000004.sst"}
    new["db/000100.sst"] = rng.randbytes(40_000)
    new["renamed.sst"] = new.pop("db/000005.sst")
    folder = tmp_path / "src"
    options = TransferOptions(chunk_size=32 * KiB, delta=mode)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        write_tree(folder, base)
        first = await asyncio.wait_for(
            ship(str(folder), "tree", network=net, options=options), SHIP_TIMEOUT
        )
        write_tree(folder, new)
        second = await asyncio.wait_for(
            ship(str(folder), "tree", network=net, options=options), SHIP_TIMEOUT
        )
    assert installed(str(root / "tree")) == new
    assert first.bytes_reused == 0
    kept = sum(len(d) for p, d in new.items() if p != "db/000100.sst")
    assert second.bytes_reused == kept
    assert second.bytes_sent < 40_000 + 4 * KiB + 0.01 * kept  # the new file, table, map
