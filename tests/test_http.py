"""The HTTP adapter against a real aiohttp receiver server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import fsspec
import pytest
from aiohttp import web

from fstransport import (
    ConfigurationError,
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
from fstransport.checksum import chunk_crc
from fstransport.http.app import create_app
from fstransport.http.client import HttpNetwork
from fstransport.messages import Buffer, Pieces, Snapshot, SnapshotMeta
from fstransport.storage.sink import Lost, PwriteSink
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
    headers = _chunk_headers(None, 3)
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
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"PUT /v1/snapshots/big HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    await writer.drain()  # no body sent at all: the answer must come anyway
    status_line = await reader.readline()
    writer.close()
    assert b" 413 " in status_line


async def test_payload_limit_answer_makes_the_sender_shrink(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    receiver = Receiver(store, limits=ReceiverLimits(max_chunk_size=64 * 1024))
    runner, url = await start(create_app(store, no_auth=True, receiver=receiver))
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


# -- the server's chunk buffers and the client's body ------------------------------------------


@pytest.mark.parametrize("chunk_size", [256 * 1024, 2 * 1024 * 1024 + 5])
async def test_chunks_larger_than_a_send_slice_arrive_whole(
    server: tuple[str, Path], chunk_size: int
) -> None:
    url, root = server
    data = payload(7 * 1024 * 1024 + 3, seed=chunk_size)
    fsspec.filesystem("memory").pipe_file("/src.bin", data)
    options = TransferOptions(chunk_size=chunk_size, max_in_flight=2)
    async with HttpNetwork(url, token=TOKEN) as net:
        for name in ["a.bin", "b.bin"]:  # one connection pool for both transfers
            report = await ship("memory://src.bin", name, network=net, options=options)
            assert (root / name).read_bytes() == data
            assert report.size == len(data)


async def test_empty_snapshot_over_http(server: tuple[str, Path]) -> None:
    url, root = server
    fsspec.filesystem("memory").pipe_file("/src.bin", b"")
    async with HttpNetwork(url, token=TOKEN) as net:
        report = await ship("memory://src.bin", "empty.bin", network=net)
    assert (root / "empty.bin").read_bytes() == b""
    assert report.size == 0


def _chunk_headers(crc: int | None, size: int, *, token: str | None = TOKEN) -> dict[str, str]:
    """The headers of a PUT carrying a whole `size`-byte snapshot as one chunk (no CRC32C
    header when `crc` is None, no Authorization when `token` is)."""
    headers = {
        "X-Fstransport-Vote": "1,0,0",
        "X-Fstransport-Meta": json.dumps({"size": size}),
        "X-Fstransport-Offset": "0",
        "X-Fstransport-Done": "1",
    }
    if crc is not None:
        headers["X-Fstransport-Crc32c"] = str(crc)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def test_corrupted_body_is_refused_and_nothing_is_installed(
    server: tuple[str, Path],
) -> None:
    url, root = server
    data = payload(100_000)
    wrong = (chunk_crc(data) + 1) % 2**32
    async with aiohttp.ClientSession() as session:
        async with session.put(
            f"{url}/v1/snapshots/bad.bin", data=data, headers=_chunk_headers(wrong, len(data))
        ) as answer:
            assert answer.status == 422
            assert (await answer.json())["error"] == "ChecksumMismatch"
        async with session.put(  # the same body with its right CRC goes through
            f"{url}/v1/snapshots/bad.bin",
            data=data,
            headers=_chunk_headers(chunk_crc(data), len(data)),
        ) as answer:
            assert answer.status == 200
    assert (root / "bad.bin").read_bytes() == data


class KeepingSink:
    """Keeps every chunk it is given, as given (no copy), until the snapshot is finished."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.kept: dict[int, tuple[Buffer, bytes]] = {}

    async def write(self, offset: int, data: Buffer, crc: int) -> tuple[tuple[int, int], ...]:
        self.kept[offset] = (data, bytes(data))
        return ()

    def rewind(self, offset: int) -> tuple[int, tuple[tuple[int, int], ...]]:
        return offset, ()

    async def finish(self) -> None:
        pass

    async def abort(self) -> None:
        self.kept.clear()


