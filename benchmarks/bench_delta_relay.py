"""Delta through the relay (issues 14/15): ``ship`` of a page file with 1% of its 4 KiB pages
changed at random, through a staging bucket on moto (its own process), onto a local folder that
holds the base under the same name, against the same ship onto an empty folder, and against a
relay that stages no block maps (``delta="off"``).  Called by ``bench_delta.py --relay``, or::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_delta_relay.py [--scale 0.25]
        [--rounds 3]

Contenders (in-process receiver; the target folder is put back, untimed, before every run):

- ``base held``: the target holds the base; the receiver maps it (not kept: ``ship``'s own
  receiver is not long-lived), reads each chunk's block map, and fetches only what it lacks;
- ``base held, map kept``: the same onto a long-lived receiver (``Receiver(long_lived=True)``,
  as ``serve --keep-delta-state``) whose map of the base is kept from a first, uncounted run (the
  base is put back as a hard link of the same file, so the kept map still describes it);
- ``base held, clustered``: as ``base held``, with the changed pages in runs of 32 (128 KiB);
- ``no base``: an empty target: the chunks are fetched whole (their maps are staged anyway);
- ``maps off``: an empty target, ``delta="off"``: no block maps staged (the relay as before).

Per contender: the median time of interleaved rounds, this process's CPU seconds (sender and
receiver), the machine's idle core-seconds, and from the last round the report's
``bytes_fetched`` and ``bytes_reused``, the bytes uploaded, and the GETs this process sent to
the bucket (counted on s3fs's calls).  Every installed file is compared with the new content.
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
from collections import Counter
from pathlib import Path
from typing import Any

from harness import GiB, MiB, machine_idle_cpu, machine_info, make_data, moto_process, s3_client

from fstransport.checksum import chunk_crc

CONTENDERS = ("base held", "base held, map kept", "base held, clustered", "no base", "maps off")
RUN = 32
"""Pages per run of the clustered case: 1% of the pages, rewritten in runs of 128 KiB."""


def changed_pages(base: bytes, fraction: float, seed: int) -> bytes:
    """`base` with `fraction` of its 4 KiB pages rewritten, at random."""
    rng = random.Random(seed)
    new = bytearray(base)
    for page in rng.sample(range(len(base) // 4096), max(1, int(len(base) // 4096 * fraction))):
        new[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    return bytes(new)


def changed_runs(base: bytes, fraction: float, seed: int) -> bytes:
    """`base` with `fraction` of its 4 KiB pages rewritten in runs of `RUN` pages, at random."""
    rng = random.Random(seed)
    new = bytearray(base)
    runs = max(1, int(len(base) // 4096 * fraction) // RUN)
    for run in rng.sample(range(len(base) // (4096 * RUN)), runs):
        at = run * RUN * 4096
        new[at : at + RUN * 4096] = rng.randbytes(RUN * 4096)
    return bytes(new)


async def relayed(
    source: str, target: Path, delta: str, storage: dict[str, Any], long_lived: bool
) -> Any:
    """``ship`` of `source` through the relay to ``target/snap.bin``: to an in-process
    receiver of its own, or (`long_lived`) to a long-lived one that keeps its bases' maps."""
    from fstransport import FsspecSnapshotStore, LoopbackNetwork, Receiver, TransferOptions, ship

    options = TransferOptions(delta=delta)
    maps = {**storage, "block_maps": True}  # (with delta="off" no map is staged anyway)
    settings: dict[str, Any] = {"relay": "s3://bench/stage", "relay_options": maps}
    if not long_lived:
        return await ship(source, str(target / "snap.bin"), options=options, **settings)
    receiver = Receiver(FsspecSnapshotStore(str(target)), relay_options=storage, long_lived=True)
    try:
        net = LoopbackNetwork(receiver)
        return await ship(source, "snap.bin", network=net, options=options, **settings)
    finally:
        await receiver.close()


