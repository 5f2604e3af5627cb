"""The shared harness of the benchmarks in this folder: data, cases, interleaved rounds,
evaluation against goals, machine info, child processes, and the report (Markdown + JSON).

A benchmark builds `Case` objects (a timed `run`, an untimed `prepare`, `verify` and
`cleanup`), hands them to `run_rounds` (every case once per round, in a shuffled order, after
uncounted warm-up rounds, so that noise from other tenants of the machine hits all of them
alike), then judges `Row`s with `evaluate` and prints them with `markdown_table`.  A ratio is a
case's median throughput divided by its baseline's (higher is better for the case); goals are
judged on it, and the ratio of the fastest rounds is shown beside it: on a shared machine the
fastest round is the one least disturbed by others.

Throughput is always MiB/s (2**20 bytes per second) of snapshot data.
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
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

from fstransport import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Network,
    TransferOptions,
    TransferReport,
)
from fstransport.bench.plan import NEAR_BEST
from fstransport.errors import ConfigurationError
from fstransport.units import format_size, parse_size

__all__ = [
    "NEAR_BEST",
    "Case",
    "ChildProcess",
    "DelayedNetwork",
    "GiB",
    "KiB",
    "MiB",
    "PeakRss",
    "Row",
    "add_common_arguments",
    "check_file",
    "check_report",
    "check_stream",
    "evaluate",
    "machine_info",
    "make_data",
    "make_parser",
    "markdown_table",
    "moto_process",
    "non_negative_int",
    "positive_int",
    "publish",
    "remove_file",
    "run_rounds",
    "s3_client",
    "size_arg",
    "size_list",
    "sync_disk",
    "workspace",
    "write_file",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
DEFAULT_SEED = 20240601


# -- data and files ----------------------------------------------------------------------------


def make_data(size: int, seed: int) -> bytes:
    """`size` pseudo-random bytes from ``random.Random(seed)`` (built in 16 MiB pieces)."""
    rng = random.Random(seed)
    block = 16 * MiB  # randbytes(n) needs n * 8 bits to fit a C int
    pieces = [rng.randbytes(block) for _ in range(size // block)]
    pieces.append(rng.randbytes(size % block))
    return b"".join(pieces)


def write_file(path: str, size: int, seed: int) -> None:
    """`size` pseudo-random bytes, written 16 MiB at a time (never held whole in memory)."""
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        remaining = size
        while remaining:
            step = min(remaining, 16 * MiB)
            fh.write(rng.randbytes(step))
            remaining -= step
    sync_disk()


def check_file(path: str, expected: bytes) -> None:
    """Raise AssertionError unless the file at `path` holds exactly `expected`."""
    step = 8 * MiB
    with open(path, "rb") as fh:
        for offset in range(0, len(expected), step):
            if fh.read(step) != expected[offset : offset + step]:
                raise AssertionError(f"{path} differs from the source at [{offset}, +{step})")
        if fh.read(1):
            raise AssertionError(f"{path} is longer than the source")


def check_stream(name: str, body: IO[bytes], expected: bytes) -> None:
    """Raise AssertionError unless reading `body` to its end gives exactly `expected`."""
    step = 8 * MiB
    for offset in range(0, len(expected), step):
        if body.read(step) != expected[offset : offset + step]:
            raise AssertionError(f"{name} differs from the source at [{offset}, +{step})")
    if body.read(1):
        raise AssertionError(f"{name} is longer than the source")


def check_report(result: object, size: int, checksum: str) -> None:
    """Raise AssertionError unless `result` is a ship()'s report of `size` bytes, `checksum`."""
    if not isinstance(result, TransferReport):
        raise AssertionError(f"ship() returned {result!r}")
    if result.size != size or result.checksum != checksum:
        raise AssertionError(f"ship() reported {result.size} bytes, {result.checksum}")


def remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sync_disk() -> None:
    """Flush dirty pages so write-back from one contender does not land in another's timing."""
    if hasattr(os, "sync"):
        os.sync()


