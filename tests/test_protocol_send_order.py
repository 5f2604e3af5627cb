"""`RelaySendWindow` and `ReferenceOrder` driven by hand and by a simulated relay and receiver.
No I/O, no clock, no asyncio.

`simulate` plays a whole relayed transfer: the window hands chunks over, the relay stages them
in any order and lets references out as `ReferenceOrder` says, and a model receiver (the real
rules: a stream opens only at offset 0, a final chunk with a gap is answered with a mismatch)
answers them in random order, losing some.  The tests check what the receiver saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import crc32c as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport.errors import NetworkError, SnapshotMismatch
from fstransport.messages import SnapshotSegmentId
from fstransport.options import RetryPolicy, TransferOptions
from fstransport.protocol.send_order import ReferenceOrder, RelaySendWindow
from fstransport.protocol.sender import ChunkPlan, SendWindow

PATIENT = RetryPolicy(
    max_attempts=10**6, initial_backoff=0.001, max_backoff=0.01, jitter=0.5, give_up_after=1e12
)


def options(max_in_flight: int = 4) -> TransferOptions:
    return TransferOptions(chunk_size=4, max_in_flight=max_in_flight, retry=PATIENT)


def crc(data: bytes) -> int:
    return int(reference.crc32c(data))


def drain(window: SendWindow, now: float = 0.0) -> list[ChunkPlan]:
    plans = []
    while (plan := window.next_chunk(now)) is not None:
        plans.append(plan)
    return plans


# -- the window, by hand -------------------------------------------------------------------------


def test_the_plain_window_keeps_offset_0_alone_and_the_final_chunk_last() -> None:
    window = SendWindow(16, options(8))
    assert [p.offset for p in drain(window)] == [0]


def test_chunks_past_0_are_handed_over_while_the_first_is_out() -> None:
    window = RelaySendWindow(40, options(4))
    plans = drain(window)
    assert [p.offset for p in plans] == [0, 4, 8, 12], "the whole window, from the start"
    assert not any(p.done for p in plans)


def test_the_final_chunk_waits_until_every_chunk_in_flight_was_read() -> None:
    data = bytes(range(16))
    window = RelaySendWindow(16, options(8))
    plans = drain(window)
    assert [p.offset for p in plans] == [0, 4, 8], "the final one waits: nothing was read"
    for plan in plans[:2]:
        window.on_read(plan, crc(data[plan.offset : plan.end]))
    assert drain(window) == [], "one chunk in flight is still unread"
    window.on_read(plans[2], crc(data[8:12]))
    (final,) = drain(window)
    assert final.done
    assert final.offset == 12
    assert window.whole_crc(final, crc(data[12:])) == crc(data), "no answer needed for it"


def test_offset_0_is_handed_over_again_while_others_are_out() -> None:
    window = RelaySendWindow(40, options(4))
    first, *rest = drain(window)
    window.on_failure(first, NetworkError("lost"), now=0.0)
    (again,) = drain(window, now=1.0)
    assert again.offset == 0
    assert len(rest) == 3


def test_a_failed_unread_chunk_no_longer_holds_the_final_one_back() -> None:
    data = bytes(range(12))
    window = RelaySendWindow(12, options(4))
    a, b = drain(window)
    window.on_read(a, crc(data[:4]))
    window.on_failure(b, NetworkError("read failed"), now=0.0)  # (never read)
    (b2,) = drain(window, now=1.0)
    assert (b2.offset, b2.done) == (4, False)
    window.on_read(b2, crc(data[4:8]))
    (final,) = drain(window, now=1.0)
    assert final.done


def test_the_read_ledger_is_used_only_where_the_answers_do_not_tile() -> None:
    data = bytes(range(12))
    window = RelaySendWindow(12, options(4))
    a, b = drain(window)
    window.on_read(a, 0xDEAD)  # (wrong: the acknowledged CRC wins where there is one)
    window.on_read(b, crc(data[4:8]))
    window.on_ack(a, crc(data[:4]), now=0.0)
    window.on_ack(b, crc(data[4:8]), now=0.0)
    (final,) = drain(window)
    assert window.whole_crc(final, crc(data[8:])) == crc(data)


# -- the order, by hand ------------------------------------------------------------------------


def test_references_past_0_wait_for_the_opening_answer() -> None:
    order = ReferenceOrder()
    t0, t1, t2 = (order.enter("s", off, False) for off in (0, 4, 8))
    order.staged(t2)
    order.staged(t1)
    assert order.release(4) == [], "the opening one is not staged yet"
    order.staged(t0)
    assert order.release(4) == [t0], "it goes first, alone"
    order.leave(t0, ok=False)
    assert order.release(4) == [], "a failed opening opens nothing"
    t0b = order.enter("s", 0, False)
    order.staged(t0b)
    assert order.release(4) == [t0b], "a retry at offset 0 overtakes the waiting ones"
    order.leave(t0b, ok=True)
    assert order.release(4) == [t1, t2]


def test_references_keep_their_order_and_their_limit() -> None:
    order = ReferenceOrder()
    t0 = order.enter("s", 0, False)
    order.staged(t0)
    assert order.release(2) == [t0]
    order.leave(t0, ok=True)
    tickets = [order.enter("s", 4 * i, False) for i in range(1, 6)]
    for t in reversed(tickets[1:]):
        order.staged(t)
    assert order.release(2) == [], "the oldest is still being staged"
    order.staged(tickets[0])
    assert order.release(2) == tickets[:2]
    assert order.sent == 2
    order.leave(tickets[1], ok=True)
    assert order.release(2) == [tickets[2]]


def test_the_final_reference_goes_alone_and_does_not_hold_up_younger_ones() -> None:
    order = ReferenceOrder()
    t0 = order.enter("s", 0, False)
    order.staged(t0)
    order.release(4)
    order.leave(t0, ok=True)
    a = order.enter("s", 4, False)
    final = order.enter("s", 12, True)
    order.staged(final)
    assert order.settled_before(final) is False, "a chunk before it is not staged"
    order.staged(a)
    assert order.settled_before(final) is True
    assert order.release(4) == [a]
    order.leave(a, ok=False)  # lost: the sender sends it again after a backoff
    assert order.release(4) == [], "the final one waits for the retry"
    retry = order.enter("s", 4, False)
    order.staged(retry)
    assert order.release(4) == [retry], "the retry overtakes the waiting final one"
    assert order.release(4) == []
    order.leave(retry, ok=True)
    assert order.release(4) == [final]


def test_snapshots_are_ordered_apart() -> None:
    order = ReferenceOrder()
    a0, b0 = order.enter("a", 0, False), order.enter("b", 0, False)
    a1 = order.enter("a", 4, False)
    for t in (a0, b0, a1):
        order.staged(t)
    assert order.release(4) == [a0, b0]
    order.leave(b0, ok=True)
    assert order.release(4) == [], "a1 waits for a's opening answer"
    order.leave(a0, ok=True)
    assert order.release(4) == [a1]


# -- the whole, simulated ----------------------------------------------------------------------


@dataclass
class Run:
    seen: list[tuple[int, int, bool]] = field(default_factory=list)  # (offset, length, done)
    mismatches: int = 0
    installed: bytes | None = None
    whole_crc: int | None = None


def simulate(size: int, window_size: int, limit: int, seed: int, loss: float) -> Run:
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(size))
    window = RelaySendWindow(size, options(window_size), rng=rng)
    order = ReferenceOrder()
    run = Run()
    tickets: dict[int, ChunkPlan] = {}  # order ticket -> plan
    unstaged: list[int] = []
    out: list[int] = []
    stream: dict[int, int] | None = None  # offset -> length held
    now = 0.0
    for _ in range(100_000):
        now += 0.001
        for plan in drain(window, now):
            window.on_read(plan, crc(data[plan.offset : plan.end]))
            ticket = order.enter("s", plan.offset, plan.done)
            tickets[ticket] = plan
            unstaged.append(ticket)
        if window.finished:
            return run
        moves = ["stage"] * bool(unstaged) + ["answer"] * bool(out)
        if not moves:
            continue  # backing off
        if rng.choice(moves) == "stage":
            order.staged(unstaged.pop(rng.randrange(len(unstaged))))
        else:
            ticket = out.pop(rng.randrange(len(out)))
            plan = tickets.pop(ticket)
            if rng.random() < loss and not plan.done:
                order.leave(ticket, ok=False)
                window.on_failure(plan, NetworkError("lost"), now)
                continue
            run.seen.append((plan.offset, plan.length, plan.done))
            if plan.offset == 0:
                stream = {}
            if stream is None:
                expect = 0
            else:
                stream[plan.offset] = plan.length
                expect = _gap(stream, plan.end) if plan.done else None  # type: ignore[assignment]
            if expect is not None:
                run.mismatches += 1
                order.leave(ticket, ok=False)
                error = SnapshotMismatch(SnapshotSegmentId("s", expect), SnapshotSegmentId("s", 0))
                window.on_mismatch(plan, expect, error, now)
                continue
            order.leave(ticket, ok=True)
            if plan.done:
                run.installed = data
                run.whole_crc = window.whole_crc(plan, crc(data[plan.offset :]))
            window.on_ack(plan, crc(data[plan.offset : plan.end]), now)
        out += order.release(limit)
        assert order.sent <= limit
    raise AssertionError("the transfer did not end")


def _gap(stream: dict[int, int], end: int) -> int | None:
    reached = 0
    for offset in sorted(stream):
        if offset > reached:
            return reached
        reached = max(reached, offset + stream[offset])
    return None if reached >= end else reached


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 60),
    window_size=st.integers(1, 8),
    limit=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_a_simulated_relay_keeps_what_the_receiver_sees(
    size: int, window_size: int, limit: int, seed: int, loss: float
) -> None:
    run = simulate(size, window_size, max(1, min(limit, window_size)), seed, loss)
    assert run.installed is not None
    first_done = next(i for i, s in enumerate(run.seen) if s[2])
    assert first_done == len(run.seen) - 1, "the final chunk is the last the receiver saw"
    assert run.seen[0][0] == 0, "the first reference the receiver saw is at offset 0"
    assert run.mismatches == 0, "no rewind: nothing reached a receiver without its stream"
    covered = sum(length for _, length, _ in run.seen)
    assert covered >= size


def test_the_whole_crc_of_a_simulated_run_is_the_data_s() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        size = rng.randrange(1, 50)
        run = simulate(size, rng.randrange(1, 8), 2, seed, 0.2)
        assert run.installed is not None
        assert len(run.installed) == size
        assert run.whole_crc == crc(run.installed)


def test_failures_before_the_opening_answer_do_not_hold_the_final_one() -> None:
    """A chunk that failed before the stream was open never reached the receiver; the opening
    answer may say it is held (a resume), so it may never be sent again."""
    order = ReferenceOrder()
    t0 = order.enter("s", 0, False)
    a = order.enter("s", 4, False)
    order.staged(t0)
    assert order.release(4) == [t0]
    order.leave(a, ok=False)  # its PUT failed
    order.leave(t0, ok=True)
    final = order.enter("s", 8, True)
    order.staged(final)
    assert order.release(4) == [final]
