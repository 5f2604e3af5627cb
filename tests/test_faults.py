"""FaultyNetwork: seeded faults around a real receiver; every transfer still installs exactly."""

from __future__ import annotations

import asyncio
import io
import math
import time
from typing import Any

import fsspec
import pytest

from fstransport import (
    ChecksumMismatch,
    Chunked,
    ConfigurationError,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
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
    ship,
)
from fstransport.checksum import chunk_crc
from fstransport.messages import contiguous
from fstransport.network import FaultStats, FaultyNetwork
from fstransport.testing.mock import MockNetwork, answer, deliver_to, fail, hang
from tests.conftest import payload

FAST_RETRY = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=20)
VOTE = Vote(1, 0)
OPTION = TransferOptions()


def tapped(receiver: Receiver) -> MockNetwork:
    """Between the faults and the receiver: delivers to it (it verifies every chunk's CRC) and
    records what was delivered (`seen`) and what was refused (`errors`)."""
    return MockNetwork(deliver_to(receiver, interleave=False))


def refusals(tap: MockNetwork) -> list[BaseException]:
    """The receiver's errors for the requests `tap` delivered."""
    return [error.source for error in tap.errors if isinstance(error, RemoteError)]


def request(data: bytes | bytearray = b"chunk", offset: int = 0) -> InstallSnapshotRequest:
    meta = SnapshotMeta("s", size=offset + len(data))
    return InstallSnapshotRequest(VOTE, meta, offset, data, False, chunk_crc(data))


def faulty(store: FsspecSnapshotStore, **faults: Any) -> tuple[FaultyNetwork, MockNetwork]:
    tap = tapped(Receiver(store))
    return FaultyNetwork(tap, **faults), tap


async def send(net: FaultyNetwork, data: bytes, options: TransferOptions, name: str = "s") -> None:
    snapshot = Snapshot(SnapshotMeta(name), io.BytesIO(data))
    response = await Chunked.send_snapshot(net, VOTE, snapshot, None, options)
    assert response.vote == VOTE


async def installed(store: FsspecSnapshotStore, name: str = "s") -> bytes:
    with await store.open(name) as f:
        data: bytes = f.read()
    return data


async def outcomes(net: FaultyNetwork, count: int) -> list[str]:
    """What `count` requests, one after the other, ended in."""
    seen = []
    for offset in range(count):
        try:
            await net.install_snapshot(request(offset=offset), OPTION)
            seen.append("ok")
        except Exception as exc:
            seen.append(type(exc).__name__)
    return seen


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"drop": -0.1},
        {"duplicate": 1.5},
        {"reorder": math.nan},
        {"corrupt": True},
        {"timeout": "0.5"},
        {"latency": -1.0},
        {"jitter": math.inf},
        {"bandwidth": 0},
        {"bandwidth": -5.0},
        {"payload_limit": 0},
        {"payload_limit": 1.5},
        {"seed": "seven"},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        FaultyNetwork(MockNetwork(answer), **bad)


def test_inner_must_be_a_network() -> None:
    with pytest.raises(ConfigurationError, match="Network"):
        FaultyNetwork(object())  # type: ignore[arg-type]


def test_repr_names_the_faults() -> None:
    net = FaultyNetwork(MockNetwork(answer), seed=3, drop=0.25, bandwidth=1e6, payload_limit=4096)
    assert "seed=3" in repr(net)
    assert "drop=0.25" in repr(net)
    assert "bandwidth=1e+06" in repr(net)
    assert "payload_limit=4096" in repr(net)
    assert "corrupt" not in repr(net)


# -- determinism ----------------------------------------------------------------------------


async def test_without_faults_it_delivers_everything_unchanged(
    memory_store: FsspecSnapshotStore,
) -> None:
    net, tap = faulty(memory_store)
    data = payload(50_000)
    await send(net, data, TransferOptions(chunk_size=4096, max_in_flight=4))
    assert await installed(memory_store) == data
    assert net.stats == FaultStats(
        requests=len(tap.seen), delivered=len(tap.seen), bytes_delivered=len(data)
    )


