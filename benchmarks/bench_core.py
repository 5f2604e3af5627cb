"""Core benchmarks: `ship()` against the plainest copy with the same I/O pattern.

Run from the repository root::

    python benchmarks/bench_core.py [--size 256MiB] [--rounds 5] [--json out.json]

Everything runs in one process.  The contenders of one comparison (a group) are interleaved round
by round: each round runs every contender of the group once, in a shuffled order, so that noise
from other tenants of the machine hits all of them alike; groups run one after the other, so that
one group's memory churn does not land on another group's timings.  A warm-up round (not counted)
touches the memory and the page cache first.  Each copy is checked byte for byte against the
source after its timed region, so a fast but wrong copy cannot count.

Throughput is always MiB/s (2**20 bytes per second) of snapshot data.  A ratio is the contender's
median throughput divided by its baseline's (higher is better for the contender); goals are
judged on it.  The ratio of the fastest rounds is printed beside it: on a shared machine the
fastest round is the one least disturbed by others.  The tables are printed as Markdown;
``--json`` also writes every sample.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

from fstransport import (
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LoopbackNetwork,
    Network,
    Receiver,
    TransferOptions,
    TransferReport,
    ship,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.errors import ConfigurationError
from fstransport.storage import journal
from fstransport.units import format_size, parse_size

KiB = 1024
MiB = 1024 * KiB

MEMORY_ROOT = "/fstransport-bench"
SWEEP_CHUNKS = (256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB)
SWEEP_WINDOWS = (1, 2, 4, 8)
OPENRAFT_CHUNK = 64 * KiB
OPENRAFT_DELAY = 0.001  # openraft 0.9 sleeps 1 ms after every chunk
NEAR_BEST = 0.05  # sweep settings within 5 % of the best score are reported as ties


# -- data and places ---------------------------------------------------------------------------


def make_data(size: int, seed: int) -> bytes:
    """`size` pseudo-random bytes from ``random.Random(seed)`` (built in 16 MiB pieces)."""
    rng = random.Random(seed)
    block = 16 * MiB  # randbytes(n) needs n * 8 bits to fit a C int
    pieces = [rng.randbytes(block) for _ in range(size // block)]
    pieces.append(rng.randbytes(size % block))
    return b"".join(pieces)


def check_file(path: str, expected: bytes) -> None:
    """Raise AssertionError unless the file at `path` holds exactly `expected`."""
    step = 8 * MiB
    with open(path, "rb") as fh:
        for offset in range(0, len(expected), step):
            if fh.read(step) != expected[offset : offset + step]:
                raise AssertionError(f"{path} differs from the source at [{offset}, +{step})")
        if fh.read(1):
            raise AssertionError(f"{path} is longer than the source")


class Places:
    """The source copies of the data and the targets the contenders write to."""

    def __init__(self, data: bytes, serial_data: bytes, folder: str) -> None:
        self.data = data
        self.serial_data = serial_data
        self.folder = folder
        self.memfs: MemoryFileSystem = fsspec.filesystem("memory")
        self.memfs.pipe_file(self.mem_path("src.bin"), data)
        self.memfs.pipe_file(self.mem_path("src-serial.bin"), serial_data)
        with open(self.local_path("src.bin"), "wb") as fh:
            fh.write(data)
        sync_disk()

    def mem_path(self, name: str) -> str:
        return f"{MEMORY_ROOT}/{name}"

    def mem_url(self, name: str) -> str:
        return f"memory://{self.mem_path(name)}"

    def local_path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def remove_mem(self, name: str) -> None:
        self.memfs.store.pop(self.mem_path(name), None)

    def remove_local(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.local_path(name))

    def check_mem(self, name: str, expected: bytes) -> None:
        held = self.memfs.store.get(self.mem_path(name))
        if held is None or held.getvalue() != expected:
            raise AssertionError(f"memory://{self.mem_path(name)} does not hold the source's bytes")

    def check_local(self, name: str, expected: bytes) -> None:
        check_file(self.local_path(name), expected)

    def close(self) -> None:
        for key in [k for k in self.memfs.store if k.startswith(MEMORY_ROOT + "/")]:
            del self.memfs.store[key]


def sync_disk() -> None:
    """Flush dirty pages so write-back from one contender does not land in another's timing."""
    if hasattr(os, "sync"):
        os.sync()