# -- cases and rounds --------------------------------------------------------------------------


@dataclass
class Case:
    """One contender: `run` is timed; `prepare`, `verify` and `cleanup` are not.

    `probes` are counters (CPU seconds of a process, say) read just before and just after
    `run`; the difference of each lands in ``metrics[name]`` for every counted round.
    """

    key: str
    label: str
    size: int
    run: Callable[[], object]
    verify: Callable[[object], None]
    prepare: Callable[[], None] = lambda: None
    cleanup: Callable[[], None] = lambda: None
    probes: dict[str, Callable[[], float]] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mibs(self) -> float:
        """Median throughput in MiB/s."""
        return self.size / self.median / MiB

    def mibs_range(self) -> tuple[float, float]:
        return self.size / max(self.samples) / MiB, self.size / min(self.samples) / MiB

    def metric_median(self, name: str) -> float:
        return statistics.median(self.metrics[name])

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size": self.size,
            "samples_s": self.samples,
            "median_s": self.median,
            "median_mibs": self.mibs,
            **self.metrics,
        }


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
            before = {name: probe() for name, probe in case.probes.items()}
            t0 = time.perf_counter()
            result = case.run()
            elapsed = time.perf_counter() - t0
            after = {name: probe() for name, probe in case.probes.items()}
            case.verify(result)
            del result
            case.cleanup()
            if index >= warmup:
                case.samples.append(elapsed)
                for name, value in after.items():
                    case.metrics.setdefault(name, []).append(value - before[name])
        kind = "warm-up" if index < warmup else f"round {index - warmup + 1}/{rounds}"
        print(f"  {title}: {kind} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)


class DelayedNetwork:
    """A `Network` that waits `delay` seconds before delivering each request (openraft 0.9's
    sender sleeps 1 ms after every chunk)."""

    def __init__(self, inner: Network, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        await asyncio.sleep(self.delay)
        return await self.inner.install_snapshot(req, option)


# -- goals and tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A line of a results table: a case, the baseline it is compared with, and its goal.

    A row with a baseline but no goal is a reference; `ratio_note` follows its ratio
    (" of ship()", say, when the baseline is the contender itself).
    """

    case: str
    baseline: str | None = None
    goal: str = ""
    goal_ratio: float | None = None
    goal_mibs: float | None = None
    ratio_note: str = ""


def evaluate(row: Row, cases: Mapping[str, Case]) -> dict[str, Any]:
    """The row's medians, spread, ratios to its baseline, goal verdict and metric medians."""
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
        "ratio_note": row.ratio_note,
        "goal": row.goal,
        "met": met,
        **{name: case.metric_median(name) for name in case.metrics},
    }


def markdown_table(
    title: str, results: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] = ()
) -> str:
    """A Markdown table of evaluated rows; `columns` adds (header, metric name) columns, shown
    with two decimals, before the goal."""
    extra_head = "".join(f" {header} |" for header, _ in columns)
    lines = [
        f"### {title}",
        "",
        "| contender | size | median s | median MiB/s | slowest-fastest MiB/s"
        f" | ratio of medians | ratio of bests |{extra_head} goal | met |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(columns) + "---|---|",
    ]
    for r in results:
        ratio = "baseline" if r["ratio"] is None else f"{r['ratio']:.2f}x{r['ratio_note']}"
        best = "" if r["best_ratio"] is None else f"{r['best_ratio']:.2f}x"
        met = {None: "", True: "yes", False: "**no**"}[r["met"]]
        extra = "".join(
            f" {r[name]:.2f} |" if r.get(name) is not None else " |" for _, name in columns
        )
        lines.append(
            f"| {r['label']} | {format_size(r['size'])} | {r['median_s']:.3f}"
            f" | {r['median_mibs']:,.0f} | {r['min_mibs']:,.0f}-{r['max_mibs']:,.0f}"
            f" | {ratio} | {best} |{extra} {r['goal']} | {met} |"
        )
    return "\n".join(lines)


