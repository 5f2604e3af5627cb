"""A conformance suite for snapshot stores, shipped as a mixin (fsspec's ``tests/abstract``
pattern): written once against a `Target`, bound to each backend by a small fixtures class.

A `Target` carries the store under test and an independent view of what is visible at the
store's root (boto3 for S3, the filesystem for a folder, ...), so the tests check what really
landed, not only what the store says.  Bind the suite to your store with one fixture::

    import pytest
    from fstransport.testing.store_suite import StoreSuite, Target

    class MyTarget(Target):
        name = "mine"
        def __init__(self, store, root): ...
        def files(self): ...        # every file under the root, hidden partials included
        def read(self, name): ...   # the bytes of one of them, read without the store

    class TestMyStore(StoreSuite):
        @pytest.fixture
        async def target(self, tmp_path):
            store = MyStore(tmp_path / "store")
            yield MyTarget(store, tmp_path / "store")
            await store.close()

The store must be a `SnapshotStore` that can also tell what is installed (`InspectableStore`:
``exists``, ``list``, ``open``, ``close``), as `FsspecSnapshotStore` does.  "Multi-part" cases are
sized in units of `PART` (5 MiB, the S3 part size), so that on S3 they span two parts and a short
tail; elsewhere they are simply a few MiB.  The tests need pytest-asyncio in ``auto`` mode.
"""

from __future__ import annotations

import io
import itertools
import random
from dataclasses import replace

import pytest

from fstransport.checksum import chunk_crc
from fstransport.errors import (
    ChecksumMismatch,
    InvalidRequest,
    RemoteError,
    SnapshotMismatch,
    StorageError,
)
from fstransport.messages import (
    Pieces,
    Snapshot,
    SnapshotMeta,
)
from fstransport.options import MiB, TransferOptions
from fstransport.receiver import Receiver
from fstransport.sender import Chunked
from fstransport.testing.store_target import (
    GAPS,
    ID,
    MULTI,
    OUT_OF_ORDER,
    PART,
    REPLACEMENTS,
    ROUND_TRIPS,
    SIZES,
    SMALL,
    VERSIONS,
    VOTE,
    InspectableStore,
    Target,
    assert_not_installed,
    assert_same_bytes,
    cut,
    invalid_final_chunk,
    payload,
    read_installed,
    request,
    send,
    send_chunks,
    swallow_once,
    wrong_checksum,
)

__all__ = ["MULTI", "PART", "SMALL", "InspectableStore", "StoreSuite", "Target"]


