"""A one-line progress bar for the command line: bytes, rate and ETA, on terminals only."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from fstransport.units import format_rate, format_size

__all__ = ["ProgressBar"]


class ProgressBar:
    """Shows ``12.0 MiB / 64.0 MiB  18%  210.5 MiB/s  ETA 0:00:02`` on `stream`, redrawn at most
    ten times a second, and only when `stream` is a terminal and the transfer has taken longer
    than `delay` seconds: quick copies and redirected output stay quiet."""

    def __init__(
        self,
        total: int | None,
        stream: TextIO | None = None,
        *,
        delay: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._clock = clock
        self._started = clock()
        self._delay = delay
        self._drawn_at = 0.0
        self._shown = False

    def update(self, nbytes: int) -> None:
        """`nbytes` more bytes were delivered."""
        self.done += nbytes
        now = self._clock()
        if self.enabled and now - self._started >= self._delay and now - self._drawn_at >= 0.1:
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar at time `now`."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        parts = [format_size(self.done)]
        if self.total:
            parts[0] += f" / {format_size(self.total)}"
            parts.append(f"{100 * self.done // self.total:3d}%")
        parts.append(format_rate(rate))
        if self.total and rate > 0:
            left = max(0, int((self.total - self.done) / rate))
            parts.append(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now).ljust(60))
        self.stream.flush()
        self._drawn_at = now
        self._shown = True

    def close(self) -> None:
        """End the line, if anything was drawn."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
