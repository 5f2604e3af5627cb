"""The network conformance suite, bound to every `Network` adapter of this package."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from aiohttp import web

from fstransport import (
    ChecksumMismatch,
    FaultyNetwork,
    FsspecSnapshotStore,
    HttpNetwork,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LoopbackNetwork,
    Network,
    NetworkError,
    Receiver,
    contiguous,
)
from fstransport.checksum import chunk_crc
from fstransport.http.app import create_app
from fstransport.testing.mock import Handler, MockNetwork, deliver_to
from fstransport.testing.network_suite import Connect, NetworkSuite


class TestLoopback(NetworkSuite):
    @pytest.fixture
    def connect(self) -> Connect:
        @contextlib.asynccontextmanager
        async def connect(receiver: Receiver) -> AsyncIterator[Network]:
            yield LoopbackNetwork(receiver)

        return connect


class TestTrustingLoopback(NetworkSuite):
    checks_crc = False  # trust_checksums: the receiver takes the sender's CRC as it is

    @pytest.fixture
    def connect(self) -> Connect:
        @contextlib.asynccontextmanager
        async def connect(receiver: Receiver) -> AsyncIterator[Network]:
            yield LoopbackNetwork(receiver, trust_checksums=True)

        return connect


class TestFaultyWithoutFaults(NetworkSuite):
    @pytest.fixture
    def connect(self) -> Connect:
        @contextlib.asynccontextmanager
        async def connect(receiver: Receiver) -> AsyncIterator[Network]:
            yield FaultyNetwork(LoopbackNetwork(receiver), seed=1)

        return connect


class TestMock(NetworkSuite):
    @pytest.fixture
    def connect(self) -> Connect:
        @contextlib.asynccontextmanager
        async def connect(receiver: Receiver) -> AsyncIterator[Network]:
            yield MockNetwork(deliver_to(receiver))

        return connect


class TestHttp(NetworkSuite):
    """`HttpNetwork` to the receiver server (`create_app`) on 127.0.0.1, in this process."""

    @pytest.fixture
    def connect(self) -> Connect:
        @contextlib.asynccontextmanager
        async def connect(receiver: Receiver) -> AsyncIterator[Network]:
            runner = web.AppRunner(create_app(receiver.store, no_auth=True, receiver=receiver))
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = runner.addresses[0][1]
                async with HttpNetwork(f"http://127.0.0.1:{port}") as net:
                    yield net
            finally:
                await runner.cleanup()

        return connect


# -- the suite can fail ---------------------------------------------------------------------------


def broken(handler: Callable[[Receiver], Handler]) -> Connect:
    @contextlib.asynccontextmanager
    async def connect(receiver: Receiver) -> AsyncIterator[Network]:
        yield MockNetwork(handler(receiver))

    return connect


async def test_the_suite_catches_an_adapter_that_alters_data(
    memory_store: FsspecSnapshotStore,
) -> None:
    def altering(receiver: Receiver) -> Handler:
        async def deliver(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
            data = bytes(contiguous(req.data)).replace(b"\x00", b"\x01")  # with a fitting CRC
            return await receiver.handle(replace(req, data=data, crc32c=chunk_crc(data)))

        return deliver

    with pytest.raises(ChecksumMismatch):  # the whole snapshot's CRC no longer matches
        await NetworkSuite().test_a_snapshot_arrives_exactly(broken(altering), memory_store, 50_000)


async def test_the_suite_catches_an_adapter_that_loses_the_receivers_errors(
    memory_store: FsspecSnapshotStore,
) -> None:
    def lossy(receiver: Receiver) -> Handler:
        async def deliver(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
            try:
                return await receiver.handle(req)
            except Exception as exc:
                raise NetworkError(f"something went wrong: {exc}") from exc

        return deliver

    with pytest.raises(NetworkError):
        await NetworkSuite().test_a_mismatch_comes_back_with_the_offset_the_receiver_expects(
            broken(lossy), memory_store
        )


def test_an_unbound_suite_says_what_is_missing() -> None:
    with pytest.raises(NotImplementedError, match="connect"):
        NetworkSuite.connect.__wrapped__(NetworkSuite())  # type: ignore[attr-defined]
