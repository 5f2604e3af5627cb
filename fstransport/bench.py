"""`fstransport bench`: which chunk size and window suit a given source, target and link?

`run_bench(plan)` ships one generated snapshot from a source to a target once per cell of a
sweep (chunk sizes x windows), through `ship()` exactly as users call it, and measures each
copy: wall time, chunks per second and the peak memory the copy added to this process.  A
simulated link (`BenchPlan.latency` round trip, `BenchPlan.bandwidth`) puts a `FaultyNetwork`
between sender and receiver.  `BenchResult` prints the table, names the best setting, writes
JSON, and `plot_result` draws throughput against chunk size, one line per window.

Endpoints are kinds, not URLs: ``memory`` (``memory://``), ``file`` (a temporary folder) and
``s3`` (an embedded moto server in a child process, or a given bucket and endpoint).  Every
copy is checked (size and whole CRC32C) and removed before the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import fsspec

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.errors import ConfigurationError, FstransportError, StorageError
from fstransport.network.faults import FaultyNetwork
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import TransferOptions
from fstransport.receiver import Receiver
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage._errors import storage_errors
from fstransport.storage.s3 import open_s3
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import TransferReport, ship
from fstransport.units import format_size

__all__ = [
    "DEFAULT_CHUNK_SIZES",
    "DEFAULT_WINDOWS",
    "BenchCell",
    "BenchError",
    "BenchPlan",
    "BenchResult",
    "check_output",
    "plot_result",
    "run_bench",
    "write_json",
]

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
"""`BenchResult.lightest` is the setting with the least memory within this share of the best."""


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


# -- memory ------------------------------------------------------------------------------------


def _proc_status(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def _reset_peak() -> bool:
    """Reset this process's peak resident size (Linux ``clear_refs``); False if impossible.

    Memory freed earlier is handed back to the system first (``malloc_trim``), or the next copy
    would reuse it without raising the peak and look free."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _peak_memory(out: list[int]) -> Iterator[None]:
    """Append the peak resident memory the block added above what was resident before it."""
    if not _reset_peak():
        yield
        return
    before = _proc_status("VmRSS")
    if before is None:
        yield
        return
    yield
    peak = _proc_status("VmHWM")
    if peak is not None:
        out.append(max(0, peak - before))


# -- endpoints ---------------------------------------------------------------------------------


@dataclass
class _Endpoints:
    """Where the source lies and the targets go, and the storage options to reach them."""

    plan: BenchPlan
    run_id: str
    workdir: str | None = None
    s3_options: dict[str, Any] = field(default_factory=dict)
    s3_prefix: str = ""

    def url(self, kind: Kind, name: str) -> str:
        if kind == "memory":
            return f"memory://fstransport-bench-{self.run_id}/{name}"
        if kind == "file":
            assert self.workdir is not None
            return os.path.join(self.workdir, name)
        return f"{self.s3_prefix}/{name}"

    def options(self, kind: Kind) -> dict[str, Any]:
        return dict(self.s3_options) if kind == "s3" else {}


@contextlib.asynccontextmanager
async def _endpoints(plan: BenchPlan) -> AsyncIterator[_Endpoints]:
    ends = _Endpoints(plan, run_id=uuid.uuid4().hex[:8])
    kinds = {plan.source, plan.target}
    with contextlib.ExitStack() as stack:
        if "file" in kinds:
            ends.workdir = tempfile.mkdtemp(prefix="fstransport-bench-", dir=plan.directory)
            stack.callback(shutil.rmtree, ends.workdir, True)
        if "memory" in kinds:
            memory = fsspec.filesystem("memory")
            root = f"/fstransport-bench-{ends.run_id}"
            stack.callback(lambda: memory.rm(root, recursive=True) if memory.exists(root) else None)
        if "s3" not in kinds:
            yield ends
            return
        await _setup_s3(plan, ends, stack)
        try:
            yield ends
        finally:
            await _remove_s3_prefix(ends)


async def _setup_s3(plan: BenchPlan, ends: _Endpoints, stack: contextlib.ExitStack) -> None:
    if plan.bucket is None:
        from fstransport.moto_server import moto_process, storage_options_for

        endpoint = await asyncio.to_thread(stack.enter_context, moto_process())
        ends.s3_options = storage_options_for(endpoint)
        bucket = "fstransport-bench"
        await _s3_call(ends, f"s3://{bucket}", "create", "create_bucket", Bucket=bucket)
    else:
        bucket = plan.bucket
        if plan.endpoint_url:
            ends.s3_options = {"client_kwargs": {"endpoint_url": plan.endpoint_url}}
    ends.s3_prefix = f"s3://{bucket}/fstransport-bench-{ends.run_id}"


