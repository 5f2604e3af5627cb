"""A one-line progress bar for the command line: bytes, rate and ETA, on terminals only."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from fstransport.units import format_rate, format_size

__all__ = ["ProgressBar", "format_eta"]


def format_eta(seconds: float) -> str:
    """``"<1s"``, ``"42s"``, ``"3m05s"``, ``"2:03:04"``: short, and never a misleading zero."""
    if seconds < 1:
        return "<1s"
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ProgressBar:
    """Shows ``12.0 MiB / 64.0 MiB  18%  210.5 MiB/s  ETA 2s`` on `stream`, redrawn at most
    ten times a second, and only when `stream` is a terminal and the transfer has taken longer
    than `delay` seconds: quick copies and redirected output stay quiet.

    Bytes the receiver already held (a resumed transfer) count towards the percentage but not
    towards the rate (`skip`).  Once every byte is acknowledged the bar shows `finishing` (say
    ``"completing upload…"``) until `close`, which draws the final line at 100%.
    """

    def __init__(
        self,
        total: int | None,
        stream: TextIO | None = None,
        *,
        delay: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        finishing: str = "finishing…",
        enabled: bool | None = None,
    ) -> None:
        self.total = total
        self.done = 0
        self.skipped = 0
        self.finishing = finishing
        self.stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = tty if enabled is None else enabled and tty
        self._clock = clock
        self._started = clock()
        self._delay = delay
        self._drawn_at = 0.0
        self._updated_at = self._started
        self._shown = False

    def update(self, nbytes: int) -> None:
        """`nbytes` more bytes were delivered."""
        self.done += nbytes
        self._updated_at = self._clock()
        self.refresh()

    __call__ = update  # a `ProgressCallback`: ``ship(..., progress=bar)``

    def skip(self, nbytes: int) -> None:
        """The receiver already held `nbytes` bytes: they need not be sent."""
        self.skipped += nbytes
        self.refresh()

    def refresh(self) -> None:
        """Redraw if it is time to (call it now and then while nothing is delivered)."""
        now = self._clock()
        if self.enabled and now - self._started >= self._delay and now - self._drawn_at >= 0.1:
            self._draw(self.line(now))

    def line(self, now: float | None = None, *, final: bool = False) -> str:
        """The text of the bar at time `now`."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed  # bytes sent, not bytes the receiver already held
        covered = self.done + self.skipped
        parts = [format_size(covered)]
        if self.total:
            parts[0] += f" / {format_size(self.total)}"
            percent = 100 if final else min(99, 100 * covered // self.total)
            parts.append(f"{percent:3d}%")
        parts.append(format_rate(rate))
        if final:
            parts.append(f"in {format_eta(elapsed)}")
        elif self.total and covered >= self.total:
            parts.append(self.finishing)
        elif self.total and rate > 0:
            # nothing acknowledged for much longer than the rest should take: the last chunks
            # are being completed (an S3 upload's last parts are acknowledged only then)
            left = (self.total - covered) / rate
            idle = now - self._updated_at
            overdue = idle > left + 1.0
            parts.append(self.finishing if overdue else f"ETA {format_eta(left)}")
        if self.skipped:
            parts.append(f"({format_size(self.skipped)} already there)")
        return "  ".join(parts)

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(60))
        self.stream.flush()
        self._drawn_at = self._clock()
        self._shown = True

    def close(self, *, completed: bool = False) -> None:
        """End the line, if anything was drawn; after a completed copy, at 100%."""
        if self._shown:
            if completed:
                self._draw(self.line(final=True))
            self.stream.write("\n")
            self.stream.flush()
