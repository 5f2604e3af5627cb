"""Start-up benchmark: what ``import fstransport`` and the CLI's quick answers cost.

Run from the repository root (one benchmark at a time)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_imports.py [--rounds 21]
        [--compare DIR] [--json out.json]

Each case is a fresh process, timed wall clock from spawn to exit:

- **baseline:** ``python -c pass`` — the interpreter's own start-up, which nothing can save;
- **import:** ``python -c "import fstransport"`` and ``python -c "import fstransport.protocol"``;
- **cli:** ``fstransport --version`` and ``fstransport --help`` (the console script of this
  interpreter's environment).

With ``--s3`` the start-up of the S3 stack is timed too (issue #13: the fixed cost in every
``fstransport ship`` that touches S3): ``python -c`` of ``import aiohttp``, ``import
aiobotocore.session``, ``import s3fs``, fstransport's S3 storage module, and an s3fs client
created (``S3FileSystem(...).connect()``: botocore's endpoint and service data loaded, an
aiobotocore client made; no request is sent).

With ``--compare DIR`` (a source tree of another commit, say ``git archive``'d into ``DIR``)
the import and CLI cases also run against that tree (``PYTHONPATH=DIR``) in the same rounds,
marked ``[DIR]``: a before/after comparison in one run.

Each round runs every case once in a shuffled order (after an uncounted warm-up round, so the
page cache holds the files).  Reported per case: the median wall time, the median less the
baseline's (what fstransport adds), the ratio to the baseline, and the median CPU seconds
(user + system of the child; on a loaded machine the steadier figure).  Goal (issue #12): the CLI
answers ``--version`` and ``--help`` in at most 0.15 s wall (rclone: 0.17 s on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

CLI_GOAL = 0.15
"""Seconds within which ``fstransport --version`` and ``--help`` must answer (wall)."""


Case = tuple[list[str], "dict[str, str] | None"]
"""A command and the environment to run it in (None: this process's)."""

RUN_CLI = "import sys; from fstransport.cli import main; sys.exit(main())"

S3_CLIENT = (
    "import s3fs; s3fs.S3FileSystem(endpoint_url='http://127.0.0.1:9', key='k', secret='s',"
    " skip_instance_cache=True).connect()"
)
S3_BACKEND = (  # storage/s3.py before issue #12's storage by backend, storage/backends/s3/ after
    "import importlib, importlib.util as u; importlib.import_module("
    "'fstransport.storage.backends.s3' if u.find_spec('fstransport.storage.backends')"
    " else 'fstransport.storage.s3')"
)
S3_CASES = {
    "import aiohttp": "import aiohttp",
    "import aiobotocore.session": "import aiobotocore.session",
    "import s3fs": "import s3fs",
    "import fstransport's S3 backend": S3_BACKEND,
    "s3fs client created (no request)": S3_CLIENT,
}
"""``--s3``: the S3 stack's start-up, by name."""


def cases(compare: Path | None, s3: bool = False) -> dict[str, Case]:
    """The commands to time, by name; the first is the baseline."""
    python = sys.executable
    cli = str(Path(python).with_name("fstransport"))
    if not Path(cli).exists():
        sys.exit(f"no fstransport console script beside {python}: pip install -e . first")
    found: dict[str, Case] = {
        "python -c pass": ([python, "-c", "pass"], None),
        "import fstransport": ([python, "-c", "import fstransport"], None),
        "import fstransport.protocol": ([python, "-c", "import fstransport.protocol"], None),
        "fstransport --version": ([cli, "--version"], None),
        "fstransport --help": ([cli, "--help"], None),
    }
    if s3:
        found.update({name: ([python, "-c", code], None) for name, code in S3_CASES.items()})
    if compare is not None:
        if not (compare / "fstransport" / "__init__.py").exists():
            sys.exit(f"--compare {compare}: no fstransport package in it")
        env = {**os.environ, "PYTHONPATH": str(compare.resolve())}
        tag = f"[{compare.name}]"
        found[f"import fstransport {tag}"] = ([python, "-c", "import fstransport"], env)
        found[f"import fstransport.protocol {tag}"] = (
            [python, "-c", "import fstransport.protocol"],
            env,
        )
        found[f"fstransport --version {tag}"] = ([python, "-c", RUN_CLI, "--version"], env)
        found[f"fstransport --help {tag}"] = ([python, "-c", RUN_CLI, "--help"], env)
    return found


NEUTRAL_DIR = tempfile.gettempdir()
"""Where the commands run: ``python -c`` puts its working directory first on ``sys.path``, so
from a source tree it would import that tree instead of the one being timed."""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(case: Case) -> tuple[float, float]:
    """Seconds from starting the command of `case` until it exited (it must succeed), and the
    CPU seconds it used."""
    command, env = case
    cpu = children_cpu()
    started = time.perf_counter()
    subprocess.run(
        command,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=NEUTRAL_DIR,
    )
    return time.perf_counter() - started, children_cpu() - cpu


def run(
    rounds: int, seed: int, compare: Path | None, s3: bool = False
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall times and CPU times per case, rounds interleaved in a shuffled order (one warm-up
    round first)."""
    commands = cases(compare, s3)
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    rng = random.Random(seed)
    for round_number in range(rounds + 1):
        order = list(commands)
        rng.shuffle(order)
        for name in order:
            elapsed, cpu = wall(commands[name])
            if round_number:  # round 0 warms the page cache
                times[name].append(elapsed)
                cpus[name].append(cpu)
    return times, cpus


def report(
    times: dict[str, list[float]], cpus: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    baseline_name = next(iter(times))
    baseline = statistics.median(times[baseline_name])
    rows: dict[str, dict[str, float]] = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        rows[name] = {
            "median_s": median,
            "added_s": median - baseline,
            "ratio": median / baseline,
            "min_s": min(samples),
            "max_s": max(samples),
            "cpu_s": statistics.median(cpus[name]),
        }
    return rows


def print_report(rows: dict[str, dict[str, float]], rounds: int) -> None:
    print(f"{rounds} rounds, medians (wall, s); python {platform.python_version()}")
    width = max(len(name) for name in rows)
    head = f"{'median':>8} {'+python':>8} {'ratio':>6} {'min':>7} {'max':>7} {'CPU':>6}"
    print(f"{'case':{width}} {head}")
    for name, row in rows.items():
        print(
            f"{name:{width}} {row['median_s']:8.3f} {row['added_s']:8.3f} {row['ratio']:5.2f}x"
            f" {row['min_s']:7.3f} {row['max_s']:7.3f} {row['cpu_s']:6.3f}"
        )
    for name in ("fstransport --version", "fstransport --help"):
        median = rows[name]["median_s"]
        verdict = "meets" if median <= CLI_GOAL else "misses"
        print(f"{name}: {median:.3f} s {verdict} the goal of <= {CLI_GOAL:.2f} s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=21, help="counted rounds (default 21)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    parser.add_argument("--compare", type=Path, help="also time the source tree in this folder")
    parser.add_argument("--s3", action="store_true", help="also time the S3 stack's start-up")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    times, cpus = run(args.rounds, args.seed, args.compare, args.s3)
    rows = report(times, cpus)
    print_report(rows, args.rounds)
    if args.json is not None:
        machine = {"python": platform.python_version(), "cpus": os.cpu_count()}
        document = {
            "rounds": args.rounds,
            "machine": machine,
            "cases": rows,
            "samples": times,
            "cpu_samples": cpus,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