async def _s3_call(
    ends: _Endpoints, subject: str, verb: str, method: str, *args: Any, **kw: Any
) -> None:
    """``S3FileSystem.<method>`` (``_call_s3`` for an S3 API call) on a client of its own."""
    s3 = await open_s3(ends.s3_options)
    try:
        with storage_errors(subject, verb):
            if method.startswith("_"):
                await getattr(s3, method)(*args, **kw)
            else:
                await s3._call_s3(method, *args, **kw)
    finally:
        await close_async_filesystem(s3)


async def _remove_s3_prefix(ends: _Endpoints) -> None:
    """Remove every object and incomplete multipart upload under the run's prefix."""
    path = ends.s3_prefix.removeprefix("s3://")
    with contextlib.suppress(StorageError):
        async with FsspecSnapshotStore(ends.s3_prefix, **ends.s3_options) as store:
            await store.cleanup(older_than=0)
    with contextlib.suppress(StorageError):
        await _s3_call(ends, ends.s3_prefix, "remove", "_rm", path, recursive=True)


async def _write_source(ends: _Endpoints, data: bytes) -> str:
    kind = ends.plan.source
    url = ends.url(kind, "source.bin")
    if kind == "s3":
        await _s3_call(ends, url, "write", "_pipe_file", url.removeprefix("s3://"), data)
        return url
    with storage_errors(url, "write"):
        fs, path = fsspec.core.url_to_fs(url)
        await asyncio.to_thread(fs.pipe_file, path, data)
    return url


async def _remove(url: str, ends: _Endpoints) -> None:
    if url.startswith("s3://"):
        await _s3_call(ends, url, "remove", "_rm_file", url.removeprefix("s3://"))
        return
    with storage_errors(url, "remove"):
        fs, path = fsspec.core.url_to_fs(url)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(fs.rm_file, path)


# -- the sweep ---------------------------------------------------------------------------------


async def _copy(
    plan: BenchPlan, ends: _Endpoints, source: str, options: TransferOptions
) -> tuple[TransferReport, str]:
    """One copy of the source through `ship()`; returns (report, target url)."""
    target = ends.url(plan.target, f"target-{options.chunk_size}-{options.max_in_flight}.bin")
    target_options = ends.options(plan.target)
    source_options = ends.options(plan.source)
    if not plan.simulated_link:
        report = await ship(
            source,
            target,
            options=options,
            source_options=source_options,
            target_options=target_options,
        )
        return report, target
    folder, _, _ = target.rpartition("/")
    async with FsspecSnapshotStore(folder, **target_options) as store:
        # Latency and bandwidth never alter a request: the receiver may trust the chunk CRCs as
        # it does in-process, so the link is the only difference from the copy above.
        inner = LoopbackNetwork(Receiver(store), trust_checksums=True)
        network = FaultyNetwork(inner, latency=plan.latency / 2, bandwidth=plan.bandwidth)
        try:
            report = await ship(
                source, target, options=options, network=network, source_options=source_options
            )
        except BaseException:
            # ship() with a network leaves the receiver's side to the receiver: this one's
            # partial data (an S3 multipart upload, say) goes with the failed copy.
            with contextlib.suppress(Exception):
                await store.abort(target.rpartition("/")[2])
            raise
    return report, target


def _check(report: TransferReport, size: int, checksum: str) -> None:
    if report.size != size or report.checksum != checksum:
        raise BenchError(
            f"the copy to {report.target} came out wrong: {report.size} bytes, "
            f"{report.checksum} (expected {size} bytes, {checksum})"
        )


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "argv": sys.argv,
    }


def _generate(size: int, seed: int) -> bytes:
    """`size` pseudo-random bytes (in 16 MiB pieces: ``randbytes`` takes at most 256 MiB)."""
    rng = random.Random(seed)
    step = 16 * MiB
    return b"".join(rng.randbytes(min(step, size - at)) for at in range(0, size, step))


Progress = Callable[[int, int, BenchCell, float], None]


