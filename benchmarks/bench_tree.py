"""A folder of many small files: one directory snapshot against one ship per file.

Run from the repository root (needs ``pip install -e .``)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_tree.py [--files 1000] [--rounds 3]

A ``fstransport serve --token`` process on 127.0.0.1 receives; each round ships the same
folder (``--files`` files of 4 KiB in 10 sub-folders) three ways, interleaved: as one directory
snapshot (``ship(DIR, ...)``), as one ``ship`` per file through the same connection pool, and
``shutil.copytree`` on the local disk (no transport at all, the floor).  The table gives each
way's median wall time and its ratio to the directory snapshot in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fstransport.http.client import HttpNetwork
from fstransport.transfer import ship

TOKEN = "bench-tree"


def _make(src: Path, files: int) -> list[str]:
    names = []
    for i in range(files):
        rel = f"d{i % 10}/f{i:05d}.bin"
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))
        names.append(rel)
    return names


async def _tree(src: Path, url: str, name: str) -> None:
    async with HttpNetwork(url, token=TOKEN) as net:
        await ship(str(src), name, network=net)


async def _per_file(src: Path, url: str, names: list[str], prefix: str) -> None:
    async with HttpNetwork(url, token=TOKEN) as net:
        for rel in names:  # a snapshot id is one file name: flatten the path
            await ship(str(src / rel), f"{prefix}-{rel.replace('/', '-')}", network=net)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    exe = shutil.which("fstransport", path=str(Path(sys.executable).parent))
    if exe is None:
        print("the fstransport command is not installed: pip install -e .", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp:
        src, root, local = Path(tmp, "src"), Path(tmp, "root"), Path(tmp, "copies")
        root.mkdir()
        local.mkdir()
        names = _make(src, args.files)
        server = subprocess.Popen(
            [exe, "serve", str(root), "--token", TOKEN, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().decode().split()[-1]
            # (it prints a line per transfer: keep reading, or a full pipe stops it)
            threading.Thread(target=server.stdout.read, daemon=True).start()
            samples: dict[str, list[float]] = {"directory snapshot": [], "one ship per file": []}
            samples["shutil.copytree (local, no transport)"] = []
            for round_ in range(args.rounds):
                started = time.perf_counter()
                asyncio.run(_tree(src, url, f"tree{round_}"))
                samples["directory snapshot"].append(time.perf_counter() - started)
                started = time.perf_counter()
                asyncio.run(_per_file(src, url, names, f"r{round_}"))
                samples["one ship per file"].append(time.perf_counter() - started)
                started = time.perf_counter()
                shutil.copytree(src, local / f"copy{round_}")
                samples["shutil.copytree (local, no transport)"].append(
                    time.perf_counter() - started
                )
        finally:
            server.kill()
            server.wait()
    base = statistics.median(samples["directory snapshot"])
    print(f"{args.files} files of 4 KiB, {args.rounds} interleaved rounds, median wall time\n")
    print("| way | median | min | vs directory snapshot |")
    print("|---|---:|---:|---:|")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.3f} s | {min(times):.3f} s | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