class KeepingStore:
    """A store whose sinks keep the chunk buffers the server hands them."""

    def __init__(self) -> None:
        self.sinks: dict[str, KeepingSink] = {}
        self.installed: dict[str, bytes] = {}

    async def begin(self, meta: SnapshotMeta) -> KeepingSink:
        self.sinks[meta.snapshot_id] = KeepingSink(meta.snapshot_id)
        return self.sinks[meta.snapshot_id]

    async def resume(self, meta: SnapshotMeta) -> None:
        return None

    async def finish(self, meta: SnapshotMeta, sink: KeepingSink) -> Snapshot:
        for data, copy in sink.kept.values():
            assert bytes(data) == copy, "a kept chunk buffer was overwritten"
        whole = b"".join(bytes(sink.kept[o][0]) for o in sorted(sink.kept))
        return Snapshot(meta, io.BytesIO(whole))

    async def install(self, snapshot: Snapshot) -> None:
        self.installed[snapshot.meta.snapshot_id] = snapshot.data.read()

    async def abort(self, snapshot_id: str) -> None:
        self.sinks.pop(snapshot_id, None)


async def test_chunk_buffers_a_sink_keeps_are_never_reused() -> None:
    store = KeepingStore()
    runner, url = await start(create_app(store, no_auth=True))  # type: ignore[arg-type]
    try:
        data = payload(20 * 64 * 1024, seed=3)
        fsspec.filesystem("memory").pipe_file("/src.bin", data)
        options = TransferOptions(chunk_size=64 * 1024, max_in_flight=1)
        async with HttpNetwork(url) as net:
            for name in ["one", "two"]:
                await ship("memory://src.bin", name, network=net, options=options)
        assert store.installed == {"one": data, "two": data}
    finally:
        await runner.cleanup()


# -- bodies kept in pieces, and bodies that stall ----------------------------------------------