async def run_bench(plan: BenchPlan, progress: Progress | None = None) -> BenchResult:
    """Run the sweep in `plan`; `progress(done, total, cell, seconds)` after each copy.

    Each round runs every cell once, in a shuffled order (so that a disturbance on a shared
    machine spreads over the settings instead of hitting one), after one uncounted warm-up copy
    (the first touch of fresh memory is slow).  Only ``ship()`` is timed; the copy is then
    checked and removed.  Raises `BenchError` if a copy is wrong, `ConfigurationError` or
    `StorageError` if an endpoint is unusable.
    """
    started = time.perf_counter()
    size = plan.snapshot_size
    data = _generate(size, plan.seed)
    checksum = format_checksum(chunk_crc(data))
    cells = [BenchCell(c, w, size) for c, w in plan.cells()]
    notes = []
    if any(chunk_size >= size for chunk_size in plan.chunk_sizes):
        notes.append(
            f"chunk sizes of {format_size(size)} and more are one chunk: only the smallest ran, "
            "at window 1"
        )
    order = random.Random(plan.seed)
    async with _endpoints(plan) as ends:
        source = await _write_source(ends, data)
        del data
        warmup = TransferOptions(chunk_size=min(8 * MiB, max(cells[0].chunk_size, 64 * KiB)))
        report, target = await _copy(plan, ends, source, warmup)
        _check(report, size, checksum)
        await _remove(target, ends)
        total, done = len(cells) * plan.rounds, 0
        for _ in range(plan.rounds):
            for cell in order.sample(cells, len(cells)):
                options = TransferOptions(chunk_size=cell.chunk_size, max_in_flight=cell.window)
                with _peak_memory(cell.peak_memory):
                    began = time.perf_counter()
                    report, target = await _copy(plan, ends, source, options)
                    seconds = time.perf_counter() - began
                _check(report, size, checksum)
                await _remove(target, ends)
                cell.seconds.append(seconds)
                done += 1
                if progress is not None:
                    progress(done, total, cell, seconds)
    if not any(c.peak_memory for c in cells):
        notes.append("peak memory needs Linux /proc/self/clear_refs; not measured here")
    if plan.target == "memory":
        notes.append("peak memory includes the memory:// copy itself")
    return BenchResult(plan, cells, time.perf_counter() - started, _machine(), notes)


def check_output(path: str, option: str) -> None:
    """Refuse an output path whose folder does not exist, before minutes of measuring."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or os.path.isdir(path):
        raise ConfigurationError(f"cannot write {option} {path!r}: no such folder, or a folder")


def write_json(result: BenchResult, path: str) -> None:
    with storage_errors(path, "write"), open(path, "w", encoding="utf-8") as fh:
        json.dump(result.to_dict(), fh, indent=2)
        fh.write("\n")


def plot_result(result: BenchResult, path: str) -> None:
    """Throughput against chunk size (log scale), one line per window, as a PNG at `path`.

    Needs matplotlib (``pip install "fstransport[plot]"``); raises `ConfigurationError`
    without it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as exc:
        raise ConfigurationError(
            'plotting needs matplotlib: pip install "fstransport[plot]"'
        ) from exc
    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=100)
    try:
        for window in sorted({c.window for c in result.cells}):
            row = sorted(
                (c for c in result.cells if c.window == window), key=lambda c: c.chunk_size
            )
            axes.plot(
                [c.chunk_size for c in row],
                [c.throughput / MiB for c in row],
                marker="o",
                label=f"window {window}",
            )
        best = result.best()
        axes.scatter(
            [best.chunk_size],
            [best.throughput / MiB],
            s=200,
            facecolors="none",
            edgecolors="black",
            zorder=3,
            label="best",
        )
        axes.set_xscale("log", base=2)
        ticks = sorted({c.chunk_size for c in result.cells})
        axes.set_xticks(ticks, [format_size(t).replace(".0 ", " ") for t in ticks])
        axes.set_xlabel("chunk size")
        axes.set_ylabel("MiB/s (median)")
        bound = result.plan.bound_seconds()
        if bound is not None:
            axes.axhline(
                result.plan.snapshot_size / bound / MiB,
                color="grey",
                linestyle="--",
                label="bandwidth-delay limit",
            )
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.set_title(f"fstransport bench\n{result.describe()}", fontsize=9)
        axes.legend(fontsize=8)
        figure.tight_layout()
        with storage_errors(path, "write"):
            figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
