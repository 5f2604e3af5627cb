"""`FakeClock`: virtual time for asyncio, so tests of backoffs, deadlines and TTLs are instant.

The sender takes all its time from its event loop (``loop.time()``, ``call_later``,
``asyncio.sleep``, ``asyncio.wait(timeout=...)``), so the clock is injected where the loop is
made: `FakeClock.run` runs a coroutine like ``asyncio.run`` on an event loop whose ``time()`` is
the real monotonic clock plus a virtual offset.  Whenever the loop has nothing to do but wait for
a timer, the offset jumps to that timer at once (after ``autojump_threshold`` real seconds with no
I/O), as trio's ``MockClock(autojump_threshold=...)`` does.  A backoff of 5 s then takes
microseconds, and the code under test still sees 5 s pass.

Time jumps only while the loop is idle: never while a call runs in the loop's executor
(``asyncio.to_thread``, ``run_in_executor``).  A real socket or process slower than the
threshold, though, lets timers fire "early", as if its answer took as long as the timer; keep
such tests on real time, or raise the threshold.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["FakeClock"]

_T = TypeVar("_T")


class FakeClock:
    """Virtual time for event loops made by `new_loop` (or used by `run`).

    ``jumped`` is the virtual time skipped so far, in seconds; `advance` skips more by hand.
    """

    def __init__(self, autojump_threshold: float = 0.0) -> None:
        if autojump_threshold < 0:
            raise ValueError(f"autojump_threshold must be >= 0, got {autojump_threshold}")
        self.autojump_threshold = autojump_threshold
        self.jumped = 0.0

    def time(self) -> float:
        """The virtual time: the monotonic clock plus every jump so far."""
        return time.monotonic() + self.jumped

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by `seconds` (timers due by then fire at the next turn)."""
        if seconds < 0:
            raise ValueError(f"time does not go back: {seconds}")
        self.jumped += seconds

    def new_loop(self) -> asyncio.AbstractEventLoop:
        """A new event loop that keeps this clock's time and jumps it when idle."""
        return _VirtualTimeLoop(self)

    def run(self, main: Coroutine[Any, Any, _T]) -> _T:
        """Run `main` to completion on a new loop with this clock, like ``asyncio.run``."""
        runner_class = getattr(asyncio, "Runner", None)
        if runner_class is not None:  # Python 3.11+
            with runner_class(loop_factory=self.new_loop) as runner:
                result: _T = runner.run(main)
                return result
        return _run_without_runner(self.new_loop(), main)  # pragma: no cover (Python 3.10)


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, instead of sleeping until the next timer, moves the clock to it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock
        self.threads = 0
        """Calls of the loop running in its executor: no jumps while one is, as its result
        would arrive "late"."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0 or self.threads:  # nothing to jump to, or busy
            return super().select(timeout)
        threshold = self._clock.autojump_threshold
        events = super().select(min(timeout, threshold))
        if not events and timeout > threshold:
            self._clock.advance(timeout - threshold)
        return events


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._jumping = _JumpingSelector(clock)
        super().__init__(self._jumping)

    def time(self) -> float:
        return self.clock.time()

    def run_in_executor(  # type: ignore[override]  # the same call, typed loosely
        self, executor: Any, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        future = super().run_in_executor(executor, func, *args)
        self._jumping.threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, future: asyncio.Future[Any]) -> None:
        self._jumping.threads -= 1


def _run_without_runner(  # pragma: no cover (Python 3.10)
    loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, _T]
) -> _T:
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
