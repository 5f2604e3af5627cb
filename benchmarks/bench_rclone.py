"""rclone and boto3 benchmarks: ``fstransport ship`` against ``rclone copyto`` and boto3.

Run from the repository root (needs ``pip install -e ".[dev]"`` and ``rclone`` on PATH)::

    flock /tmp/fstransport-bench.lock python benchmarks/bench_rclone.py \\
        [--size 384MiB] [--rounds 3] [--endpoint-url URL] [--json out.json]

Command line against command line: each timed run is one ``fstransport ship SRC DST`` process
or one ``rclone copyto SRC DST`` process (rclone at its defaults: 5 MiB parts, 4 upload
streams, 4 ranged download streams above 250 MiB, server-side copy for S3 -> S3), on four
routes: local file -> S3, S3 -> local file, S3 -> S3 (one endpoint) and local file -> local
file.  The S3 server is moto in its own process (``python -m fstransport.moto_server``), and,
with ``--endpoint-url``, also that endpoint (a Ceph RADOS Gateway, say; credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``).  rclone is configured through the
environment (remote ``bench``: ``RCLONE_CONFIG_BENCH_TYPE=s3``, ``_PROVIDER=Other``,
``_ENDPOINT``, keys); against moto it needs ``RCLONE_S3_NO_HEAD=true`` (moto answers its
``HEAD ?versionId=null`` with 400), and ``AWS_CA_BUNDLE`` is dropped from its environment.
Every run writes to a target removed beforehand, so rclone cannot skip the copy.

S3 -> S3 has a third contender, ``fstransport ship --server-side`` (the copy made by the server:
one ``CopyObject`` up to ``--copy-cutoff``), unless ``--ship-args`` has ``--server-side``.

On ``--endpoint-url`` two more groups compare, in this process, ``ship()`` with boto3's
``upload_file`` / ``download_file`` (default ``TransferConfig``).  Last, the peak resident set
of ``fstransport ship`` processes copying S3 -> local file at ``--memory-sizes`` (sampled
``VmHWM`` of the child), with ``rclone copyto`` of the largest as a reference.

The method is the shared harness's: contenders of one route are interleaved round by round in
a shuffled order after an uncounted warm-up round; every copy is verified after its timed region
(objects read back with boto3 and compared byte for byte, no incomplete multipart upload left;
local files compared byte for byte).  Reported: medians, the spread, ratios of medians (goals
are judged on them) and of the fastest rounds, and CPU seconds of the client processes and of
moto.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import (
    CEPH_PROCESSES,  # noqa: F401 (re-exported: it used to be defined here)
    Case,
    ChildProcess,
    GiB,
    MiB,
    PeakRss,
    Row,
    add_common_arguments,
    add_endpoint_arguments,
    check_file,
    check_report,
    check_stream,
    evaluate,
    machine_idle_cpu,
    machine_info,
    make_data,
    make_parser,
    markdown_table,
    moto_process,
    positive_int,
    processes_cpu,
    publish,
    remove_file,
    run_rounds,
    s3_client,
    size_list,
    sync_disk,
    workspace,
    write_file,
)

from fstransport import ship
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.moto_server import REGION, TEST_CREDENTIALS, reset_moto
from fstransport.units import format_size

BUCKET = "fstransport-bench-rclone"
REMOTE = "bench"
SOURCE_KEY = "source.bin"
GOAL_VS_RCLONE = {"file -> S3": 1.2, "S3 -> file": 1.2, "S3 -> S3": 1.2, "file -> file": 1.0}
GOAL_VS_BOTO3 = 1.2
GOAL_PEAK_RSS = 256 * MiB
GOAL_RSS_GROWTH = 16 * MiB  # "flat in size": the largest ship's peak above the smallest's
CPU_COLUMNS = (
    ("client CPU s", "client_cpu_s"),
    ("server CPU s", "server_cpu_s"),
    ("idle CPU s", "idle_cpu_s"),
)


def children_cpu() -> float:
    """CPU seconds of this process and of every child it has waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Endpoint:
    """An S3 server: its URL, keys, the rclone settings it needs, and moto's process if any."""

    name: str
    url: str
    key: str
    secret: str
    rclone_extra: dict[str, str] = field(default_factory=dict)
    server: ChildProcess | None = None
    server_processes: tuple[str, ...] = ()  # command names of an external server's processes

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.url, "region_name": REGION},
        }

    def env(self, *, for_rclone: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        env |= {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": REGION,
        }
        if for_rclone:
            prefix = f"RCLONE_CONFIG_{REMOTE.upper()}_"
            env |= {
                prefix + "TYPE": "s3",
                prefix + "PROVIDER": "Other",
                prefix + "ENDPOINT": self.url,
                prefix + "ACCESS_KEY_ID": self.key,
                prefix + "SECRET_ACCESS_KEY": self.secret,
                **self.rclone_extra,
            }
        return env


class RcloneBench:
    """Builds the contenders over one endpoint, one local source file and one event loop."""

    def __init__(
        self,
        data: bytes,
        folder: str,
        endpoint: Endpoint,
        loop: asyncio.AbstractEventLoop,
        ship_args: Sequence[str] = (),
    ) -> None:
        self.data = data
        self.ship_args = list(ship_args)
        """Options added to every `fstransport ship` command line (``--ship-args``)."""
        self.folder = folder
        self.endpoint = endpoint
        self.loop = loop
        self.checksum = format_checksum(chunk_crc(data))
        # the bytes are compared here; moto's CopyObject (rclone's S3 -> S3) keeps the source's
        # multipart CRC but serves it as a whole-object one, which botocore rejects
        self.client = s3_client(
            endpoint.url, endpoint.key, endpoint.secret, REGION, check_reads=False
        )
        self.source = os.path.join(folder, "src.bin")
        fstransport = shutil.which("fstransport", path=os.path.dirname(sys.executable))
        rclone = shutil.which("rclone")
        if fstransport is None or rclone is None:
            raise RuntimeError("needs the fstransport command beside python and rclone on PATH")
        self.fstransport: str = fstransport
        self.rclone: str = rclone
        self.probes: dict[str, Callable[[], float]] = {
            "client_cpu_s": children_cpu,
            "idle_cpu_s": machine_idle_cpu,
        }
        if endpoint.server is not None:
            self.probes["server_cpu_s"] = endpoint.server.cpu_seconds
        elif endpoint.server_processes:
            self.probes["server_cpu_s"] = processes_cpu(endpoint.server_processes)

    # -- places ------------------------------------------------------------------------------

    def local_path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def s3_url(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def rclone_url(self, key: str) -> str:
        return f"{REMOTE}:{BUCKET}/{key}"

    def reset(self) -> None:
        """An empty bucket holding only the source object."""
        if self.endpoint.server is not None:
            reset_moto(self.endpoint.url)
            self.client.create_bucket(Bucket=BUCKET)
        else:
            with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                self.client.create_bucket(Bucket=BUCKET)
            self.empty_bucket()
        self.client.upload_file(self.source, BUCKET, SOURCE_KEY)
        self.check_object(SOURCE_KEY)

    def empty_bucket(self) -> None:
        for upload in self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            self.client.abort_multipart_upload(
                Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        listed = self.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        for item in listed:
            self.client.delete_object(Bucket=BUCKET, Key=item["Key"])

    def remove_object(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def check_object(self, key: str) -> None:
        body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"]
        with contextlib.closing(body):
            check_stream(f"s3://{BUCKET}/{key}", body, self.data)
        uploads = self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        if uploads:
            raise AssertionError(f"{len(uploads)} incomplete multipart uploads remain")

    # -- commands ----------------------------------------------------------------------------

    def ship_argv(self, source: str, target: str, *extra: str) -> list[str]:
        return [
            self.fstransport, "ship", source, target, "--endpoint-url", self.endpoint.url,
            *self.ship_args, *extra,
        ]  # fmt: skip

    def rclone_argv(self, source: str, target: str) -> list[str]:
        return [self.rclone, "copyto", source, target]

    def command(self, argv: list[str], *, for_rclone: bool) -> Callable[[], object]:
        env = self.endpoint.env(for_rclone=for_rclone)

        def run() -> object:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{argv[0]} exited with {done.returncode}: {done.stderr[-2000:]}"
                )
            return None

        return run

    # -- cases -------------------------------------------------------------------------------

    def to_s3(self, key: str, label: str, run: Callable[[str], Callable[[], object]]) -> Case:
        """... -> s3://BUCKET/<key>: `run(key)` is timed."""
        name = key.replace("/", "-") + ".bin"
        return Case(
            key,
            label,
            len(self.data),
            run(name),
            lambda _: self.check_object(name),
            lambda: self.remove_object(name),
            lambda: self.remove_object(name),
            dict(self.probes),
        )

    def to_file(self, key: str, label: str, run: Callable[[str], Callable[[], object]]) -> Case:
        """... -> a local file: `run(path)` is timed."""
        path = self.local_path(key.replace("/", "-") + ".bin")

        def prepare() -> None:
            remove_file(path)
            sync_disk()

        return Case(
            key,
            label,
            len(self.data),
            run(path),
            lambda _: check_file(path, self.data),
            prepare,
            lambda: remove_file(path),
            dict(self.probes),
        )

    def cli_cases(self, route: str) -> list[Case]:
        """`fstransport ship` and `rclone copyto` on `route`, command line to command line."""
        src_s3, src_file = SOURCE_KEY, self.source
        tag = route.replace(" -> ", "2").replace("S3", "s3")

        def pair(
            make: Callable[[str, str, Callable[[str], Callable[[], object]]], Case],
            source: tuple[str, str],
            target: Callable[[str, bool], str],
        ) -> list[Case]:
            cases = [
                make(
                    f"{tag}/ship",
                    "fstransport ship (CLI), "
                    + (" ".join(self.ship_args) if self.ship_args else "default options"),
                    lambda t: self.command(
                        self.ship_argv(source[0], target(t, False)), for_rclone=False
                    ),
                ),
                make(
                    f"{tag}/rclone",
                    "rclone copyto (CLI), defaults",
                    lambda t: self.command(
                        self.rclone_argv(source[1], target(t, True)), for_rclone=True
                    ),
                ),
            ]  # fmt: skip
            if route == "S3 -> S3" and "--server-side" not in self.ship_args:
                # the copy made by the server, beside the default (streamed where nothing
                # can prove a server-side copy): one CopyObject up to --copy-cutoff
                cases.append(
                    make(
                        f"{tag}/ship-server-side",
                        "fstransport ship (CLI), " + " ".join(["--server-side", *self.ship_args]),
                        lambda t: self.command(
                            self.ship_argv(source[0], target(t, False), "--server-side"),
                            for_rclone=False,
                        ),
                    )
                )
            return cases

        def s3(key: str, rclone: bool) -> str:
            return self.rclone_url(key) if rclone else self.s3_url(key)

        def local(path: str, rclone: bool) -> str:
            return path

        s3_source = (self.s3_url(src_s3), self.rclone_url(src_s3))
        if route == "file -> S3":
            return pair(self.to_s3, (src_file, src_file), s3)
        if route == "S3 -> file":
            return pair(self.to_file, s3_source, local)
        if route == "S3 -> S3":
            return pair(self.to_s3, s3_source, s3)
        return pair(self.to_file, (src_file, src_file), local)

    def api_cases(self, route: str) -> list[Case]:
        """`ship()` and boto3's TransferManager in this process (default TransferConfig)."""
        options = self.endpoint.storage_options

        def shipped(source: str, target: str, up: bool) -> object:
            report = self.loop.run_until_complete(
                ship(source, target, target_options=options)
                if up
                else ship(source, target, source_options=options)
            )
            check_report(report, len(self.data), self.checksum)
            return report

        if route == "file -> S3":
            return [
                self.to_s3(
                    "api-up/ship",
                    "fstransport ship(), default options",
                    lambda k: lambda: shipped(self.source, self.s3_url(k), True),
                ),
                self.to_s3(
                    "api-up/boto3",
                    "boto3 upload_file, default TransferConfig (8 MiB x 10)",
                    lambda k: lambda: self.client.upload_file(self.source, BUCKET, k),
                ),
            ]
        return [
            self.to_file(
                "api-down/ship",
                "fstransport ship(), default options",
                lambda p: lambda: shipped(self.s3_url(SOURCE_KEY), p, False),
            ),
            self.to_file(
                "api-down/boto3",
                "boto3 download_file, default TransferConfig (8 MiB x 10)",
                lambda p: lambda: self.client.download_file(BUCKET, SOURCE_KEY, p),
            ),
        ]


# -- start-up ----------------------------------------------------------------------------------


def startup_table(
    bench: RcloneBench, rounds: int, rng: random.Random
) -> tuple[str, dict[str, Any]]:
    """`fstransport --version` and `rclone version`, interleaved: the start-up each CLI timing
    above includes (interpreter and imports for fstransport)."""
    argvs = {
        "fstransport --version": [bench.fstransport, "--version"],
        "rclone version": [bench.rclone, "version"],
    }
    cases = [
        Case(name, name, 1, bench.command(argv, for_rclone=False), lambda _: None)
        for name, argv in argvs.items()
    ]
    run_rounds(cases, rounds, 1, rng, "start-up")
    lines = [
        "### Start-up of each command (no copy)",
        "",
        "| command | median s | fastest-slowest s |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| `{c.label}` | {c.median:.3f} | {min(c.samples):.3f}-{max(c.samples):.3f} |"
        for c in cases
    ]
    return "\n".join(lines), {c.key: c.samples for c in cases}


# -- peak memory -------------------------------------------------------------------------------


def peak_of(argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` to its end; the peak resident set of that process (sampled VmHWM), bytes."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = PeakRss(proc.pid)
    _, err = proc.communicate(timeout=1800)
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {err[-2000:]!r}")
    return peak


def run_memory(
    bench: RcloneBench, sizes: Sequence[int], rounds: int, seed: int
) -> tuple[str, dict[str, Any], bool]:
    """`fstransport ship` S3 -> local file at each size (fresh processes, `rounds` each,
    interleaved), and `rclone copyto` of the largest as a reference."""
    keys: dict[int, str] = {}
    for size in sizes:
        path = bench.local_path(f"memory-{size}.bin")
        print(f"  memory: putting a {format_size(size)} object ...", file=sys.stderr)
        write_file(path, size, seed + size)
        keys[size] = f"memory-{size}.bin"
        bench.client.upload_file(path, BUCKET, keys[size])
        remove_file(path)
    largest = max(sizes)
    runs: list[tuple[str, int, bool]] = [(f"ship-{s}", s, False) for s in sizes]
    runs.append((f"rclone-{largest}", largest, True))
    peaks: dict[str, list[int]] = {name: [] for name, _, _ in runs}
    target = bench.local_path("memory-out.bin")
    for index in range(rounds):
        for name, size, is_rclone in runs:
            remove_file(target)
            argv = (
                bench.rclone_argv(bench.rclone_url(keys[size]), target)
                if is_rclone
                else bench.ship_argv(bench.s3_url(keys[size]), target)
            )
            peaks[name].append(peak_of(argv, bench.endpoint.env(for_rclone=is_rclone)))
            if os.path.getsize(target) != size:
                raise AssertionError(f"{name}: the copy has {os.path.getsize(target)} bytes")
            remove_file(target)
        print(f"  memory: round {index + 1}/{rounds} done", file=sys.stderr)
    for key in keys.values():
        bench.remove_object(key)

    def mib(n: float) -> str:
        return f"{n / MiB:,.0f} MiB"

    met = max(peaks[f"ship-{largest}"]) <= GOAL_PEAK_RSS
    growth = None
    if len(sizes) > 1:
        growth = max(peaks[f"ship-{largest}"]) - max(peaks[f"ship-{min(sizes)}"])
        met = met and growth <= GOAL_RSS_GROWTH
    lines = [
        f"### Peak RSS, S3 -> local file on {bench.endpoint.name} (fresh processes)",
        "",
        f"Each row: {rounds} processes; peak resident set (`VmHWM` sampled every 10 ms).",
        "",
        "| process | size | peak RSS, median (highest) | every process | goal | met |",
        "|---|---:|---:|---|---|---|",
    ]
    for name, size, is_rclone in runs:
        values = peaks[name]
        goal = ok = ""
        if name == f"ship-{largest}":
            goal, ok = f"<= {mib(GOAL_PEAK_RSS)}", "yes" if met else "**no**"
            if growth is not None:
                goal += f", <= +{mib(GOAL_RSS_GROWTH)} over {format_size(min(sizes))}"
        label = "rclone copyto (reference)" if is_rclone else "fstransport ship"
        lines.append(
            f"| {label} | {format_size(size)} | {mib(statistics.median(values))}"
            f" ({mib(max(values))}) | {', '.join(mib(v) for v in values)} | {goal} | {ok} |"
        )
    if growth is not None:
        lines += [
            "",
            f"ship of {format_size(largest)} against {format_size(min(sizes))}: "
            f"highest peak {growth / MiB:+,.0f} MiB.",
        ]
    return "\n".join(lines), {"sizes": list(sizes), "peaks_bytes": peaks}, met


# -- main --------------------------------------------------------------------------------------


ROUTES = ("file -> S3", "S3 -> file", "S3 -> S3", "file -> file")


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = make_parser(__doc__)
    add_common_arguments(parser, size=384 * MiB, rounds=3, what="object size")
    add_endpoint_arguments(parser)
    parser.add_argument(
        "--routes",
        type=lambda text: [r.strip() for r in text.split(",")],
        default=list(ROUTES),
        help=f"comma-separated, of {', '.join(ROUTES)} (default: all)",
    )
    parser.add_argument(
        "--memory-sizes",
        type=size_list,
        default=[512 * MiB, 2 * GiB],
        help="sizes of the peak-RSS ships, comma-separated (512MiB,2GiB)",
    )
    parser.add_argument(
        "--memory-rounds", type=positive_int, default=2, help="processes per peak-RSS size (2)"
    )
    parser.add_argument(
        "--startup-rounds", type=positive_int, default=5, help="rounds of the start-up timing (5)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    parser.add_argument(
        "--ship-args",
        type=shlex.split,
        default=[],
        metavar="ARGS",
        help="options added to every timed `fstransport ship` command line, e.g."
        " --ship-args=--server-side with --routes 'S3 -> S3' (none)",
    )
    args = parser.parse_args(argv)
    unknown = [r for r in args.routes if r not in ROUTES]
    if unknown:
        parser.error(f"unknown routes {unknown}; choose from {', '.join(ROUTES)}")
    return args


@contextlib.contextmanager
def endpoints(args: Any, folder: str) -> Iterator[list[Endpoint]]:
    """moto in its own process (unless --no-moto), then --endpoint-url if given."""
    found: list[Endpoint] = []
    with contextlib.ExitStack() as stack:
        if not args.no_moto:
            log = stack.enter_context(open(os.path.join(folder, "moto.log"), "wb"))
            moto = stack.enter_context(moto_process(log))
            print(f"moto server (pid {moto.pid}) at {moto.address}", file=sys.stderr)
            extra = {"RCLONE_S3_NO_HEAD": "true"}
            found.append(
                Endpoint(
                    "moto", moto.address, TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"],
                    extra, moto,
                )
            )  # fmt: skip
        if args.endpoint_url:
            key = os.environ.get("AWS_ACCESS_KEY_ID", "")
            secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            if not key or not secret:
                raise SystemExit("--endpoint-url needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            names = tuple(n for n in args.server_processes.split(",") if n)
            found.append(
                Endpoint(args.endpoint_name, args.endpoint_url, key, secret, server_processes=names)
            )
        yield found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    info = machine_info("s3fs", "boto3", "moto")
    rclone_version = subprocess.run(
        ["rclone", "version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    info["rclone"] = rclone_version[0] if rclone_version else "not found"
    print(f"generating {format_size(args.size)} of data (seed {args.seed}) ...", file=sys.stderr)
    data = make_data(args.size, args.seed)
    report: dict[str, Any] = {"machine": info, "args": dict(vars(args)), "groups": {}}
    out: list[str] = []
    met: list[bool] = []
    with workspace("fstransport-bench-rclone-", args.dir) as (folder, loop):
        with open(os.path.join(folder, "src.bin"), "wb") as fh:
            fh.write(data)
        sync_disk()
        with endpoints(args, folder) as servers:
            groups: list[tuple[RcloneBench, str, list[Case], str]] = []
            for endpoint in servers:
                bench = RcloneBench(data, folder, endpoint, loop, args.ship_args)
                for route in args.routes:
                    if route == "file -> file" and endpoint is not servers[0]:
                        continue  # no S3 in it: once is enough
                    where = "" if route == "file -> file" else f" on {endpoint.name}"
                    groups.append((bench, f"{route}{where}, CLI", bench.cli_cases(route), route))
                if endpoint.server is None:
                    for route in ("file -> S3", "S3 -> file"):
                        title = f"{route} on {endpoint.name}, Python API: ship() vs boto3"
                        groups.append((bench, title, bench.api_cases(route), "boto3"))
            text, startup = startup_table(
                RcloneBench(data, folder, servers[0], loop), args.startup_rounds, rng
            )
            report["startup_s"] = startup
            out += [text, ""]
            for bench, title, cases, kind in groups:
                bench.reset()
                run_rounds(cases, args.rounds, args.warmup, rng, title)
                base = cases[1].key
                goal = GOAL_VS_BOTO3 if kind == "boto3" else GOAL_VS_RCLONE[kind]
                rows = [Row(base)] + [
                    Row(case.key, base, f">= {goal:.1f}x", goal_ratio=goal)
                    for case in [cases[0], *cases[2:]]
                ]
                by_key = {c.key: c for c in cases}
                results = [evaluate(row, by_key) for row in rows]
                report["groups"][title] = {
                    "rows": results,
                    "cases": {c.key: c.to_dict() for c in cases},
                }
                met += [r["met"] for r in results if r["met"] is not None]
                columns = [c for c in CPU_COLUMNS if c[1] in bench.probes]
                out += [markdown_table(title, results, columns), ""]
            if not args.no_memory:
                bench = RcloneBench(data, folder, servers[-1], loop)
                bench.reset()
                text, memory, memory_met = run_memory(
                    bench, args.memory_sizes, args.memory_rounds, args.seed
                )
                report["memory"] = memory
                if max(args.memory_sizes) >= 2 * GiB:
                    met.append(memory_met)
                out += [text, ""]
            for endpoint in servers:
                if endpoint.server is None:
                    RcloneBench(data, folder, endpoint, loop).empty_bucket()

    publish(
        report,
        info,
        started,
        args,
        "fstransport against rclone and boto3",
        f"{info['rclone']}, boto3 {info['boto3']}, moto {info['moto']} (own process)",
        out,
    )
    return 1 if args.check and not all(met) else 0


if __name__ == "__main__":
    sys.exit(main())
