"""How long ``fstransport --version`` and ``--help`` take, against ``python -c pass``.

Run from the repository root (needs ``pip install -e .``)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_cli_startup.py [--rounds 15]

Each round runs every command once, in turn (interleaved, so that a busy moment of the machine
falls on all of them); the table gives each command's median wall time and its ratio to
``python -c pass`` in the same run.  The installed entry point is used, as a user runs it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    exe = shutil.which("fstransport", path=str(Path(sys.executable).parent))
    if exe is None:
        print("the fstransport command is not installed: pip install -e .", file=sys.stderr)
        return 1
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "fstransport --version": [exe, "--version"],
        "fstransport --help": [exe, "--help"],
        "fstransport ship --help": [exe, "ship", "--help"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():  # warm the file cache once
        _wall(command)
    for _ in range(args.rounds):
        for name, command in commands.items():
            samples[name].append(_wall(command))
    base = statistics.median(samples["python -c pass"])
    print(f"{args.rounds} interleaved rounds, median wall time\n")
    print("| command | median | min | vs python -c pass |")
    print("|---|---:|---:|---:|")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"| `{name}` | {median:.3f} s | {min(times):.3f} s | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