# -- machine -----------------------------------------------------------------------------------


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info(*packages: str) -> dict[str, Any]:
    """CPU, Python, load and the versions of fsspec, fstransport, crc32c and `packages`."""
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
        **{name: _version(name) for name in ("fsspec", "fstransport", "crc32c", *packages)},
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# -- the report --------------------------------------------------------------------------------


@contextlib.contextmanager
def workspace(prefix: str, parent: str | None) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """A temporary folder (in `parent`, the system temp by default) and an event loop for one
    run; the loop is closed and the folder removed afterwards."""
    folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
    loop = asyncio.new_event_loop()
    try:
        yield folder, loop
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)


def publish(
    report: dict[str, Any],
    info: dict[str, Any],
    started: float,
    args: argparse.Namespace,
    title: str,
    details: str,
    tables: Sequence[str],
) -> None:
    """End a benchmark run: the run time and end load into `report`, a heading (`title`, the
    machine, `details` such as versions, size, rounds, start, load, run time) and the Markdown
    `tables` to stdout, and `report` as JSON to ``args.json`` if given."""
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    total = time.perf_counter() - started
    report["elapsed_s"] = total
    load = f", load {info['loadavg'][0]:.1f}" if info.get("loadavg") else ""
    warmup = f" (+{args.warmup} warm-up)" if hasattr(args, "warmup") else ""
    print(
        f"# {title}\n\n{info['nproc']} x {info['cpu']}, Python {info['python']}, {details}; "
        f"size {format_size(args.size)}, {args.rounds} rounds{warmup}; "
        f"throughput in MiB/s (2**20 B/s); started {info['started']}{load}; "
        f"run took {total:.0f} s.\n"
    )
    print("\n".join(tables))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)


# -- arguments ---------------------------------------------------------------------------------


def size_arg(text: str) -> int:
    """A size of at least 16 MiB (``256MiB``, ``2GiB``)."""
    try:
        size = parse_size(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 16 * MiB:
        raise argparse.ArgumentTypeError("use at least 16MiB")
    return size


def size_list(text: str) -> list[int]:
    """Comma-separated sizes (each `size_arg`), sorted, without repeats."""
    return sorted({size_arg(part) for part in text.split(",")})


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


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a benchmark's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    size: int,
    rounds: int,
    what: str = "snapshot size",
    size_type: Callable[[str], int] = size_arg,
    seed: int = DEFAULT_SEED,
    warmup: bool = True,
    folder: bool = True,
    check: bool = True,
) -> None:
    """The flags every benchmark shares: --size, --rounds, [--warmup], [--dir], --seed, --json,
    [--check]."""
    parser.add_argument(
        "--size", type=size_type, default=size, help=f"{what} ({format_size(size)})"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=rounds, help=f"counted rounds ({rounds})"
    )
    if warmup:
        parser.add_argument(
            "--warmup", type=non_negative_int, default=1, help="uncounted warm-up rounds (1)"
        )
    if folder:
        parser.add_argument(
            "--dir", help="parent folder of the temporary local files (system temp)"
        )
    parser.add_argument("--seed", type=int, default=seed, help="seed of the data and the order")
    parser.add_argument("--json", metavar="PATH", help="also write every sample and result here")
    if check:
        parser.add_argument("--check", action="store_true", help="exit with 1 if a goal is not met")


