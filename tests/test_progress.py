"""The command line's progress bar: drawn on terminals only, after a moment, with rate and ETA."""

from __future__ import annotations

import io

from fstransport.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bar_shows_bytes_percent_rate_and_eta_on_a_terminal() -> None:
    clock, out = Clock(), Terminal()
    bar = ProgressBar(100 * 1024 * 1024, out, clock=clock)
    clock.now = 1.0
    bar.update(25 * 1024 * 1024)
    text = out.getvalue()
    assert "25.0 MiB / 100.0 MiB" in text
    assert " 25%" in text
    assert "25.0 MiB/s" in text
    assert "ETA 0:00:03" in text
    bar.close()
    assert out.getvalue().endswith("\n")


def test_bar_stays_quiet_for_quick_transfers_and_pipes() -> None:
    clock, out = Clock(), Terminal()
    bar = ProgressBar(10, out, clock=clock)
    clock.now = 0.1  # quicker than the delay
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""
    piped = io.StringIO()
    bar = ProgressBar(10, piped, clock=clock)
    clock.now = 5.0
    bar.update(5)
    bar.close()
    assert piped.getvalue() == ""


def test_bar_without_a_total_shows_bytes_and_rate() -> None:
    clock = Clock()
    bar = ProgressBar(None, Terminal(), clock=clock)
    bar.update(3 * 1024 * 1024)
    assert bar.line(now=1.0) == "3.0 MiB  3.0 MiB/s"