async def test_same_seed_same_faults_and_same_requests() -> None:
    data = payload(60_000, seed=5)
    options = TransferOptions(
        chunk_size=4096, max_in_flight=1, min_chunk_size=1024, retry=FAST_RETRY
    )
    faults: dict[str, Any] = {
        "drop": 0.15,
        "duplicate": 0.15,
        "reorder": 0.15,
        "corrupt": 0.15,
        "timeout": 0.15,
        "payload_limit": 3000,
    }
    runs = []
    for run, seed in enumerate([11, 11, 12]):
        store = FsspecSnapshotStore(f"memory://run-{run}")
        net, tap = faulty(store, seed=seed, **faults)
        await send(net, data, options)
        assert await installed(store) == data
        runs.append((net.stats, tap.seen, [type(e).__name__ for e in refusals(tap)]))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    stats = runs[0][0]
    assert stats.too_large == 1
    assert min(stats.dropped_requests + stats.dropped_answers, stats.duplicated) > 0
    assert min(stats.reordered, stats.corrupted, stats.timeouts) > 0


async def test_same_seed_same_outcomes_request_by_request() -> None:
    faults: dict[str, Any] = {"drop": 0.2, "timeout": 0.1, "duplicate": 0.2, "corrupt": 0.3}
    first = FaultyNetwork(MockNetwork(answer), seed=42, **faults)
    second = FaultyNetwork(MockNetwork(answer), seed=42, **faults)
    assert await outcomes(first, 200) == await outcomes(second, 200)
    assert first.stats == second.stats
    assert await outcomes(
        FaultyNetwork(MockNetwork(answer), seed=43, **faults), 200
    ) != await outcomes(FaultyNetwork(MockNetwork(answer), seed=42, **faults), 200)


async def test_one_probability_does_not_reshuffle_the_others() -> None:
    """Every request draws the same numbers whatever the settings: adding corruption keeps
    the very same requests dropped."""
    dropping = await outcomes(FaultyNetwork(MockNetwork(answer), seed=9, drop=0.2), 300)
    both = FaultyNetwork(MockNetwork(answer), seed=9, drop=0.2, corrupt=0.5, duplicate=0.3)
    assert await outcomes(both, 300) == dropping
    assert "Timeout" in dropping
    assert both.stats.corrupted > 0


# -- each fault alone ends in an exact install --------------------------------------------------


@pytest.mark.parametrize("fault", ["drop", "duplicate", "reorder", "corrupt", "timeout"])
async def test_each_fault_alone_still_installs_exactly(
    fault: str, memory_store: FsspecSnapshotStore
) -> None:
    net, tap = faulty(memory_store, seed=1, **{fault: 0.3})
    data = payload(64 * 1024, seed=2)
    await send(net, data, TransferOptions(chunk_size=4096, max_in_flight=4, retry=FAST_RETRY))
    assert await installed(memory_store) == data
    assert memory_store.fs.find("/store/.fstransport") == []
    stats = net.stats
    assert stats.delivered == len(tap.seen)
    if fault == "drop":
        assert stats.dropped_requests > 0
        assert stats.dropped_answers > 0
        assert stats.delivered == stats.requests - stats.dropped_requests
    elif fault == "duplicate":
        assert stats.duplicated > 0
        assert stats.delivered == stats.requests + stats.duplicated
        assert len(set(tap.seen)) < len(tap.seen), "no request arrived twice"
    elif fault == "reorder":
        assert stats.reordered > 0
        offsets = [offset for offset, _, _ in tap.seen]
        assert offsets != sorted(offsets), "no request was overtaken"
    elif fault == "corrupt":
        assert stats.corrupted > 0
        assert sum(isinstance(e, ChecksumMismatch) for e in refusals(tap)) == stats.corrupted
    else:
        assert stats.timeouts > 0
        assert stats.delivered == stats.requests


async def test_every_fault_at_once_through_ship() -> None:
    fs = fsspec.filesystem("memory")
    data = payload(200_000, seed=3)
    fs.pipe_file("/src/snap.bin", data)
    receiver = Receiver(FsspecSnapshotStore("memory://dst"))
    net = FaultyNetwork(
        LoopbackNetwork(receiver),
        seed=3,
        drop=0.1,
        duplicate=0.1,
        reorder=0.1,
        corrupt=0.1,
        timeout=0.1,
        latency=0.001,
        jitter=0.001,
        payload_limit=6000,
    )
    options = TransferOptions(chunk_size=8192, max_in_flight=4, retry=FAST_RETRY)
    report = await ship(
        "memory://src/snap.bin", "memory://dst/snap.bin", network=net, options=options
    )
    assert fs.cat_file("/dst/snap.bin") == data
    assert report.size == len(data)
    # (+1: the data-less request asking for a delta base; this receiver has none to offer)
    assert net.stats.requests == report.chunks_sent + 1
    assert net.stats.too_large == 1
    assert net.stats.corrupted > 0
    assert net.stats.dropped_requests + net.stats.dropped_answers + net.stats.timeouts > 0


