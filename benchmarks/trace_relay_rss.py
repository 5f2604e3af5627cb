"""Where the relay sender's resident memory goes (issue #14's "+24 MiB with 3 receivers"): runs
the sender of ``bench_relay.py --memory`` (``fstransport ship SRC snap.bin --via ... --relay
STAGE``) in this process, under tracemalloc, with receivers as ``fstransport serve`` processes,
and prints its RSS and Python heap over time and the heap's largest allocation sites when its
RSS peaked.  Not a timed benchmark: tracemalloc slows the sender down.

    flock /tmp/fstransport-bench.lock python benchmarks/trace_relay_rss.py --sizes 512MiB,2GiB
        --receivers 3 [--endpoint-url URL [--no-moto]] [--json out.json]

The staging bucket is on a moto server (its own process) and on ``--endpoint-url`` (keys from
AWS_ACCESS_KEY_ID/SECRET); each ship's sender is a fresh process.  The two numbers to compare
between sizes: the peak RSS (``VmHWM``) and the peak of the Python heap (tracemalloc); if the
heap stays flat while the RSS grows, the growth is native memory (the allocator's arenas,
buffers of C libraries).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any

from bench_rclone import endpoints
from bench_relay import STAGE, _server
from harness import (
    KiB,
    MiB,
    _proc_status_kib,
    add_endpoint_arguments,
    make_parser,
    s3_client,
    size_list,
    workspace,
    write_file,
)

from fstransport.moto_server import REGION

BUCKET = STAGE.split("/")[2]


class Sampler:
    """Samples this process's RSS and tracemalloc's heap every `interval` s; keeps the heap's
    top allocation sites from the moment the RSS was highest."""

    def __init__(self, interval: float = 0.05, top: bool = False) -> None:
        self.interval = interval
        self.top = top
        self.samples: list[tuple[float, int, int, int, int]] = []
        """(s, RSS, Python heap, anonymous RSS, file-backed RSS: mapped source chunks)"""
        self.top_at_peak: list[str] = []
        self._best = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        last_snapshot = 0.0
        while not self._done.is_set():
            rss = _proc_status_kib(os.getpid(), "VmRSS") * KiB
            heap, _ = tracemalloc.get_traced_memory()
            now = time.monotonic() - self._start
            anon = _proc_status_kib(os.getpid(), "RssAnon") * KiB
            mapped = _proc_status_kib(os.getpid(), "RssFile") * KiB
            self.samples.append((now, rss, heap, anon, mapped))
            if self.top and rss > self._best + 2 * MiB and now - last_snapshot > 1.0:
                self._best, last_snapshot = rss, now
                stats = tracemalloc.take_snapshot().statistics("lineno")
                self.top_at_peak = [str(s) for s in stats[:15]]
            time.sleep(self.interval)

    def stop(self) -> dict[str, Any]:
        self._done.set()
        self._thread.join()
        _, heap_peak = tracemalloc.get_traced_memory()
        return {
            "vm_hwm": _proc_status_kib(os.getpid(), "VmHWM") * KiB,
            "rss_max": max(s[1] for s in self.samples),
            "heap_peak": heap_peak,
            "heap_max_sampled": max(s[2] for s in self.samples),
            "anon_max": max(s[3] for s in self.samples),
            "file_max": max(s[4] for s in self.samples),
            "samples": self.samples,
            "top_at_rss_peak": self.top_at_peak,
        }


def trace(folder: str, size: int, receivers: int, url: str, top: bool) -> dict[str, Any]:
    """The sender of one ship (this process, fresh: its VmHWM is this ship's alone)."""
    from fstransport.cli import main as cli_main

    source = os.path.join(folder, f"mem-{size}.bin")
    if not os.path.exists(source):
        write_file(source, size, seed=size)
    stage = STAGE + "-trace"
    relay_args = ["--relay-endpoint-url", url, "--relay-prefix", stage]
    roots = [os.path.join(folder, f"m{i}") for i in range(receivers)]
    log = os.path.join(folder, "serve.log")
    servers = [_server(r, relay_args, dict(os.environ), log) for r in roots]
    argv = ["ship", source, "snap.bin", "--quiet", "--relay", stage, "--endpoint-url", url]
    for _, server_url in servers:
        argv += ["--via", server_url]
    tracemalloc.start(8)
    sampler = Sampler(top=top)
    try:
        code = cli_main(argv)
    finally:
        result = sampler.stop()
        tracemalloc.stop()
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=60)
            assert proc.stdout is not None
            proc.stdout.close()
    if code != 0:
        raise RuntimeError(f"ship failed with {code}")
    for root in roots:
        os.remove(os.path.join(root, "snap.bin"))
    return result


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--sizes", type=size_list, default=[512 * MiB, 2048 * MiB])
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument(
        "--top",
        action="store_true",
        help="also snapshot the heap's top allocation sites as the RSS rises (the snapshots"
        " themselves take memory: the VmHWM column is then not the sender's alone)",
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("FOLDER", "SIZE", "URL"), help=argparse.SUPPRESS
    )
    add_endpoint_arguments(parser)
    args = parser.parse_args()
    if args.child:
        folder, size, url = args.child
        json.dump(trace(folder, int(size), args.receivers, url, args.top), sys.stdout)
        return
    out: dict[str, Any] = {}
    with (
        workspace("fstransport-trace-relay-", None) as (folder, _loop),
        endpoints(args, folder) as servers,
    ):
        for endpoint in servers:
            client = s3_client(endpoint.url, endpoint.key, endpoint.secret, REGION)
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=BUCKET)
            for size in args.sizes:
                child = subprocess.run(
                    [sys.executable, __file__, "--child", folder, str(size), endpoint.url,
                     "--receivers", str(args.receivers), *(["--top"] if args.top else [])],
                    env=endpoint.env(for_rclone=False), stdout=subprocess.PIPE, check=True,
                )  # fmt: skip
                result = json.loads(child.stdout)
                out[f"{endpoint.name} {size}"] = result
                print(
                    f"{endpoint.name} {size >> 20} MiB x{args.receivers}: VmHWM"
                    f" {result['vm_hwm'] / MiB:.0f} MiB, RSS max {result['rss_max'] / MiB:.0f}"
                    f" MiB (anonymous {result['anon_max'] / MiB:.0f}, file-backed"
                    f" {result['file_max'] / MiB:.0f} MiB at most), Python heap peak"
                    f" {result['heap_peak'] / MiB:.1f} MiB",
                    file=sys.stderr,
                )
                for line in result["top_at_rss_peak"][:8]:
                    print(f"    {line}", file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh)


if __name__ == "__main__":
    main()
