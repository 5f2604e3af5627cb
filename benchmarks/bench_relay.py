"""Relay and fan-out benchmarks (issue #14): one snapshot to several receivers, directly and
through a staging bucket on moto.

Run from the repository root (needs ``pip install -e ".[dev]"``: moto)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_relay.py [--size 128MiB]
        [--rounds 3] [--json out.json] [--check]

Contenders (in-process receivers writing local files; the S3 server is moto in its own
process, ``python -m fstransport.moto_server``, so its CPU time is not ours):

- ``direct x1``: ``ship(SRC, [T0])``, the baseline of one direct transfer;
- ``fan-out x3``: ``ship(SRC, [T0, T1, T2])`` without a relay (one read of SRC, three senders);
- ``relay x1``: ``ship(SRC, T0, relay="s3://bench/stage")``: staged in moto and fetched by the
  receiver while later chunks are still being staged (pipelined);
- ``relay x3``: the same to three receivers (one upload, three fetches);
- ``ship in + ship out``: ``ship(SRC, "s3://bench/obj")`` then ``ship("s3://bench/obj", T0)``,
  the two-step copy through a bucket that a relay replaces.

Goals (ratios of median throughput, so higher is better): fan-out x3 >= 1/1.5 of direct x1;
relay x3 >= 1/1.5 of relay x1 (three receivers on the same medium cost at most 1.5 times one);
relay x1 >= 1/0.7 of ship in + ship out.  Source bytes read and bytes uploaded per snapshot
byte, PUTs per 8 MiB staged (counted on s3fs's calls) and the size of a reference on the wire
are measured on the side.  Every copy is compared byte for byte after its timed region, and no
staged object or multipart upload may remain.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from typing import Any

import boto3
from harness import (
    Case,
    MiB,
    PeakRss,
    Row,
    add_common_arguments,
    check_file,
    evaluate,
    machine_info,
    make_data,
    make_parser,
    markdown_table,
    moto_process,
    publish,
    remove_file,
    run_rounds,
    size_list,
    workspace,
    write_file,
)

from fstransport import TransferOptions, TransferReport, ship
from fstransport.messages import StagedChunk
from fstransport.moto_server import REGION, TEST_CREDENTIALS, storage_options_for
from fstransport.network.wire import encode_staged
from fstransport.storage.faults import flaky_s3
from fstransport.units import format_size

BUCKET = "bench"
STAGE = f"s3://{BUCKET}/stage"


class Bench:
    def __init__(self, folder: str, data: bytes, endpoint: str, loop: asyncio.AbstractEventLoop):
        self.folder = folder
        self.data = data
        self.loop = loop
        self.options = storage_options_for(endpoint)
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=TEST_CREDENTIALS["key"],
            aws_secret_access_key=TEST_CREDENTIALS["secret"],
        )
        self.client.create_bucket(Bucket=BUCKET)
        self.source = os.path.join(folder, "src.bin")
        with open(self.source, "wb") as fh:
            fh.write(data)
        self.transfer = TransferOptions()

    def targets(self, n: int) -> list[str]:
        return [os.path.join(self.folder, f"t{i}", "snap.bin") for i in range(n)]

    def ship(self, *args: Any, **kwargs: Any) -> TransferReport:
        report: TransferReport = self.loop.run_until_complete(
            ship(*args, options=self.transfer, **kwargs)
        )
        return report

    def case(self, key: str, label: str, receivers: int, relay: bool) -> Case:
        targets = self.targets(receivers)

        def run() -> object:
            kwargs: dict[str, Any] = {}
            if relay:
                kwargs = {"relay": STAGE, "relay_options": self.options}
            return self.ship(self.source, targets, **kwargs)

        def verify(result: object) -> None:
            assert isinstance(result, TransferReport)
            assert result.bytes_read == len(self.data), result.bytes_read
            assert result.bytes_uploaded == (len(self.data) if relay else 0)
            for target in targets:
                check_file(target, self.data)
            self.nothing_left()

        def cleanup() -> None:
            for target in targets:
                remove_file(target)

        return Case(key, label, len(self.data), run, verify, cleanup=cleanup)

    def two_ships(self) -> Case:
        (target,) = self.targets(1)
        url = f"s3://{BUCKET}/obj.bin"

        def run() -> object:
            self.ship(self.source, url, target_options=self.options)
            return self.ship(url, target, source_options=self.options)

        def verify(result: object) -> None:
            check_file(target, self.data)

        def cleanup() -> None:
            remove_file(target)
            self.client.delete_object(Bucket=BUCKET, Key="obj.bin")

        return Case("two", "ship in + ship out", len(self.data), run, verify, cleanup=cleanup)

    def nothing_left(self) -> None:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix="stage/")
        assert not listing.get("Contents"), "staged objects left"
        assert not self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")

    def requests(self) -> dict[str, Any]:
        """PUTs per 8 MiB staged, and the size of one reference on the wire (untimed)."""
        (target,) = self.targets(1)
        with flaky_s3(0.0) as calls:
            report = self.ship(self.source, target, relay=STAGE, relay_options=self.options)
        remove_file(target)
        puts = calls.calls["put_object"] + calls.calls["upload_part"]
        ref = StagedChunk(
            f"{STAGE}/snap.bin/v0-0-0/{'f' * 32}", f"{0:016x}-800000-deadbeef", 8 * MiB, 0xDEADBEEF
        )
        return {
            "puts": puts,
            "chunk_puts_per_8mib": (puts - 1) / (len(self.data) / (8 * MiB)),
            "multipart_parts": calls.calls["upload_part"],
            "reference_bytes": len(encode_staged(ref).encode()),
            "bytes_uploaded_ratio": report.bytes_uploaded / len(self.data),
        }


def peak_rss(folder: str, size: int, relay: bool) -> int:
    """Peak RSS (VmHWM, bytes) of ``fstransport ship SRC T0/ T1/ T2/`` in a fresh process: the
    sender and the three receivers, with or without a relay (a local staging folder: moto
    would hold every staged byte in its own memory)."""
    source = os.path.join(folder, f"mem-{size}.bin")
    write_file(source, size, seed=size)
    targets = [os.path.join(folder, f"m{i}") + "/" for i in range(3)]
    for target in targets:
        os.makedirs(target, exist_ok=True)
    exe = os.path.join(os.path.dirname(sys.executable), "fstransport")
    argv = [exe, "ship", source, *targets, "--quiet"]
    if relay:
        argv += ["--relay", os.path.join(folder, "mem-stage")]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    sampler = PeakRss(proc.pid)
    _, err = proc.communicate(timeout=1800)
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"ship failed ({proc.returncode}): {err}")
    for target in targets:
        remove_file(os.path.join(target, os.path.basename(source)))
    remove_file(source)
    return peak


def memory_table(folder: str, sizes: list[int]) -> str:
    lines = [
        "### Peak RSS of `fstransport ship SRC T0/ T1/ T2/` (sender and three receivers)",
        "",
        "| size | no relay | relay (local staging folder) |",
        "|---:|---:|---:|",
    ]
    for size in sizes:
        direct = peak_rss(folder, size, relay=False)
        relayed = peak_rss(folder, size, relay=True)
        lines.append(f"| {format_size(size)} | {format_size(direct)} | {format_size(relayed)} |")
    return "\n".join(lines)


def main() -> None:
    parser = make_parser(__doc__)
    add_common_arguments(parser, size=128 * MiB, rounds=3)
    parser.add_argument(
        "--memory",
        type=size_list,
        metavar="SIZES",
        help="also measure the peak RSS of a fan-out to three receivers at these sizes, "
        "e.g. 512MiB,2GiB",
    )
    args = parser.parse_args()
    info = machine_info("s3fs", "moto")
    started = time.perf_counter()
    data = make_data(args.size, args.seed)
    with moto_process() as moto, workspace("fstransport-bench-relay-", args.dir) as (folder, loop):
        bench = Bench(folder, data, moto.address, loop)
        cases = [
            bench.case("direct1", "direct x1", 1, relay=False),
            bench.case("fanout3", "fan-out x3 (no relay)", 3, relay=False),
            bench.case("relay1", "relay x1 (pipelined)", 1, relay=True),
            bench.case("relay3", "relay x3", 3, relay=True),
            bench.two_ships(),
        ]
        for case in cases:
            case.probes = {"client_cpu_s": time.process_time, "server_cpu_s": moto.cpu_seconds}
        run_rounds(cases, args.rounds, args.warmup, random.Random(args.seed), "relay")
        side = bench.requests()
        memory = memory_table(folder, args.memory) if args.memory else ""
    by_key = {case.key: case for case in cases}
    rows = [
        Row("direct1"),
        Row("fanout3", "direct1", "fan-out x3 >= 0.67x direct x1", goal_ratio=1 / 1.5),
        Row("relay1", "two", "relay x1 >= 1.43x ship in + out", goal_ratio=1 / 0.7),
        Row("relay3", "relay1", "relay x3 >= 0.67x relay x1", goal_ratio=1 / 1.5),
        Row("two"),
    ]
    results = [evaluate(row, by_key) for row in rows]
    columns = [("client CPU s", "client_cpu_s"), ("moto CPU s", "server_cpu_s")]
    table = markdown_table("Fan-out and relay (moto)", results, columns)
    goals = [r for r in results if r["met"] is not None]
    side_lines = [
        "",
        f"Source read per fan-out: 1.00x its size (asserted every round); uploaded to the relay: "
        f"{side['bytes_uploaded_ratio']:.2f}x; PUTs: {side['puts']}, one per chunk object "
        f"({side['chunk_puts_per_8mib']:.2f} per 8 MiB staged) and one manifest, "
        f"{side['multipart_parts']} multipart parts; one reference on the wire: "
        f"{side['reference_bytes']} bytes.",
    ]
    report = {"machine": info, "results": results, "side": side}
    publish(
        report,
        info,
        started,
        args,
        "fstransport relay benchmark",
        f"moto {info['moto']}, s3fs {info['s3fs']}",
        [table, *side_lines, "", memory],
    )
    if args.check and not all(r["met"] for r in goals):
        sys.exit(1)


if __name__ == "__main__":
    main()
