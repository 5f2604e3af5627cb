"""The sender against fake and real receivers: the seed's own test, cancellation, votes, retries."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable

import pytest

from fstransport import (
    Chunked,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    InvalidRequest,
    LoopbackNetwork,
    PayloadTooLarge,
    Receiver,
    RemoteError,
    ReplicationClosed,
    RetryExhausted,
    RetryPolicy,
    Snapshot,
    SnapshotMeta,
    SnapshotMismatch,
    SnapshotSegmentId,
    Timeout,
    TransferOptions,
    Unreachable,
    Vote,
)
from fstransport.sender import send_source
from fstransport.storage.source import BufferSource
from fstransport.testing.clock import FakeClock
from fstransport.testing.mock import MockNetwork, deliver_to, fail, hang
from tests.conftest import payload

FAST_RETRY = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=4)


def seed_peer(match_cnt: int = 4) -> Callable[[InstallSnapshotRequest], InstallSnapshotResponse]:
    """The fake network of openraft's own test: a mismatch (expect 0) on the third request."""

    def handler(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        nonlocal match_cnt
        match_cnt = max(0, match_cnt - 1)
        if match_cnt == 1:
            snapshot_id = req.meta.snapshot_id
            mismatch = SnapshotMismatch(
                expect=SnapshotSegmentId(snapshot_id, 0),
                got=SnapshotSegmentId(snapshot_id, req.offset),
            )
            raise RemoteError(mismatch, target=0)
        return InstallSnapshotResponse(req.vote)

    return handler


def recording(receiver: Receiver) -> MockNetwork:
    """Delivers to a real receiver, interleaving chunks in flight, and records every request."""
    return MockNetwork(deliver_to(receiver))


def seed_snapshot(data: bytes = b"\x01\x02\x03") -> Snapshot:
    return Snapshot(SnapshotMeta(snapshot_id="1-1-1-1"), io.BytesIO(data))


async def test_seed_chunked_reset_offset_if_snapshot_id_mismatch() -> None:
    """openraft's test_chunked_reset_offset_if_snapshot_id_mismatch, ported."""
    net = MockNetwork(seed_peer(match_cnt=4))
    options = TransferOptions(chunk_size=1, max_in_flight=1, hard_ttl=0.1)
    response = await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), None, options)
    assert net.offsets == [0, 1, 2, 0, 1, 2]
    assert response.vote == Vote(1, 0)


async def test_seed_mismatch_raised_bare_also_rewinds() -> None:
    seed = seed_peer()

    def bare_mismatch(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        try:
            return seed(req)
        except RemoteError as exc:
            raise exc.source from None

    net = MockNetwork(bare_mismatch)
    options = TransferOptions(chunk_size=1, max_in_flight=1)
    await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), None, options)
    assert net.offsets == [0, 1, 2, 0, 1, 2]


async def test_seed_semantics_against_real_receiver(memory_store: FsspecSnapshotStore) -> None:
    receiver = Receiver(memory_store)
    net = recording(receiver)
    options = TransferOptions(chunk_size=1, max_in_flight=1)
    await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), None, options)
    assert [offset for offset, _, _ in net.seen] == [0, 1, 2]
    assert [done for _, _, done in net.seen] == [False, False, True]
    with await memory_store.open("1-1-1-1") as f:
        assert f.read() == b"\x01\x02\x03"


@pytest.mark.parametrize("window", [1, 2, 4, 8])
async def test_window_bounds_concurrency_and_done_goes_last(
    window: int, memory_store: FsspecSnapshotStore
) -> None:
    data = payload(100_000, seed=window)
    net = recording(Receiver(memory_store))
    options = TransferOptions(chunk_size=4096, max_in_flight=window)
    snapshot = Snapshot(SnapshotMeta("s"), io.BytesIO(data))
    await Chunked.send_snapshot(net, Vote(1, 1), snapshot, None, options)
    assert net.max_in_flight <= window
    if window > 1:
        assert net.max_in_flight > 1, "the window never opened"
    assert net.seen[-1][2] is True
    assert sum(done for _, _, done in net.seen) == 1
    assert net.seen[0][0] == 0
    with await memory_store.open("s") as f:
        assert f.read() == data


