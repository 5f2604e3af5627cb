"""What a benchmark sweeps (`BenchPlan`), what it measured (`BenchCell`), and the verdict
(`BenchResult`: the table, the best and the lightest-near-best setting, the JSON document)."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fstransport.errors import ConfigurationError, FstransportError
from fstransport.options import TransferOptions
from fstransport.units import format_size

KiB = 1024
MiB = 1024 * KiB
Kind = Literal["memory", "file", "s3"]
KINDS: tuple[Kind, ...] = ("memory", "file", "s3")
DEFAULT_CHUNK_SIZES = (64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 64 * MiB)
DEFAULT_WINDOWS = (1, 2, 4, 8, 16, 32)
DEFAULT_SIZE = 64 * MiB
DEFAULT_LINK_SIZE = 32 * MiB
"""Over a simulated link the small chunks pay a round trip each: a smaller default snapshot
keeps the default sweep under a minute."""
NEAR_BEST = 0.10
"""Settings within this share of the best throughput count as ties: `BenchResult.lightest` picks
the one with the least memory among them, and ``benchmarks/bench_core.py``'s sweep lists them.
10 %, not 5 %: on a shared 2-core machine one setting's score moves by more than 5 % between runs
(the default's sweep score was 0.82 in one run, 0.95 in the next; docs/benchmarks.md), so a
narrower band would name a winner that noise picked."""


class BenchError(FstransportError):
    """A benchmark copy came out wrong (size or checksum), so its timing cannot count."""


@dataclass(frozen=True)
class BenchPlan:
    """What to sweep.  `latency` is the simulated round trip in seconds (each direction gets
    half), `bandwidth` the simulated link's bytes per second (None: no link is simulated)."""

    source: Kind = "memory"
    target: Kind = "memory"
    size: int | None = None
    chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES
    windows: tuple[int, ...] = DEFAULT_WINDOWS
    rounds: int = 1
    latency: float = 0.0
    bandwidth: float | None = None
    directory: str | None = None
    endpoint_url: str | None = None
    bucket: str | None = None
    seed: int = 20261126

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            if getattr(self, name) not in KINDS:
                raise ConfigurationError(
                    f"{name} must be one of {', '.join(KINDS)}, got {getattr(self, name)!r}"
                )
        if self.size is not None and self.size <= 0:
            raise ConfigurationError(f"size must be > 0, got {self.size}")
        if not self.chunk_sizes or not self.windows:
            raise ConfigurationError("the sweep needs at least one chunk size and one window")
        for chunk_size in self.chunk_sizes:
            TransferOptions(chunk_size=chunk_size)  # its own checks, its own message
        for window in self.windows:
            TransferOptions(max_in_flight=window)
        if self.rounds < 1:
            raise ConfigurationError(f"rounds must be >= 1, got {self.rounds}")
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ConfigurationError(f"latency must be >= 0 seconds, got {self.latency!r}")
        if self.bandwidth is not None and not (
            math.isfinite(self.bandwidth) and self.bandwidth > 0
        ):
            raise ConfigurationError(f"bandwidth must be > 0 bytes/s, got {self.bandwidth!r}")
        if self.endpoint_url is not None and self.bucket is None:
            raise ConfigurationError("an S3 endpoint URL needs a bucket (--bucket) to write in")
        if "s3" not in (self.source, self.target) and (self.endpoint_url or self.bucket):
            raise ConfigurationError("--endpoint-url and --bucket apply to an s3 source or target")
        if self.directory is not None and not os.path.isdir(self.directory):
            raise ConfigurationError(f"--dir {self.directory!r} is not an existing folder")

    @property
    def simulated_link(self) -> bool:
        return self.latency > 0 or self.bandwidth is not None

    @property
    def snapshot_size(self) -> int:
        if self.size is not None:
            return self.size
        return DEFAULT_LINK_SIZE if self.simulated_link else DEFAULT_SIZE

    def cells(self) -> list[tuple[int, int]]:
        """(chunk size, window) pairs to run.  Chunk sizes at or above the snapshot's size are
        all one chunk, the same copy whatever the window: only the smallest runs, window 1."""
        size = self.snapshot_size
        sizes = sorted(set(self.chunk_sizes))
        windows = sorted(set(self.windows))
        cells = [(c, w) for c in sizes if c < size for w in windows]
        whole = [c for c in sizes if c >= size][:1]
        return cells + [(c, 1) for c in whole]

    def bound_seconds(self) -> float | None:
        """The bandwidth-delay limit of a copy over the simulated link: every byte through
        the link once, plus one round trip (None without a bandwidth)."""
        if self.bandwidth is None:
            return None
        return self.snapshot_size / self.bandwidth + self.latency


@dataclass
class BenchCell:
    """The measurements of one setting: wall seconds and peak added memory per round."""

    chunk_size: int
    window: int
    size: int
    seconds: list[float] = field(default_factory=list)
    peak_memory: list[int] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def throughput(self) -> float:
        """Bytes per second, from the median round."""
        return self.size / self.median_seconds

    @property
    def chunks_per_second(self) -> float:
        return math.ceil(self.size / self.chunk_size) / self.median_seconds

    @property
    def memory(self) -> int | None:
        """The largest peak memory any round added, in bytes (None where not measurable)."""
        return max(self.peak_memory) if self.peak_memory else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "median_seconds": self.median_seconds,
            "throughput": self.throughput,
            "chunks_per_second": self.chunks_per_second,
            "memory": self.memory,
        }


