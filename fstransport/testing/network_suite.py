"""A conformance suite for `Network` adapters, shipped as a mixin (fsspec's ``tests/abstract``
pattern): what every adapter must do for the sender and the receiver to work through it.

Bind it to your adapter with one fixture, ``connect``: a function that takes a `Receiver` and
returns an async context manager yielding a `Network` that delivers to that receiver (start a
server around it, open a client to it; stop both on exit)::

    import contextlib
from contextlib import AbstractAsyncContextManager
    import pytest
    from fstransport.testing.network_suite import NetworkSuite

    class TestMyNetwork(NetworkSuite):
        @pytest.fixture
        def connect(self):
            @contextlib.asynccontextmanager
            async def connect(receiver):
                async with MyServer(receiver) as server:
                    yield MyNetwork(server.url)
            return connect

The tests need pytest-asyncio (``asyncio_mode = "auto"``, or they are marked here) and keep
everything in ``memory://`` stores of their own.  What they check, per the `Network` protocol:
snapshots arrive byte for byte, with several chunks in flight and with data of any buffer
type; the receiver's vote comes back; the receiver's refusals come back as `RemoteError` whose
``source`` is the receiver's own error, with the fields the sender acts on (the offset a
`SnapshotMismatch` expects, a `ChecksumMismatch` of one chunk, an `InvalidRequest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

import pytest

from fstransport.checksum import chunk_crc
from fstransport.errors import (
    ChecksumMismatch,
    InvalidRequest,
    RemoteError,
    SnapshotMismatch,
)
from fstransport.messages import (
    Buffer,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
    Vote,
)
from fstransport.network.base import Network
from fstransport.options import TransferOptions
from fstransport.receiver import Receiver
from fstransport.sender import Chunked
from fstransport.storage.store import FsspecSnapshotStore

__all__ = ["Connect", "NetworkSuite"]

Connect = Callable[[Receiver], AbstractAsyncContextManager[Network]]
"""Opens a `Network` delivering to a receiver, for as long as the context lasts."""

_stores = itertools.count(1)
VOTE = Vote(3, 1)
OPTIONS = TransferOptions(chunk_size=4096, max_in_flight=4, hard_ttl=30.0)


def _data(size: int, seed: int) -> bytes:
    return bytes((i * 131 + seed * 7 + (i >> 8)) % 251 for i in range(size))


def _request(
    snapshot_id: str, data: bytes, offset: int = 0, *, size: int | None = None, done: bool = False
) -> InstallSnapshotRequest:
    total = offset + len(data) if size is None else size
    meta = SnapshotMeta(snapshot_id, size=total)
    return InstallSnapshotRequest(VOTE, meta, offset, data, done, chunk_crc(data))


class NetworkSuite:
    """The tests; subclass with a ``connect`` fixture (see the module docstring)."""

    checks_crc: bool = True
    """Whether the receiver checks each request's ``crc32c`` (it must, over any real link);
    False only for an in-process adapter that trusts the sender's CRC on purpose."""

    @pytest.fixture
    def connect(self) -> Connect:
        raise NotImplementedError("bind the suite: define a `connect` fixture in your subclass")

    @pytest.fixture
    def store(self) -> Iterator[FsspecSnapshotStore]:
        """A fresh ``memory://`` store for the receiver."""
        store = FsspecSnapshotStore(f"memory://fstransport-network-suite-{next(_stores)}")
        try:
            yield store
        finally:
            with contextlib.suppress(FileNotFoundError):
                store.fs.rm(store.root, recursive=True)

    async def _installed(self, store: FsspecSnapshotStore, snapshot_id: str) -> bytes:
        with await store.open(snapshot_id) as f:
            data: bytes = f.read()
        return data

    # -- delivery ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", [0, 1, 4096, 50_000])
    async def test_a_snapshot_arrives_exactly(
        self, connect: Connect, store: FsspecSnapshotStore, size: int
    ) -> None:
        data = _data(size, seed=size)
        async with connect(Receiver(store)) as net:
            snapshot = Snapshot(SnapshotMeta("arrives"), io.BytesIO(data))
            response = await Chunked.send_snapshot(net, VOTE, snapshot, None, OPTIONS)
        assert response.vote == VOTE
        assert await self._installed(store, "arrives") == data

    @pytest.mark.asyncio
    async def test_requests_in_flight_at_once_all_arrive(
        self, connect: Connect, store: FsspecSnapshotStore
    ) -> None:
        data = _data(8 * 1000, seed=2)
        chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
        async with connect(Receiver(store)) as net:
            answers = await asyncio.gather(
                *(
                    net.install_snapshot(
                        _request("together", chunk, 1000 * i, size=len(data)), OPTIONS
                    )
                    for i, chunk in enumerate(chunks[:-1])
                )
            )
            final = _request("together", chunks[-1], 7000, size=len(data), done=True)
            last = await net.install_snapshot(final, OPTIONS)
        assert all(isinstance(answer, InstallSnapshotResponse) for answer in answers)
        assert last.vote == VOTE
        assert await self._installed(store, "together") == data

    @pytest.mark.asyncio
    @pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
    async def test_any_buffer_type_is_delivered(
        self, connect: Connect, store: FsspecSnapshotStore, kind: str
    ) -> None:
        data = _data(3000, seed=3)
        buffer: dict[str, Buffer] = {
            "bytes": data,
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
        }
        req = _request(f"buffer-{kind}", data, done=True)
        req = InstallSnapshotRequest(req.vote, req.meta, 0, buffer[kind], True, req.crc32c)
        async with connect(Receiver(store)) as net:
            answer = await net.install_snapshot(req, OPTIONS)
        assert answer.vote == VOTE
        assert await self._installed(store, f"buffer-{kind}") == data

    # -- answers -----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_higher_vote_of_the_receiver_comes_back(
        self, connect: Connect, store: FsspecSnapshotStore
    ) -> None:
        higher = Vote(9, 2)
        async with connect(Receiver(store, vote=higher)) as net:
            answer = await net.install_snapshot(_request("lower", b"abc"), OPTIONS)
            snapshot = Snapshot(SnapshotMeta("lower"), io.BytesIO(b"abc"))
            response = await Chunked.send_snapshot(net, VOTE, snapshot, None, OPTIONS)
        assert answer.vote == higher
        assert response.vote == higher
        assert not await store.exists("lower")

    # -- refusals ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_chunk_that_does_not_match_its_crc_is_refused_as_remote_error(
        self, connect: Connect, store: FsspecSnapshotStore
    ) -> None:
        if not self.checks_crc:
            pytest.skip("this adapter trusts the sender's CRC by design (checks_crc = False)")
        data = _data(2000, seed=4)
        req = _request("crc", data)
        bad = InstallSnapshotRequest(req.vote, req.meta, 0, data, False, chunk_crc(data) ^ 1)
        async with connect(Receiver(store)) as net:
            with pytest.raises(RemoteError) as info:
                await net.install_snapshot(bad, OPTIONS)
        assert isinstance(info.value.source, ChecksumMismatch)
        assert not info.value.source.whole, "one chunk, not the whole snapshot"

    @pytest.mark.asyncio
    async def test_a_mismatch_comes_back_with_the_offset_the_receiver_expects(
        self, connect: Connect, store: FsspecSnapshotStore
    ) -> None:
        async with connect(Receiver(store)) as net:
            with pytest.raises(RemoteError) as info:
                await net.install_snapshot(_request("gap", b"x" * 100, 500, size=1000), OPTIONS)
        mismatch = info.value.source
        assert isinstance(mismatch, SnapshotMismatch)
        assert mismatch.expect.id == "gap"
        assert mismatch.expect.offset == 0
        assert mismatch.got.offset == 500

    @pytest.mark.asyncio
    async def test_an_invalid_request_is_refused_as_remote_error(
        self, connect: Connect, store: FsspecSnapshotStore
    ) -> None:
        async with connect(Receiver(store)) as net:
            with pytest.raises(RemoteError) as info:
                await net.install_snapshot(_request("bad\x00id", b"abc", done=True), OPTIONS)
        assert isinstance(info.value.source, InvalidRequest)
        assert store.fs.find(store.root) == [], "nothing may be written for a refused request"

    @pytest.mark.asyncio
    async def test_after_a_refusal_the_network_still_delivers(
        self, connect: Connect, store: FsspecSnapshotStore
    ) -> None:
        data = _data(5000, seed=5)
        async with connect(Receiver(store)) as net:
            with pytest.raises(RemoteError):
                await net.install_snapshot(_request("after", b"x", 10, size=5000), OPTIONS)
            snapshot = Snapshot(SnapshotMeta("after"), io.BytesIO(data))
            await Chunked.send_snapshot(net, VOTE, snapshot, None, OPTIONS)
        assert await self._installed(store, "after") == data
