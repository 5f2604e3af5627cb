"""The whole benchmark suite in one run on one machine, into one report.

Run from the repository root (needs ``pip install -e ".[dev]"``)::

    python benchmarks/suite.py [--size 256MiB] [--rounds 5] [--out bench-results]

It runs, one after the other so that none disturbs another:

- ``bench_core.py``: `ship()` against the plainest copy with the same I/O pattern (memory,
  local), ``shutil.copyfile``, and the openraft-style serial sender;
- ``bench_s3.py``: `ship()` against boto3's TransferManager and s3fs on a moto server in its
  own process, and the peak memory of shipping a large file into S3;
- ``bench_http.py``: `ship()` through a receiver server process on loopback against the same
  copy in-process;
- ``bench_link.py``: the pipelined sender against the bandwidth-delay limit and the serial
  sender over simulated links;
- ``bench_rclone.py`` (when ``rclone`` is on PATH): ``fstransport ship`` against ``rclone
  copyto`` on moto, command line to command line, and the peak memory of S3 -> file ships;
- ``fstransport bench`` sweeps (chunk size x window) with their plots: memory → local file,
  local file → S3, and memory → memory over a simulated 10 ms, 1 Gbit/s link.

Each part's Markdown goes to ``OUT/<part>.md``, its samples to ``OUT/<part>.json``, the plots to
``OUT/sweep-*.png``, and ``OUT/report.md`` strings them together with the machine and the
commands.  A part that fails is reported and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness import machine_info, make_parser, positive_int

HERE = Path(__file__).resolve().parent
PARTS = ("core", "s3", "http", "link", "rclone", "sweeps")
SWEEPS = {
    "sweep-memory-local": ["--source", "memory", "--target", "local"],
    "sweep-local-s3": ["--source", "local", "--target", "s3"],
    "sweep-link-10ms-1gbit": ["--latency", "10ms", "--bandwidth", "1Gbit"],
}


def commands(args: argparse.Namespace, out: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every run of the selected parts."""
    python = sys.executable
    sized = ["--size", args.size, "--rounds", str(args.rounds)]
    runs: list[tuple[str, list[str]]] = []
    for part in args.parts:
        if part in ("core", "s3", "http", "rclone"):
            script = str(HERE / f"bench_{part}.py")
            runs.append((part, [python, script, *sized, "--json", str(out / f"{part}.json")]))
        elif part == "link":
            script = str(HERE / "bench_link.py")
            rounds = str(max(1, min(args.rounds, 3)))  # a serial round takes ~6 s at 1 Gbit/s
            argv = [python, script, "--size", args.size, "--rounds", rounds]
            runs.append((part, [*argv, "--json", str(out / "link.json")]))
        else:
            for name, extra in SWEEPS.items():
                argv = [python, "-m", "fstransport.cli", "bench", *extra, "--rounds", "3"]
                argv += ["--json", str(out / f"{name}.json"), "--plot", str(out / f"{name}.png")]
                runs.append((name, argv))
    return runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--size", default="256MiB", help="snapshot size of the comparisons")
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds of the comparisons")
    parser.add_argument("--out", default="bench-results", help="folder for the results")
    parser.add_argument(
        "--parts",
        type=lambda text: [p.strip() for p in text.split(",")],
        default=[p for p in PARTS if p != "rclone" or shutil.which("rclone")],
        help=f"comma-separated, of {','.join(PARTS)} (default: all; rclone if on PATH)",
    )
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    report = [
        "# fstransport benchmark suite",
        "",
        f"- machine: {info['platform']}, {info['nproc']} x {info['cpu']}, Python {info['python']}",
        f"- started: {info['started']}, load average "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg'] or ())}",
        f"- command: `python benchmarks/suite.py {shlex.join(argv or sys.argv[1:])}`",
        "",
    ]
    failed = []
    for name, run in commands(args, out):
        print(f"== {name}: {shlex.join(run)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        with open(out / f"{name}.md", "w", encoding="utf-8") as stdout:
            code = subprocess.run(run, stdout=stdout, check=False, cwd=HERE.parent).returncode
        elapsed = time.perf_counter() - started
        text = (out / f"{name}.md").read_text(encoding="utf-8")
        report += [f"## {name}", "", f"`{shlex.join(run)}` ({elapsed:.0f} s)", "", text, ""]
        if (out / f"{name}.png").exists():
            report += [f"![{name}]({name}.png)", ""]
        if code != 0:
            failed.append(name)
            report += [f"**{name} failed with exit code {code}.**", ""]
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
