"""Every error crosses the HTTP wire as the same typed error, and one server keeps several
senders' transfers apart (real aiohttp server on 127.0.0.1, real files in tmp_path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from aiohttp import web

from fstransport import (
    ChecksumMismatch,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InvalidRequest,
    NetworkError,
    PayloadTooLarge,
    Receiver,
    ReceiverLimits,
    RemoteError,
    SnapshotMeta,
    SnapshotMismatch,
    StorageError,
    TooManyTransfers,
    TransferOptions,
    Unauthorized,
    Vote,
    ship,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.http.app import create_app
from fstransport.http.client import MAX_ANSWER, HttpNetwork
from tests.conftest import payload

KiB = 1024
OPTIONS = TransferOptions()
VOTE = Vote(1, 0)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """start(store=None, token=None, limits=None) -> base URL of a fresh receiver server."""
    runners: list[web.AppRunner] = []

    async def _start(
        store: FsspecSnapshotStore | None = None,
        token: str | None = None,
        limits: ReceiverLimits | None = None,
    ) -> str:
        store = store or FsspecSnapshotStore(str(tmp_path / "received"))
        receiver = Receiver(store, limits=limits)
        app = create_app(store, token=token, no_auth=token is None, receiver=receiver)
        runner, url = await serve(app)
        runners.append(runner)
        return url

    yield _start
    for runner in runners:
        await runner.cleanup()


def request(
    data: bytes, offset: int = 0, *, done: bool = False, snapshot_id: str = "s.bin", **meta: Any
) -> InstallSnapshotRequest:
    return InstallSnapshotRequest(
        vote=VOTE,
        meta=SnapshotMeta(snapshot_id=snapshot_id, **meta),
        offset=offset,
        data=data,
        done=done,
        crc32c=chunk_crc(data),
    )


async def remote_error(net: HttpNetwork, req: InstallSnapshotRequest) -> BaseException:
    with pytest.raises(RemoteError) as info:
        await net.install_snapshot(req, OPTIONS)
    return info.value.source


async def test_mismatch_carries_expect_and_got(start: Start) -> None:
    async with HttpNetwork(await start()) as net:
        source = await remote_error(net, request(b"x" * 10, offset=4 * KiB, size=8 * KiB))
    assert isinstance(source, SnapshotMismatch)
    assert (source.expect.id, source.expect.offset) == ("s.bin", 0)
    assert (source.got.id, source.got.offset) == ("s.bin", 4 * KiB)


async def test_invalid_request_carries_its_field(start: Start) -> None:
    async with HttpNetwork(await start()) as net:
        source = await remote_error(net, request(b"x" * 10, size=5))  # longer than the snapshot
    assert isinstance(source, InvalidRequest)
    assert source.field is not None


async def test_corrupt_chunk_is_a_checksum_mismatch(start: Start, tmp_path: Path) -> None:
    req = request(b"y" * 100, size=200)
    corrupt = InstallSnapshotRequest(req.vote, req.meta, 0, b"z" * 100, False, req.crc32c)
    async with HttpNetwork(await start()) as net:
        source = await remote_error(net, corrupt)
    assert isinstance(source, ChecksumMismatch)
    assert source.whole is False
    assert not (tmp_path / "received" / "s.bin").exists()


async def test_whole_checksum_mismatch_is_marked_whole(start: Start, tmp_path: Path) -> None:
    data = payload(1000)
    wrong = format_checksum(chunk_crc(data) ^ 1)
    async with HttpNetwork(await start()) as net:
        source = await remote_error(net, request(data, done=True, size=1000, checksum=wrong))
    assert isinstance(source, ChecksumMismatch)
    assert source.whole is True
    assert not (tmp_path / "received" / "s.bin").exists()


async def test_wrong_token_is_unauthorized(start: Start) -> None:
    async with HttpNetwork(await start(token="right"), token="wrong") as net:
        source = await remote_error(net, request(b"x", done=True, size=1))
    assert isinstance(source, Unauthorized)


async def test_oversized_chunk_is_payload_too_large_with_the_limit(start: Start) -> None:
    url = await start(limits=ReceiverLimits(max_chunk_size=64 * KiB))
    async with HttpNetwork(url) as net:
        with pytest.raises(PayloadTooLarge) as info:
            await net.install_snapshot(request(bytes(64 * KiB + 1), size=128 * KiB), OPTIONS)
    assert info.value.limit == 64 * KiB


async def test_too_many_transfers_is_its_own_error(start: Start) -> None:
    url = await start(limits=ReceiverLimits(max_transfers=1))
    async with HttpNetwork(url) as net:
        await net.install_snapshot(request(b"a" * 10, size=20, snapshot_id="one.bin"), OPTIONS)
        source = await remote_error(net, request(b"b" * 10, size=20, snapshot_id="two.bin"))
    assert isinstance(source, TooManyTransfers)


class BrokenStore(FsspecSnapshotStore):
    """A store whose every new transfer fails with `cause` (a backend's exception)."""

    cause: BaseException = ConnectionResetError("peer reset")

    async def begin(self, meta: SnapshotMeta) -> Any:
        raise StorageError(f"{self.root}/{meta.snapshot_id}", "open", self.cause)


@pytest.mark.parametrize(
    ("cause", "retryable"),
    [(ConnectionResetError("reset"), True), (PermissionError("read-only"), False)],
)
async def test_storage_errors_keep_whether_they_are_retryable(
    start: Start, tmp_path: Path, cause: BaseException, retryable: bool
) -> None:
    store = BrokenStore(str(tmp_path / "broken"))
    store.cause = cause
    async with HttpNetwork(await start(store=store)) as net:
        source = await remote_error(net, request(b"x" * 10, size=10))
    assert isinstance(source, StorageError)
    assert source.retryable is retryable


async def test_concurrent_transfers_to_one_server_are_independent(
    start: Start, tmp_path: Path
) -> None:
    memory = fsspec.filesystem("memory")
    sources = {f"snap-{n}.bin": payload(700 * KiB + n, seed=n) for n in range(4)}
    for name, data in sources.items():
        memory.pipe_file(f"/http-errors/{name}", data)
    options = TransferOptions(chunk_size=64 * KiB, max_in_flight=3)
    async with HttpNetwork(await start()) as net:  # one pool for every transfer
        reports = await asyncio.gather(
            *(
                ship(f"memory://http-errors/{name}", name, network=net, options=options)
                for name in sources
            )
        )
    assert [r.size for r in reports] == [len(d) for d in sources.values()]
    for name, data in sources.items():
        assert (tmp_path / "received" / name).read_bytes() == data


async def test_one_connection_pool_per_adapter(tmp_path: Path) -> None:
    """Serial chunks of one adapter reuse one kept-alive connection: one client port."""
    peers: list[Any] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        response: web.StreamResponse = await handler(request)
        return response

    store = FsspecSnapshotStore(str(tmp_path / "r"))
    app = create_app(store, no_auth=True)
    app.middlewares.append(record)
    runner, url = await serve(app)
    try:
        fsspec.filesystem("memory").pipe_file("/http-errors/pool.bin", payload(300 * KiB))
        options = TransferOptions(chunk_size=32 * KiB, max_in_flight=1)
        async with HttpNetwork(url) as net:
            await ship("memory://http-errors/pool.bin", "pool.bin", network=net, options=options)
    finally:
        await runner.cleanup()
    assert len(peers) == 11  # 10 chunks and the data-less request asking for a delta base
    assert len(set(peers)) == 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_huge_answer_is_a_network_error_not_read_whole(declared: bool) -> None:
    """A hostile receiver that answers with more than `MAX_ANSWER` bytes ends the request with a
    `NetworkError`; the client stops reading after `MAX_ANSWER` bytes."""

    async def huge(request: web.Request) -> web.StreamResponse:
        await request.read()
        answer = web.StreamResponse(status=200)
        if declared:
            answer.content_length = 64 * MAX_ANSWER
        else:
            answer.enable_chunked_encoding()
        await answer.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                await answer.write(b" " * MAX_ANSWER)
        return answer

    app = web.Application()
    app.router.add_put("/v1/snapshots/{snapshot_id}", huge)
    runner, url = await serve(app)
    try:
        async with HttpNetwork(url) as net:
            with pytest.raises(NetworkError, match=r"too long|longer than"):
                await net.install_snapshot(request(b"abc"), OPTIONS)
    finally:
        await runner.cleanup()
