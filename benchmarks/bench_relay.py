"""Relay and fan-out benchmarks (issue #14): one snapshot to several receivers, directly and
through a staging bucket, on moto and (``--endpoint-url``) on another S3 server such as Ceph RGW.

Run from the repository root (needs ``pip install -e ".[dev]"``: moto)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_relay.py [--size 128MiB]
        [--rounds 3] [--endpoint-url URL] [--memory 512MiB,2GiB] [--s3-latency 0.5]
        [--json out.json] [--check]

Contenders (in-process receivers writing local files; moto runs in its own process,
``python -m fstransport.moto_server``, so its CPU time is not ours):

- ``direct x1``: ``ship(SRC, [T0])``, the baseline of one direct transfer;
- ``fan-out x3``: ``ship(SRC, [T0, T1, T2])`` without a relay (one read of SRC, three senders);
- ``relay x1``: ``ship(SRC, T0, relay="s3://BUCKET/stage")``: staged in the bucket and fetched
  by the receiver while later chunks are still being staged (pipelined);
- ``relay x3``: the same to three receivers (one upload, three fetches);
- ``ship in + ship out``: ``ship(SRC, "s3://BUCKET/obj")`` then ``ship("s3://BUCKET/obj", T0)``,
  the two-step copy through a bucket that a relay replaces.

Goals (ratios of median throughput, so higher is better): fan-out x3 >= 1/1.5 of direct x1;
relay x3 >= 1/1.5 of relay x1 (three receivers on the same medium cost at most 1.5 times one);
relay x1 >= 1/0.7 of ship in + ship out.  The columns "client CPU s" (this process: sender and
receivers), "server CPU s" (moto's process, or ``--server-processes`` of the endpoint) and
"idle CPU s" (idle core-seconds of the whole machine during the run) say whether the machine's
cores were the limit.  Source bytes read and bytes uploaded per snapshot byte, PUTs per 8 MiB
staged (counted on s3fs's calls), the size of a reference on the wire, and how far staging and
fetching overlap (when each staged object's PUT and GETs ended, in one relay x1: the part left
serial whatever the CPU) are measured on the side.  Every copy is compared byte for byte after
its timed region, and no staged object or multipart upload may remain.

``--s3-latency S`` times relay x1 (and relay x1 with twice the chunks in flight) against ship in +
ship out once more, on the first S3 server, with every S3 data request of this process delayed
S seconds: a distant bucket, where latency and not CPU is the limit.

``--memory SIZES`` measures the peak RSS per process, as the goal says: the sender
(``fstransport ship SRC snap.bin --via URL ... --relay STAGE``) and each receiver (an
``fstransport serve`` process with ``--relay-endpoint-url``, or ``--relay-prefix`` for a local
staging folder), with one and with three receivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any
from unittest import mock

from bench_rclone import CPU_COLUMNS, Endpoint, endpoints
from harness import (
    Case,
    MiB,
    PeakRss,
    Row,
    add_common_arguments,
    add_endpoint_arguments,
    check_file,
    evaluate,
    machine_idle_cpu,
    machine_info,
    make_data,
    make_parser,
    markdown_table,
    processes_cpu,
    publish,
    remove_file,
    run_rounds,
    s3_client,
    size_list,
    workspace,
    write_file,
)

from fstransport import TransferOptions, TransferReport, ship
from fstransport.messages import StagedChunk
from fstransport.moto_server import REGION
from fstransport.network.wire import encode_staged
from fstransport.storage.faults import DATA_OPERATIONS, flaky_s3
from fstransport.storage.staging import StagingStore
from fstransport.units import format_size

BUCKET = "fstransport-bench-relay"
STAGE = f"s3://{BUCKET}/stage"
GOAL_PEAK_RSS = 256 * MiB


class Bench:
    def __init__(self, folder: str, data: bytes, endpoint: Endpoint, loop: Any) -> None:
        self.folder = folder
        self.data = data
        self.loop = loop
        self.endpoint = endpoint
        self.options = endpoint.storage_options
        self.client = s3_client(endpoint.url, endpoint.key, endpoint.secret, REGION)
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
            self.client.create_bucket(Bucket=BUCKET)
        self.empty_bucket()
        self.source = os.path.join(folder, "src.bin")
        if not os.path.exists(self.source):
            with open(self.source, "wb") as fh:
                fh.write(data)
        self.transfer = TransferOptions()
        self.probes: dict[str, Any] = {
            "client_cpu_s": time.process_time,
            "idle_cpu_s": machine_idle_cpu,
        }
        if endpoint.server is not None:
            self.probes["server_cpu_s"] = endpoint.server.cpu_seconds
        elif endpoint.server_processes:
            self.probes["server_cpu_s"] = processes_cpu(endpoint.server_processes)

    def targets(self, n: int) -> list[str]:
        return [os.path.join(self.folder, f"t{i}", "snap.bin") for i in range(n)]

    def ship(
        self, *args: Any, options: TransferOptions | None = None, **kwargs: Any
    ) -> TransferReport:
        report: TransferReport = self.loop.run_until_complete(
            ship(*args, options=options or self.transfer, **kwargs)
        )
        return report

    def case(
        self,
        key: str,
        label: str,
        receivers: int,
        relay: bool,
        options: TransferOptions | None = None,
        latency: float = 0.0,
    ) -> Case:
        targets = self.targets(receivers)

        def run() -> object:
            kwargs: dict[str, Any] = {}
            if relay:
                kwargs = {"relay": STAGE, "relay_options": self.options}
            with s3_latency(latency):
                return self.ship(self.source, targets, options=options, **kwargs)

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

    def two_ships(self, latency: float = 0.0) -> Case:
        (target,) = self.targets(1)
        url = f"s3://{BUCKET}/obj.bin"

        def run() -> object:
            with s3_latency(latency):
                self.ship(self.source, url, target_options=self.options)
                return self.ship(url, target, source_options=self.options)

        def verify(result: object) -> None:
            check_file(target, self.data)

        def cleanup() -> None:
            remove_file(target)
            self.client.delete_object(Bucket=BUCKET, Key="obj.bin")

        return Case("two", "ship in + ship out", len(self.data), run, verify, cleanup=cleanup)

    def cases(self) -> list[Case]:
        cases = [
            self.case("direct1", "direct x1", 1, relay=False),
            self.case("fanout3", "fan-out x3 (no relay)", 3, relay=False),
            self.case("relay1", "relay x1 (pipelined)", 1, relay=True),
            self.case("relay3", "relay x3", 3, relay=True),
            self.two_ships(),
        ]
        for case in cases:
            case.probes = dict(self.probes)
        return cases

    def latency_cases(self, delay: float) -> list[Case]:
        """Relay x1 against ship in + ship out when every S3 data request waits `delay` s
        first (a distant bucket: latency, not CPU, the limit), and relay x1 with twice the
        chunks in flight."""
        wide = replace(self.transfer, max_in_flight=2 * self.transfer.max_in_flight)
        cases = [
            self.case("relay1", "relay x1 (pipelined)", 1, relay=True, latency=delay),
            self.case(
                "relay1w",
                f"relay x1, {wide.max_in_flight} in flight",
                1,
                relay=True,
                options=wide,
                latency=delay,
            ),
            self.two_ships(latency=delay),
        ]
        for case in cases:
            case.probes = dict(self.probes)
        return cases

    def empty_bucket(self) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                self.client.delete_object(Bucket=BUCKET, Key=item["Key"])
        uploads = self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        for upload in uploads:
            self.client.abort_multipart_upload(
                Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
            )

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

    def pipeline(self) -> dict[str, float]:
        """How far staging and fetching overlap in one untimed relay x1 run (in-process
        receiver), from when each staged object's PUT and GETs began and ended: what is left
        serial once the CPU is not the limit.  Seconds from the ship's start, and fractions."""
        events: list[tuple[str, float, float, int]] = []  # (what, began, ended, bytes)
        put_once, fetch = StagingStore.put_once, StagingStore.fetch

        async def timed_put(store: StagingStore, url: str, data: Any, crc: int) -> bool:
            began = time.perf_counter()
            written = await put_once(store, url, data, crc)
            what = "manifest" if url.endswith("/manifest.json") else "put"
            events.append((what, began, time.perf_counter(), len(data)))
            return written

        async def timed_fetch(store: StagingStore, ref: StagedChunk) -> Any:
            began = time.perf_counter()
            data = await fetch(store, ref)
            events.append(("fetch", began, time.perf_counter(), ref.length))
            return data

        (target,) = self.targets(1)
        with (
            mock.patch.object(StagingStore, "put_once", timed_put),
            mock.patch.object(StagingStore, "fetch", timed_fetch),
        ):
            began = time.perf_counter()
            self.ship(self.source, target, relay=STAGE, relay_options=self.options)
            ended = time.perf_counter()
        check_file(target, self.data)
        remove_file(target)
        puts = sorted(e for e in events if e[0] == "put")
        fetches = sorted(e for e in events if e[0] == "fetch")
        manifest = [e for e in events if e[0] == "manifest"]
        last_put = max(e[2] for e in puts)
        total = ended - began
        return {
            "total_s": total,
            "first_put_end_s": min(e[2] for e in puts) - began,
            "first_fetch_start_s": fetches[0][1] - began,
            "last_put_end_s": last_put - began,
            "manifest_s": manifest[0][2] - manifest[0][1] if manifest else 0.0,
            "tail_s": ended - last_put,
            "tail_fraction": (ended - last_put) / total,
            "fetched_before_last_put": sum(e[3] for e in fetches if e[2] <= last_put)
            / sum(e[3] for e in fetches),
        }