# -- the faults one by one, up close ---------------------------------------------------------


async def test_drop_loses_the_request_or_its_answer_and_times_out_at_once() -> None:
    echo = MockNetwork(answer)
    net = FaultyNetwork(echo, seed=4, drop=1.0, latency=0.0005)
    started = time.perf_counter()
    assert set(await outcomes(net, 200)) == {"Timeout"}
    assert time.perf_counter() - started < 5.0, "a drop must not wait for hard_ttl"
    stats = net.stats
    assert stats.dropped_requests + stats.dropped_answers == 200
    assert min(stats.dropped_requests, stats.dropped_answers) > 60  # about half each
    assert len(echo.requests) == stats.delivered == stats.dropped_answers


async def test_timeout_delivers_and_the_answer_comes_too_late() -> None:
    echo = MockNetwork(answer)
    net = FaultyNetwork(echo, timeout=1.0)
    with pytest.raises(Timeout, match="too late"):
        await net.install_snapshot(request(), OPTION)
    assert len(echo.requests) == 1
    assert net.stats.timeouts == net.stats.delivered == 1


async def test_corrupt_flips_one_bit_of_a_copy_and_keeps_the_crc() -> None:
    echo = MockNetwork(answer)
    net = FaultyNetwork(echo, seed=8, corrupt=1.0)
    original = bytearray(payload(1000, seed=8))
    pristine = bytes(original)
    for _ in range(50):
        await net.install_snapshot(request(original), OPTION)
    assert original == pristine, "the caller's buffer was changed"
    flipped = set()
    for got in echo.requests:
        assert got.crc32c == chunk_crc(pristine)
        diff = int.from_bytes(contiguous(got.data), "big") ^ int.from_bytes(pristine, "big")
        assert diff.bit_count() == 1
        flipped.add(diff)
    assert len(flipped) > 40, "the flipped bit should be spread over the chunk"
    assert net.stats.corrupted == 50


async def test_corruption_is_caught_by_the_receiver_and_never_installed(
    memory_store: FsspecSnapshotStore,
) -> None:
    net, tap = faulty(memory_store, corrupt=1.0)
    options = TransferOptions(
        chunk_size=4096, retry=RetryPolicy(initial_backoff=0.001, max_attempts=3)
    )
    with pytest.raises(RetryExhausted) as info:
        await send(net, payload(10_000), options)
    last = info.value.last_error
    assert isinstance(last, RemoteError)
    assert isinstance(last.source, ChecksumMismatch)
    assert not last.source.whole
    assert len(refusals(tap)) == 3
    assert all(isinstance(e, ChecksumMismatch) for e in refusals(tap))
    assert not await memory_store.exists("s")


async def test_an_empty_snapshot_is_not_corrupted(memory_store: FsspecSnapshotStore) -> None:
    net, _ = faulty(memory_store, corrupt=1.0)
    await send(net, b"", TransferOptions())
    assert await installed(memory_store) == b""
    assert net.stats.corrupted == 0


