"""HTTP benchmark: `ship()` to a receiver server on loopback against the same copy in-process.

Run from the repository root::

    python benchmarks/bench_http.py [--size 256MiB] [--rounds 5] [--json out.json]

Both contenders copy the same `memory://` snapshot to a local file at 8 MiB chunks, window 4:

- **in-process:** ``ship(src, <folder>/inproc/snap.bin)`` (a `LoopbackNetwork` to a `Receiver`
  in this process);
- **HTTP:** ``ship(src, "snap-http.bin", network=HttpNetwork(url))`` to
  ``fstransport serve <folder>/recv --no-auth`` (``create_app(store, no_auth=True)``), started by
  this script in its own process on 127.0.0.1 and stopped at the end.  One `HttpNetwork` (one
  connection pool) serves every round, as it would in a long-lived sender.

and two references that are not contenders: **raw TCP**, the same bytes over one plain
blocking socket to a receiver process that does nothing but ``recv_into`` one reused 8 MiB
buffer and ``os.pwrite`` it to the file (no HTTP, no asyncio, no checksum, no protocol), and
**raw TCP + CRC32C**, the same with each chunk's CRC32C computed by the sender, sent before the
chunk, and checked by the receiver piece by piece as the chunk arrives.  The first is what this
machine's loopback and disk can do with a second process in the path; the second is the least
that any network transfer which verifies its chunks must do: the ceiling for any receiver,
HTTP or not, that checks what it receives (the protocol requires it).

The method is `bench_core.py`'s (its helpers are imported): the contenders are interleaved round
by round in a shuffled order after an uncounted warm-up round; only ``ship()`` is timed; every
copy is checked byte for byte (and its reported size and CRC32C) after its timed region, and the
target is removed before each run.  Reported: medians, the ratio of medians (the goal is judged
on it) and of the fastest rounds, and the CPU seconds of this process and of the server during
the timed region (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import fsspec
from bench_core import (
    Case,
    Row,
    check_file,
    evaluate,
    machine_info,
    make_data,
    markdown_table,
    non_negative_int,
    positive_int,
    run_rounds,
    size_arg,
    sync_disk,
)

from fstransport import HttpNetwork, TransferOptions, TransferReport, ship
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.units import format_size

MiB = 1024 * 1024
CHUNK = 8 * MiB
WINDOW = 4
GOAL_RATIO = 0.5
SOURCE_PATH = "/fstransport-bench-http/src.bin"
HTTP_ID = "snap-http.bin"
START_TIMEOUT = 30.0


# The raw TCP reference receiver: argv = path.  Each connection sends an 8-byte big-endian size
# and a 1-byte flag, then the bytes in 8 MiB chunks, each chunk preceded by its 4-byte CRC32C
# when the flag is 1; they are received into one reused buffer (checksummed piece by piece as
# they arrive when the flag is 1, and compared at the chunk's end) and written at their offsets;
# the answer is one byte once all are written.
RAW_SERVER_CODE = """\
import os, socket, struct, sys
from crc32c import crc32c
path = sys.argv[1]
listener = socket.create_server(("127.0.0.1", 0))
print("raw tcp receiver on tcp://127.0.0.1:%d" % listener.getsockname()[1], flush=True)
buffer = bytearray(8 * 1024 * 1024)
view = memoryview(buffer)

def exactly(conn, n):
    head = b""
    while len(head) < n:
        got = conn.recv(n - len(head))
        if not got:
            raise SystemExit("connection closed early")
        head += got
    return head

while True:
    conn, _ = listener.accept()
    with conn:
        size, checked = struct.unpack(">QB", exactly(conn, 9))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        offset = 0
        while offset < size:
            sent_crc = struct.unpack(">I", exactly(conn, 4))[0] if checked else 0
            want, filled, crc = min(len(buffer), size - offset), 0, 0
            while filled < want:
                got = conn.recv_into(view[filled:want])
                if not got:
                    raise SystemExit("connection closed early")
                if checked:
                    crc = crc32c(view[filled : filled + got], crc)
                filled += got
            if crc != sent_crc:
                raise SystemExit("CRC32C mismatch at offset %d" % offset)
            os.pwrite(fd, view[:filled], offset)
            offset += filled
        os.close(fd)
        conn.sendall(b"k")