async def test_cancel_while_rpc_hangs_stops_promptly() -> None:
    rpc_started = asyncio.Event()

    async def hang_once_started(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        rpc_started.set()
        return await hang(req)

    net = MockNetwork(hang_once_started)
    cancel = asyncio.Event()
    options = TransferOptions(chunk_size=1, hard_ttl=60.0)

    async def cancel_soon() -> None:
        await rpc_started.wait()
        cancel.set()

    canceller = asyncio.create_task(cancel_soon())
    started = time.perf_counter()
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), cancel.wait(), options)
    await canceller
    assert time.perf_counter() - started < 1.0
    assert net.calls == 1


async def test_cancel_future_returning_replication_closed_is_raised_as_is() -> None:
    net = MockNetwork(hang)
    future: asyncio.Future[ReplicationClosed] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(
        0.01, future.set_result, ReplicationClosed("leader stepped down")
    )
    with pytest.raises(ReplicationClosed, match="leader stepped down"):
        await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), future, TransferOptions())


@pytest.mark.parametrize("chunk_size", [1, 8 * 1024 * 1024])
async def test_cancel_already_set_sends_nothing(chunk_size: int) -> None:
    """A transfer cancelled before it starts sends no request at all (a hanging peer would
    otherwise hold a chunk of data until its TTL)."""
    net = MockNetwork(hang)
    cancel = asyncio.Event()
    cancel.set()
    options = TransferOptions(chunk_size=chunk_size)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), cancel.wait(), options)
    assert net.calls == 0


async def test_cancel_future_already_done_sends_nothing() -> None:
    net = MockNetwork(hang)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), done, TransferOptions())
    assert net.calls == 0


def test_hung_rpc_times_out_after_hard_ttl_then_exhausts() -> None:
    net = MockNetwork(hang)
    options = TransferOptions(chunk_size=1, hard_ttl=2.0, retry=FAST_RETRY)
    snapshot = seed_snapshot()
    with pytest.raises(RetryExhausted) as info:
        FakeClock().run(Chunked.send_snapshot(net, Vote(1, 0), snapshot, None, options))
    assert isinstance(info.value.last_error, Timeout)
    assert net.calls == FAST_RETRY.max_attempts


def scripted(receiver: Receiver, script: list[BaseException | Vote | None]) -> MockNetwork:
    """Answers each request with the next scripted outcome (an error to raise, a vote to answer
    with, None: deliver), then delivers to a real receiver."""
    deliver = deliver_to(receiver, interleave=False)

    async def handler(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        outcome = script.pop(0) if script else None
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, Vote):
            return InstallSnapshotResponse(outcome)
        return await deliver(req)

    return MockNetwork(handler)


async def test_higher_vote_stops_and_is_returned(memory_store: FsspecSnapshotStore) -> None:
    higher = Vote(7, 3)
    net = scripted(Receiver(memory_store), [None, higher])
    options = TransferOptions(chunk_size=10, max_in_flight=1)
    snapshot = Snapshot(SnapshotMeta("v"), io.BytesIO(payload(100)))
    response = await Chunked.send_snapshot(net, Vote(2, 1), snapshot, None, options)
    assert response.vote == higher
    assert len(net.seen) == 2, "the transfer must stop at the first higher vote"
    assert not await memory_store.exists("v")


async def test_receiver_with_higher_vote_refuses_and_nothing_installs(
    memory_store: FsspecSnapshotStore,
) -> None:
    receiver = Receiver(memory_store, vote=Vote(9, 9))
    net = LoopbackNetwork(receiver)
    snapshot = Snapshot(SnapshotMeta("v"), io.BytesIO(payload(50)))
    response = await Chunked.send_snapshot(
        net, Vote(1, 0), snapshot, None, TransferOptions(chunk_size=10)
    )
    assert response.vote == Vote(9, 9)
    assert receiver.vote == Vote(9, 9)
    assert not await memory_store.exists("v")
    assert receiver.receiving == []


