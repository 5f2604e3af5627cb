"""The HTTP adapter against a real aiohttp receiver server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import fsspec
import pytest
from aiohttp import web

from fstransport import (
    FsspecSnapshotStore,
    Receiver,
    ReceiverLimits,
    RemoteError,
    RetryExhausted,
    RetryPolicy,
    TransferOptions,
    Unauthorized,
    Unreachable,
    ship,
)
from fstransport.network.http import HttpNetwork
from fstransport.server import create_app
from tests.conftest import payload

TOKEN = "s3cret-token"


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    root = tmp_path / "received"
    store = FsspecSnapshotStore(str(root))
    receiver = Receiver(store, limits=ReceiverLimits(max_chunk_size=16 * 1024 * 1024))
    runner, url = await start(create_app(store, token=TOKEN, receiver=receiver))
    try:
        yield url, root
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("window", [1, 4])
async def test_ship_memory_to_local_over_http(server: tuple[str, Path], window: int) -> None:
    url, root = server
    data = payload(3 * 1024 * 1024 + 11, seed=window)
    fsspec.filesystem("memory").pipe_file("/src.bin", data)
    options = TransferOptions(chunk_size=256 * 1024, max_in_flight=window)
    async with HttpNetwork(url, token=TOKEN) as net:
        report = await ship("memory://src.bin", "snap.bin", network=net, options=options)
    assert (root / "snap.bin").read_bytes() == data
    assert report.size == len(data)


async def test_wrong_token_is_refused_and_nothing_is_written(server: tuple[str, Path]) -> None:
    url, root = server
    fsspec.filesystem("memory").pipe_file("/src.bin", b"x" * 1000)
    async with HttpNetwork(url, token="wrong") as net:
        with pytest.raises(RemoteError) as info:
            await ship("memory://src.bin", "snap.bin", network=net)
    assert isinstance(info.value.source, Unauthorized)
    assert not root.exists() or not any(root.rglob("*"))


async def test_path_traversal_id_is_refused_by_the_server(server: tuple[str, Path]) -> None:
    url, root = server
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-Fstransport-Vote": "1,0,0",
        "X-Fstransport-Meta": '{"size": 3}',
        "X-Fstransport-Offset": "0",
        "X-Fstransport-Done": "1",
    }
    async with aiohttp.ClientSession() as session:
        for bad in ["..", "%2E%2E", "a%2Fb", "..%2F..%2Fescape", "%00x"]:
            async with session.put(f"{url}/v1/snapshots/{bad}", data=b"abc", headers=headers) as r:
                assert r.status in (400, 404), (bad, r.status)
    assert not any(Path(root).parent.glob("escape*"))
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


async def test_oversized_body_is_refused_before_it_is_read(server: tuple[str, Path]) -> None:
    url, _ = server
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-Fstransport-Vote": "1,0,0",
        "X-Fstransport-Meta": "{}",
        "X-Fstransport-Offset": "0",
        "X-Fstransport-Done": "0",
        "Content-Length": str(17 * 1024 * 1024),
    }
    reader, writer = await __import__("asyncio").open_connection(
        "127.0.0.1", int(url.rsplit(":", 1)[1])
    )
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"PUT /v1/snapshots/big HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    await writer.drain()  # no body sent at all: the answer must come anyway
    status_line = await reader.readline()
    writer.close()
    assert b" 413 " in status_line


async def test_payload_limit_answer_makes_the_sender_shrink(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    receiver = Receiver(store, limits=ReceiverLimits(max_chunk_size=64 * 1024))
    runner, url = await start(create_app(store, receiver=receiver))
    try:
        data = payload(300 * 1024)
        fsspec.filesystem("memory").pipe_file("/src.bin", data)
        async with HttpNetwork(url) as net:
            await ship(
                "memory://src.bin",
                "s.bin",
                network=net,
                options=TransferOptions(chunk_size=256 * 1024),
            )
        assert (tmp_path / "r" / "s.bin").read_bytes() == data
    finally:
        await runner.cleanup()


async def test_unreachable_server_is_a_typed_error() -> None:
    fsspec.filesystem("memory").pipe_file("/src.bin", b"x")
    options = TransferOptions(
        retry=RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=3)
    )
    async with HttpNetwork("http://127.0.0.1:9") as net:
        with pytest.raises(RetryExhausted) as info:
            await ship("memory://src.bin", "s.bin", network=net, options=options)
    assert isinstance(info.value.last_error, Unreachable)
