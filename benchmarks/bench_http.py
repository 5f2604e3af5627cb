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

The method is the shared harness's (``harness.py``): the contenders are interleaved round
by round in a shuffled order after an uncounted warm-up round; only ``ship()`` is timed; every
copy is checked byte for byte (and its reported size and CRC32C) after its timed region, and the
target is removed before each run.  Reported: medians, the ratio of medians (the goal is judged
on it) and of the fastest rounds, and the CPU seconds of this process and of the server and the
machine's idle core-seconds during the timed region (medians; idle ~0 means the run was
CPU-bound).  The goal (issue #13): the HTTP row >= 0.8x the raw TCP + CRC32C reference of the
same run; the HTTP row is also shown against in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import fsspec
from harness import (
    Case,
    ChildProcess,
    MiB,
    Row,
    add_common_arguments,
    check_file,
    check_report,
    evaluate,
    machine_idle_cpu,
    machine_info,
    make_data,
    make_parser,
    markdown_table,
    publish,
    remove_file,
    run_rounds,
    sync_disk,
    workspace,
)

from fstransport import HttpNetwork, TransferOptions, ship
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.units import format_size

CHUNK = 8 * MiB
WINDOW = 4
GOAL_RATIO = 0.8  # issue #13: of the raw TCP + CRC32C reference, measured in the same run
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


# -- the server processes ---------------------------------------------------------------------


def listening_url(line: str) -> str:
    """The URL in a receiver's first line, ``... on http://host:port`` (or ``tcp://``)."""
    if " on http://" not in line and " on tcp://" not in line:
        raise ValueError(line)
    return line.rsplit(" on ", 1)[1].strip()


def start_receiver(argv: list[str], log: Any) -> ChildProcess:
    return ChildProcess(argv, listening_url, log, timeout=START_TIMEOUT)


def serve_command(root: str) -> list[str]:
    """``fstransport serve ROOT --no-auth`` on 127.0.0.1, a free port (loopback only: serve
    needs a token or ``--no-auth``).  ROOT is created first: serve refuses one that is missing."""
    os.makedirs(root, exist_ok=True)
    command = [sys.executable, "-m", "fstransport.cli", "serve", root, "--host", "127.0.0.1"]
    return [*command, "--no-auth"]


# -- contenders --------------------------------------------------------------------------------


def cpu_probes(server: ChildProcess) -> dict[str, Callable[[], float]]:
    """CPU seconds of this process and of the receiving process, and the machine's idle
    core-seconds (~0: the run was CPU-bound), read around each run."""
    return {
        "client_cpu_s": time.process_time,
        "server_cpu_s": server.cpu_seconds,
        "idle_cpu_s": machine_idle_cpu,
    }


def raw_tcp_case(data: bytes, raw: ChildProcess, folder: str, *, checked: bool) -> Case:
    """A raw TCP reference: the bytes over one blocking socket to `RAW_SERVER_CODE`; `checked`
    adds a CRC32C per chunk, computed by the sender and checked by the receiver."""
    port = int(raw.address.rsplit(":", 1)[1])
    written = os.path.join(folder, "raw.bin")

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
        remove_file(written)
        sync_disk()

    if checked:
        key = "raw_crc"
        label = "reference: raw TCP + CRC32C per chunk on both ends (no HTTP/asyncio)"
    else:
        key = "raw"
        label = "reference: raw TCP (blocking socket, recv_into + pwrite, no HTTP/asyncio/CRC)"
    return Case(
        key, label, len(data), body, lambda _: check_file(written, data), prepare,
        lambda: remove_file(written), cpu_probes(raw),
    )  # fmt: skip


def contenders(
    data: bytes,
    folder: str,
    server: ChildProcess,
    root: str,
    network: HttpNetwork,
    loop: asyncio.AbstractEventLoop,
) -> list[Case]:
    options = TransferOptions(chunk_size=CHUNK, max_in_flight=WINDOW)
    checksum = format_checksum(chunk_crc(data))
    source = f"memory://{SOURCE_PATH}"

    def case(key: str, label: str, target: str, written: str, network: HttpNetwork | None) -> Case:
        def body() -> object:
            return loop.run_until_complete(ship(source, target, options=options, network=network))

        def verify(result: object) -> None:
            check_report(result, len(data), checksum)
            check_file(written, data)

        def prepare() -> None:
            remove_file(written)
            sync_disk()

        return Case(
            key, label, len(data), body, verify, prepare, lambda: remove_file(written),
            cpu_probes(server),
        )  # fmt: skip

    os.makedirs(os.path.join(folder, "inproc"), exist_ok=True)
    inproc = os.path.join(folder, "inproc", "snap.bin")
    setting = f"{format_size(CHUNK)} chunks, window {WINDOW}"
    return [
        case("inproc", f"in-process ship() (LoopbackNetwork), {setting}", inproc, inproc, None),
        case(
            "http",
            f"ship() via HttpNetwork to serve on 127.0.0.1, {setting}",
            HTTP_ID,
            os.path.join(root, HTTP_ID),
            network,
        ),
    ]


def cpu_bound_note(by_key: dict[str, Case]) -> str:
    """The ratio the HTTP row would have to the raw TCP + CRC32C row if CPU were the only limit
    (the machine saturated: throughput inversely proportional to the CPU each transfer needs)."""

    def pair(case: Case) -> float:
        return case.metric_median("client_cpu_s") + case.metric_median("server_cpu_s")

    http, raw = pair(by_key["http"]), pair(by_key["raw_crc"])
    return (
        f"CPU per transfer, client + server (medians): HTTP {http:.2f} s, raw TCP + CRC32C"
        f" {raw:.2f} s; their ratio {raw / http:.2f}x is what the HTTP row can reach against the"
        " raw TCP + CRC32C row where the CPU is the limit (idle CPU near 0)."
    )


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_common_arguments(parser, size=256 * MiB, rounds=5)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine_info("aiohttp")
    print(f"generating {format_size(args.size)} of data (seed {args.seed}) ...", file=sys.stderr)
    data = make_data(args.size, args.seed)
    memfs = fsspec.filesystem("memory")
    memfs.pipe_file(SOURCE_PATH, data)
    network: HttpNetwork | None = None
    receivers: list[ChildProcess] = []
    title = "memory:// -> local file, 8 MiB chunks, window 4"
    with contextlib.ExitStack() as stack:
        folder, loop = stack.enter_context(workspace("fstransport-bench-http-", args.dir))
        root = os.path.join(folder, "recv")
        os.makedirs(root)
        log = stack.enter_context(open(os.path.join(folder, "server.log"), "w", encoding="utf-8"))
        try:
            server = start_receiver(serve_command(root), log)
            receivers.append(server)
            print(f"receiver server (pid {server.pid}) on {server.address}", file=sys.stderr)
            network = HttpNetwork(server.address)
            cases = contenders(data, folder, server, root, network, loop)
            raw_command = [sys.executable, "-c", RAW_SERVER_CODE, os.path.join(folder, "raw.bin")]
            raw = start_receiver(raw_command, log)
            receivers.append(raw)
            cases.append(raw_tcp_case(data, raw, folder, checked=False))
            cases.append(raw_tcp_case(data, raw, folder, checked=True))
            run_rounds(cases, args.rounds, args.warmup, random.Random(args.seed), title)
            for process in receivers:
                process.check_alive()
            by_key = {c.key: c for c in cases}
            goal = f">= {GOAL_RATIO}x of raw TCP + CRC32C"
            rows = [
                Row("inproc"),
                Row("http", "raw_crc", goal, GOAL_RATIO, ratio_note=" of raw TCP + CRC32C"),
                Row("http", "inproc"),
                Row("raw", "inproc"),
                Row("raw_crc", "inproc"),
            ]
            results = [evaluate(row, by_key) for row in rows]
        finally:
            if network is not None:
                loop.run_until_complete(network.close())
            for receiver in receivers:
                receiver.stop()
            memfs.rm(SOURCE_PATH)

    report: dict[str, Any] = {
        "machine": info,
        "args": dict(vars(args)),
        "results": results,
        "cases": {c.key: c.to_dict() for c in cases},
    }
    columns = (
        ("client CPU s", "client_cpu_s"),
        ("server CPU s", "server_cpu_s"),
        ("idle CPU s", "idle_cpu_s"),
    )
    table = markdown_table(title, results, columns) + "\n\n" + cpu_bound_note(by_key)
    title = "fstransport: HTTP on loopback against in-process"
    publish(report, info, started, args, title, f"aiohttp {info['aiohttp']}", [table])
    return 1 if args.check and not results[1]["met"] else 0


if __name__ == "__main__":
    sys.exit(main())