def relay_rounds(size: int, rounds: int, seed: int) -> list[str]:
    """The table rows: the three contenders, `rounds` interleaved rounds each."""
    import s3fs

    from fstransport.moto_server import REGION, TEST_CREDENTIALS, storage_options_for

    base = make_data(size, seed)
    new = changed_pages(base, 0.01, seed + 1)
    clustered = changed_runs(base, 0.01, seed + 2)
    wants = {"clustered": chunk_crc(clustered), "new": chunk_crc(new)}
    changed = sum(base[at : at + 4096] != new[at : at + 4096] for at in range(0, size, 4096))
    counted: Counter[str] = Counter()
    real = s3fs.S3FileSystem._call_s3

    async def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        counted[method] += 1
        return await real(self, method, *args, **kwargs)

    login = (TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"], REGION)
    with tempfile.TemporaryDirectory(prefix="bench-delta-relay-") as tmp, moto_process() as moto:
        folder = Path(tmp)
        (folder / "base.bin").write_bytes(base)
        (folder / "new.bin").write_bytes(new)
        (folder / "clustered.bin").write_bytes(clustered)
        del base, new, clustered
        client = s3_client(moto.address, *login, check_reads=False)
        client.create_bucket(Bucket="bench")
        storage = storage_options_for(moto.address)

        def one(name: str) -> tuple[float, float, float, Any, int]:
            target = folder / ("kept" if "kept" in name else "target")
            source = "clustered" if "clustered" in name else "new"
            if "kept" in name:  # the same inode and mtime as before: its kept map holds
                target.mkdir(exist_ok=True)
                (target / "snap.bin").unlink(missing_ok=True)
                os.link(folder / "base.bin", target / "snap.bin")
            else:
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
            if name in ("base held", "base held, clustered"):
                shutil.copyfile(folder / "base.bin", target / "snap.bin")
            delta = "off" if name == "maps off" else "blocks"
            counted.clear()
            s3fs.S3FileSystem._call_s3 = counting
            idle, cpu, started = machine_idle_cpu(), time.process_time(), time.perf_counter()
            try:
                report = asyncio.run(
                    relayed(str(folder / f"{source}.bin"), target, delta, storage, "kept" in name)
                )
            finally:
                s3fs.S3FileSystem._call_s3 = real
            elapsed = time.perf_counter() - started
            cpu, idle = time.process_time() - cpu, machine_idle_cpu() - idle
            if chunk_crc((target / "snap.bin").read_bytes()) != wants[source]:
                raise AssertionError(f"{name}: the installed file differs from the new content")
            if client.list_objects_v2(Bucket="bench", Prefix="stage/").get("Contents"):
                raise AssertionError(f"{name}: staged objects were left behind")
            return elapsed, cpu, idle, report, counted["get_object"]

        times: dict[str, list[tuple[float, float, float]]] = {n: [] for n in CONTENDERS}
        last: dict[str, tuple[Any, int]] = {}
        one("no base")  # (a first, uncounted run: imports, moto warm)
        one("base held, map kept")  # (its map kept from now on)
        order = list(CONTENDERS)
        for number in range(rounds):
            random.shuffle(order)
            for name in order:
                elapsed, cpu, idle, report, gets = one(name)
                times[name].append((elapsed, cpu, idle))
                last[name] = (report, gets)
                print(f"round {number + 1} {name}: {elapsed:.2f} s", file=sys.stderr)
    baseline = statistics.median(t[0] for t in times["no base"])
    lines = []
    for name in CONTENDERS:
        report, gets = last[name]
        took = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        idle = statistics.median(t[2] for t in times[name])
        lines.append(
            f"| {name} | {size / MiB:.0f} MiB | {report.bytes_uploaded / MiB:.1f} MiB "
            f"| {report.bytes_fetched / MiB:.2f} MiB ({100 * report.bytes_fetched / size:.2f}%) "
            f"| {report.bytes_reused / MiB:.1f} MiB | {gets} | {took:.2f} s "
            f"| {took / baseline:.2f}x | {cpu:.2f} | {idle:.2f} |"
        )
    lines.append(
        f"\n({changed} of {size // 4096} pages changed at random, {changed * 4096 / MiB:.2f} MiB; "
        f"clustered: {max(1, size // 4096 // 100 // RUN)} runs of {RUN} pages)"
    )
    return lines


def print_table(size: int, rounds: int, seed: int) -> None:
    lines = relay_rounds(size, rounds, seed)
    info = machine_info()
    print(f"## ship() through a relay on moto, 1% of 4 KiB pages changed, {rounds} rounds\n")
    print(f"{info['cpu']}, {info['nproc']} cores, load {info['loadavg']}, {info['started']}\n")
    print(
        "| contender | size | uploaded | fetched (of size) | reused | GETs | time "
        "| vs no base | CPU s | idle core-s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.25, help="GiB of the page file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print_table(int(GiB * args.scale) // 4096 * 4096, args.rounds, args.seed)


if __name__ == "__main__":
    main()
