"""Delta transfer onto an S3 target (issue 15): ``ship`` of a file whose changes fall in one
8 MiB region onto a bucket that holds the base under the same name, ``delta="blocks"`` against
``delta="off"``, on moto in its own process.  Called by ``bench_delta.py --s3``, or alone::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_delta_s3.py [--scale 1.0] [--rounds 3]

The final chunk may take `INSTALL_TIMEOUT` seconds (moto assembles slowly).  Each round puts
the base back (a server-side copy of a pristine object, not timed), then times
the ship.  What this process sends to S3 is counted by hooking s3fs's ``_call_s3``: bytes in
request bodies (``UploadPart``, ``PutObject``) are "uploaded", ranges of ``UploadPartCopy`` are
"copied" inside the bucket.  Rounds interleave the two modes; times are medians.  Every result
is read back and its CRC32C compared with the new content's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import GiB, MiB, machine_info, make_data, moto_process, s3_client

from fstransport.checksum import chunk_crc

REGION_SIZE = 8 * MiB
INSTALL_TIMEOUT = 600.0
"""Seconds the final chunk may take (the default 60 s is too short for moto, which reads the
whole source object for every ``UploadPartCopy`` and joins the parts of a 1 GiB object slowly)."""


def changed_in_region(base: bytes, region: tuple[int, int], fraction: float, seed: int) -> bytes:
    """`base` with `fraction` of the 4 KiB pages of `region` rewritten (its first and last
    among them, so that the changes span the region)."""
    import random

    rng = random.Random(seed)
    new = bytearray(base)
    first, last = region[0] // 4096, region[1] // 4096 - 1
    count = max(2, int((last - first + 1) * fraction))
    for page in {first, last, *rng.sample(range(first, last + 1), count - 2)}:
        new[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    return bytes(new)


def s3_rounds(size: int, rounds: int, seed: int) -> list[str]:
    """The table rows: full and delta ships of `size` bytes onto moto."""
    import s3fs

    from fstransport import TransferOptions, ship
    from fstransport.moto_server import REGION, TEST_CREDENTIALS, storage_options_for

    base = make_data(size, seed)
    region = (size // 2, size // 2 + REGION_SIZE)
    new = changed_in_region(base, region, 0.05, seed + 1)
    want = chunk_crc(new)
    counted: Counter[str] = Counter()
    real = s3fs.S3FileSystem._call_s3

    async def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method in ("upload_part", "put_object"):
            counted["uploaded"] += len(kwargs["Body"])
        elif method == "upload_part_copy":
            first, last = kwargs["CopySourceRange"].removeprefix("bytes=").split("-")
            counted["copied"] += int(last) - int(first) + 1
        return await real(self, method, *args, **kwargs)

    login = (TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"], REGION)
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-delta-s3-") as tmp, moto_process() as moto:
        source = Path(tmp) / "new.bin"
        source.write_bytes(new)
        del new
        client = s3_client(moto.address, *login, check_reads=False)
        client.create_bucket(Bucket="bench")
        client.put_object(Bucket="bench", Key="pristine.bin", Body=base)
        del base
        options = storage_options_for(moto.address)

        def one(mode: str) -> tuple[float, int, int, int, int]:
            source_spec = {"Bucket": "bench", "Key": "pristine.bin"}
            client.copy_object(Bucket="bench", Key="snap.bin", CopySource=source_spec)
            counted.clear()
            s3fs.S3FileSystem._call_s3 = counting
            try:
                started = time.perf_counter()
                report = asyncio.run(
                    ship(
                        str(source),
                        "s3://bench/snap.bin",
                        options=TransferOptions(delta=mode, install_timeout=INSTALL_TIMEOUT),
                        target_options=options,
                    )
                )
                elapsed = time.perf_counter() - started
            finally:
                s3fs.S3FileSystem._call_s3 = real
            crc, body = 0, client.get_object(Bucket="bench", Key="snap.bin")["Body"]
            while piece := body.read(8 * MiB):
                crc = chunk_crc(piece, crc)
            if crc != want:
                raise AssertionError(f"{mode}: the object differs from the new content")
            if client.list_multipart_uploads(Bucket="bench").get("Uploads"):
                raise AssertionError(f"{mode}: a multipart upload was left behind")
            return (
                elapsed,
                report.bytes_sent,
                report.bytes_reused,
                counted["uploaded"],
                counted["copied"],
            )

        times: dict[str, list[float]] = {"off": [], "blocks": []}
        last: dict[str, tuple[float, int, int, int, int]] = {}
        for number in range(rounds):
            for mode in ("off", "blocks"):
                last[mode] = one(mode)
                times[mode].append(last[mode][0])
                print(f"round {number + 1} {mode}: {last[mode]}", file=sys.stderr)
        full = statistics.median(times["off"])
        for mode in ("off", "blocks"):
            _, sent, reused, uploaded, copied = last[mode]
            took = statistics.median(times[mode])
            lines.append(
                f"| {mode} | {size / MiB:.0f} MiB | {sent / MiB:.2f} MiB | {reused / MiB:.0f} MiB "
                f"| {uploaded / MiB:.2f} MiB ({100 * uploaded / size:.2f}%) | {copied / MiB:.0f} "
                f"MiB | {took:.2f} s | {100 * took / full:.0f}% |"
            )
    return lines


def print_table(size: int, rounds: int, seed: int) -> None:
    lines = s3_rounds(size, rounds, seed)
    print(f"## ship() onto S3 (moto), changes in one 8 MiB region, {rounds} rounds\n")
    print(f"{machine_info()['cpu']}, load {machine_info()['loadavg']}\n")
    print("| delta | size | sent | reused | uploaded (of size) | copied | time | vs full |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="GiB of the object")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print_table(int(GiB * args.scale) // 4096 * 4096, args.rounds, args.seed)


if __name__ == "__main__":
    main()