"""


# -- the server processes ----------------------------------------------------------------------


class Server:
    """``python -m fstransport.cli serve ROOT`` on 127.0.0.1, a free port, in its own process
    (or, with `argv`, another receiver process that prints ``... on <url>`` when it listens)."""

    def __init__(self, root: str, log: TextIO, argv: list[str] | None = None) -> None:
        self.root = root
        command = [sys.executable, "-m", "fstransport.cli", "serve", root, "--host", "127.0.0.1"]
        command.append("--no-auth")  # loopback only; serve needs a token or this
        if argv is None:
            os.makedirs(root, exist_ok=True)  # serve refuses a ROOT that does not exist
        self.proc = subprocess.Popen(
            argv or command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.url = self._read_url()
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _read_url(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if " on http://" not in line and " on tcp://" not in line:
            self.stop()
            raise RuntimeError(f"the server did not start (first line: {line!r})")
        return line.rsplit(" on ", 1)[1].strip()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (from /proc)."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- contenders --------------------------------------------------------------------------------


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Cpu:
    """CPU seconds of this process and of the receiving process during each timed run."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, float]]] = {}

    def timed(self, key: str, body: Callable[[], object], server: Server) -> Callable[[], object]:
        def run() -> object:
            client0, server0 = time.process_time(), server.cpu_seconds()
            result = body()
            client1, server1 = time.process_time(), server.cpu_seconds()
            self.samples.setdefault(key, []).append((client1 - client0, server1 - server0))
            return result

        return run

    def medians(self, key: str, warmup: int) -> tuple[float, float]:
        counted = self.samples[key][warmup:]
        return (
            statistics.median(c for c, _ in counted),
            statistics.median(s for _, s in counted),
        )


def raw_tcp_case(data: bytes, raw: Server, cpu: Cpu, *, checked: bool) -> Case:
    """A raw TCP reference: the bytes over one blocking socket to `RAW_SERVER_CODE`; `checked`
    adds a CRC32C per chunk, computed by the sender and checked by the receiver."""
    port = int(raw.url.rsplit(":", 1)[1])
    written = os.path.join(raw.root, "raw.bin")

    def body() -> object:
        view = memoryview(data)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(struct.pack(">QB", len(data), checked))
            for offset in range(0, len(data), CHUNK):
                chunk = view[offset : offset + CHUNK]
                if checked:
                    conn.sendall(struct.pack(">I", chunk_crc(chunk)))
                conn.sendall(chunk)
            if conn.recv(1) != b"k":
                raise AssertionError("the raw receiver did not confirm the bytes")
        return None

    def prepare() -> None:
        remove(written)
        sync_disk()

    if checked:
        key = "raw_crc"
        label = "reference: raw TCP + CRC32C per chunk on both ends (no HTTP/asyncio)"
    else:
        key = "raw"
        label = "reference: raw TCP (blocking socket, recv_into + pwrite, no HTTP/asyncio/CRC)"
    run = cpu.timed(key, body, raw)
    return Case(
        key, label, len(data), run, lambda _: check_file(written, data), prepare,
        lambda: remove(written),
    )  # fmt: skip