def test_unreachable_peer_with_default_options_gives_up_in_3_to_5_seconds() -> None:
    """As `RetryPolicy` promises: 8 attempts, 7 backoffs of 0.05 s doubling up to 2 s (5.15 s),
    each shortened by up to half at random.  Virtual time: the test itself takes no time."""
    net = MockNetwork(fail(Unreachable("connection refused")))

    async def send() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RetryExhausted) as info:
            await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), None, TransferOptions())
        assert isinstance(info.value.last_error, Unreachable)
        return loop.time() - started

    elapsed = FakeClock().run(send())
    assert 5.15 / 2 <= elapsed <= 5.15 + 0.5
    assert net.calls == RetryPolicy().max_attempts


async def test_retryable_failures_then_success(memory_store: FsspecSnapshotStore) -> None:
    script: list[BaseException | Vote | None] = [Unreachable("down"), Timeout("slow"), None]
    net = scripted(Receiver(memory_store), script)
    data = payload(30)
    options = TransferOptions(chunk_size=10, max_in_flight=1, retry=FAST_RETRY)
    await Chunked.send_snapshot(
        net, Vote(1, 0), Snapshot(SnapshotMeta("r"), io.BytesIO(data)), None, options
    )
    assert [offset for offset, _, _ in net.seen] == [0, 0, 0, 10, 20]
    with await memory_store.open("r") as f:
        assert f.read() == data


async def test_payload_too_large_halves_the_chunk(memory_store: FsspecSnapshotStore) -> None:
    deliver = deliver_to(Receiver(memory_store))

    async def limited(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if len(req.data) > 3000:
            raise PayloadTooLarge("413")
        return await deliver(req)

    net = MockNetwork(limited)
    data = payload(20_000)
    options = TransferOptions(chunk_size=16_384, max_in_flight=1, min_chunk_size=1024)
    await Chunked.send_snapshot(
        net, Vote(1, 0), Snapshot(SnapshotMeta("big"), io.BytesIO(data)), None, options
    )
    sizes = [length for _, length, _ in net.seen]
    assert sizes[:4] == [16_384, 8192, 4096, 2048]
    assert max(sizes[4:]) <= 2048
    with await memory_store.open("big") as f:
        assert f.read() == data


async def test_payload_too_large_at_the_floor_exhausts() -> None:
    net = MockNetwork(fail(PayloadTooLarge("413")))
    options = TransferOptions(chunk_size=32_768, retry=FAST_RETRY)
    snapshot = Snapshot(SnapshotMeta("x"), io.BytesIO(payload(100_000)))
    with pytest.raises(RetryExhausted):
        await Chunked.send_snapshot(net, Vote(1, 0), snapshot, None, options)
    sizes = [length for _, length, _ in net.seen]
    assert sizes[:4] == [32_768, 16_384, 8192, 4096]
    assert set(sizes[4:]) == {4096}
    assert len(sizes) == 4 + FAST_RETRY.max_attempts - 1


async def test_invalid_request_from_receiver_is_fatal_not_retried(
    memory_store: FsspecSnapshotStore,
) -> None:
    net = recording(Receiver(memory_store))
    snapshot = Snapshot(SnapshotMeta("../escape"), io.BytesIO(payload(10)))
    with pytest.raises(RemoteError) as info:
        await Chunked.send_snapshot(net, Vote(1, 0), snapshot, None, TransferOptions())
    assert isinstance(info.value.source, InvalidRequest)
    assert len(net.seen) == 1
    assert memory_store.fs.find("/") == []


async def test_meta_size_must_match_the_data() -> None:
    net = MockNetwork(fail(Unreachable("connection refused")))
    snapshot = Snapshot(SnapshotMeta("s", size=5), io.BytesIO(b"abc"))
    with pytest.raises(InvalidRequest, match="5 bytes"):
        await Chunked.send_snapshot(net, Vote(1, 0), snapshot, None, TransferOptions())
    assert net.calls == 0


async def test_mismatch_mid_transfer_with_window_resends_from_expected_offset(
    memory_store: FsspecSnapshotStore,
) -> None:
    """A receiver that lost everything after byte 40 asks to continue from there."""
    mismatch = SnapshotMismatch(SnapshotSegmentId("m", 40), SnapshotSegmentId("m", 60))
    net = scripted(
        Receiver(memory_store), [None, None, None, None, None, None, RemoteError(mismatch)]
    )
    data = payload(100)
    options = TransferOptions(chunk_size=10, max_in_flight=3)
    await Chunked.send_snapshot(
        net, Vote(1, 0), Snapshot(SnapshotMeta("m"), io.BytesIO(data)), None, options
    )
    offsets = [offset for offset, _, _ in net.seen]
    rewind_at = 7  # the 7th request got the mismatch
    assert offsets[rewind_at] == 40 or 40 in offsets[rewind_at:]
    with await memory_store.open("m") as f:
        assert f.read() == data


def test_overall_deadline_ends_a_slow_transfer_with_timeout() -> None:
    net = MockNetwork(hang)
    options = TransferOptions(chunk_size=1, hard_ttl=30.0, deadline=2.0)

    async def send() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Timeout, match=r"within 2s"):
            await Chunked.send_snapshot(net, Vote(1, 0), seed_snapshot(), None, options)
        return loop.time() - started

    elapsed = FakeClock().run(send())
    assert 2.0 <= elapsed < 2.5  # at the deadline, long before the hard TTL


