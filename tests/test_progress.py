"""The command line's progress bar: drawn on terminals only, after a moment, with rate and ETA."""

from __future__ import annotations

import io
from pathlib import Path

from fstransport import (
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    LoopbackNetwork,
    Receiver,
    SnapshotMeta,
    TransferOptions,
    ship,
)
from fstransport.progress import ProgressBar, format_eta
from fstransport.transfer import DEFAULT_VOTE
from tests.conftest import payload


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
    assert "ETA 3s" in text
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


def test_eta_is_short_and_never_a_misleading_zero() -> None:
    assert format_eta(0.0) == "<1s"
    assert format_eta(0.4) == "<1s"
    assert format_eta(42.2) == "42s"
    assert format_eta(185) == "3m05s"
    assert format_eta(7384) == "2:03:04"


def test_resumed_bytes_count_towards_percent_but_not_rate() -> None:
    clock = Clock()
    bar = ProgressBar(100 * 1024 * 1024, Terminal(), clock=clock)
    bar.skip(60 * 1024 * 1024)
    bar.update(20 * 1024 * 1024)
    line = bar.line(now=2.0)
    assert "80.0 MiB / 100.0 MiB   80%" in line
    assert "10.0 MiB/s" in line  # 20 MiB sent in 2 s; the 60 MiB already there are not a rate
    assert "ETA 2s" in line
    assert "(60.0 MiB already there)" in line


def test_finishing_phase_then_100_percent_on_close() -> None:
    clock, out = Clock(), Terminal()
    bar = ProgressBar(10 * 1024 * 1024, out, clock=clock, finishing="completing upload…")
    clock.now = 1.0
    bar.update(10 * 1024 * 1024)
    assert " 99%" in out.getvalue()
    assert "completing upload…" in out.getvalue()
    assert "ETA" not in out.getvalue()
    clock.now = 3.0
    bar.close(completed=True)
    last = out.getvalue().rstrip("\n").rsplit("\r", 1)[-1]
    assert "100%" in last
    assert "in 3s" in last
    assert out.getvalue().endswith("\n")


def test_a_long_overdue_estimate_turns_into_the_finishing_phase() -> None:
    """The last acknowledgements of an S3 upload arrive only once it is completed: while the
    estimate has long run out, the bar says so instead of a frozen ETA."""
    clock = Clock()
    bar = ProgressBar(10 * 1024 * 1024, Terminal(), clock=clock, finishing="completing upload…")
    clock.now = 1.0
    bar.update(9 * 1024 * 1024)  # 9 MiB/s: 1 MiB left is about 0.1 s
    assert bar.line(now=1.05).endswith("ETA <1s")
    assert bar.line(now=3.0).endswith("completing upload…")


class Recorder:
    """A progress callback with ``skip``: what was acknowledged, apart from what was held."""

    def __init__(self) -> None:
        self.done = self.skipped = 0

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes

    def skip(self, nbytes: int) -> None:
        self.skipped += nbytes


async def _half_received(root: Path, data: bytes, chunk: int) -> Receiver:
    """A receiver whose transfer of ``snap.bin`` got the first half of `data`, then stopped."""
    store = FsspecSnapshotStore(str(root))
    receiver = Receiver(store)
    meta = SnapshotMeta("snap.bin", size=len(data))
    for at in range(0, len(data) // 2, chunk):
        piece = data[at : at + chunk]
        await receiver.handle(InstallSnapshotRequest(DEFAULT_VOTE, meta, at, piece, False))
    return receiver


async def test_progress_is_told_held_bytes_apart_from_sent_ones(tmp_path: Path) -> None:
    chunk, data = 64 * 1024, payload(1024 * 1024, seed=31)
    (tmp_path / "src.bin").write_bytes(data)
    receiver = await _half_received(tmp_path / "root", data, chunk)
    seen = Recorder()
    report = await ship(
        str(tmp_path / "src.bin"),
        "snap.bin",
        network=LoopbackNetwork(receiver),
        options=TransferOptions(chunk_size=chunk, delta="off"),
        progress=seen,
    )
    # (the first chunk crosses again: the answer to it is what says the rest is held)
    assert seen.skipped == report.bytes_skipped == len(data) // 2 - chunk
    assert seen.done == len(data) - seen.skipped
    assert (tmp_path / "root" / "snap.bin").read_bytes() == data


async def test_a_fan_out_tells_held_bytes_only_as_far_as_every_target_has_them(
    tmp_path: Path,
) -> None:
    chunk, data = 64 * 1024, payload(1024 * 1024, seed=32)
    (tmp_path / "src.bin").write_bytes(data)
    halfway = await _half_received(tmp_path / "a", data, chunk)
    fresh = Receiver(FsspecSnapshotStore(str(tmp_path / "b")))
    seen = Recorder()
    await ship(
        str(tmp_path / "src.bin"),
        ["snap.bin", "snap.bin"],
        network=[LoopbackNetwork(halfway), LoopbackNetwork(fresh)],
        options=TransferOptions(chunk_size=chunk, delta="off"),
        progress=seen,
    )
    # (b needed every byte, but a, finishing last, may be told what it held once b is done)
    assert seen.skipped + seen.done == len(data)
    assert seen.skipped <= len(data) // 2 - chunk
    both = [await _half_received(tmp_path / r, data, chunk) for r in ("c", "d")]
    seen = Recorder()
    await ship(
        str(tmp_path / "src.bin"),
        ["snap.bin", "snap.bin"],
        network=[LoopbackNetwork(r) for r in both],
        options=TransferOptions(chunk_size=chunk, delta="off"),
        progress=seen,
    )
    held = len(data) // 2 - chunk
    assert (seen.skipped, seen.done) == (held, len(data) - held)
    for root in "abcd":
        assert (tmp_path / root / "snap.bin").read_bytes() == data