@contextlib.contextmanager
def s3_latency(delay: float) -> Iterator[None]:
    """Every S3 data request (GET, PUT, part upload) of this process waits `delay` s first."""
    if delay <= 0:
        yield
        return
    import s3fs

    original = s3fs.S3FileSystem._call_s3

    async def _call_s3(fs: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method in DATA_OPERATIONS:
            await asyncio.sleep(delay)
        return await original(fs, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = _call_s3
    try:
        yield
    finally:
        s3fs.S3FileSystem._call_s3 = original


# -- peak RSS per process ----------------------------------------------------------------------

EXE = os.path.join(os.path.dirname(sys.executable), "fstransport")


def _server(root: str, relay_args: list[str], env: dict[str, str], log: str) -> Any:
    os.makedirs(root, exist_ok=True)
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [EXE, "serve", root, "--no-auth", *relay_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip():
        proc.wait(timeout=30)
        raise RuntimeError(f"fstransport serve did not start; see {log}")
    return proc, line.split()[-1]


def peak_rss(folder: str, size: int, receivers: int, endpoint: Endpoint | None) -> list[int]:
    """Peak RSS (VmHWM, bytes) of the sender ``fstransport ship SRC snap.bin --via ... --relay
    STAGE`` and of each receiver (``fstransport serve``), all fresh processes; the sender's
    first.  The staging bucket is on `endpoint`, or a local folder when it is None."""
    source = os.path.join(folder, f"mem-{size}.bin")
    if not os.path.exists(source):
        write_file(source, size, seed=size)
    env = dict(os.environ)
    if endpoint is None:
        stage = os.path.join(folder, "mem-stage")
        os.makedirs(stage, exist_ok=True)
        relay_args, ship_args = ["--relay-prefix", stage], ["--relay", stage]
    else:
        env = endpoint.env(for_rclone=False)
        stage = STAGE + "-mem"
        relay_args = ["--relay-endpoint-url", endpoint.url, "--relay-prefix", stage]
        ship_args = ["--relay", stage, "--endpoint-url", endpoint.url]
    roots = [os.path.join(folder, f"m{i}") for i in range(receivers)]
    servers = [_server(r, relay_args, env, os.path.join(folder, "serve.log")) for r in roots]
    samplers = [PeakRss(proc.pid) for proc, _ in servers]
    try:
        argv = [EXE, "ship", source, "snap.bin", "--quiet", *ship_args]
        for _, url in servers:
            argv += ["--via", url]
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        sender = PeakRss(proc.pid)
        _, err = proc.communicate(timeout=3600)
        peaks = [sender.stop()]
        if proc.returncode != 0:
            raise RuntimeError(f"ship failed ({proc.returncode}): {err[-2000:]}")
    finally:
        peaks_r = [s.stop() for s in samplers]
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=60)
            assert server.stdout is not None
            server.stdout.close()
    for root in roots:
        with open(os.path.join(root, "snap.bin"), "rb") as fh:
            fh.seek(size - 1)
            assert len(fh.read(2)) == 1, "the installed snapshot has the wrong size"
        remove_file(os.path.join(root, "snap.bin"))
    return peaks + peaks_r


def memory_table(folder: str, sizes: Sequence[int], places: list[Endpoint | None]) -> str:
    lines = [
        "### Peak RSS per process: `fstransport ship --via ... --relay` and `fstransport serve`",
        "",
        "| staging | size | receivers | sender | receivers (each) | goal | met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for endpoint in places:
        name = "local folder" if endpoint is None else endpoint.name
        for receivers in (1, 3):
            for size in sizes:
                peaks = peak_rss(folder, size, receivers, endpoint)
                print(f"  memory {name} {format_size(size)} x{receivers}: {peaks}", file=sys.stderr)
                each = ", ".join(format_size(p) for p in peaks[1:])
                met = "yes" if max(peaks) <= GOAL_PEAK_RSS else "**no**"
                lines.append(
                    f"| {name} | {format_size(size)} | {receivers} | {format_size(peaks[0])}"
                    f" | {each} | <= 256 MiB each | {met} |"
                )
    return "\n".join(lines)


def latency_table(bench: Bench, args: Any, name: str) -> str:
    """Rounds of `Bench.latency_cases`: what limits the relay when CPU does not."""
    cases = bench.latency_cases(args.s3_latency)
    run_rounds(cases, args.rounds, args.warmup, random.Random(args.seed), f"{name} latency")
    by_key = {case.key: case for case in cases}
    rows = [
        Row("relay1", "two", "relay x1 >= 1.43x ship in + out", goal_ratio=1 / 0.7),
        Row("relay1w", "two", "(twice the chunks in flight)"),
        Row("two"),
    ]
    results = [evaluate(row, by_key) for row in rows]
    columns = [c for c in CPU_COLUMNS if c[1] in bench.probes]
    delay = f"{args.s3_latency * 1000:.0f} ms"
    return markdown_table(f"Every S3 data request delayed {delay} ({name})", results, columns)


def cpu_bound(result: dict[str, Any], baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """`result` with ``cpu_ratio``: the baseline's client + server CPU seconds over this row's,
    the throughput ratio the two would have if the CPU were the only limit (idle CPU near 0)."""
    result.setdefault("cpu_ratio", None)
    if baseline is not None:
        mine = result.get("client_cpu_s", 0.0) + result.get("server_cpu_s", 0.0)
        theirs = baseline.get("client_cpu_s", 0.0) + baseline.get("server_cpu_s", 0.0)
        result["cpu_ratio"] = theirs / mine if mine > 0 else None
    return result


def parse_args(argv: Sequence[str] | None = None) -> Any:
    parser = make_parser(__doc__)
    add_common_arguments(parser, size=128 * MiB, rounds=3)
    parser.add_argument(
        "--memory",
        type=size_list,
        metavar="SIZES",
        help="also measure the peak RSS per process (sender, each receiver) at these sizes, "
        "e.g. 512MiB,2GiB",
    )
    parser.add_argument(
        "--memory-staging",
        choices=("local", "s3", "both"),
        default="both",
        help="where --memory stages: a local folder, the S3 endpoints, or both (both)",
    )
    add_endpoint_arguments(parser)
    parser.add_argument("--no-rounds", action="store_true", help="only the --memory table")
    parser.add_argument(
        "--s3-latency",
        type=float,
        default=0.0,
        metavar="S",
        help="also time relay x1 against ship in + ship out on the first S3 server with every S3"
        " data request of this process delayed S seconds (latency-bound, not CPU-bound)",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    info = machine_info("s3fs", "moto")
    started = time.perf_counter()
    data = make_data(args.size, args.seed)
    sections: list[str] = []
    report: dict[str, Any] = {"machine": info, "endpoints": {}}
    goals_met = True
    with (
        workspace("fstransport-bench-relay-", args.dir) as (folder, loop),
        endpoints(args, folder) as servers,
    ):
        for endpoint in [] if args.no_rounds else servers:
            bench = Bench(folder, data, endpoint, loop)
            cases = bench.cases()
            run_rounds(cases, args.rounds, args.warmup, random.Random(args.seed), endpoint.name)
            side = bench.requests()
            pipe = bench.pipeline()
            side["pipeline"] = pipe
            by_key = {case.key: case for case in cases}
            rows = [
                Row("direct1"),
                Row("fanout3", "direct1", "fan-out x3 >= 0.67x direct x1", goal_ratio=1 / 1.5),
                Row("relay1", "two", "relay x1 >= 1.43x ship in + out", goal_ratio=1 / 0.7),
                Row("relay3", "relay1", "relay x3 >= 0.67x relay x1", goal_ratio=1 / 1.5),
                Row("two"),
            ]
            results = [evaluate(row, by_key) for row in rows]
            for result in results:
                cpu_bound(
                    result, next((r for r in results if r["case"] == result["baseline"]), None)
                )
            columns = [c for c in CPU_COLUMNS if c[1] in bench.probes]
            columns.append(("CPU-bound ratio", "cpu_ratio"))
            title = f"Fan-out and relay ({endpoint.name})"
            sections += [markdown_table(title, results, columns), ""]
            sections.append(
                f"On {endpoint.name}: source read per fan-out 1.00x its size (asserted every "
                f"round); uploaded to the relay {side['bytes_uploaded_ratio']:.2f}x; PUTs "
                f"{side['puts']}, one per chunk object ({side['chunk_puts_per_8mib']:.2f} per "
                f"8 MiB staged) and one manifest, {side['multipart_parts']} multipart parts; "
                f"one reference on the wire: {side['reference_bytes']} bytes.\n"
            )
            sections.append(
                f"Pipelining (one untimed relay x1, {pipe['total_s']:.2f} s): the first chunk"
                f" staged at {pipe['first_put_end_s']:.2f} s, the receiver's first fetch began at"
                f" {pipe['first_fetch_start_s']:.2f} s, the last chunk staged at"
                f" {pipe['last_put_end_s']:.2f} s; {pipe['fetched_before_last_put']:.0%} of the"
                f" bytes were fetched before it; after it (manifest {pipe['manifest_s']:.3f} s,"
                f" the last fetches, install) {pipe['tail_s']:.2f} s,"
                f" {pipe['tail_fraction']:.0%} of the run.\n"
            )
            report["endpoints"][endpoint.name] = {"results": results, "side": side}
            goals_met &= all(r["met"] for r in results if r["met"] is not None)
            if args.s3_latency > 0 and endpoint is servers[0]:
                sections.append(latency_table(bench, args, endpoint.name))
            bench.empty_bucket()
        if args.memory:
            places: list[Endpoint | None] = []
            if args.memory_staging in ("local", "both"):
                places.append(None)
            if args.memory_staging in ("s3", "both"):
                places += servers
            for place in places:
                if place is not None:
                    Bench(folder, data, place, loop)  # (creates and empties the bucket)
            sections.append(memory_table(folder, args.memory, places))
    names = ", ".join(f"{e}" for e in report["endpoints"]) or "none"
    publish(
        report,
        info,
        started,
        args,
        "fstransport relay benchmark",
        f"S3 servers: {names}; moto {info['moto']}, s3fs {info['s3fs']}",
        sections,
    )
    if args.check and not goals_met:
        sys.exit(1)


if __name__ == "__main__":
    main()