class StoreWriteTests:
    """Round trips, order, visibility and refusals (half of `StoreSuite`)."""

    @pytest.mark.parametrize("window", [1, 4])
    @pytest.mark.parametrize(("size", "chunk_size"), ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
    async def test_round_trip(
        self, target: Target, size: int, chunk_size: int, window: int
    ) -> None:
        data = payload(size, seed=size + chunk_size)
        await send(target.store, data, chunk_size=chunk_size, window=window)
        target.assert_exactly({ID: data})
        assert await target.store.exists(ID)
        assert await target.store.list() == [ID]
        assert_same_bytes(await read_installed(target.store), data)

    async def test_chunks_in_pieces_round_trip(self, target: Target) -> None:
        """Chunks whose data is `Pieces` (as the receiver server collects a body) land byte-equal:
        written as they are where the sink takes pieces, joined where it does not."""
        data = payload(MULTI, seed=41)
        receiver = Receiver(target.store)
        chunks = cut(MULTI, 2 * MiB + 1)
        for i, (offset, length) in enumerate(chunks):
            whole = request(data, offset, length, done=i == len(chunks) - 1)
            # an empty piece and a 1-byte one too
            cuts = sorted(min(length, c) for c in (0, 1, 1, 70_001, length // 2, length))
            parts = [data[offset + a : offset + b] for a, b in itertools.pairwise(cuts)]
            await receiver.handle(replace(whole, data=Pieces(parts)))
        target.assert_exactly({ID: data})
        assert_same_bytes(await read_installed(target.store), data)

    @pytest.mark.parametrize(("size", "chunk_size"), OUT_OF_ORDER.values(), ids=OUT_OF_ORDER.keys())
    async def test_chunks_out_of_order_then_done(
        self, target: Target, size: int, chunk_size: int
    ) -> None:
        data = payload(size, seed=7)
        chunks = cut(size, chunk_size)
        first, middle, last = chunks[0], chunks[1:-1], chunks[-1]
        random.Random(size).shuffle(middle)
        assert middle != sorted(middle)
        receiver = Receiver(target.store)
        await send_chunks(receiver, data, [first, *middle])  # a new stream must open at offset 0
        await send_chunks(receiver, data, [last], final=True)
        target.assert_exactly({ID: data})
        assert receiver.receiving == []
        assert_same_bytes(await read_installed(target.store), data)

    @pytest.mark.parametrize(("size", "chunk_size"), OUT_OF_ORDER.values(), ids=OUT_OF_ORDER.keys())
    async def test_nothing_visible_before_the_final_chunk(
        self, target: Target, size: int, chunk_size: int
    ) -> None:
        data = payload(size, seed=8)
        chunks = cut(size, chunk_size)
        receiver = Receiver(target.store)
        for chunk in chunks[:-1]:
            await send_chunks(receiver, data, [chunk])
            await assert_not_installed(target)
        await send_chunks(receiver, data, chunks[-1:], final=True)
        target.assert_exactly({ID: data})
        assert await target.store.exists(ID)
        assert await target.store.list() == [ID]
        assert_same_bytes(await read_installed(target.store), data)

    @pytest.mark.parametrize("size", [SMALL, MULTI], ids=["few KiB", "multi-part"])
    @pytest.mark.parametrize("then", ["install", "abort"])
    async def test_a_finished_snapshot_is_invisible_until_installed(
        self, target: Target, size: int, then: str
    ) -> None:
        """`SnapshotStore.finish` returns a snapshot "readable, not yet installed", and `abort`
        discards "finished-but-not-installed data"; `Receiver.receive` stops there.  A target that
        cannot rename (S3) makes the snapshot visible when it finishes instead, as documented."""
        data = payload(size, seed=19)
        chunks = cut(size, MiB if size > PART else 1000)
        receiver = Receiver(target.store)
        for offset, length in chunks[:-1]:
            assert await receiver.receive(request(data, offset, length)) is None
        offset, length = chunks[-1]
        snapshot = await receiver.receive(request(data, offset, length, done=True))
        assert snapshot is not None
        assert_same_bytes(bytes(snapshot.data.read()), data)
        if target.visible_when_finished:
            target.assert_exactly({ID: data})
            assert target.uploads() == []
            await (target.store.install(snapshot) if then == "install" else target.store.abort(ID))
            target.assert_exactly({ID: data})  # S3 cannot take a completed upload back
            return
        await assert_not_installed(target)
        if then == "install":
            await target.store.install(snapshot)
            target.assert_exactly({ID: data})
        else:
            snapshot.data.close()
            await target.store.abort(ID)
            target.assert_exactly({})
            assert not await target.store.exists(ID)

    @pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
    async def test_wrong_whole_checksum_leaves_nothing(self, target: Target, size: int) -> None:
        data = payload(size, seed=9)
        receiver = Receiver(target.store)
        with pytest.raises(RemoteError) as info:
            await send(target.store, data, checksum=wrong_checksum(data), receiver=receiver)
        assert isinstance(info.value.source, ChecksumMismatch)
        assert info.value.source.whole
        target.assert_exactly({})
        assert receiver.receiving == []
        assert not await target.store.exists(ID)
        assert await target.store.list() == []

    async def test_data_beyond_the_final_chunk_is_refused_and_discarded(
        self, target: Target
    ) -> None:
        """Without an announced size, a done chunk ending before data already written is refused
        when the snapshot is completed; the receiver then drops everything it held."""
        data = payload(3000, seed=10)
        receiver = Receiver(target.store)
        first = request(data, 0, 1000, size=None)
        if target.needs_size:  # an S3 multipart upload needs the size up front: refused at once
            with pytest.raises(StorageError):
                await receiver.handle(first)
        else:
            await receiver.handle(first)
            for offset in (1000, 2000):
                await receiver.handle(request(data, offset, 1000, size=None))
            with pytest.raises(InvalidRequest):
                await receiver.handle(request(data, 1000, 1000, size=None, done=True))
        target.assert_exactly({})
        assert receiver.receiving == []
        assert not await target.store.exists(ID)

    @pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
    async def test_invalid_final_chunk_ends_the_transfer_and_leaves_nothing(
        self, target: Target, size: int
    ) -> None:
        data = payload(size, seed=11)
        chunks = cut(size, MiB if size > PART else 1000)
        receiver = Receiver(target.store)
        await send_chunks(receiver, data, chunks[:-1])
        if target.s3 and size > PART:
            assert len(target.uploads()) == 1  # there is an upload to clean up
        with pytest.raises(InvalidRequest):
            await receiver.handle(invalid_final_chunk(data, chunks))
        target.assert_exactly({})  # no partial data, no upload
        assert receiver.receiving == []
        assert not await target.store.exists(ID)
        await send(target.store, data, receiver=receiver)  # the sender starts over: it installs
        target.assert_exactly({ID: data})

    @pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
    async def test_corrupt_final_chunk_changes_nothing_and_is_sent_again(
        self, target: Target, size: int
    ) -> None:
        data = payload(size, seed=11)
        chunks = cut(size, MiB if size > PART else 1000)
        receiver = Receiver(target.store)
        await send_chunks(receiver, data, chunks[:-1])
        before = (target.files(), target.uploads())
        offset, length = chunks[-1]
        corrupt = request(data, offset, length, done=True, crc=chunk_crc(data[offset:]) ^ 1)
        with pytest.raises(ChecksumMismatch):
            await receiver.handle(corrupt)
        assert (target.files(), target.uploads()) == before  # refused before writing: nothing moved
        await assert_not_installed(target)
        assert receiver.receiving == [ID]
        await send_chunks(receiver, data, chunks[-1:], final=True)
        target.assert_exactly({ID: data})

    @pytest.mark.parametrize("failure", ["wrong whole checksum", "invalid final chunk"])
    @pytest.mark.parametrize(("old_size", "new_size"), VERSIONS.values(), ids=VERSIONS.keys())
    async def test_failed_newer_version_keeps_the_installed_one(
        self, target: Target, old_size: int, new_size: int, failure: str
    ) -> None:
        old, new = payload(old_size, seed=1), payload(new_size, seed=2)
        await send(target.store, old)
        if failure == "wrong whole checksum":
            with pytest.raises(RemoteError) as info:
                await send(target.store, new, checksum=wrong_checksum(new))
            assert isinstance(info.value.source, ChecksumMismatch)
        else:
            receiver = Receiver(target.store)
            chunks = cut(new_size, MiB if new_size > PART else 1000)
            await send_chunks(receiver, new, chunks[:-1])
            with pytest.raises(InvalidRequest):
                await receiver.handle(invalid_final_chunk(new, chunks))
        target.assert_exactly({ID: old})
        assert await target.store.list() == [ID]
        assert_same_bytes(await read_installed(target.store), old)


class StoreLifecycleTests:
    """Aborts, replacements, listing and gaps (the other half of `StoreSuite`)."""

    # -- abort -------------------------------------------------------------------------------------

    @pytest.mark.parametrize("installed", [False, True], ids=["nothing installed", "v1 installed"])
    async def test_abort_removes_partial_data_and_keeps_the_installed_snapshot(
        self, target: Target, installed: bool
    ) -> None:
        old, new = payload(SMALL, seed=3), payload(MULTI, seed=4)
        if installed:
            await send(target.store, old)
        receiver = Receiver(target.store)
        await send_chunks(receiver, new, cut(2 * PART + MiB, MiB))  # two whole parts and more
        assert len(target.uploads()) == (1 if target.s3 else 0)  # S3: a multipart upload is open
        await target.store.abort(ID)
        expected = {ID: old} if installed else {}
        target.assert_exactly(expected)
        assert await target.store.exists(ID) == installed
        assert await target.store.list() == sorted(expected)
        if installed:
            assert_same_bytes(await read_installed(target.store), old)
        await send(target.store, new)  # the store takes the snapshot again afterwards
        target.assert_exactly({ID: new})

    # -- superseding and replacing -----------------------------------------------------------------

    async def test_another_snapshot_under_the_same_id_restarts_from_zero(
        self, target: Target
    ) -> None:
        old, new = payload(MULTI, seed=5), payload(PART + 5, seed=6)  # a different size
        receiver = Receiver(target.store)
        await send_chunks(receiver, old, cut(2 * PART + MiB, MiB))
        old_uploads = set(target.uploads())
        with pytest.raises(SnapshotMismatch) as info:  # it cannot continue mid-way
            await receiver.handle(request(new, MiB, MiB))
        assert info.value.expect.offset == 0
        chunks = cut(len(new), MiB)
        await send_chunks(receiver, new, chunks[:1])
        assert not old_uploads & set(target.uploads()), "the old upload was aborted"
        await assert_not_installed(target)
        await send_chunks(receiver, new, chunks[1:], final=True)
        target.assert_exactly({ID: new})
        assert_same_bytes(await read_installed(target.store), new)

    @pytest.mark.parametrize("new_size", REPLACEMENTS.values(), ids=REPLACEMENTS.keys())
    async def test_replacing_an_installed_snapshot(self, target: Target, new_size: int) -> None:
        old, new = payload(PART + 100, seed=12), payload(new_size, seed=13)
        await send(target.store, old)
        assert await target.store.list() == [ID]
        assert_same_bytes(await read_installed(target.store), old)
        await send(target.store, new)
        target.assert_exactly({ID: new})
        assert await target.store.exists(ID)
        assert await target.store.list() == [ID]
        assert_same_bytes(await read_installed(target.store), new)

    # -- reading installed snapshots ---------------------------------------------------------------

    async def test_list_and_open_show_only_installed_snapshots(self, target: Target) -> None:
        a, b, c = payload(10, seed=14), payload(SMALL, seed=15), payload(3000, seed=16)
        store = target.store
        assert await store.list() == []
        await send(store, a, snapshot_id="a")
        assert await store.list() == ["a"]
        receiver = Receiver(store)
        await send_chunks(receiver, c, cut(len(c), 1000)[:-1], snapshot_id="c")  # c: partial
        await send(store, b, snapshot_id="b")
        assert await store.list() == ["a", "b"]
        assert target.installed() == ["a", "b"]
        assert not await store.exists("c")
        with pytest.raises(StorageError) as info:
            await store.open("c")
        assert isinstance(info.value.cause, FileNotFoundError)
        assert_same_bytes(await read_installed(store, "a"), a)
        assert_same_bytes(await read_installed(store, "b"), b)
        await send_chunks(receiver, c, cut(len(c), 1000)[-1:], final=True, snapshot_id="c")
        assert await store.list() == ["a", "b", "c"]
        assert await store.exists("c")
        assert_same_bytes(await read_installed(store, "c"), c)
        target.assert_exactly({"a": a, "b": b, "c": c})

    @pytest.mark.parametrize(("size", "chunk_size", "missing"), GAPS.values(), ids=GAPS.keys())
    async def test_gap_at_done_asks_for_the_missing_bytes(
        self, target: Target, size: int, chunk_size: int, missing: int
    ) -> None:
        data = payload(size, seed=17)
        chunks = cut(size, chunk_size)
        gap = chunks[missing][0]
        receiver = Receiver(target.store)
        await send_chunks(receiver, data, chunks[:missing] + chunks[missing + 1 : -1])
        with pytest.raises(SnapshotMismatch) as info:
            await send_chunks(receiver, data, chunks[-1:], final=True)
        resume = info.value.expect.offset
        assert resume <= gap
        assert info.value.expect.id == ID
        await assert_not_installed(target)
        assert receiver.receiving == [ID]
        await send_chunks(receiver, data, cut(size, chunk_size, start=resume), final=True)
        target.assert_exactly({ID: data})
        assert_same_bytes(await read_installed(target.store), data)

    async def test_sender_fills_a_gap_found_at_done(self, target: Target) -> None:
        data = payload(MULTI, seed=18)
        gap = PART + 2 * MiB
        net = swallow_once(Receiver(target.store), gap)
        snapshot = Snapshot(SnapshotMeta(ID), io.BytesIO(data))
        options = TransferOptions(chunk_size=MiB, max_in_flight=4)
        await Chunked.send_snapshot(net, VOTE, snapshot, None, options)
        assert net.offsets.count(gap) >= 2, "the swallowed chunk was never sent again"
        rewound_to = [
            error.source.expect.offset
            for error in net.errors
            if isinstance(error, RemoteError) and isinstance(error.source, SnapshotMismatch)
        ]
        assert len(rewound_to) == 1
        assert rewound_to[0] <= gap
        target.assert_exactly({ID: data})
        assert_same_bytes(await read_installed(target.store), data)


class StoreSuite(StoreWriteTests, StoreLifecycleTests):
    """The tests; subclass with a ``target`` fixture yielding a fresh, empty `Target`."""

    @pytest.fixture
    def target(self) -> Target:
        raise NotImplementedError("bind the suite: define a `target` fixture in your subclass")
