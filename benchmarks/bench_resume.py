"""What re-checking a resumed partial costs: `FsspecSnapshotStore.resume` (re-reading every chunk
its journal names and checking its CRC32C) against receiving the same bytes again with `ship()`.

Run from the repository root::

    python benchmarks/bench_resume.py [--size 256MiB] [--rounds 5]

Both contenders run once per round, in a shuffled order; medians are reported, with their ratio.
The partial file is in the page cache (it was just written), as it is for a receiver restarted
on the same machine; from a cold disk the re-check reads at the disk's speed instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fstransport import FsspecSnapshotStore, SnapshotMeta, TransferOptions, ship
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.units import format_size, parse_size

MiB = 1024 * 1024
CHUNK = 8 * MiB


async def resume_once(folder: str, data: bytes) -> float:
    """Lay down a partial file of all of `data` and its journal, then time `store.resume`."""
    root = os.path.join(folder, "resume")
    shutil.rmtree(root, ignore_errors=True)
    meta = SnapshotMeta("snap", size=len(data), checksum=format_checksum(chunk_crc(data)))
    store = FsspecSnapshotStore(root)
    sink = await store.begin(meta)
    for offset in range(0, len(data), CHUNK):
        await sink.write(
            offset, data[offset : offset + CHUNK], chunk_crc(data[offset : offset + CHUNK])
        )
    await store.close()
    await asyncio.sleep(0.1)  # the journal commits
    restarted = FsspecSnapshotStore(root)
    started = time.perf_counter()
    found = await restarted.resume(meta)
    elapsed = time.perf_counter() - started
    if found is None or sum(r.length for r in found[1]) != len(data):
        raise RuntimeError("the re-check did not keep every chunk")
    await restarted.abort("snap")
    return elapsed


async def ship_once(folder: str, source: str) -> float:
    target = os.path.join(folder, "ship", "snap")
    shutil.rmtree(os.path.dirname(target), ignore_errors=True)
    started = time.perf_counter()
    await ship(source, target, options=TransferOptions(chunk_size=CHUNK))
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=256 * MiB)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", help="parent folder of the temporary files (system temp)")
    args = parser.parse_args()
    rng = random.Random(1)
    data = b"".join(rng.randbytes(min(MiB, args.size - i)) for i in range(0, args.size, MiB))
    folder = tempfile.mkdtemp(prefix="fstransport-bench-resume-", dir=args.dir)
    source = os.path.join(folder, "src.bin")
    await asyncio.to_thread(Path(source).write_bytes, data)
    samples: dict[str, list[float]] = {"re-check on resume": [], "ship() again": []}
    rng.seed(2)
    try:
        for index in range(args.rounds + 1):  # the first round warms up
            order = list(samples)
            rng.shuffle(order)
            for name in order:
                os.sync()
                if name == "ship() again":
                    elapsed = await ship_once(folder, source)
                else:
                    elapsed = await resume_once(folder, data)
                if index:
                    samples[name].append(elapsed)
            print(f"round {index}/{args.rounds} done", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"| {format_size(args.size)}, {args.rounds} rounds | median s | MiB/s | ratio |")
    print("|---|---|---|---|")
    base = statistics.median(samples["ship() again"])
    for name, values in samples.items():
        median = statistics.median(values)
        mibs = args.size / MiB / median
        print(f"| {name} | {median:.3f} | {mibs:.0f} | {median / base:.2f}x |")


if __name__ == "__main__":
    asyncio.run(main())
