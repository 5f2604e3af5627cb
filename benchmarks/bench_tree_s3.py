"""Directory-snapshot delta onto an S3 target (issue 15): the ``--sst`` folders of
``bench_tree.py`` (200 SST-like files, 5% removed, 10% new) shipped onto moto (its own process)
where the old tree is installed under the same name; ``delta="blocks"``, ``"cdc"`` and
``"off"`` (the full transfer), interleaved.  Called by ``bench_tree.py --sst --s3``, or alone::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_tree_s3.py [--rounds 3]

What this process sends to S3 is counted by hooking s3fs's ``_call_s3``: request bodies
(``PutObject``, ``UploadPart``) are "uploaded", ``CopyObject`` sources and ``UploadPartCopy``
ranges are "copied" inside the bucket.  Each round installs the old tree afresh (a full ship,
not timed), then times the ship of the new one; every installed tree is read back through its
manifest and compared with the new folder, and no multipart upload may be left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import machine_info, moto_process, s3_client

from fstransport.units import parse_size

MODES = ("blocks", "cdc", "off")


def _installed_matches(client: Any, prefix: str, folder: Path) -> bool:
    answer = client.get_object(Bucket="bench", Key=f"{prefix}/fstransport-tree.json")
    manifest = json.loads(answer["Body"].read())
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if sorted(path for path, _, _ in manifest["files"]) != names:
        return False
    root = f"{prefix}/{manifest['generation']}"
    for name in names:
        body = client.get_object(Bucket="bench", Key=f"{root}/{name}")["Body"].read()
        if body != (folder / name).read_bytes():
            return False
    return True


def sst_s3(size: int, rounds: int) -> int:
    """The table of `rounds` interleaved rounds (after one uncounted round)."""
    import s3fs
    from bench_tree import _sst_folders

    from fstransport import TransferOptions, ship
    from fstransport.moto_server import REGION, TEST_CREDENTIALS, storage_options_for

    counted: Counter[str] = Counter()
    copied_whole: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    import fstransport.delta.tree as tree_delta

    real_offer = tree_delta.find_tree_base

    async def timed_offer(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await real_offer(*args, **kwargs)
        finally:
            offer_times.append(time.perf_counter() - started)

    offer_times: list[float] = []

    async def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        answer = await real(self, method, *args, **kwargs)
        if method == "get_object" and "/g-" in str(kwargs.get("Key")):  # a base file's bytes
            counted["read from the base"] += int(answer.get("ContentLength") or 0)
        if method in ("upload_part", "put_object"):
            counted["uploaded"] += len(kwargs["Body"])
        elif method == "upload_part_copy":
            first, last = kwargs["CopySourceRange"].removeprefix("bytes=").split("-")
            counted["copied"] += int(last) - int(first) + 1
        elif method == "copy_object":  # (its size is looked up after the timed run)
            copied_whole.append(kwargs["Key"])
        counted[method] += 1
        return answer

    login = (TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"], REGION)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    got: dict[str, list[Counter[str]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-tree-s3-") as tmp, moto_process() as moto:
        old, new, total = _sst_folders(Path(tmp), size)
        client = s3_client(moto.address, *login, check_reads=False)
        client.create_bucket(Bucket="bench")
        target_options = storage_options_for(moto.address)

        def one(folder: Path, name: str, mode: str) -> Any:
            options = TransferOptions(delta=mode, install_timeout=600.0)
            target = f"s3://bench/{name}"
            job = ship(str(folder), target, options=options, target_options=target_options)
            return asyncio.run(job)

        for round_ in range(rounds + 1):  # round 0 warms up, uncounted
            for mode in MODES if round_ % 2 else reversed(MODES):
                name = f"sst-{mode}-{round_}"
                one(old, name, "off")  # the base in the bucket (untimed)
                counted.clear()
                copied_whole.clear()
                offer_times.clear()
                s3fs.S3FileSystem._call_s3 = counting
                tree_delta.find_tree_base = timed_offer
                try:
                    started = time.perf_counter()
                    report = one(new, name, mode)
                    elapsed = time.perf_counter() - started
                finally:
                    s3fs.S3FileSystem._call_s3 = real
                    tree_delta.find_tree_base = real_offer
                counted["offer ms"] = round(1000 * sum(offer_times))
                if not _installed_matches(client, name, new):
                    print(f"{name}: the installed tree differs", file=sys.stderr)
                    return 1
                if client.list_multipart_uploads(Bucket="bench").get("Uploads"):
                    print(f"{name}: a multipart upload was left behind", file=sys.stderr)
                    return 1
                counted["sent"] = report.bytes_sent
                for key in copied_whole:  # (the copies' sizes: they are in the new tree)
                    head = client.head_object(Bucket="bench", Key=key)
                    counted["copied"] += head["ContentLength"]
                print(f"round {round_} {mode}: {elapsed:.2f} s {dict(counted)}", file=sys.stderr)
                if round_:
                    times[mode].append(elapsed)
                    got[mode].append(Counter(counted))
    full = statistics.median(times["off"])
    info = machine_info()
    print(f"200 SST-like files of {size} bytes, 10% new, 5% removed; new tree {total} bytes;")
    print(f"ship() in process onto S3 (moto in its own process, 127.0.0.1), {rounds} interleaved")
    print(f"rounds, medians; {info['cpu']}, load {info['loadavg']}\n")
    print(
        "| delta | sent / new tree | uploaded / new tree | copied in the bucket | files copied "
        "whole | read from the base | offer | wall time | vs full |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in MODES:
        runs = got[mode]
        sent = statistics.median(c["sent"] for c in runs)
        uploaded = statistics.median(c["uploaded"] for c in runs)
        copied = statistics.median(c["copied"] for c in runs)
        whole = statistics.median(c["copy_object"] for c in runs)
        read = statistics.median(c["read from the base"] for c in runs)
        offer = statistics.median(c["offer ms"] for c in runs) / 1000
        took = statistics.median(times[mode])
        print(
            f"| {mode} | {sent / total:.2%} | {uploaded / total:.2%} | {copied / 2**20:.1f} MiB "
            f"| {whole:.0f} | {read / 2**20:.1f} MiB | {offer:.2f} s | {took:.2f} s "
            f"| {took / full:.2f}x |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst-size", type=parse_size, default=1024 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    return sst_s3(args.sst_size, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