async def test_duplicate_answers_the_first_delivery_and_swallows_the_second() -> None:
    def once_only(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if sum(seen is req for seen in inner.requests) > 1:  # the same request object again
            segment = SnapshotSegmentId("s", req.offset)
            raise RemoteError(SnapshotMismatch(segment, segment))
        return answer(req)

    inner = MockNetwork(once_only)
    net = FaultyNetwork(inner, seed=2, duplicate=1.0)
    assert set(await outcomes(net, 20)) == {"ok"}
    assert inner.calls == 40
    assert net.stats.duplicated == net.stats.duplicate_errors == 20
    assert net.stats.delivered == 40
    assert net.stats.errors == 0


async def test_errors_of_the_inner_network_pass_through_unchanged() -> None:
    error = Unreachable("no route to host")
    net = FaultyNetwork(MockNetwork(fail(error)), latency=0.001)
    with pytest.raises(Unreachable) as info:
        await net.install_snapshot(request(), OPTION)
    assert info.value is error
    assert net.stats.errors == 1


async def test_payload_limit_makes_the_sender_shrink(memory_store: FsspecSnapshotStore) -> None:
    net, tap = faulty(memory_store, payload_limit=5000)
    data = payload(40_000, seed=6)
    await send(net, data, TransferOptions(chunk_size=16_384, max_in_flight=4))
    assert await installed(memory_store) == data
    assert net.stats.too_large == 1
    assert tap.seen[0][1] <= 5000
    assert max(length for _, length, _ in tap.seen) <= 5000
    assert net.stats.delivered == net.stats.requests - 1


async def test_payload_too_large_names_the_limit_and_delivers_nothing() -> None:
    echo = MockNetwork(answer)
    net = FaultyNetwork(echo, payload_limit=10)
    with pytest.raises(PayloadTooLarge) as info:
        await net.install_snapshot(request(b"x" * 11), OPTION)
    assert info.value.limit == 10
    assert echo.requests == []
    await net.install_snapshot(request(b"x" * 10), OPTION)
    assert len(echo.requests) == 1


# -- time: latency, jitter, bandwidth ----------------------------------------------------------


async def test_latency_applies_both_ways(memory_store: FsspecSnapshotStore) -> None:
    latency, chunks = 0.01, 8
    net, tap = faulty(memory_store, latency=latency)
    data = payload(chunks * 1000)
    started = time.perf_counter()
    await send(net, data, TransferOptions(chunk_size=1000, max_in_flight=1))
    elapsed = time.perf_counter() - started
    assert len(tap.seen) == chunks
    assert elapsed >= 2 * chunks * latency
    assert await installed(memory_store) == data


async def test_jitter_stays_within_its_bounds() -> None:
    net = FaultyNetwork(MockNetwork(answer), seed=1, latency=0.02, jitter=0.03)
    for _ in range(3):
        started = time.perf_counter()
        await net.install_snapshot(request(), OPTION)
        elapsed = time.perf_counter() - started
        assert 0.04 <= elapsed < 0.10 + 0.25  # two legs of latency + up to 2 x jitter (+ slack)


async def test_bandwidth_bounds_a_whole_window(memory_store: FsspecSnapshotStore) -> None:
    size, bandwidth = 64 * 1024, 256 * 1024  # a quarter of a second, whatever the window
    net, _ = faulty(memory_store, bandwidth=bandwidth)
    data = payload(size, seed=7)
    started = time.perf_counter()
    await send(net, data, TransferOptions(chunk_size=4096, max_in_flight=4))
    elapsed = time.perf_counter() - started
    assert elapsed >= size / bandwidth - 0.002
    assert elapsed < 4 * size / bandwidth
    assert net.stats.bytes_delivered == size
    assert await installed(memory_store) == data


async def test_concurrent_requests_share_the_link() -> None:
    net = FaultyNetwork(MockNetwork(answer), bandwidth=100_000)
    started = time.perf_counter()
    await asyncio.gather(*(net.install_snapshot(request(b"x" * 5000), OPTION) for _ in range(4)))
    assert time.perf_counter() - started >= 0.2 - 0.002  # 4 x 5000 bytes at 100 kB/s


async def test_reorder_lets_later_requests_overtake() -> None:
    echo = MockNetwork(answer)
    net = FaultyNetwork(echo, seed=0, reorder=0.5)
    await asyncio.gather(*(net.install_snapshot(request(offset=i), OPTION) for i in range(20)))
    order = [req.offset for req in echo.requests]
    assert sorted(order) == list(range(20))
    assert order != sorted(order)
    held = order[-net.stats.reordered :]
    assert net.stats.reordered > 0
    assert order[: 20 - net.stats.reordered] == sorted(set(range(20)) - set(held))


# -- cancellation --------------------------------------------------------------------------


async def test_cancel_during_a_long_latency_is_prompt(memory_store: FsspecSnapshotStore) -> None:
    net, tap = faulty(memory_store, latency=30.0)
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, cancel.set)
    snapshot = Snapshot(SnapshotMeta("s"), io.BytesIO(payload(10_000)))
    started = time.perf_counter()
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(net, VOTE, snapshot, cancel.wait(), TransferOptions())
    assert time.perf_counter() - started < 1.0
    assert tap.seen == []


async def test_cancel_during_a_bandwidth_wait_is_prompt_and_frees_the_link() -> None:
    net = FaultyNetwork(MockNetwork(answer), bandwidth=1000)
    slow = asyncio.ensure_future(net.install_snapshot(request(b"x" * 60_000), OPTION))  # 60 s
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    await net.install_snapshot(request(b"x" * 10), OPTION)  # 10 ms once the link is free
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("seed", range(4))  # both ways of duplicating come up
async def test_cancel_stops_both_deliveries_of_a_duplicate(seed: int) -> None:
    echo = MockNetwork(hang)
    net = FaultyNetwork(echo, seed=seed, duplicate=1.0)
    task = asyncio.ensure_future(net.install_snapshot(request(), OPTION))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert echo.in_flight == 0
    assert len(echo.requests) in (1, 2)
