"""A folder of many small files: one directory snapshot against one ship per file; with
``--sst``, delta for directory snapshots.

Run from the repository root (needs ``pip install -e .``)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_tree.py [--files 1000] [--rounds 3]
    flock /tmp/fstransport-bench.lock python benchmarks/bench_tree.py --sst [--sst-size 1MiB]
    flock /tmp/fstransport-bench.lock python benchmarks/bench_tree.py --sst --s3 [--rounds 3]

``--sst``: a folder of 200 SST-like files (random bytes, ``--sst-size`` each) is installed at
the receiver; the new folder has 5% of them removed and 10% new ones added (issue 15's goal:
at most 11% of the bytes sent).  Each round ships the new folder onto a copy of the old one
with ``delta="blocks"``, ``delta="cdc"`` and ``delta="off"`` (the full transfer), interleaved,
and checks every installed tree byte for byte; the table gives bytes sent over the new tree's
bytes and the median wall time against the full transfer's.  With ``--s3`` the target is a
bucket on moto instead (`bench_tree_s3.py`: bytes uploaded and copied in the bucket too).

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

from fstransport import TransferOptions, TransferReport
from fstransport.http.client import HttpNetwork
from fstransport.transfer import ship
from fstransport.units import parse_size

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
    parser.add_argument("--sst", action="store_true", help="delta for a folder of SST files")
    parser.add_argument("--sst-size", type=parse_size, default=1024 * 1024)
    parser.add_argument(
        "--link",
        action="store_true",
        help="--sst in process over a simulated 10 ms / 1 Gbit/s link instead of HTTP",
    )
    parser.add_argument(
        "--s3", action="store_true", help="--sst onto an S3 target (moto; bench_tree_s3.py)"
    )
    args = parser.parse_args()
    if args.sst and args.s3:
        from bench_tree_s3 import sst_s3

        return sst_s3(args.sst_size, args.rounds)
    exe = shutil.which("fstransport", path=str(Path(sys.executable).parent))
    if exe is None:
        print("the fstransport command is not installed: pip install -e .", file=sys.stderr)
        return 1
    if args.sst:
        return sst_delta(exe, args.rounds, args.sst_size, args.link)
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


def _sst_folders(tmp: Path, size: int) -> tuple[Path, Path, int]:
    """The old folder (200 files) and the new one (5% removed, 10% added); the new's bytes."""
    old, new = tmp / "old", tmp / "new"
    for folder in (old, new):
        folder.mkdir()
    total = 0
    for i in range(200):
        body = os.urandom(size)
        (old / f"{i:06d}.sst").write_bytes(body)
        if i % 20 != 7:  # 10 of 200 removed
            (new / f"{i:06d}.sst").write_bytes(body)
            total += size
    for i in range(200, 220):  # 20 new ones, numbered after the old, as SST numbers grow
        (new / f"{i:06d}.sst").write_bytes(os.urandom(size))
        total += size
    (old / "MANIFEST-000001").write_bytes(os.urandom(4096))
    (new / "MANIFEST-000002").write_bytes(os.urandom(4096))
    return old, new, total + 4096


def _same_tree(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*"))
    if names != sorted(p.relative_to(b) for p in b.rglob("*")):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names if (a / n).is_file())


def _over_link(folder: Path, target: Path, mode: str) -> TransferReport:
    """`ship` in process through a `FaultyNetwork` modelling a 10 ms / 1 Gbit/s link."""
    from fstransport.network.faults import FaultyNetwork
    from fstransport.network.loopback import LoopbackNetwork
    from fstransport.receiver import Receiver
    from fstransport.storage.store import FsspecSnapshotStore

    async def run() -> TransferReport:
        store = FsspecSnapshotStore(str(target.parent))
        net = FaultyNetwork(LoopbackNetwork(Receiver(store)), latency=0.005, bandwidth=1e9 / 8)
        try:
            options = TransferOptions(delta=mode)
            return await ship(str(folder), str(target), network=net, options=options)
        finally:
            await store.close()

    return asyncio.run(run())


def sst_delta(exe: str, rounds: int, size: int, link: bool) -> int:
    """`--sst`: bytes sent and time of a directory delta against a full transfer."""
    modes = ("blocks", "cdc", "off")
    with tempfile.TemporaryDirectory(prefix="bench-tree-sst-") as tmp:
        root = Path(tmp, "root")
        root.mkdir()
        old, new, total = _sst_folders(Path(tmp), size)
        server = subprocess.Popen(
            [exe, "serve", str(root), "--token", TOKEN, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

        async def one(folder: Path, name: str, mode: str) -> TransferReport:
            if link:
                return await asyncio.to_thread(_over_link, folder, root / name, mode)
            async with HttpNetwork(url, token=TOKEN) as net:
                options = TransferOptions(delta=mode)
                return await ship(str(folder), name, network=net, options=options)

        try:
            assert server.stdout is not None
            url = server.stdout.readline().decode().split()[-1]
            threading.Thread(target=server.stdout.read, daemon=True).start()
            times: dict[str, list[float]] = {m: [] for m in modes}
            sent: dict[str, list[int]] = {m: [] for m in modes}
            for round_ in range(rounds + 1):  # round 0 warms up, uncounted
                order = list(modes) if round_ % 2 else list(reversed(modes))
                for mode in order:
                    name = f"sst-{mode}-{round_}"
                    asyncio.run(one(old, name, "off"))  # the base at the receiver (untimed)
                    started = time.perf_counter()
                    report = asyncio.run(one(new, name, mode))
                    elapsed = time.perf_counter() - started
                    if not _same_tree(new, root / name):
                        print(f"{name}: the installed tree differs", file=sys.stderr)
                        return 1
                    shutil.rmtree(root / name)
                    if round_:
                        times[mode].append(elapsed)
                        sent[mode].append(report.bytes_sent)
        finally:
            server.kill()
            server.wait()
    full = statistics.median(times["off"])
    print(f"200 SST-like files of {size} bytes, 10% new, 5% removed; new tree {total} bytes;")
    how = "a simulated 10 ms / 1 Gbit/s link" if link else "HTTP (fstransport serve, 127.0.0.1)"
    print(f"{rounds} interleaved rounds over {how}, medians\n")
    print("| delta | bytes sent / new tree | goal | wall time | vs full transfer |")
    print("|---|---:|---|---:|---:|")
    for mode in modes:
        ratio = statistics.median(sent[mode]) / total
        goal = "≤ 11%" if mode != "off" else ""
        median = statistics.median(times[mode])
        print(f"| {mode} | {ratio:.2%} | {goal} | {median:.3f} s | {median / full:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