@dataclass
class BenchResult:
    plan: BenchPlan
    cells: list[BenchCell]
    elapsed: float
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def best(self) -> BenchCell:
        """The setting with the highest median throughput."""
        return max(self.cells, key=lambda c: c.throughput)

    def lightest(self, within: float = NEAR_BEST) -> BenchCell:
        """Of the settings within `within` of the best throughput, the one that holds the least
        data in flight (chunk size x window), then the fastest of those."""
        floor = self.best().throughput * (1 - within)
        near = [c for c in self.cells if c.throughput >= floor]
        return min(near, key=lambda c: (c.chunk_size * c.window, -c.throughput))

    def to_dict(self) -> dict[str, Any]:
        best, light = self.best(), self.lightest()
        return {
            "plan": {**asdict(self.plan), "snapshot_size": self.plan.snapshot_size},
            "machine": self.machine,
            "elapsed": self.elapsed,
            "bound_seconds": self.plan.bound_seconds(),
            "best": {"chunk_size": best.chunk_size, "window": best.window},
            "lightest_near_best": {"chunk_size": light.chunk_size, "window": light.window},
            "notes": self.notes,
            "cells": [c.to_dict() for c in self.cells],
        }

    def describe(self) -> str:
        plan = self.plan
        link = ""
        if plan.simulated_link:
            speed = f"{plan.bandwidth * 8 / 1e6:g} Mbit/s" if plan.bandwidth else "unlimited"
            link = f" over a simulated link ({plan.latency * 1000:g} ms round trip, {speed})"
        rounds = f"{plan.rounds} round{'s' if plan.rounds > 1 else ''}"
        return (
            f"{plan.source} -> {plan.target}{link}, {format_size(plan.snapshot_size)} snapshot, "
            f"median of {rounds}"
        )

    def table(self) -> str:
        """The results as a Markdown table, then the best setting."""
        best, light = self.best(), self.lightest()
        lines = [
            self.describe(),
            "",
            "| chunk size | window | MiB/s | chunks/s | peak memory |",
            "|---:|---:|---:|---:|---:|",
        ]
        for cell in self.cells:
            mark = " **best**" if cell is best else ""
            memory = format_size(cell.memory) if cell.memory is not None else "n/a"
            lines.append(
                f"| {format_size(cell.chunk_size)} | {cell.window} | "
                f"{cell.throughput / MiB:,.1f}{mark} | {cell.chunks_per_second:,.0f} | {memory} |"
            )
        lines.append("")
        lines.append(
            f"best: --chunk-size {_flag_size(best.chunk_size)} --window {best.window} "
            f"({best.throughput / MiB:,.1f} MiB/s)"
        )
        if light is not best:
            lines.append(
                f"lightest within {NEAR_BEST:.0%} of it: --chunk-size "
                f"{_flag_size(light.chunk_size)} --window {light.window} "
                f"({light.throughput / MiB:,.1f} MiB/s, "
                f"{format_size(light.chunk_size * light.window)} in flight)"
            )
        bound = self.plan.bound_seconds()
        if bound is not None:
            lines.append(
                f"bandwidth-delay limit: {self.plan.snapshot_size / bound / MiB:,.1f} MiB/s "
                f"(best reaches {best.throughput * bound / self.plan.snapshot_size:.0%} of it)"
            )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _flag_size(size: int) -> str:
    """A size as the CLI takes it back: ``8MiB``, ``64KiB``, or bytes."""
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", KiB)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