def test_rate_limit_bounds_the_average_rate(memory_store: FsspecSnapshotStore) -> None:
    data = payload(64 * 1024)
    rate = 256 * 1024  # bytes/s: the first chunk goes at once, the other 15 wait 1/64 s each
    options = TransferOptions(chunk_size=4096, max_in_flight=4, rate_limit=rate)

    async def send() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await Chunked.send_snapshot(
            LoopbackNetwork(Receiver(memory_store)),
            Vote(1, 0),
            Snapshot(SnapshotMeta("r"), io.BytesIO(data)),
            None,
            options,
        )
        return loop.time() - started

    elapsed = FakeClock().run(send())  # virtual time: the pacing costs the test nothing
    paced = (len(data) - 4096) / rate
    assert paced * 0.95 <= elapsed < paced * 1.5
    with FakeClock().run(memory_store.open("r")) as f:
        assert f.read() == data


async def test_payload_limit_named_by_the_peer_is_honoured_below_the_floor(
    memory_store: FsspecSnapshotStore,
) -> None:
    deliver = deliver_to(Receiver(memory_store))

    async def limited(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if len(req.data) > 1000:
            raise PayloadTooLarge("413", limit=1000)
        return await deliver(req)

    net = MockNetwork(limited)
    data = payload(5000)
    await Chunked.send_snapshot(
        net,
        Vote(1, 0),
        Snapshot(SnapshotMeta("l"), io.BytesIO(data)),
        None,
        TransferOptions(chunk_size=8192),
    )
    assert max(length for _, length, _ in net.seen[1:]) <= 1000
    with await memory_store.open("l") as f:
        assert f.read() == data


def test_an_rpc_without_answer_times_out_and_is_cancelled() -> None:
    """The timer cancels the RPC inside the chunk's own task and reports `Timeout`."""
    cancelled = 0

    async def hang_counting_cancels(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        nonlocal cancelled
        try:
            return await hang(req)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    net = MockNetwork(hang_counting_cancels)
    options = TransferOptions(
        hard_ttl=5.0,
        install_timeout=5.0,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.5, max_backoff=0.5),
    )
    meta = SnapshotMeta("snap", size=10)

    async def send() -> int:
        with pytest.raises(RetryExhausted) as caught:
            await send_source(net, Vote(1, 1), meta, BufferSource(b"0123456789"), option=options)
        assert isinstance(caught.value.last_error, Timeout)
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        return 0 if cancelling is None else int(cancelling())

    assert FakeClock().run(send()) == 0, "the timer's cancellations were not all withdrawn"
    assert cancelled == 2
