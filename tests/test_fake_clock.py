"""FakeClock: virtual time that jumps over idle waits, and leaves real events their order."""

from __future__ import annotations

import asyncio
import time

import pytest

from fstransport.testing.clock import FakeClock


def test_a_long_sleep_takes_no_real_time_but_virtual_time_passes() -> None:
    clock = FakeClock()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - started

    real = time.monotonic()
    virtual = clock.run(main())
    assert virtual >= 3600
    assert clock.jumped >= 3599
    assert time.monotonic() - real < 30  # an hour of virtual time, far less of real time


def test_timers_fire_in_order_of_their_virtual_deadlines() -> None:
    clock = FakeClock()
    fired: list[str] = []

    async def after(seconds: float, name: str) -> None:
        await asyncio.sleep(seconds)
        fired.append(name)

    async def main() -> None:
        await asyncio.gather(after(30, "c"), after(0.5, "a"), after(2, "b"))

    clock.run(main())
    assert fired == ["a", "b", "c"]


def test_wait_for_times_out_in_virtual_time() -> None:
    async def main() -> None:
        await asyncio.wait_for(asyncio.Event().wait(), timeout=120)

    clock = FakeClock()
    with pytest.raises(asyncio.TimeoutError):
        clock.run(main())
    assert 119 <= clock.jumped <= 121


def test_time_does_not_jump_while_a_thread_works() -> None:
    """A worker thread's result arrives before a timer, however soon it is due."""
    clock = FakeClock()

    async def main() -> str:
        work = asyncio.ensure_future(asyncio.to_thread(time.sleep, 0.05))
        timer = asyncio.ensure_future(asyncio.sleep(60))
        done, _ = await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        return "work" if work in done else "timer"

    assert clock.run(main()) == "work"
    assert clock.jumped == 0


def test_a_threshold_leaves_short_waits_on_real_time() -> None:
    clock = FakeClock(autojump_threshold=10.0)

    async def main() -> None:
        await asyncio.sleep(0.01)

    clock.run(main())
    assert clock.jumped == 0


def test_advance_moves_time_forward_only() -> None:
    clock = FakeClock()
    before = clock.time()
    clock.advance(10)
    assert clock.time() - before >= 10
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="autojump_threshold"):
        FakeClock(autojump_threshold=-1)