# -- contenders --------------------------------------------------------------------------------


@dataclass
class Case:
    """One contender: `run` is timed; `prepare`, `verify` and `cleanup` are not."""

    key: str
    label: str
    size: int
    run: Callable[[], object]
    verify: Callable[[object], None]
    prepare: Callable[[], None] = lambda: None
    cleanup: Callable[[], None] = lambda: None
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mibs(self) -> float:
        """Median throughput in MiB/s."""
        return self.size / self.median / MiB

    def mibs_range(self) -> tuple[float, float]:
        return self.size / max(self.samples) / MiB, self.size / min(self.samples) / MiB

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size": self.size,
            "samples_s": self.samples,
            "median_s": self.median,
            "median_mibs": self.mibs,
        }


class DelayedNetwork:
    """A `Network` that waits `delay` seconds before delivering each request (openraft's sleep)."""

    def __init__(self, inner: Network, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        await asyncio.sleep(self.delay)
        return await self.inner.install_snapshot(req, option)


class Bench:
    """Builds the contenders over one event loop and one set of `Places`."""

    def __init__(self, places: Places, loop: asyncio.AbstractEventLoop) -> None:
        self.places = places
        self.loop = loop
        self.checksum = format_checksum(chunk_crc(places.data))
        self.serial_checksum = format_checksum(chunk_crc(places.serial_data))

    def _check_report(self, result: object, expected: bytes, checksum: str) -> None:
        if not isinstance(result, TransferReport):
            raise AssertionError(f"ship() returned {result!r}")
        if result.size != len(expected) or result.checksum != checksum:
            raise AssertionError(f"ship() reported {result.size} bytes, {result.checksum}")

    def ship_mem_to_mem(self, key: str, label: str, options: TransferOptions) -> Case:
        p = self.places
        name = f"{key.replace('/', '-')}.bin"

        def run() -> object:
            return self.loop.run_until_complete(
                ship(p.mem_url("src.bin"), p.mem_url(f"out/{name}"), options=options)
            )

        def verify(result: object) -> None:
            self._check_report(result, p.data, self.checksum)
            p.check_mem(f"out/{name}", p.data)

        def remove() -> None:
            p.remove_mem(f"out/{name}")

        return Case(key, label, len(p.data), run, verify, remove, remove)

    def loop_mem_to_mem(self, key: str, label: str, chunk_size: int) -> Case:
        """The plainest copy: read the source in chunks, write each to a memory:// file."""
        p = self.places
        src, dst = p.mem_path("src.bin"), p.mem_path(f"out/{key.replace('/', '-')}.bin")
        fs = p.memfs

        def run() -> object:
            with fs.open(src, "rb") as fin, fs.open(dst, "wb") as fout:
                while chunk := fin.read(chunk_size):
                    fout.write(chunk)
            return None

        def verify(_: object) -> None:
            p.check_mem(dst.removeprefix(MEMORY_ROOT + "/"), p.data)

        def remove() -> None:
            fs.store.pop(dst, None)

        return Case(key, label, len(p.data), run, verify, remove, remove)

    def ship_to_local(
        self, key: str, label: str, source_url: str, options: TransferOptions
    ) -> Case:
        p = self.places
        name = f"{key.replace('/', '-')}.bin"
        target = p.local_path(name)

        def run() -> object:
            return self.loop.run_until_complete(ship(source_url, target, options=options))

        def verify(result: object) -> None:
            self._check_report(result, p.data, self.checksum)
            p.check_local(name, p.data)

        def prepare() -> None:
            p.remove_local(name)
            sync_disk()

        return Case(key, label, len(p.data), run, verify, prepare, lambda: p.remove_local(name))

    def ship_to_local_with(
        self,
        key: str,
        label: str,
        source_url: str,
        options: TransferOptions,
        variant: Callable[[], contextlib.AbstractContextManager[object]],
    ) -> Case:
        """`ship_to_local` with `variant` in force while it runs (another journal commit rule)."""
        case = self.ship_to_local(key, label, source_url, options)
        plain = case.run

        def run() -> object:
            with variant():
                return plain()

        case.run = run
        return case

    def copyfile(self, key: str, label: str) -> Case:
        p = self.places
        name = f"{key.replace('/', '-')}.bin"

        def run() -> object:
            return shutil.copyfile(p.local_path("src.bin"), p.local_path(name))

        def verify(_: object) -> None:
            p.check_local(name, p.data)

        def prepare() -> None:
            p.remove_local(name)
            sync_disk()

        return Case(key, label, len(p.data), run, verify, prepare, lambda: p.remove_local(name))

    def loop_file_to_file(self, key: str, label: str, chunk_size: int) -> Case:
        """The plainest chunked local copy: ``read`` a chunk of the source, ``write`` it out."""
        p = self.places
        name = f"{key.replace('/', '-')}.bin"

        def run() -> object:
            with open(p.local_path("src.bin"), "rb") as fin, open(p.local_path(name), "wb") as fout:
                while chunk := fin.read(chunk_size):
                    fout.write(chunk)
            return None

        def verify(_: object) -> None:
            p.check_local(name, p.data)

        def prepare() -> None:
            p.remove_local(name)
            sync_disk()

        return Case(key, label, len(p.data), run, verify, prepare, lambda: p.remove_local(name))

    def ship_delayed(self, key: str, label: str, options: TransferOptions, delay: float) -> Case:
        """memory -> memory through a loopback network that sleeps `delay` before each chunk."""
        p = self.places
        name = f"{key.replace('/', '-')}.bin"
        store = FsspecSnapshotStore.from_filesystem(p.memfs, p.mem_path("out"))

        def run() -> object:
            network = DelayedNetwork(LoopbackNetwork(Receiver(store)), delay)
            return self.loop.run_until_complete(
                ship(
                    p.mem_url("src-serial.bin"),
                    p.mem_url(f"out/{name}"),
                    options=options,
                    network=network,
                )
            )

        def verify(result: object) -> None:
            self._check_report(result, p.serial_data, self.serial_checksum)
            p.check_mem(f"out/{name}", p.serial_data)

        def remove() -> None:
            p.remove_mem(f"out/{name}")

        return Case(key, label, len(p.serial_data), run, verify, remove, remove)


@contextlib.contextmanager
def journal_lines_at_once() -> Iterator[object]:
    """The journal rule before issue #11: each chunk's line written right after its data, with
    no ``fdatasync`` (a line could reach the disk before its data)."""
    original = journal.LocalJournal.append

    def append(self: journal.LocalJournal, offset: int, length: int, crc: int) -> None:
        os.write(self._fd, f"{offset} {length} {crc}\n".encode())

    journal.LocalJournal.append = append  # type: ignore[method-assign]
    try:
        yield None
    finally:
        journal.LocalJournal.append = original  # type: ignore[method-assign]


@contextlib.contextmanager
def journal_commits_continuously() -> Iterator[object]:
    """Group commits back to back (no quiet time, no interval): about one ``fdatasync`` per
    chunk, the strictest rule short of making every chunk wait for its sync."""
    saved = journal.SYNC_INTERVAL, journal.QUIET_COMMIT
    journal.SYNC_INTERVAL = journal.QUIET_COMMIT = 0.0
    try:
        yield None
    finally:
        journal.SYNC_INTERVAL, journal.QUIET_COMMIT = saved


def run_rounds(
    cases: Sequence[Case], rounds: int, warmup: int, rng: random.Random, title: str
) -> None:
    """Run every case once per round, in a shuffled order; keep the samples after `warmup`."""
    for index in range(warmup + rounds):
        order = list(cases)
        rng.shuffle(order)
        started = time.perf_counter()
        for case in order:
            case.prepare()
            gc.collect()
            t0 = time.perf_counter()
            result = case.run()
            elapsed = time.perf_counter() - t0
            case.verify(result)
            del result
            case.cleanup()
            if index >= warmup:
                case.samples.append(elapsed)
        kind = "warm-up" if index < warmup else f"round {index - warmup + 1}/{rounds}"
        print(f"  {title}: {kind} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)


# -- goals and tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A line of a results table: a case, the baseline it is compared with, and its goal."""

    case: str
    baseline: str | None = None
    goal: str = ""
    goal_ratio: float | None = None
    goal_mibs: float | None = None


def evaluate(row: Row, cases: dict[str, Case]) -> dict[str, Any]:
    case = cases[row.case]
    low, high = case.mibs_range()
    ratio = best_ratio = None
    if row.baseline is not None:
        base = cases[row.baseline]
        ratio = case.mibs / base.mibs
        best_ratio = high / base.mibs_range()[1]
    met: bool | None = None
    if row.goal_ratio is not None and ratio is not None:
        met = ratio >= row.goal_ratio
    elif row.goal_mibs is not None:
        met = case.mibs >= row.goal_mibs
    return {
        "case": row.case,
        "label": case.label,
        "size": case.size,
        "median_s": case.median,
        "median_mibs": case.mibs,
        "min_mibs": low,
        "max_mibs": high,
        "baseline": row.baseline,
        "ratio": ratio,
        "best_ratio": best_ratio,
        "goal": row.goal,
        "met": met,
    }


def markdown_table(title: str, results: list[dict[str, Any]]) -> str:
    lines = [
        f"### {title}",
        "",
        "| contender | size | median s | median MiB/s | slowest-fastest MiB/s"
        " | ratio of medians | ratio of bests | goal | met |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        ratio = "baseline" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        best = "" if r["best_ratio"] is None else f"{r['best_ratio']:.2f}x"
        met = {None: "", True: "yes", False: "**no**"}[r["met"]]
        lines.append(
            f"| {r['label']} | {format_size(r['size'])} | {r['median_s']:.3f}"
            f" | {r['median_mibs']:,.0f} | {r['min_mibs']:,.0f}-{r['max_mibs']:,.0f}"
            f" | {ratio} | {best} | {r['goal']} | {met} |"
        )
    return "\n".join(lines)


# -- the sweep ---------------------------------------------------------------------------------


def sweep_key(route: str, chunk: int, window: int) -> str:
    return f"sweep/{route}/{chunk // KiB}k/w{window}"


Setting = tuple[int, int]  # (chunk_size, max_in_flight)


def _fastest(case: Case) -> float:
    return case.mibs_range()[1]


def _median(case: Case) -> float:
    return case.mibs


def sweep_scores(
    cases: dict[str, Case], routes: Sequence[str], stat: Callable[[Case], float]
) -> dict[Setting, float]:
    """Mean over routes of a setting's throughput (by `stat`) divided by the route's best."""
    best = {
        route: max(stat(cases[sweep_key(route, c, w)]) for c in SWEEP_CHUNKS for w in SWEEP_WINDOWS)
        for route in routes
    }
    return {
        (c, w): statistics.fmean(stat(cases[sweep_key(r, c, w)]) / best[r] for r in routes)
        for c in SWEEP_CHUNKS
        for w in SWEEP_WINDOWS
    }


def _grid(title: str, cell: Callable[[int, int], str]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| chunk \\ window | " + " | ".join(str(w) for w in SWEEP_WINDOWS) + " |",
        "|---:|" + "---:|" * len(SWEEP_WINDOWS),
    ]
    for chunk in SWEEP_CHUNKS:
        cells = " | ".join(cell(chunk, w) for w in SWEEP_WINDOWS)
        lines.append(f"| {format_size(chunk)} | {cells} |")
    return [*lines, ""]


def _setting(setting: Setting) -> str:
    chunk, window = setting
    return f"{format_size(chunk)} x {window}"


def sweep_tables(cases: dict[str, Case], routes: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """One table per route (chunk sizes down, windows across), the scores and the best setting.

    A setting's score is the mean over routes of its throughput divided by the route's best
    throughput (1.0: best on every route), once from the medians and once from the fastest
    rounds.  Other tenants of a shared machine only ever slow a round down, so the fastest
    round is the least disturbed; the medians say what a typical run gets.
    """
    out: list[str] = []
    for route in routes:

        def speeds(chunk: int, window: int, route: str = route) -> str:
            case = cases[sweep_key(route, chunk, window)]
            return f"{_median(case):,.0f} / {_fastest(case):,.0f}"

        out += _grid(f"Sweep: {route} (MiB/s, median / fastest round)", speeds)
    by_median = sweep_scores(cases, routes, _median)
    by_fastest = sweep_scores(cases, routes, _fastest)
    out += _grid(
        "Sweep: score (mean over routes of throughput / the route's best; median / fastest)",
        lambda c, w: f"{by_median[(c, w)]:.2f} / {by_fastest[(c, w)]:.2f}",
    )
    best_median = max(by_median, key=by_median.__getitem__)
    best_fastest = max(by_fastest, key=by_fastest.__getitem__)
    near = [
        s
        for s in sorted(by_median, key=lambda s: by_median[s] + by_fastest[s], reverse=True)
        if by_median[s] >= by_median[best_median] * (1 - NEAR_BEST)
        and by_fastest[s] >= by_fastest[best_fastest] * (1 - NEAR_BEST)
    ]
    defaults = TransferOptions()
    default: Setting = (defaults.chunk_size, defaults.max_in_flight)
    out += [
        f"Best by medians: {_setting(best_median)} (score {by_median[best_median]:.2f}).",
        f"Best by fastest rounds: {_setting(best_fastest)} (score {by_fastest[best_fastest]:.2f}).",
        f"Within {NEAR_BEST:.0%} of the best by both: "
        + (", ".join(_setting(s) for s in near) or "none")
        + ".",
    ]
    if default in by_median:
        out.append(
            f"Current default {_setting(default)}: score {by_median[default]:.2f} by medians, "
            f"{by_fastest[default]:.2f} by fastest rounds."
        )

    def listing(scores: dict[Setting, float]) -> list[dict[str, Any]]:
        ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
        return [{"chunk_size": c, "max_in_flight": w, "score": v} for (c, w), v in ranked]

    summary = {
        "best_by_median": {"chunk_size": best_median[0], "max_in_flight": best_median[1]},
        "best_by_fastest": {"chunk_size": best_fastest[0], "max_in_flight": best_fastest[1]},
        "near_best_by_both": [{"chunk_size": c, "max_in_flight": w} for c, w in near],
        "scores_by_median": listing(by_median),
        "scores_by_fastest": listing(by_fastest),
    }
    return "\n".join(out), summary


# -- machine -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "fsspec": version("fsspec"),
        "fstransport": version("fstransport"),
        "crc32c": version("crc32c"),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# -- main --------------------------------------------------------------------------------------


def publish(
    report: dict[str, Any],
    info: dict[str, Any],
    started: float,
    heading: Callable[[float], str],
    tables: Sequence[str],
    json_path: str | None,
) -> None:
    """End a benchmark run: the run time and end load into `report`, `heading(run seconds)`
    and the Markdown `tables` to stdout, and `report` as JSON to `json_path` if given."""
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    total = time.perf_counter() - started
    report["elapsed_s"] = total
    print(heading(total))
    print("\n".join(tables))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)


def size_arg(text: str) -> int:
    try:
        size = parse_size(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 16 * MiB:
        raise argparse.ArgumentTypeError("use at least 16MiB")
    return size


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=size_arg, default=256 * MiB, help="snapshot size (256MiB)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="counted rounds (5)")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=1, help="uncounted warm-up rounds (1)"
    )
    parser.add_argument(
        "--serial-size",
        type=size_arg,
        default=32 * MiB,
        help="size for the 1 ms-per-chunk cases (32MiB)",
    )
    parser.add_argument("--sweep-size", type=size_arg, help="size for the sweep (default: --size)")
    parser.add_argument(
        "--sweep-rounds", type=positive_int, help="counted sweep rounds (default: --rounds)"
    )
    parser.add_argument(
        "--no-sweep", action="store_true", help="skip the chunk size x window sweep"
    )
    parser.add_argument(
        "--only",
        type=positive_int,
        action="append",
        metavar="N",
        help="run only group N (1-3; repeat for several); the sweep still runs unless --no-sweep",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="add to group 2 ship() with the journal rule before issue #11 (lines at once, no "
        "fdatasync) and with continuous commits, beside the default (group commits)",
    )
    parser.add_argument("--dir", help="parent folder of the temporary local files (system temp)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the data and the order")
    parser.add_argument("--json", metavar="PATH", help="also write every sample and result here")
    parser.add_argument("--check", action="store_true", help="exit with 1 if a goal is not met")
    return parser.parse_args(argv)


@dataclass
class Group:
    """Contenders compared with each other: they are interleaved round by round."""

    title: str
    cases: list[Case]
    rows: list[Row]


def journal_cases(bench: Bench) -> tuple[list[Case], list[Row]]:
    """`--journal`: ship() file -> file, 8 MiB chunks, under other journal commit rules."""
    chunk8 = TransferOptions(chunk_size=8 * MiB)
    src = bench.places.local_path("src.bin")
    cases = [
        bench.ship_to_local_with(
            "file/ship-8m-lines-at-once",
            "ship(), 8 MiB chunks, journal lines at once, no fdatasync (before #11)",
            src,
            chunk8,
            journal_lines_at_once,
        ),
        bench.ship_to_local_with(
            "file/ship-8m-continuous-sync",
            "ship(), 8 MiB chunks, journal commits back to back (fdatasync each)",
            src,
            chunk8,
            journal_commits_continuously,
        ),
    ]
    rows = [
        Row("file/ship-8m-lines-at-once", "file/copyfile", ">= 0.8x", goal_ratio=0.8),
        Row("file/ship-8m-continuous-sync", "file/copyfile", ">= 0.8x", goal_ratio=0.8),
        Row("file/ship-8m", "file/ship-8m-lines-at-once"),
    ]
    return cases, rows


def main_groups(bench: Bench, *, journal_variants: bool = False) -> list[Group]:
    """The contenders of goals 1-3 and how they are reported (`journal_variants`: see
    `journal_cases`)."""
    defaults = TransferOptions()
    d_label = f"{format_size(defaults.chunk_size)} x {defaults.max_in_flight}"
    chunk8 = TransferOptions(chunk_size=8 * MiB)
    chunk64k = TransferOptions(chunk_size=64 * KiB)
    openraft = TransferOptions(chunk_size=OPENRAFT_CHUNK, max_in_flight=1)
    w = defaults.max_in_flight
    local_src = bench.places.local_path("src.bin")
    extra_cases, extra_rows = journal_cases(bench) if journal_variants else ([], [])
    return [
        Group(
            "1. memory:// -> memory://, 8 MiB chunks",
            [
                bench.loop_mem_to_mem("mem/loop-8m", "read/write loop, 8 MiB chunks", 8 * MiB),
                bench.ship_mem_to_mem("mem/ship-8m", f"ship(), 8 MiB chunks, window {w}", chunk8),
            ],
            [
                Row("mem/loop-8m"),
                Row("mem/ship-8m", "mem/loop-8m", ">= 0.9x", goal_ratio=0.9),
            ],
        ),
        Group(
            "2. local file -> local file (same disk)",
            [
                bench.copyfile("file/copyfile", "shutil.copyfile"),
                bench.loop_file_to_file("file/loop-8m", "read/write loop, 8 MiB chunks", 8 * MiB),
                bench.ship_to_local(
                    "file/ship-default", f"ship(), default options ({d_label})", local_src, defaults
                ),
                bench.ship_to_local(
                    "file/ship-8m", f"ship(), 8 MiB chunks, window {w}", local_src, chunk8
                ),
                *extra_cases,
            ],
            [
                Row("file/copyfile"),
                Row("file/loop-8m", "file/copyfile"),
                Row("file/ship-default", "file/copyfile", ">= 0.8x", goal_ratio=0.8),
                Row("file/ship-8m", "file/copyfile", ">= 0.8x", goal_ratio=0.8),
                *extra_rows,
            ],
        ),
        Group(
            "3. memory:// -> memory://, 64 KiB chunks",
            [
                bench.loop_mem_to_mem("mem/loop-64k", "read/write loop, 64 KiB chunks", 64 * KiB),
                bench.ship_mem_to_mem(
                    "mem/ship-64k", f"ship(), 64 KiB chunks, window {w}", chunk64k
                ),
                bench.ship_delayed(
                    "serial/openraft",
                    "openraft-style: 64 KiB, window 1, 1 ms sleep per chunk",
                    openraft,
                    OPENRAFT_DELAY,
                ),
                bench.ship_delayed(
                    "serial/ship-64k-delay",
                    f"ship(), 64 KiB, window {w}, 1 ms delay per chunk",
                    chunk64k,
                    OPENRAFT_DELAY,
                ),
            ],
            [
                Row("mem/loop-64k"),
                Row("mem/ship-64k", "mem/loop-64k", ">= 300 MiB/s", goal_mibs=300.0),
                Row("serial/openraft"),
                Row("serial/ship-64k-delay", "serial/openraft"),
            ],
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sweep_size: int = args.sweep_size or args.size
    rng = random.Random(args.seed)
    started = time.perf_counter()
    info = machine_info()
    print(f"generating {format_size(args.size)} of data (seed {args.seed}) ...", file=sys.stderr)
    data = make_data(max(args.size, sweep_size, args.serial_size), args.seed)
    folder = tempfile.mkdtemp(prefix="fstransport-bench-", dir=args.dir)
    loop = asyncio.new_event_loop()
    report: dict[str, Any] = {"machine": info, "args": dict(vars(args))}
    out: list[str] = []
    try:
        places = Places(data[: args.size], data[: args.serial_size], folder)
        bench = Bench(places, loop)
        report["cases"] = {}
        report["groups"] = {}
        for number, group in enumerate(main_groups(bench, journal_variants=args.journal), 1):
            if args.only and number not in args.only:
                continue
            run_rounds(group.cases, args.rounds, args.warmup, rng, group.title)
            by_key = {c.key: c for c in group.cases}
            report["cases"].update({c.key: c.to_dict() for c in group.cases})
            results = [evaluate(row, by_key) for row in group.rows]
            report["groups"][group.title] = results
            out += [markdown_table(group.title, results), ""]
        places.close()

        if not args.no_sweep:
            places = Places(data[:sweep_size], data[: args.serial_size], folder)
            bench = Bench(places, loop)
            routes = {
                "memory:// -> file": places.mem_url("src.bin"),
                "file -> file": places.local_path("src.bin"),
            }
            sweep = [
                bench.ship_to_local(
                    sweep_key(route, c, w),
                    f"{route}: {format_size(c)} x {w}",
                    source,
                    TransferOptions(chunk_size=c, max_in_flight=w),
                )
                for route, source in routes.items()
                for c in SWEEP_CHUNKS
                for w in SWEEP_WINDOWS
            ]
            run_rounds(sweep, args.sweep_rounds or args.rounds, args.warmup, rng, "4. sweep")
            by_key = {c.key: c for c in sweep}
            text, summary = sweep_tables(by_key, list(routes))
            report["sweep"] = {
                "size": sweep_size,
                **summary,
                "cases": {c.key: c.to_dict() for c in sweep},
            }
            out += [text, ""]
            places.close()
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)

    publish(
        report,
        info,
        started,
        lambda total: (
            f"# fstransport core benchmarks\n\n{info['nproc']} x {info['cpu']}, "
            f"Python {info['python']}, fsspec {info['fsspec']}; "
            f"size {format_size(args.size)}, {args.rounds} rounds (+{args.warmup} warm-up); "
            f"throughput in MiB/s (2**20 B/s); run took {total:.0f} s.\n"
        ),
        out,
        args.json,
    )
    met = [
        r["met"] for results in report["groups"].values() for r in results if r["met"] is not None
    ]
    return 1 if args.check and not all(met) else 0


if __name__ == "__main__":
    sys.exit(main())