def contenders(
    data: bytes, folder: str, server: Server, network: HttpNetwork, loop: asyncio.AbstractEventLoop
) -> tuple[list[Case], Cpu]:
    options = TransferOptions(chunk_size=CHUNK, max_in_flight=WINDOW)
    checksum = format_checksum(chunk_crc(data))
    source = f"memory://{SOURCE_PATH}"
    cpu = Cpu()

    def check_report(result: object) -> None:
        if not isinstance(result, TransferReport):
            raise AssertionError(f"ship() returned {result!r}")
        if result.size != len(data) or result.checksum != checksum:
            raise AssertionError(f"ship() reported {result.size} bytes, {result.checksum}")

    def case(key: str, label: str, target: str, written: str, network: HttpNetwork | None) -> Case:
        def body() -> object:
            return loop.run_until_complete(ship(source, target, options=options, network=network))

        def verify(result: object) -> None:
            check_report(result)
            check_file(written, data)

        def prepare() -> None:
            remove(written)
            sync_disk()

        run = cpu.timed(key, body, server)
        return Case(key, label, len(data), run, verify, prepare, lambda: remove(written))

    os.makedirs(os.path.join(folder, "inproc"), exist_ok=True)
    inproc = os.path.join(folder, "inproc", "snap.bin")
    setting = f"{format_size(CHUNK)} chunks, window {WINDOW}"
    cases = [
        case("inproc", f"in-process ship() (LoopbackNetwork), {setting}", inproc, inproc, None),
        case(
            "http",
            f"ship() via HttpNetwork to serve on 127.0.0.1, {setting}",
            HTTP_ID,
            os.path.join(server.root, HTTP_ID),
            network,
        ),
    ]
    return cases, cpu


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=size_arg, default=256 * MiB, help="snapshot size (256MiB)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="counted rounds (5)")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=1, help="uncounted warm-up rounds (1)"
    )
    parser.add_argument("--dir", help="parent folder of the temporary local files (system temp)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the data and the order")
    parser.add_argument("--json", metavar="PATH", help="also write every sample and result here")
    parser.add_argument("--check", action="store_true", help="exit with 1 if the goal is not met")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine_info()
    print(f"generating {format_size(args.size)} of data (seed {args.seed}) ...", file=sys.stderr)
    data = make_data(args.size, args.seed)
    memfs = fsspec.filesystem("memory")
    memfs.pipe_file(SOURCE_PATH, data)
    folder = tempfile.mkdtemp(prefix="fstransport-bench-http-", dir=args.dir)
    root = os.path.join(folder, "recv")
    os.makedirs(root)
    loop = asyncio.new_event_loop()
    network: HttpNetwork | None = None
    server: Server | None = None
    raw: Server | None = None
    title = "memory:// -> local file, 8 MiB chunks, window 4"
    try:
        with open(os.path.join(folder, "server.log"), "w", encoding="utf-8") as log:
            server = Server(root, log)
            print(f"receiver server (pid {server.proc.pid}) on {server.url}", file=sys.stderr)
            network = HttpNetwork(server.url)
            cases, cpu = contenders(data, folder, server, network, loop)
            raw_command = [sys.executable, "-c", RAW_SERVER_CODE, os.path.join(folder, "raw.bin")]
            raw = Server(folder, log, raw_command)
            cases.append(raw_tcp_case(data, raw, cpu, checked=False))
            cases.append(raw_tcp_case(data, raw, cpu, checked=True))
            run_rounds(cases, args.rounds, args.warmup, random.Random(args.seed), title)
            for process in (server, raw):
                if process.proc.poll() is not None:
                    raise RuntimeError(f"a receiver exited with {process.proc.returncode}")
            by_key = {c.key: c for c in cases}
            rows = [
                Row("inproc"),
                Row("http", "inproc", f">= {GOAL_RATIO}x", GOAL_RATIO),
                Row("raw", "inproc"),
                Row("raw_crc", "inproc"),
            ]
            results = [evaluate(row, by_key) for row in rows]
            for r in results:
                r["client_cpu_s"], r["server_cpu_s"] = cpu.medians(r["case"], args.warmup)
    finally:
        if network is not None:
            loop.run_until_complete(network.close())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        for receiver in (server, raw):
            if receiver is not None:
                receiver.stop()
        shutil.rmtree(folder, ignore_errors=True)
        memfs.rm(SOURCE_PATH)

    info["loadavg_end"] = os.getloadavg()
    total = time.perf_counter() - started
    table = markdown_table(title, results).splitlines()
    table[2] += " client CPU s | server CPU s |"
    table[3] += "---:|---:|"
    for i, r in enumerate(results):
        table[4 + i] += f" {r['client_cpu_s']:.2f} | {r['server_cpu_s']:.2f} |"
    print(
        f"# fstransport: HTTP on loopback against in-process\n\n{info['nproc']} x {info['cpu']}, "
        f"Python {info['python']}, aiohttp {_version('aiohttp')}; size {format_size(args.size)}, "
        f"{args.rounds} rounds (+{args.warmup} warm-up); throughput in MiB/s (2**20 B/s); "
        f"run took {total:.0f} s.\n"
    )
    print("\n".join(table))
    if args.json:
        report: dict[str, Any] = {
            "machine": info,
            "args": dict(vars(args)),
            "elapsed_s": total,
            "results": results,
            "cases": {c.key: c.to_dict() for c in cases},
            "cpu_samples": {k: v[args.warmup :] for k, v in cpu.samples.items()},
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)
    return 1 if args.check and not results[1]["met"] else 0


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main())
