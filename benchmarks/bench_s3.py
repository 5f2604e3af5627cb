"""S3 benchmarks: `ship()` to and from S3 against boto3 and s3fs, and the memory a ship needs.

Run from the repository root (needs ``pip install -e ".[dev]"``: moto, boto3)::

    python benchmarks/bench_s3.py [--size 256MiB] [--rounds 3] [--json out.json] [--check]
        [--groups up,down,read,copy] [--no-memory] [--compare DIR [--pairs 4]]

The baselines are boto3's TransferManager (``client.upload_file`` / ``download_file``, which run
``s3transfer``'s TransferManager through ``S3Transfer``): once with the default
``TransferConfig()`` (8 MiB parts, 10 threads) and once tuned to ``ship()``'s own part size and
concurrency (8 MiB, 4 threads); and s3fs ``put_file`` / ``get_file`` with default settings.
``ship()`` is judged against the best of them.  One more row is a reference, not a contender: the
same multipart upload made with aiobotocore from parts already in memory (no file, no chunks,
no protocol), the fastest any client could make moto take an upload.

Two more groups compare ways of doing the same thing (issue #13).  ``read``: ``ship()`` from S3
to a local file with one streaming GET, with its default (ranged GETs, 4 x 8 MiB, after a probe
that falls back to the one GET where the server answers slowly, as moto does), and with ranged
GETs only (no fallback) at several streams x part sizes; no goal, the default is the baseline of
the ratios.  ``copy``: S3 -> S3 in one bucket by ``ship(server_side=True)`` (``UploadPartCopy``),
by ``ship(server_side=False)`` (streamed through this process, a reference), by boto3's managed
``copy`` and by s3fs ``copy``; the server-side ship is judged against the best of boto3 and s3fs.
Objects are read back without botocore's response checksum check, since moto's ``CopyObject``
keeps the source's multipart CRC32 as if it were the whole object's; the bytes are compared.

The S3 server is moto in server mode, in its own process (``python -m fstransport.moto_server``
on 127.0.0.1, a free port), so its CPU time is not ours and can be reported on its own.  The
method is the shared harness's (``harness.py``): the contenders of one direction
form a group and are interleaved round by round in a shuffled order, a warm-up round is not
counted, and each copy is verified after its timed region (S3 objects read back with boto3, local
files compared byte for byte; no incomplete multipart upload may remain).  The timed region is
the copy alone: ``ship()`` through one long-lived event loop, or the baseline's call, with the
boto3 client and the s3fs filesystem created once beforehand (``ship()`` cannot be handed a
client, so it connects inside its own timing, as it does for a user).

The peak memory of a ship is measured in fresh Python processes, one per measurement, that
ship a local file to S3 with default options and report their ``VmHWM`` (the peak resident set
of the process, from ``/proc/self/status``).  ``ru_maxrss`` is not used: Linux carries it over
``execve`` from the parent, so a child of this (large) process would report the parent's peak.

``--compare DIR`` (a source tree of another commit: ``git worktree add DIR TAG``) runs the timed
groups (no memory processes) against this tree's ``fstransport`` and DIR's, in fresh processes
that take turns (``--pairs`` each), each with a moto server of its own, and reports every case's
median for both with the ratio this/DIR (``harness.compare_trees``, as ``bench_core.py`` does).

Throughput is MiB/s (2**20 bytes per second) of object data.  Ratios are of medians, with the
ratio of the fastest rounds beside them; goals are judged on the ratio of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import s3fs
from boto3.s3.transfer import TransferConfig
from harness import (
    Case,
    ChildProcess,
    GiB,
    KiB,
    MiB,
    PeakRss,
    Row,
    add_common_arguments,
    add_compare_arguments,
    check_file,
    check_report,
    compare_trees,
    evaluate,
    machine_info,
    make_data,
    make_parser,
    markdown_table,
    moto_process,
    positive_int,
    publish,
    remove_file,
    run_rounds,
    s3_client,
    size_list,
    sync_disk,
    workspace,
    write_file,
)

from fstransport import TransferOptions, ship
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.moto_server import REGION, TEST_CREDENTIALS, reset_moto, storage_options_for
from fstransport.protocol.parts import choose_part_size
from fstransport.storage._aio import close_async_filesystem

try:
    from fstransport.storage.backends.s3 import crc32c_header, open_s3
    from fstransport.storage.backends.s3 import ranged as s3_ranged
    from fstransport.storage.backends.s3.multipart import DEFAULT_UPLOADS, PartBody
except ModuleNotFoundError:  # a tree from before storage by backend (issue #12), for --compare
    _old_s3 = importlib.import_module("fstransport.storage.s3")
    crc32c_header, open_s3 = _old_s3.crc32c_header, _old_s3.open_s3
    s3_ranged = importlib.import_module("fstransport.storage.s3_ranged")
    _old_multipart = importlib.import_module("fstransport.storage.multipart")
    DEFAULT_UPLOADS, PartBody = _old_multipart.DEFAULT_UPLOADS, _old_multipart.PartBody
from fstransport.units import format_size

BUCKET = "fstransport-bench"
GOAL_SPEED_RATIO = 1.2  # ship() >= 1.2x the best of boto3 and s3fs, in each direction
GOAL_PEAK_RSS = 256 * MiB  # peak RSS of a process shipping the largest file (2 GiB) to S3
GOAL_RSS_GROWTH = 16 * MiB  # the largest ship's peak above the smallest's (the noise seen)
COMPARE_STEP = 8 * MiB
RANGED_READS = [(4, 8 * MiB), (4, 32 * MiB)]
"""(streams, part size) of the rows that keep ranged GETs whatever the server (no fallback)."""
GROUPS = ("up", "down", "read", "copy")
"""What ``--groups`` can name, in the order they run."""
BOTO3_TUNED = TransferConfig(multipart_chunksize=8 * MiB, max_concurrency=DEFAULT_UPLOADS)
"""boto3's TransferManager with ship()'s part size (8 MiB up to 80 GiB) and concurrency."""

# A memory measurement in a fresh process: argv = mode [file url endpoint].  Prints one JSON line
# with the peak resident set after the imports and at the end (VmHWM, KiB).
MEMORY_CODE = """\
import json, resource, sys, time