# the processes of a Ceph RGW on this machine (ci/ceph-rgw/start.sh), for --server-processes
CEPH_PROCESSES = "radosgw,ceph-osd,ceph-mon"


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The S3 server flags of the benchmarks that run on moto and on another endpoint:
    --endpoint-url, --endpoint-name, --server-processes and --no-moto (read by
    ``bench_rclone.endpoints``)."""
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="also an S3 endpoint such as Ceph RGW (keys from AWS_ACCESS_KEY_ID/SECRET)",
    )
    parser.add_argument(
        "--endpoint-name", default="RGW", help="what to call --endpoint-url in the tables (RGW)"
    )
    parser.add_argument(
        "--server-processes",
        default=CEPH_PROCESSES,
        metavar="NAMES",
        help="comma-separated command names of --endpoint-url's processes on this machine, whose"
        " CPU time becomes the 'server CPU s' column; '' for none (%(default)s)",
    )
    parser.add_argument("--no-moto", action="store_true", help="skip the moto server")


# -- child processes ---------------------------------------------------------------------------


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compare DIR`` and ``--pairs N`` (see `compare_trees`)."""
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="also run the source tree in DIR, process by process in turns (see the docstring)",
    )
    parser.add_argument(
        "--pairs", type=positive_int, default=4, help="processes per tree with --compare (4)"
    )