async def test_a_local_root_writes_received_pieces_without_joining_them(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of `Pieces`: a chunk received over HTTP reaches a local file with ``pwritev``,
    never copied into one buffer first."""
    url, root = server
    written: list[int] = []
    real = PwriteSink.write_pieces

    async def counting(self: PwriteSink, offset: int, data: Pieces, crc: int) -> Lost:
        written.append(data.count)
        return await real(self, offset, data, crc)

    def no_join(self: Pieces) -> bytes:
        raise AssertionError("a received chunk was joined into one buffer")

    monkeypatch.setattr(PwriteSink, "write_pieces", counting)
    monkeypatch.setattr(Pieces, "join", no_join)
    data = payload(5 * 1024 * 1024 + 17, seed=21)
    fsspec.filesystem("memory").pipe_file("/src.bin", data)
    options = TransferOptions(chunk_size=1024 * 1024, max_in_flight=2)
    async with HttpNetwork(url, token=TOKEN) as net:
        await ship("memory://src.bin", "p.bin", network=net, options=options)
    assert (root / "p.bin").read_bytes() == data
    assert len(written) == 6
    assert max(written) > 1  # several pieces per chunk really arrived apart


def chunk_head(snapshot_id: str, length: int, *, size: int, crc: int = 0) -> bytes:
    """The head of a PUT carrying the whole of a `size`-byte snapshot as one chunk."""
    headers = {**_chunk_headers(crc, size, token=None), "Content-Length": str(length)}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"PUT /v1/snapshots/{snapshot_id} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The status line and the body of one HTTP answer (its body sized by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines if line)
    return status.encode(), await reader.readexactly(int(fields["Content-Length"]))


async def test_a_body_that_stalls_is_answered_408_and_nothing_is_kept(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    runner, url = await start(create_app(store, no_auth=True, idle_timeout=0.2))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(chunk_head("stalled", 1000, size=1000) + b"x" * 100)  # then nothing
        await writer.drain()
        started = time.monotonic()
        status, body = await asyncio.wait_for(read_answer(reader), 5)
        waited = time.monotonic() - started
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    assert status.startswith(b"HTTP/1.1 408 "), status
    assert json.loads(body)["error"] == "BodyStalled"
    assert 0.2 <= waited < 2
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*"))


async def test_a_slow_body_that_keeps_coming_is_not_dropped(tmp_path: Path) -> None:
    """(Above the floor rate: 1,000 B/s here against a floor of 100 B/s.)"""
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    runner, url = await start(create_app(store, no_auth=True, idle_timeout=0.3, min_body_rate=100))
    data = payload(20 * 50, seed=22)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(chunk_head("slow.bin", len(data), size=len(data), crc=chunk_crc(data)))
        for start_at in range(0, len(data), 50):  # 1 s in all, 3x the idle timeout
            writer.write(data[start_at : start_at + 50])
            await writer.drain()
            await asyncio.sleep(0.05)
        status, _ = await asyncio.wait_for(read_answer(reader), 5)
        writer.close()
    finally:
        await runner.cleanup()
    assert status.startswith(b"HTTP/1.1 200 "), status
    assert (tmp_path / "r" / "slow.bin").read_bytes() == data


def test_idle_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="idle_timeout must be positive"):
        create_app(FsspecSnapshotStore(str(tmp_path)), no_auth=True, idle_timeout=0)


async def test_a_peer_gone_mid_body_is_dropped_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    runner, url = await start(create_app(store, no_auth=True))
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(chunk_head("gone.bin", 2000, size=2000) + b"x" * 1000)
        await writer.drain()
        writer.close()  # half a body, then the connection is gone
        await writer.wait_closed()
        for _ in range(50):  # until the server has seen the end of the connection
            await asyncio.sleep(0.01)
            if not runner.server or not runner.server.connections:
                break
    finally:
        await runner.cleanup()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*"))


async def test_bodies_beyond_the_buffer_budget_wait_their_turn(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    runner, url = await start(create_app(store, no_auth=True, max_buffered=1000))
    port = int(url.rsplit(":", 1)[1])
    first, second = payload(800, seed=23), payload(800, seed=24)
    try:
        reader1, writer1 = await asyncio.open_connection("127.0.0.1", port)
        head = chunk_head("one.bin", 800, size=800, crc=chunk_crc(first))
        writer1.write(head + first[:100])  # holds 800 bytes
        await writer1.drain()
        await asyncio.sleep(0.05)
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        writer2.write(chunk_head("two.bin", 800, size=800))  # would make 1,600: refused unread
        await writer2.drain()
        status, body = await asyncio.wait_for(read_answer(reader2), 5)
        assert status.startswith(b"HTTP/1.1 503 "), status
        assert json.loads(body)["error"] == "TooManyTransfers"
        writer1.write(first[100:])
        status, _ = await asyncio.wait_for(read_answer(reader1), 5)
        assert status.startswith(b"HTTP/1.1 200 "), status
        writer2.close()  # it never sent the refused body: that connection cannot go on
        reader3, writer3 = await asyncio.open_connection("127.0.0.1", port)
        head = chunk_head("two.bin", 800, size=800, crc=chunk_crc(second))
        writer3.write(head + second)  # its turn now
        status, _ = await asyncio.wait_for(read_answer(reader3), 5)
        assert status.startswith(b"HTTP/1.1 200 "), status
        for writer in (writer1, writer3):
            writer.close()
    finally:
        await runner.cleanup()
    assert (tmp_path / "r" / "one.bin").read_bytes() == first
    assert (tmp_path / "r" / "two.bin").read_bytes() == second


async def test_a_sender_retries_chunks_the_budget_turned_away(tmp_path: Path) -> None:
    """A budget below one chunk: each chunk goes through alone, the others are retried."""
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    runner, url = await start(create_app(store, no_auth=True, max_buffered=100))
    data = payload(8 * 64 * 1024 + 5, seed=25)
    fsspec.filesystem("memory").pipe_file("/src.bin", data)
    retry = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=1000)
    options = TransferOptions(chunk_size=64 * 1024, max_in_flight=4, retry=retry)
    try:
        async with HttpNetwork(url) as net:
            report = await ship("memory://src.bin", "b.bin", network=net, options=options)
    finally:
        await runner.cleanup()
    assert (tmp_path / "r" / "b.bin").read_bytes() == data
    assert report.retries > 0  # some chunks really were turned away


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_buffered_must_be_a_positive_int(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_buffered must be a positive int"):
        create_app(FsspecSnapshotStore(str(tmp_path)), no_auth=True, max_buffered=bad)  # type: ignore[arg-type]


async def test_a_chunk_without_its_crc_header_is_refused(server: tuple[str, Path]) -> None:
    """Only an in-process copy may leave the CRC32C to the receiver: over the network the
    sender's CRC is what catches a chunk damaged on the way."""
    url, root = server
    headers = _chunk_headers(None, 3)
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{url}/v1/snapshots/nocrc.bin", data=b"abc", headers=headers) as answer,
    ):
        status, body = answer.status, await answer.json()
    assert status == 400
    assert body["error"] == "InvalidRequest"
    assert body["field"] == "X-Fstransport-Crc32c"
    assert not root.exists() or not any(root.rglob("*"))
