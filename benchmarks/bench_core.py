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

``--compare DIR`` (a source tree of another commit: ``git worktree add DIR TAG``) measures
this tree's ``fstransport`` against DIR's: both run these benchmarks (``--no-sweep``) in fresh
processes that take turns, ``--pairs`` each, in a shuffled order per pair; each case's median
over every counted round of every process is reported for both, with the ratio this/DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
from harness import (
    NEAR_BEST,
    Case,
    DelayedNetwork,
    KiB,
    MiB,
    Row,
    add_common_arguments,
    add_compare_arguments,
    check_file,
    check_report,
    compare_trees,
    evaluate,
    machine_info,
    make_data,
    make_parser,
    markdown_table,
    positive_int,
    publish,
    run_rounds,
    size_arg,
    sync_disk,
    workspace,
)

from fstransport import (
    FsspecSnapshotStore,
    LoopbackNetwork,
    Receiver,
    TransferOptions,
    TransferReport,
    ship,
)
from fstransport.checksum import chunk_crc, format_checksum

try:
    from fstransport.storage.backends.local import journal
except ModuleNotFoundError:  # a tree from before storage by backend (issue #12), for --compare
    journal = importlib.import_module("fstransport.storage.journal")
from fstransport.units import format_size

MEMORY_ROOT = "/fstransport-bench"
SWEEP_CHUNKS = (256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB)
SWEEP_WINDOWS = (1, 2, 4, 8)
OPENRAFT_CHUNK = 64 * KiB
OPENRAFT_DELAY = 0.001  # openraft 0.9 sleeps 1 ms after every chunk


# -- places ----------------------------------------------------------------------------------


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


# -- contenders --------------------------------------------------------------------------------


class Bench:
    """Builds the contenders over one event loop and one set of `Places`."""

    def __init__(self, places: Places, loop: asyncio.AbstractEventLoop) -> None:
        self.places = places
        self.loop = loop
        self.checksum = format_checksum(chunk_crc(places.data))
        self.serial_checksum = format_checksum(chunk_crc(places.serial_data))

    def _to_mem(
        self, key: str, label: str, run: Callable[[str], object], *, serial: bool = False
    ) -> Case:
        """... -> memory://<root>/out/<key>.bin: `run(path under the root)` is timed; a ship()'s
        report is checked too."""
        p = self.places
        name = f"out/{key.replace('/', '-')}.bin"
        data, checksum = (
            (p.serial_data, self.serial_checksum) if serial else (p.data, self.checksum)
        )

        def verify(result: object) -> None:
            if result is not None:
                check_report(result, len(data), checksum)
            p.check_mem(name, data)

        def remove() -> None:
            p.remove_mem(name)

        return Case(key, label, len(data), lambda: run(name), verify, remove, remove)

    def _to_local(self, key: str, label: str, run: Callable[[str], object]) -> Case:
        """... -> a local file: `run(target path)` is timed; a ship()'s report is checked too."""
        p = self.places
        name = f"{key.replace('/', '-')}.bin"

        def verify(result: object) -> None:
            if isinstance(result, TransferReport):
                check_report(result, len(p.data), self.checksum)
            p.check_local(name, p.data)

        def prepare() -> None:
            p.remove_local(name)
            sync_disk()

        return Case(
            key, label, len(p.data), lambda: run(p.local_path(name)), verify, prepare,
            lambda: p.remove_local(name),
        )  # fmt: skip

    def ship_mem_to_mem(self, key: str, label: str, options: TransferOptions) -> Case:
        p = self.places
        return self._to_mem(
            key,
            label,
            lambda name: self.loop.run_until_complete(
                ship(p.mem_url("src.bin"), p.mem_url(name), options=options)
            ),
        )

    def loop_mem_to_mem(self, key: str, label: str, chunk_size: int) -> Case:
        """The plainest copy: read the source in chunks, write each to a memory:// file."""
        p = self.places
        fs = p.memfs

        def run(name: str) -> None:
            with (
                fs.open(p.mem_path("src.bin"), "rb") as fin,
                fs.open(p.mem_path(name), "wb") as fout,
            ):
                while chunk := fin.read(chunk_size):
                    fout.write(chunk)

        return self._to_mem(key, label, run)

    def ship_to_local(
        self, key: str, label: str, source_url: str, options: TransferOptions
    ) -> Case:
        return self._to_local(
            key,
            label,
            lambda target: self.loop.run_until_complete(ship(source_url, target, options=options)),
        )

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
        source = self.places.local_path("src.bin")
        return self._to_local(key, label, lambda target: shutil.copyfile(source, target))

    def loop_file_to_file(self, key: str, label: str, chunk_size: int) -> Case:
        """The plainest chunked local copy: ``read`` a chunk of the source, ``write`` it out."""
        source = self.places.local_path("src.bin")

        def run(target: str) -> None:
            with open(source, "rb") as fin, open(target, "wb") as fout:
                while chunk := fin.read(chunk_size):
                    fout.write(chunk)

        return self._to_local(key, label, run)

    def ship_delayed(self, key: str, label: str, options: TransferOptions, delay: float) -> Case:
        """memory -> memory through a loopback network that sleeps `delay` before each chunk."""
        p = self.places
        store = FsspecSnapshotStore.from_filesystem(p.memfs, p.mem_path("out"))

        def run(name: str) -> object:
            network = DelayedNetwork(LoopbackNetwork(Receiver(store)), delay)
            return self.loop.run_until_complete(
                ship(p.mem_url("src-serial.bin"), p.mem_url(name), options=options, network=network)
            )

        return self._to_mem(key, label, run, serial=True)


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_common_arguments(parser, size=256 * MiB, rounds=5)
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
    add_compare_arguments(parser)
    parser.add_argument(
        "--journal",
        action="store_true",
        help="add to group 2 ship() with the journal rule before issue #11 (lines at once, no "
        "fdatasync) and with continuous commits, beside the default (group commits)",
    )
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


def _child_args(args: argparse.Namespace) -> list[str]:
    """The flags of one `compare_trees` process: these options, no sweep."""
    argv = ["--size", str(args.size), "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    argv += ["--serial-size", str(args.serial_size), "--seed", str(args.seed), "--no-sweep"]
    argv += [f"--only={n}" for n in args.only or ()]
    argv += ["--dir", args.dir] if args.dir else []
    argv += ["--journal"] if args.journal else []
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        child = _child_args(args)
        return compare_trees(
            __file__, args.compare, child, pairs=args.pairs, seed=args.seed, json_path=args.json
        )
    sweep_size: int = args.sweep_size or args.size
    rng = random.Random(args.seed)
    started = time.perf_counter()
    info = machine_info()
    print(f"generating {format_size(args.size)} of data (seed {args.seed}) ...", file=sys.stderr)
    data = make_data(max(args.size, sweep_size, args.serial_size), args.seed)
    report: dict[str, Any] = {"machine": info, "args": dict(vars(args))}
    out: list[str] = []
    with workspace("fstransport-bench-", args.dir) as (folder, loop):
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

    publish(
        report, info, started, args, "fstransport core benchmarks", f"fsspec {info['fsspec']}", out
    )
    met = [
        r["met"] for results in report["groups"].values() for r in results if r["met"] is not None
    ]
    return 1 if args.check and not all(met) else 0


if __name__ == "__main__":
    sys.exit(main())