def compare_trees(
    script: str,
    other: Path,
    child_argv: Sequence[str],
    *,
    pairs: int,
    seed: int,
    json_path: str | None,
) -> int:
    """``--compare DIR``: `script` with `child_argv` (plus ``--json``) run against this tree's
    ``fstransport`` and DIR's, in fresh processes that take turns, `pairs` each, in a shuffled
    order per pair; every case's median over every counted round of every process is printed
    for both, with the ratio this/DIR.  The script and this harness are this tree's in both."""
    other = other.resolve()
    if not (other / "fstransport" / "__init__.py").exists():
        sys.exit(f"--compare {other}: no fstransport package in it")
    here = Path(script).resolve().parent.parent
    trees = {"this": here, other.name: other}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    sizes: dict[str, int] = {}
    labels: dict[str, str] = {}
    rng = random.Random(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fstransport-compare-") as folder:
        for name, tree in trees.items():  # PYTHONPATH must win over an installed package
            where = "import fstransport; print(fstransport.__file__)"
            env = {**os.environ, "PYTHONPATH": str(tree)}
            found = subprocess.run(
                [sys.executable, "-c", where], env=env, cwd=folder, capture_output=True, text=True
            ).stdout.strip()
            if not found.startswith(str(tree)):
                sys.exit(f"{name}: PYTHONPATH={tree} imports fstransport from {found!r}")
        for pair in range(pairs):
            order = list(trees)
            rng.shuffle(order)
            for name in order:
                out = Path(folder) / f"{name}-{pair}.json"
                env = {**os.environ, "PYTHONPATH": str(trees[name])}
                print(f"pair {pair + 1}/{pairs}: {name} ...", file=sys.stderr)
                command = [sys.executable, str(Path(script).resolve()), *child_argv]
                command += ["--json", str(out)]
                subprocess.run(command, env=env, cwd=folder, check=True, stdout=subprocess.DEVNULL)
                for key, case in json.loads(out.read_text())["cases"].items():
                    samples[name].setdefault(key, []).extend(case["samples_s"])
                    sizes[key], labels[key] = case["size"], case["label"]
    base = other.name
    lines = [
        f"### this tree vs {base}: {pairs} processes each; median MiB/s over every counted round",
        "",
        f"| case | this MiB/s | {base} MiB/s | this/{base} |",
        "|---|---:|---:|---:|",
    ]
    rows = []
    for key in samples["this"]:
        mine, theirs = (sizes[key] / MiB / statistics.median(samples[n][key]) for n in trees)
        rows.append({"case": key, "this_mibs": mine, "base_mibs": theirs, "ratio": mine / theirs})
        row = f"| `{key}`: {labels[key]} | {mine:.0f} | {theirs:.0f} | {mine / theirs:.2f} |"
        lines.append(row)
    print("\n".join(lines))
    print(f"\n({time.perf_counter() - started:.0f} s; {sys.executable})", file=sys.stderr)
    if json_path:
        report = {"machine": machine_info(), "base": str(other), "rows": rows, "samples": samples}
        Path(json_path).write_text(json.dumps(report, indent=1))
    return 0


def machine_idle_cpu() -> float:
    """Idle core-seconds of the whole machine so far (idle + iowait of /proc/stat): read before
    and after a run, the difference says how much CPU was left unused while it ran; near 0 the
    run was CPU-bound (by itself or by whatever else shares the machine)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = fh.readline().split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def processes_cpu(names: Sequence[str]) -> Callable[[], float]:
    """A probe: user + system CPU seconds of every process whose command name is in `names`
    (an external S3 server on this machine, say radosgw and ceph-osd); found when called."""

    def total() -> float:
        seconds = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/comm", encoding="utf-8") as fh:
                    if fh.read().strip() not in names:
                        continue
                seconds += _proc_stat_cpu(int(entry))
            except OSError:  # gone meanwhile
                continue
        return seconds

    return total


def _proc_stat_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
    raise KeyError(key)


class ChildProcess:
    """A server in a child process that prints one line once it listens; `address` is what
    `parse` makes of that line (it raises ValueError on any other line).

    `stop` closes the child's stdin first (``python -m fstransport.moto_server`` ends then),
    and terminates it if it has not ended after `stdin_grace` seconds.
    """

    def __init__(
        self,
        argv: Sequence[str],
        parse: Callable[[str], str],
        log: IO[Any] | int = subprocess.DEVNULL,
        *,
        timeout: float = 60.0,
        stdin_grace: float = 0.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.stdin_grace = stdin_grace
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=None if env is None else dict(env),
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        try:
            self.address = parse(line)
        except ValueError:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start (first line: {line!r})") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the child so far."""
        return _proc_stat_cpu(self.proc.pid)

    def rss(self) -> int:
        """The child's resident set now, in bytes."""
        return _proc_status_kib(self.proc.pid, "VmRSS") * KiB

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"a server process exited with {self.proc.returncode}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=self.stdin_grace)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _moto_address(line: str) -> str:
    host, port = line.split()  # ValueError unless "host port"
    return f"http://{host}:{port}"


@contextlib.contextmanager
def moto_process(log: IO[Any] | int = subprocess.DEVNULL) -> Iterator[ChildProcess]:
    """moto's S3 server in its own process (``python -m fstransport.moto_server``, 127.0.0.1, a
    free port), so that its CPU time is not the benchmark's; its endpoint is ``.address``."""
    moto = ChildProcess(
        [sys.executable, "-m", "fstransport.moto_server"], _moto_address, log, stdin_grace=15.0
    )
    try:
        yield moto
    finally:
        moto.stop()


def s3_client(
    endpoint_url: str, key: str, secret: str, region: str, *, check_reads: bool = True
) -> Any:
    """A boto3 S3 client for a benchmark's endpoint.  With ``check_reads=False`` it does not check
    the checksums S3 reports on reads: moto's CopyObject keeps a multipart source's CRC32 as if
    it were the whole object's, and every read of the copy would then fail it (the benchmarks
    compare the bytes with the source anyway)."""
    import boto3
    from botocore.config import Config

    config = None if check_reads else Config(response_checksum_validation="when_required")
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=config,
    )


class PeakRss:
    """Samples the peak resident set of process `pid` from outside, every `interval` s, while it
    lives: by default ``VmHWM`` (the kernel's own high-water mark of the process), or with
    ``field="VmRSS"`` the highest resident set seen (a cross-check of a peak the child reports)."""

    def __init__(self, pid: int, interval: float = 0.01, field: str = "VmHWM") -> None:
        self.pid = pid
        self.interval = interval
        self.field = field
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                hwm = _proc_status_kib(self.pid, self.field) * KiB
            except (OSError, KeyError, ValueError):
                return  # the process is gone (or a zombie without memory)
            self.peak = max(self.peak, hwm)
            time.sleep(self.interval)

    def stop(self) -> int:
        """Stop sampling; the highest peak seen, in bytes."""
        self._done.set()
        self._thread.join()
        return self.peak