def status():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out

mode = sys.argv[1]
if mode == "import-fstransport":
    import fstransport, s3fs
elif mode == "import-boto3":
    import boto3
elif mode == "ship":
    import asyncio, fstransport, s3fs
    from fstransport.moto_server import storage_options_for
elif mode == "boto3":
    import boto3
else:
    raise SystemExit(f"unknown mode {mode!r}")
result = {"mode": mode, "after_imports": status()}
if mode in ("ship", "boto3"):
    path, url, endpoint = sys.argv[2:5]
    bucket, _, key = url.removeprefix("s3://").partition("/")
    started = time.perf_counter()
    if mode == "ship":
        report = asyncio.run(
            fstransport.ship(path, url, target_options=storage_options_for(endpoint))
        )
        result["size"] = report.size
        result["checksum"] = report.checksum
    else:
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        client.upload_file(path, bucket, key)
    result["elapsed"] = time.perf_counter() - started
result["end"] = status()
result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(result), flush=True)
"""


# -- contenders --------------------------------------------------------------------------------


class S3Bench:
    """Builds the contenders over one event loop, one moto server and one local source file."""

    def __init__(
        self,
        data: bytes,
        folder: str,
        moto: ChildProcess,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.data = data
        self.folder = folder
        self.moto = moto
        self.loop = loop
        self.checksum = format_checksum(chunk_crc(data))
        self.options = storage_options_for(moto.address)
        login = (TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"], REGION)
        self.client = s3_client(moto.address, *login)
        # reads back without botocore's response checksum check (see s3_client: s3fs copies)
        self.checker = s3_client(moto.address, *login, check_reads=False)
        # Its own instance, so that ship()'s cached synchronous filesystem is not shared with it.
        self.fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.options)
        self.source = self.local_path("src.bin")
        with open(self.source, "wb") as fh:
            fh.write(data)
        sync_disk()
        self.probes: dict[str, Callable[[], float]] = {
            "client_cpu_s": time.process_time,
            "server_cpu_s": moto.cpu_seconds,
        }

    # -- places ------------------------------------------------------------------------------

    def local_path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def reset(self) -> None:
        """Empty moto and create the bucket again."""
        reset_moto(self.moto.address)
        self.client.create_bucket(Bucket=BUCKET)
        self.fs.invalidate_cache()

    def remove_object(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)
        self.fs.invalidate_cache()

    def remove_local(self, name: str) -> None:
        remove_file(self.local_path(name))

    def check_no_uploads(self) -> None:
        uploads = self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        if uploads:
            keys = sorted({u["Key"] for u in uploads})
            raise AssertionError(f"{len(uploads)} incomplete multipart uploads remain: {keys}")

    def check_object(self, key: str, expected: bytes | str) -> None:
        """Read s3://BUCKET/key back with boto3 and compare it with `expected` (bytes or a file)."""
        body = self.checker.get_object(Bucket=BUCKET, Key=key)["Body"]
        with contextlib.ExitStack() as stack:
            reference: IO[bytes] = (
                io.BytesIO(expected)
                if isinstance(expected, bytes)
                else stack.enter_context(open(expected, "rb"))
            )
            stack.callback(body.close)
            offset = 0
            while True:
                want = reference.read(COMPARE_STEP)
                got = body.read(COMPARE_STEP) if want else body.read(1)
                if got != want:
                    raise AssertionError(f"s3://{BUCKET}/{key} differs from the source at {offset}")
                if not want:
                    break
                offset += len(want)

    def check_local(self, name: str) -> None:
        check_file(self.local_path(name), self.data)

    def check_report(self, result: object) -> None:
        check_report(result, len(self.data), self.checksum)

    # -- building cases ----------------------------------------------------------------------

    def _case(
        self,
        key: str,
        label: str,
        run: Callable[[], object],
        verify: Callable[[object], None],
        prepare: Callable[[], None],
        cleanup: Callable[[], None] = lambda: None,
    ) -> Case:
        """A `Case` whose run also records the CPU seconds spent here and in moto."""
        return Case(key, label, len(self.data), run, verify, prepare, cleanup, dict(self.probes))

    def upload(
        self, key: str, label: str, copy: Callable[[str], object], *, is_ship: bool = False
    ) -> Case:
        """file -> s3://BUCKET/<name>: `copy(name)` is timed."""
        name = f"{key.replace('/', '-')}.bin"

        def verify(result: object) -> None:
            if is_ship:
                self.check_report(result)
            self.check_object(name, self.data)
            self.check_no_uploads()

        return self._case(key, label, lambda: copy(name), verify, lambda: self.remove_object(name))

    def download(
        self, key: str, label: str, copy: Callable[[str], object], *, is_ship: bool = False
    ) -> Case:
        """s3://BUCKET/<some key> -> local file: `copy(local path)` is timed."""
        name = f"{key.replace('/', '-')}.bin"

        def prepare() -> None:
            self.remove_local(name)
            sync_disk()

        def verify(result: object) -> None:
            if is_ship:
                self.check_report(result)
            self.check_local(name)

        return self._case(
            key,
            label,
            lambda: copy(self.local_path(name)),
            verify,
            prepare,
            lambda: self.remove_local(name),
        )

    # -- the contenders ----------------------------------------------------------------------

    def ship_up(self, name: str) -> object:
        url = f"s3://{BUCKET}/{name}"
        return self.loop.run_until_complete(ship(self.source, url, target_options=self.options))

    def boto3_up(self, name: str) -> object:
        return self.client.upload_file(self.source, BUCKET, name)

    def boto3_tuned_up(self, name: str) -> object:
        return self.client.upload_file(self.source, BUCKET, name, Config=BOTO3_TUNED)

    def ceiling_up(self, name: str) -> object:
        """The upload ship() makes, from parts already in memory (the source's bytes), straight
        through aiobotocore: what moto can take, whatever the client."""
        return self.loop.run_until_complete(self._ceiling_up(name))

    async def _ceiling_up(self, name: str) -> None:
        fs = await open_s3(self.options)
        try:
            call = fs._call_s3
            started = await call(
                "create_multipart_upload", Bucket=BUCKET, Key=name, ChecksumAlgorithm="CRC32C"
            )
            upload_id = started["UploadId"]
            part_size = choose_part_size(len(self.data))
            slots = asyncio.Semaphore(DEFAULT_UPLOADS)
            view = memoryview(self.data)
            parts: dict[int, dict[str, Any]] = {}

            async def part(number: int) -> None:
                data = view[(number - 1) * part_size : number * part_size]
                async with slots:
                    checksum = crc32c_header(chunk_crc(data))
                    answer = await call(
                        "upload_part",
                        Bucket=BUCKET,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=PartBody(data),
                        ChecksumCRC32C=checksum,
                    )
                    parts[number] = {
                        "PartNumber": number,
                        "ETag": answer["ETag"],
                        "ChecksumCRC32C": checksum,
                    }

            count = -(-len(self.data) // part_size)
            await asyncio.gather(*(part(n) for n in range(1, count + 1)))
            await call(
                "complete_multipart_upload",
                Bucket=BUCKET,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": [parts[n] for n in sorted(parts)]},
            )
        finally:
            await close_async_filesystem(fs)

    def s3fs_up(self, name: str) -> object:
        return self.fs.put_file(self.source, f"{BUCKET}/{name}")

    def ship_down(self, source_key: str) -> Callable[[str], object]:
        url = f"s3://{BUCKET}/{source_key}"
        return lambda path: self.loop.run_until_complete(
            ship(url, path, source_options=self.options)
        )

    def ship_down_with(
        self, source_key: str, options: TransferOptions, *, fallback: bool = True
    ) -> Callable[[str], object]:
        """ship() S3 -> file with `options`; without `fallback`, the ranged source keeps its
        ranged GETs even where the server answers each slowly (moto)."""
        url = f"s3://{BUCKET}/{source_key}"

        def copy(path: str) -> object:
            saved = s3_ranged.FALLBACK_RATIO
            if not fallback:
                s3_ranged.FALLBACK_RATIO = None
            try:
                return self.loop.run_until_complete(
                    ship(url, path, source_options=self.options, options=options)
                )
            finally:
                s3_ranged.FALLBACK_RATIO = saved

        return copy

    def ship_copy(self, source_key: str, server_side: bool) -> Callable[[str], object]:
        """S3 -> S3 on moto: streamed through this process, or copied by the server."""
        url = f"s3://{BUCKET}/{source_key}"

        def copy(name: str) -> object:
            report = self.loop.run_until_complete(
                ship(
                    url,
                    f"s3://{BUCKET}/{name}",
                    source_options=self.options,
                    target_options=self.options,
                    server_side=server_side,
                )
            )
            if report.server_side != server_side:
                raise AssertionError(f"ship(server_side={server_side}) reported {report}")
            return report

        return copy

    def boto3_copy(self, source_key: str) -> Callable[[str], object]:
        """boto3's managed copy (TransferManager: UploadPartCopy, 8 MiB parts, 10 threads)."""
        source = {"Bucket": BUCKET, "Key": source_key}
        return lambda name: self.client.copy(source, BUCKET, name)

    def s3fs_copy(self, source_key: str) -> Callable[[str], object]:
        return lambda name: self.fs.copy(f"{BUCKET}/{source_key}", f"{BUCKET}/{name}")

    def boto3_down(self, source_key: str) -> Callable[[str], object]:
        return lambda path: self.client.download_file(BUCKET, source_key, path)

    def boto3_tuned_down(self, source_key: str) -> Callable[[str], object]:
        return lambda path: self.client.download_file(BUCKET, source_key, path, Config=BOTO3_TUNED)

    def s3fs_down(self, source_key: str) -> Callable[[str], object]:
        return lambda path: self.fs.get_file(f"{BUCKET}/{source_key}", path)


# -- groups, results and tables ----------------------------------------------------------------


@dataclass
class Group:
    """One direction: `ship_key` is compared with the best of `baseline_keys`."""

    title: str
    cases: list[Case]
    ship_key: str
    baseline_keys: list[str]
    setup: Callable[[], None] = lambda: None
    reference_keys: list[str] = field(default_factory=list)
    """Rows shown with their ratio to ship() but neither baselines nor contenders."""
    goal_ratio: float | None = GOAL_SPEED_RATIO
    """The ratio ship_key must reach against the best baseline (None: a comparison only)."""
    name: str = ""
    """What ``--groups`` calls it."""
    reference_note: str = " of ship()"
    """What follows the ratio of a reference row (its baseline is `ship_key`)."""


def evaluate_group(group: Group) -> dict[str, Any]:
    """Rows for every contender; ship() is judged against the baseline with the best median."""
    by_key = {c.key: c for c in group.cases}
    best = max(group.baseline_keys, key=lambda k: by_key[k].mibs)
    rows = [Row(k) for k in group.baseline_keys]
    rows += [Row(k, group.ship_key, ratio_note=group.reference_note) for k in group.reference_keys]
    goal = (
        ""
        if group.goal_ratio is None
        else f">= {group.goal_ratio:.1f}x best ({by_key[best].label})"
    )
    rows.append(Row(group.ship_key, best, goal, goal_ratio=group.goal_ratio))
    results = [evaluate(row, by_key) for row in rows]
    versus = {}
    ship_case = by_key[group.ship_key]
    for k in [*group.baseline_keys, *group.reference_keys]:
        base = by_key[k]
        versus[k] = {
            "label": base.label,
            "ratio": ship_case.mibs / base.mibs,
            "best_ratio": ship_case.mibs_range()[1] / base.mibs_range()[1],
        }
    return {"rows": results, "best_baseline": best, "ship_vs": versus}


def group_table(title: str, evaluated: dict[str, Any]) -> str:
    """The harness's table with CPU columns, and ship() against every other contender."""
    columns = (("client CPU s", "client_cpu_s"), ("moto CPU s", "server_cpu_s"))
    versus = "; ".join(
        f"vs {v['label']}: {v['ratio']:.2f}x (fastest rounds {v['best_ratio']:.2f}x)"
        for v in evaluated["ship_vs"].values()
    )
    return f"{markdown_table(title, evaluated['rows'], columns)}\n\nship() {versus}."


def main_groups(bench: S3Bench) -> list[Group]:
    source_key = "download-source.bin"

    def put_download_source() -> None:
        bench.client.upload_file(bench.source, BUCKET, source_key)
        bench.check_object(source_key, bench.data)
        bench.check_no_uploads()

    return [
        Group(
            "1. local file -> S3",
            [
                bench.upload(
                    "up/ship", "fstransport ship(), default options", bench.ship_up, is_ship=True
                ),
                bench.upload(
                    "up/boto3",
                    "boto3 upload_file (TransferManager), default TransferConfig: 8 MiB x 10",
                    bench.boto3_up,
                ),
                bench.upload(
                    "up/boto3-tuned",
                    "boto3 upload_file (TransferManager), TransferConfig 8 MiB x 4 (as ship)",
                    bench.boto3_tuned_up,
                ),
                bench.upload("up/s3fs", "s3fs put_file, default settings", bench.s3fs_up),
                bench.upload(
                    "up/ceiling",
                    "reference: aiobotocore parts from memory, 8 MiB x 4 (moto's ceiling)",
                    bench.ceiling_up,
                ),
            ],
            "up/ship",
            ["up/boto3", "up/boto3-tuned", "up/s3fs"],
            reference_keys=["up/ceiling"],
            name="up",
        ),
        Group(
            "2. S3 -> local file",
            [
                bench.download(
                    "down/ship",
                    "fstransport ship(), default options",
                    bench.ship_down(source_key),
                    is_ship=True,
                ),
                bench.download(
                    "down/boto3",
                    "boto3 download_file (TransferManager), default TransferConfig: 8 MiB x 10",
                    bench.boto3_down(source_key),
                ),
                bench.download(
                    "down/boto3-tuned",
                    "boto3 download_file (TransferManager), TransferConfig 8 MiB x 4",
                    bench.boto3_tuned_down(source_key),
                ),
                bench.download(
                    "down/s3fs",
                    "s3fs get_file, default settings",
                    bench.s3fs_down(source_key),
                ),
            ],
            "down/ship",
            ["down/boto3", "down/boto3-tuned", "down/s3fs"],
            setup=put_download_source,
            name="down",
        ),
        Group(
            "4. S3 -> local file: ship() reading with one GET or with ranged GETs",
            [
                bench.download(
                    "read/one-get",
                    "ship(), one streaming GET (read_streams=1)",
                    bench.ship_down_with(source_key, TransferOptions(read_streams=1)),
                    is_ship=True,
                ),
                bench.download(
                    "read/default",
                    "ship(), default options (4 x 8 MiB ranges; one GET where answers are slow)",
                    bench.ship_down_with(source_key, TransferOptions(ranged_read_threshold=0)),
                    is_ship=True,
                ),
                *(
                    bench.download(
                        f"read/ranged-{streams}x{part // MiB}",
                        f"ship(), ranged GETs only: {streams} x {part // MiB} MiB",
                        bench.ship_down_with(
                            source_key,
                            TransferOptions(
                                read_streams=streams,
                                read_part_size=part,
                                ranged_read_threshold=0,
                                chunk_size=min(part, 8 * MiB),
                            ),
                            fallback=False,
                        ),
                        is_ship=True,
                    )
                    for streams, part in RANGED_READS
                ),
            ],
            "read/default",
            ["read/one-get"],
            reference_keys=[
                f"read/ranged-{streams}x{part // MiB}" for streams, part in RANGED_READS
            ],
            setup=put_download_source,
            goal_ratio=None,
            name="read",
            reference_note=" of default",
        ),
        Group(
            "5. S3 -> S3 on one endpoint",
            [
                bench.upload(
                    "copy/ship-server-side",
                    "ship(server_side=True): UploadPartCopy, 64 MiB x 8",
                    bench.ship_copy(source_key, True),
                ),
                bench.upload(
                    "copy/ship-streamed",
                    "ship(server_side=False): streamed through the client",
                    bench.ship_copy(source_key, False),
                ),
                bench.upload(
                    "copy/boto3",
                    "boto3 copy (TransferManager), default TransferConfig: 8 MiB x 10",
                    bench.boto3_copy(source_key),
                ),
                bench.upload(
                    "copy/s3fs", "s3fs copy, default settings", bench.s3fs_copy(source_key)
                ),
            ],
            "copy/ship-server-side",
            ["copy/boto3", "copy/s3fs"],
            reference_keys=["copy/ship-streamed"],
            setup=put_download_source,
            name="copy",
            reference_note=" of server-side",
        ),
    ]


# -- peak memory -------------------------------------------------------------------------------


def measure_process(args: list[str]) -> dict[str, Any]:
    """Run MEMORY_CODE with `args` in a fresh process; add the RSS peak sampled from outside."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MEMORY_CODE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = PeakRss(proc.pid, field="VmRSS")
    out, err = proc.communicate(timeout=600)
    sampled = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {args[0]} failed ({proc.returncode}):\n{err}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["peak_bytes"] = result["end"]["VmHWM"] * KiB
    result["after_imports_bytes"] = result["after_imports"]["VmHWM"] * KiB
    result["sampled_peak_bytes"] = sampled
    return result


SMALL_SHIP = 1 * MiB  # a ship this small shows the fixed cost: clients, no part buffers


@dataclass
class MemoryRun:
    """Fresh processes doing the same thing, `rounds` times: their peaks and what they did."""

    label: str
    size: int | None
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def peaks(self) -> list[int]:
        return [int(r["peak_bytes"]) for r in self.results]

    @property
    def max_peak(self) -> int:
        return max(self.peaks)

    @property
    def median_peak(self) -> float:
        return statistics.median(self.peaks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size": self.size,
            "peaks_bytes": self.peaks,
            "median_peak_bytes": self.median_peak,
            "max_peak_bytes": self.max_peak,
            "sampled_peaks_bytes": [r["sampled_peak_bytes"] for r in self.results],
            "runs": self.results,
        }


def run_memory(
    bench: S3Bench, sizes: Sequence[int], rounds: int, seed: int
) -> dict[str, MemoryRun]:
    """Import-only processes, ship() of each size and boto3 upload_file of the largest (a
    reference); every measurement a fresh process, each done `rounds` times, interleaved."""
    files: dict[int, str] = {}
    for size in [SMALL_SHIP, *sizes]:
        if size == len(bench.data):
            files[size] = bench.source
        elif size not in files:
            files[size] = bench.local_path(f"memory-{size}.bin")
            print(f"  memory: writing a {format_size(size)} file ...", file=sys.stderr)
            write_file(files[size], size, seed + size)
    largest = max(sizes)
    runs: dict[str, tuple[MemoryRun, list[str]]] = {
        "import-fstransport": (MemoryRun("`import fstransport, s3fs` only", None), []),
        "import-boto3": (MemoryRun("`import boto3` only (reference)", None), []),
    }
    for size in [SMALL_SHIP, *sizes]:
        label = "fstransport ship()" + (" (fixed cost)" if size == SMALL_SHIP else "")
        runs[f"ship-{size}"] = (MemoryRun(label, size), ["ship", files[size]])
    runs[f"boto3-{largest}"] = (
        MemoryRun("boto3 upload_file (reference)", largest),
        ["boto3", files[largest]],
    )
    for index in range(rounds):
        for name, (run, args) in runs.items():
            if not args:
                run.results.append(measure_process([name]))
                continue
            bench.reset()
            key = f"memory-{name}.bin"
            result = measure_process([*args, f"s3://{BUCKET}/{key}", bench.moto.address])
            if args[0] == "ship" and result["size"] != run.size:
                raise AssertionError(f"ship() in the child reported {result['size']} bytes")
            bench.check_object(key, args[1])
            bench.check_no_uploads()
            run.results.append(result)
        print(f"  memory: round {index + 1}/{rounds} done", file=sys.stderr)
    for path in files.values():
        if path != bench.source:
            os.unlink(path)
    bench.reset()
    return {name: run for name, (run, _) in runs.items()}


def memory_table(runs: dict[str, MemoryRun], sizes: Sequence[int]) -> tuple[str, bool]:
    """The table of peaks; the goal holds when the largest ship's every process kept to it."""
    rounds = len(runs["import-fstransport"].results)
    lines = [
        "### 3. Peak memory of a fresh process shipping a local file to S3 (default options)",
        "",
        f"Each row: {rounds} fresh processes; peak RSS is `VmHWM`, median (highest).",
        "",
        "| process | size | peak RSS | above import-only | sampled peak (highest) | goal | met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]

    def mib(n: float) -> str:
        return f"{n / MiB:,.0f} MiB"

    largest = max(sizes)
    met = True
    growth = None
    if len(sizes) > 1:
        growth = runs[f"ship-{largest}"].max_peak - runs[f"ship-{min(sizes)}"].max_peak
    for name, run in runs.items():
        base = runs[
            "import-boto3" if name.startswith(("boto3", "import-boto3")) else "import-fstransport"
        ]
        above = "" if run.size is None else mib(run.median_peak - base.median_peak)
        sampled = max(int(r["sampled_peak_bytes"]) for r in run.results)
        goal = ok = ""
        if name == f"ship-{largest}":
            met = run.max_peak <= GOAL_PEAK_RSS
            goal = f"<= {mib(GOAL_PEAK_RSS)}"
            if growth is not None:
                met = met and growth <= GOAL_RSS_GROWTH
                goal += f", <= +{mib(GOAL_RSS_GROWTH)} over {format_size(min(sizes))}"
            ok = "yes" if met else "**no**"
        size = "" if run.size is None else format_size(run.size)
        lines.append(
            f"| {run.label} | {size} | {mib(run.median_peak)} ({mib(run.max_peak)}) | {above}"
            f" | {mib(sampled)} | {goal} | {ok} |"
        )
    lines.append("")
    if len(sizes) > 1:
        small = runs[f"ship-{min(sizes)}"]
        large = runs[f"ship-{largest}"]
        by_median = (large.median_peak - small.median_peak) / MiB
        by_highest = (large.max_peak - small.max_peak) / MiB
        lines.append(
            f"ship() of {format_size(largest)} against {format_size(min(sizes))} "
            f"({largest // min(sizes)}x the data): peak {by_median:+,.0f} MiB by medians, "
            f"{by_highest:+,.0f} MiB by highest.  Every process's peak: "
            + "; ".join(
                f"{format_size(size)}: "
                + ", ".join(f"{p / MiB:,.0f}" for p in runs[f"ship-{size}"].peaks)
                + " MiB"
                for size in sizes
            )
            + "."
        )
    return "\n".join(lines), met


# -- profile -----------------------------------------------------------------------------------


def profile_ship(bench: S3Bench, path: str) -> str:
    """One more ship() each way under cProfile (this process; moto's CPU reported beside)."""
    source_key = "profile-source.bin"
    bench.client.upload_file(bench.source, BUCKET, source_key)
    out: list[str] = []
    jobs: list[tuple[str, Callable[[], object]]] = [
        ("upload", lambda: bench.ship_up("profile-up.bin")),
        ("download", lambda: bench.ship_down(source_key)(bench.local_path("profile-down.bin"))),
    ]
    for name, job in jobs:
        profiler = cProfile.Profile()
        server0, wall0 = bench.moto.cpu_seconds(), time.perf_counter()
        profiler.enable()
        job()
        profiler.disable()
        wall = time.perf_counter() - wall0
        server = bench.moto.cpu_seconds() - server0
        profiler.dump_stats(f"{path}.{name}.prof")
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats(25)
        out.append(
            f"== ship() {name}: wall {wall:.2f} s, moto CPU {server:.2f} s\n{text.getvalue()}"
        )
    bench.remove_local("profile-down.bin")
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------


S3_PACKAGES = ("s3fs", "aiobotocore", "botocore", "boto3", "moto", "aiohttp", "werkzeug")


def group_list(text: str) -> set[str]:
    """Comma-separated names of timed groups, each one of GROUPS."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = names - set(GROUPS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown groups {sorted(unknown)}; choose from {','.join(GROUPS)}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_common_arguments(parser, size=256 * MiB, rounds=3, what="object size")
    parser.add_argument(
        "--memory-sizes",
        type=size_list,
        default=[512 * MiB, 1 * GiB, 2 * GiB],
        help="sizes of the peak-memory ships, comma-separated (512MiB,1GiB,2GiB)",
    )
    parser.add_argument(
        "--memory-rounds",
        type=positive_int,
        default=3,
        help="fresh processes per peak-memory measurement (3)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-speed", action="store_true", help="skip the timed copies")
    parser.add_argument(
        "--groups",
        type=group_list,
        default=set(GROUPS),
        help=f"timed groups to run, comma-separated, of {','.join(GROUPS)} (all)",
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="also profile one ship() each way; write PATH.upload.prof, PATH.download.prof",
    )
    add_compare_arguments(parser)
    return parser.parse_args(argv)


def _child_args(args: argparse.Namespace) -> list[str]:
    """The flags of one `compare_trees` process: these options, timed groups only."""
    argv = ["--size", str(args.size), "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    argv += ["--seed", str(args.seed), "--groups", ",".join(sorted(args.groups)), "--no-memory"]
    return argv + (["--dir", args.dir] if args.dir else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        child = _child_args(args)
        return compare_trees(
            __file__, args.compare, child, pairs=args.pairs, seed=args.seed, json_path=args.json
        )
    rng = random.Random(args.seed)
    started = time.perf_counter()
    info = machine_info(*S3_PACKAGES)
    print(f"generating {format_size(args.size)} of data (seed {args.seed}) ...", file=sys.stderr)
    data = make_data(args.size, args.seed)
    report: dict[str, Any] = {"machine": info, "args": dict(vars(args))}
    out: list[str] = []
    met: list[bool] = []
    with (
        workspace("fstransport-bench-s3-", args.dir) as (folder, loop),
        open(os.path.join(folder, "moto.log"), "wb") as log,
        moto_process(log) as moto,
    ):
        print(f"moto server (pid {moto.pid}) at {moto.address}", file=sys.stderr)
        bench = S3Bench(data, folder, moto, loop)
        report["cases"] = {}
        report["groups"] = {}
        groups = [g for g in main_groups(bench) if g.name in args.groups]
        for group in [] if args.no_speed else groups:
            bench.reset()
            group.setup()
            run_rounds(group.cases, args.rounds, args.warmup, rng, group.title)
            bench.check_no_uploads()
            report["cases"].update({case.key: case.to_dict() for case in group.cases})
            evaluated = evaluate_group(group)
            report["groups"][group.title] = evaluated
            met += [r["met"] for r in evaluated["rows"] if r["met"] is not None]
            out += [group_table(group.title, evaluated), ""]
        if args.profile:
            bench.reset()
            print("  profiling one ship() each way ...", file=sys.stderr)
            print(profile_ship(bench, args.profile), file=sys.stderr)
        if not args.no_memory:
            sizes = args.memory_sizes
            memory = run_memory(bench, sizes, args.memory_rounds, args.seed)
            report["memory"] = {name: run.to_dict() for name, run in memory.items()}
            text, memory_met = memory_table(memory, sizes)
            if max(sizes) >= 2 * GiB:
                met.append(memory_met)
            out += [text, ""]
        bench.check_no_uploads()
        report["moto_rss_end"] = moto.rss()

    publish(
        report,
        info,
        started,
        args,
        "fstransport S3 benchmarks",
        f"s3fs {info['s3fs']}, boto3 {info['boto3']}, moto {info['moto']} (own process)",
        out,
    )
    return 1 if args.check and not all(met) else 0


if __name__ == "__main__":
    sys.exit(main())
