"""Several ranges a request over real HTTP (``X-Fstransport-Extents``): a delta through a real
``fstransport serve`` process (its fixture is `tests.test_http_e2e.serve`), and hostile
requests with extents answered with 4xx before anything is written."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest

from fstransport import TransferOptions
from fstransport.checksum import chunk_crc
from fstransport.http.client import HttpNetwork
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse
from fstransport.options import KiB
from fstransport.protocol.delta_pack import encode_extents
from fstransport.transfer import ship
from tests.test_delta_ship import edited
from tests.test_http_e2e import SHIP_TIMEOUT, TOKEN, StartServer, serve

__all__ = ["serve"]  # the fixture, used by name

SIZE = 2048 * KiB


class Counting:
    """An `HttpNetwork` whose requests are kept (to count those with extents)."""

    carries_delta = True

    def __init__(self, inner: HttpNetwork) -> None:
        self.inner = inner
        self.requests: list[InstallSnapshotRequest] = []

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.requests.append(req)
        return await self.inner.install_snapshot(req, option)


async def test_scattered_pages_travel_together_through_a_server_process(
    serve: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN)
    base = random.Random(41).randbytes(SIZE)
    new = edited(base, 80, seed=42)
    source = tmp_path / "snap.bin"
    options = TransferOptions(chunk_size=128 * KiB, delta="blocks")
    async with HttpNetwork(server.url, token=TOKEN) as http:
        net = Counting(http)
        source.write_bytes(base)
        await asyncio.wait_for(ship(str(source), "snap.bin", network=net, options=options), 60)
        net.requests.clear()
        source.write_bytes(new)
        report = await asyncio.wait_for(
            ship(str(source), "snap.bin", network=net, options=options), SHIP_TIMEOUT
        )
    assert (root / "snap.bin").read_bytes() == new
    packed = [r for r in net.requests if r.extents]
    assert sum(len(r.extents or ()) for r in packed) > 50
    assert len([r for r in net.requests if r.delta is None]) < 10  # (one a page: about 80)
    assert report.bytes_reused > 0.8 * SIZE


def _headers(crc: int, count: str, offset: int = 4096) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {TOKEN}",
        "X-Fstransport-Vote": "1,0,0",
        "X-Fstransport-Meta": f'{{"size":{SIZE}}}',
        "X-Fstransport-Offset": str(offset),
        "X-Fstransport-Done": "0",
        "X-Fstransport-Crc32c": str(crc),
        "X-Fstransport-Extents": count,
    }


GOOD = ((4096, 100), (8192, 100))
TABLE = encode_extents(GOOD)
DATA = b"d" * 200


@pytest.mark.parametrize(
    ("body", "count", "status", "error"),
    [
        (TABLE + DATA, "0", 400, "InvalidRequest"),  # no extents
        (TABLE + DATA, "3", 400, "InvalidRequest"),  # a table longer than the body holds
        (TABLE + DATA, "x", 400, "InvalidRequest"),
        (TABLE + DATA[:-1], "2", 400, "InvalidRequest"),  # lengths do not add up
        (encode_extents(((4096, 100), (4150, 100))) + DATA, "2", 400, "InvalidRequest"),
        (encode_extents(((4096, 100), (SIZE - 100, 100))) + DATA, "2", 400, "InvalidRequest"),
        (TABLE + DATA, "2", 409, "SnapshotMismatch"),  # well formed, but no stream, no recipe
    ],
)
async def test_hostile_extents_are_refused_before_anything_is_written(
    serve: StartServer, tmp_path: Path, body: bytes, count: str, status: int, error: str
) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN)
    async with aiohttp.ClientSession() as session:
        async with session.put(
            f"{server.url}/v1/snapshots/snap.bin",
            data=body,
            headers=_headers(chunk_crc(body), count),
        ) as answer:
            assert answer.status == status
            got = await answer.json()
            assert got["error"] == error
        async with session.put(  # a body that does not match its CRC: refused as any
            f"{server.url}/v1/snapshots/snap.bin",
            data=TABLE + DATA,
            headers=_headers(chunk_crc(TABLE + DATA) ^ 1, "2"),
        ) as answer:
            assert answer.status == 422
    assert not any(p.is_file() and p.name.startswith("snap") for p in root.rglob("*"))
