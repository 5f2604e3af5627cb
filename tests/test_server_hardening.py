"""A hostile or careless peer against a real ``fstransport serve`` process on 127.0.0.1.

Malformed requests of every class get a 4xx and one log line (never a 500 or a traceback);
unsafe snapshot ids are refused; a chunk cannot reach past the snapshot size limit; connections
that never finish their headers are closed; trickled bodies lose their share of the budget;
abandoned transfers give back their slots and descriptors; running out of descriptors is noted
once.  Raw sockets speak for the hostile peers, `HttpNetwork` and `ship` for the legitimate ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fstransport import (
    InstallSnapshotRequest,
    RemoteError,
    RetryPolicy,
    SnapshotMeta,
    TooManyTransfers,
    TransferOptions,
    Vote,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.http.client import HttpNetwork
from fstransport.options import KiB, MiB
from fstransport.transfer import ship
from tests.conftest import payload
from tests.test_http_e2e import EXE, START_TIMEOUT, ServerProcess

TOKEN = "hardening-t0k3n"
AUTH = f"Bearer {TOKEN}".encode()
VOTE = Vote(1, 0)
OPTIONS = TransferOptions()


class Server(ServerProcess):
    """``fstransport --debug serve ROOT --token TOKEN ARGS`` (under ``ulimit -n`` if asked)."""

    def __init__(self, tmp_path: Path, root: Path, args: tuple[str, ...], nofile: int | None):
        root.mkdir(parents=True, exist_ok=True)  # serve refuses a ROOT that does not exist
        argv = [EXE or "fstransport", "--debug", "serve", str(root), "--host", "127.0.0.1"]
        argv += ["--port", "0", "--token", TOKEN, *args]
        if nofile is not None:  # the limit applies to the server alone, not to this test
            argv = ["sh", "-c", f'ulimit -n {nofile} && exec "$0" "$@"', *argv]
        super().__init__(argv, tmp_path / f"server-{time.monotonic_ns()}.log", None)
        self.root = root
        self.read_url(START_TIMEOUT)

    def log_lines(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.strip()]

    def open_files(self, under: Path) -> list[str]:
        """What the server process holds open under `under` (its /proc/<pid>/fd links)."""
        found = []
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        for entry in fd_dir.iterdir():
            try:
                target = os.readlink(entry)
            except OSError:  # closed meanwhile
                continue
            if target.startswith(str(under)):
                found.append(target)
        return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    """server(*args, nofile=None) -> a running Server over tmp_path/root; killed at teardown."""
    assert EXE is not None, "the fstransport command is not installed: pip install -e ."
    started: list[Server] = []

    def start(*args: str, nofile: int | None = None) -> Server:
        started.append(Server(tmp_path, tmp_path / "root", args, nofile))
        return started[-1]

    try:
        yield start
    finally:
        for s in started:
            s.kill()


# -- raw requests --------------------------------------------------------------------------


def wire_headers(
    data: bytes, *, offset: int = 0, done: bool = False, **meta: Any
) -> dict[bytes, bytes | None]:
    return {
        b"Authorization": AUTH,
        b"X-Fstransport-Vote": b"1,0,0",
        b"X-Fstransport-Meta": json.dumps(meta).encode(),
        b"X-Fstransport-Offset": str(offset).encode(),
        b"X-Fstransport-Done": b"1" if done else b"0",
        b"X-Fstransport-Crc32c": str(chunk_crc(data)).encode(),
        b"Content-Length": str(len(data)).encode(),
        b"Connection": b"close",
    }


def raw_request(
    path: bytes, headers: dict[bytes, bytes | None], body: bytes, method: bytes = b"PUT"
) -> bytes:
    lines = b"".join(k + b": " + v + b"\r\n" for k, v in headers.items() if v is not None)
    return method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n" + body


def exchange(port: int, raw: bytes, timeout: float = 20.0) -> tuple[int, bytes]:
    """Send `raw` on a fresh connection; the answer's status and body (0 if none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before the end
            sock.sendall(raw)
        answer = b""
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
        except (ConnectionResetError, TimeoutError):
            pass
    if not answer.startswith(b"HTTP/1."):
        return 0, answer
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


def path_of(snapshot_id: str) -> bytes:
    return b"/v1/snapshots/" + urllib.parse.quote(snapshot_id, safe="").encode()


GOOD = b"0123456789"


def variant(**changes: bytes | None) -> dict[bytes, bytes | None]:
    headers = wire_headers(GOOD, size=len(GOOD))
    headers.update({k.replace("_", "-").encode(): v for k, v in changes.items()})
    return headers


MALFORMED: dict[str, tuple[bytes, dict[bytes, bytes | None], bytes]] = {
    "non-UTF-8 token": (
        path_of("a"),
        {**variant(), b"Authorization": b"Bearer \xff\xfe\x80"},
        GOOD,
    ),
    "Latin-1 token": (path_of("a"), {**variant(), b"Authorization": "Bearer tök".encode()}, GOOD),
    "superscript vote": (path_of("a"), variant(X_Fstransport_Vote="²,0,0".encode()), GOOD),
    "Arabic-Indic offset": (path_of("a"), variant(X_Fstransport_Offset="\u0660".encode()), GOOD),
    "fullwidth CRC": (path_of("a"), variant(X_Fstransport_Crc32c="\uff11".encode()), GOOD),
    "5000-digit offset": (path_of("a"), variant(X_Fstransport_Offset=b"9" * 5000), GOOD),
    "21-digit CRC": (path_of("a"), variant(X_Fstransport_Crc32c=b"1" * 21), GOOD),
    "signed offset": (path_of("a"), variant(X_Fstransport_Offset=b"+0"), GOOD),
    "underscored vote": (path_of("a"), variant(X_Fstransport_Vote=b"1_0,0,0"), GOOD),
    "huge vote term": (path_of("a"), variant(X_Fstransport_Vote=b"9" * 4400 + b",0,0"), GOOD),
    "done of 2": (path_of("a"), variant(X_Fstransport_Done=b"2"), GOOD),
    "4000-deep meta": (path_of("a"), variant(X_Fstransport_Meta=b"[" * 4000 + b"]" * 4000), GOOD),
    "20-deep meta": (
        path_of("a"),
        variant(X_Fstransport_Meta=b'{"size":10,"last_membership":' + b"[" * 20 + b"]" * 21),
        GOOD,
    ),
    "meta number of 5000 digits": (
        path_of("a"),
        variant(X_Fstransport_Meta=b'{"size":' + b"9" * 5000 + b"}"),
        GOOD,
    ),
    "duplicate meta key": (path_of("a"), variant(X_Fstransport_Meta=b'{"size":10,"size":3}'), GOOD),
    "boolean last_log_id": (
        path_of("a"),
        variant(X_Fstransport_Meta=b'{"size":10,"last_log_id":[true,false]}'),
        GOOD,
    ),
    "boolean size": (path_of("a"), variant(X_Fstransport_Meta=b'{"size":true}'), GOOD),
    "fractional size": (path_of("a"), variant(X_Fstransport_Meta=b'{"size":10.0}'), GOOD),
    "NaN size": (path_of("a"), variant(X_Fstransport_Meta=b'{"size":NaN}'), GOOD),
    "numeric checksum": (path_of("a"), variant(X_Fstransport_Meta=b'{"checksum":7}'), GOOD),
    "unknown meta key": (path_of("a"), variant(X_Fstransport_Meta=b'{"size":10,"x":1}'), GOOD),
    "lone surrogate in meta": (
        path_of("a"),
        variant(X_Fstransport_Meta=b'{"size":10,"last_membership":"\\ud800"}'),
        GOOD,
    ),
    "meta not JSON": (path_of("a"), variant(X_Fstransport_Meta=b"{size:10"), GOOD),
    "non-UTF-8 meta": (path_of("a"), variant(X_Fstransport_Meta=b'{"checksum":"\xff"}'), GOOD),
    "gzip body": (
        path_of("a"),
        variant(Content_Encoding=b"gzip", Content_Length=b"15"),
        b"not gzip at all",
    ),
    "deflate body": (path_of("a"), variant(Content_Encoding=b"deflate"), GOOD),
    "broken chunked body": (
        path_of("a"),
        variant(Content_Length=None, Transfer_Encoding=b"chunked"),
        b"zz\r\nxx\r\n0\r\n\r\n",
    ),
    "no Content-Length": (path_of("a"), variant(Content_Length=None), b""),
    "Unicode Content-Length": (path_of("a"), variant(Content_Length="\uff11\uff10".encode()), GOOD),
    "header line of 9000 bytes": (path_of("a"), variant(X_Padding=b"p" * 9000), GOOD),
    "40 headers": (
        path_of("a"),
        {**variant(), **{f"X-Extra-{i}".encode(): b"1" for i in range(40)}},
        GOOD,
    ),
    "body longer than declared": (path_of("a"), variant(Content_Length=b"5"), GOOD + b"tail"),
    "chunk beyond its size": (path_of("a"), variant(X_Fstransport_Offset=b"8"), GOOD),
    "non-UTF-8 path": (b"/v1/snapshots/a\xffb", variant(), GOOD),
    "id of 400 bytes": (path_of("é" * 200), variant(), GOOD),
    "id of a slash": (b"/v1/snapshots/a%2Fb", variant(), GOOD),
    "id of dots": (b"/v1/snapshots/%2e%2e", variant(), GOOD),
    "GET": (path_of("a"), variant(), GOOD),
}


def test_every_malformed_request_is_a_4xx_and_one_log_line(server: Any, tmp_path: Path) -> None:
    srv = server()
    before = len(srv.log_lines())
    statuses = {}
    for name, (path, headers, body) in MALFORMED.items():
        method = b"GET" if name == "GET" else b"PUT"
        statuses[name] = exchange(srv.port, raw_request(path, headers, body, method))[0]
    assert {n: s for n, s in statuses.items() if not 400 <= s < 500} == {}
    assert statuses["non-UTF-8 token"] == 401
    assert statuses["gzip body"] == 415
    log = srv.log_lines()[before:]
    assert "Traceback" not in srv.stderr()
    assert len(log) == len(MALFORMED), "\n".join(log)
    assert all(line.startswith("fstransport: ") for line in log), "\n".join(log)
    root = tmp_path / "root"
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


UNSAFE_IDS = [
    "-rf",
    "--help",
    " ",
    "\t",
    "trailing ",
    " leading",
    "trailing.",
    "...",
    "bidi\u202eexe.txt",
    "line\u2028separator",
    "para\u2029graph",
    "zero\u200bwidth",
    "nul\x00byte",
    "new\nline",
    "esc\x1b[31m",
    "nbsp\u00a0x",
    "é" * 128,
    "x" * 256,
    ".fstransport",
    "..",
]


def test_unsafe_snapshot_ids_are_refused_with_400(server: Any, tmp_path: Path) -> None:
    srv = server()
    for snapshot_id in UNSAFE_IDS:
        status, body = exchange(srv.port, raw_request(path_of(snapshot_id), variant(), GOOD))
        assert status == 400, (snapshot_id, body)
        assert json.loads(body)["field"] == "snapshot_id"
    assert "Traceback" not in srv.stderr()
    root = tmp_path / "root"
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


async def test_ids_with_url_characters_arrive_whole(server: Any, tmp_path: Path) -> None:
    srv = server()
    data = payload(3000, seed=5)
    for snapshot_id in ("a?b", "c#d", "e%41f", "g h", "snäp+1&x=y", "é" * 127 + "z"):
        source = tmp_path / "source.bin"
        source.write_bytes(data)
        async with HttpNetwork(srv.url, token=TOKEN) as net:
            await ship(str(source), snapshot_id, network=net)
        assert (tmp_path / "root" / snapshot_id).read_bytes() == data, snapshot_id
    assert sorted(p.name for p in (tmp_path / "root").iterdir() if p.is_file()) == sorted(
        ["a?b", "c#d", "e%41f", "g h", "snäp+1&x=y", "é" * 127 + "z"]
    )


def test_a_chunk_cannot_reach_past_the_snapshot_size_limit(server: Any, tmp_path: Path) -> None:
    srv = server("--max-snapshot-size", "1MiB")
    cases = {
        "sizeless, 1 TiB away": wire_headers(GOOD, offset=2**40),
        "sizeless, across the limit": wire_headers(GOOD, offset=MiB - 5),
        "a size over the limit": wire_headers(GOOD, size=MiB + 1),
    }
    for name, headers in cases.items():
        status, body = exchange(srv.port, raw_request(path_of("big"), headers, GOOD))
        assert status == 400, (name, body)
    status, _ = exchange(srv.port, raw_request(path_of("big"), wire_headers(GOOD, offset=0), GOOD))
    assert status == 200  # within the limit, sizeless chunks are fine
    sizes = [p.stat().st_size for p in (tmp_path / "root").rglob("*") if p.is_file()]
    assert max(sizes) <= MiB
    assert "Traceback" not in srv.stderr()


def test_the_default_snapshot_size_limit_refuses_a_1_tib_sparse_partial(
    server: Any, tmp_path: Path
) -> None:
    srv = server()
    headers = wire_headers(GOOD, offset=2**40)
    status, body = exchange(srv.port, raw_request(path_of("sparse"), headers, GOOD))
    assert status == 400, body
    root = tmp_path / "root"
    assert not root.exists() or all(p.stat().st_size < 2**30 for p in root.rglob("*"))


# -- slow peers ----------------------------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed `sock` (None if it did not within `seconds`), sending
    one byte of `trickle` every 0.2 s meanwhile."""
    start = time.monotonic()
    sock.settimeout(0.2)
    sent = 0
    while time.monotonic() - start < seconds:
        try:
            if not sock.recv(4096):
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
        if sent < len(trickle):
            try:
                sock.send(trickle[sent : sent + 1])
            except OSError:
                return time.monotonic() - start
            sent += 1
    return None


def test_connections_that_never_finish_their_headers_are_closed(server: Any) -> None:
    srv = server("--idle-timeout", "1s")
    silent = socket.create_connection(("127.0.0.1", srv.port))
    partial = socket.create_connection(("127.0.0.1", srv.port))
    partial.sendall(b"PUT /v1/snapshots/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    slowloris = socket.create_connection(("127.0.0.1", srv.port))
    slowloris.sendall(b"PUT /v1/snapshots/x HTTP/1.1\r\n")
    try:
        assert closed_within(silent, 8) is not None
        assert closed_within(partial, 8) is not None
        # a byte of a header every 0.2 s: still closed, the time counts from the start
        took = closed_within(slowloris, 8, trickle=b"X-Slow: " + b"a" * 200)
        assert took is not None
        assert took < 6
    finally:
        for sock in (silent, partial, slowloris):
            sock.close()
    assert "Traceback" not in srv.stderr()


def test_a_kept_alive_connection_must_send_its_next_headers_in_time(server: Any) -> None:
    srv = server("--idle-timeout", "1s")
    headers = {**wire_headers(GOOD, size=len(GOOD)), b"Connection": None}  # keep-alive
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(raw_request(path_of("kept"), headers, GOOD))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"PUT /v1/snapshots/next HTTP/1.1\r\n")  # ... and no more
        took = closed_within(sock, 8, trickle=b"X-Slow: " + b"a" * 200)
    assert took is not None
    assert took < 6


def trickle_body(port: int, snapshot_id: str, length: int, stop: threading.Event) -> int:
    """Declares a `length`-byte body and sends one byte of it every 0.3 s; the status the
    server answers with (0 if none)."""
    data = bytes(length)
    headers = wire_headers(data, size=length)
    with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
        sock.sendall(raw_request(path_of(snapshot_id), headers, b""))
        answer = b""
        for i in range(length):
            if stop.is_set():
                break
            try:
                sock.send(data[i : i + 1])
            except OSError:
                break
            try:
                piece = sock.recv(4096)
                if not piece:
                    break
                answer += piece
            except TimeoutError:
                continue
        sock.settimeout(5)
        try:
            while b"\r\n" not in answer:
                piece = sock.recv(4096)
                if not piece:
                    break
                answer += piece
        except OSError:
            pass
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


async def test_trickled_bodies_lose_their_budget_and_a_ship_goes_through(
    server: Any, tmp_path: Path
) -> None:
    srv = server("--idle-timeout", "1s", "--max-buffered", "1MiB")
    stop = threading.Event()
    results: list[int] = []

    def run(i: int) -> None:
        results.append(trickle_body(srv.port, f"trickle-{i}", 256 * KiB, stop))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        await asyncio.sleep(0.3)  # the four hold the whole budget now
        data = payload(2 * MiB, seed=9)
        (tmp_path / "legit.bin").write_bytes(data)
        options = TransferOptions(chunk_size=256 * KiB, retry=RetryPolicy(give_up_after=60))
        async with HttpNetwork(srv.url, token=TOKEN) as net:
            report = await asyncio.wait_for(
                ship(str(tmp_path / "legit.bin"), "legit.bin", network=net, options=options), 60
            )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert (tmp_path / "root" / "legit.bin").read_bytes() == data
    assert report.bytes_sent >= len(data)
    assert results == [408] * 4
    assert srv.stderr().count("BodyStalled") == 4
    assert "Traceback" not in srv.stderr()


# -- abandoned transfers -------------------------------------------------------------------


def first_half(snapshot_id: str, data: bytes) -> InstallSnapshotRequest:
    half = data[: len(data) // 2]
    meta = SnapshotMeta(snapshot_id, size=len(data), checksum=format_checksum(chunk_crc(data)))
    return InstallSnapshotRequest(VOTE, meta, 0, half, False, crc32c=chunk_crc(half))


def second_half(snapshot_id: str, data: bytes) -> InstallSnapshotRequest:
    half = data[len(data) // 2 :]
    meta = SnapshotMeta(snapshot_id, size=len(data), checksum=format_checksum(chunk_crc(data)))
    return InstallSnapshotRequest(VOTE, meta, len(data) - len(half), half, True, chunk_crc(half))


async def test_abandoned_transfers_give_back_slots_and_descriptors(
    server: Any, tmp_path: Path
) -> None:
    srv = server("--idle-timeout", "1s")
    partials = tmp_path / "root" / ".fstransport"
    data = {f"abandoned-{i}": payload(64 * KiB, seed=i) for i in range(16)}
    async with HttpNetwork(srv.url, token=TOKEN) as net:
        for snapshot_id, content in data.items():  # 16 senders stop after their first chunk
            await net.install_snapshot(first_half(snapshot_id, content), OPTIONS)
        assert len(srv.open_files(partials)) >= 16
        with pytest.raises(RemoteError) as refused:
            await net.install_snapshot(first_half("newcomer", payload(10)), OPTIONS)
        assert isinstance(refused.value.source, TooManyTransfers)

        deadline = time.monotonic() + 20
        while srv.open_files(partials) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        assert srv.open_files(partials) == []  # every descriptor given back
        assert len(list((partials / "partial").glob("abandoned-*"))) == 16  # data stays

        newcomer = payload(10, seed=99)
        await net.install_snapshot(first_half("newcomer", newcomer), OPTIONS)
        await net.install_snapshot(second_half("newcomer", newcomer), OPTIONS)
        # an abandoned transfer resumes from its partial data: only its second half is sent
        answer = await net.install_snapshot(
            second_half("abandoned-3", data["abandoned-3"]), OPTIONS
        )
    assert answer.vote == VOTE
    assert (tmp_path / "root" / "newcomer").read_bytes() == newcomer
    assert (tmp_path / "root" / "abandoned-3").read_bytes() == data["abandoned-3"]
    assert "resuming snapshot 'abandoned-3'" in srv.stderr()

    # `cleanup` deletes what is left; the server holds none of it open, deleted or not
    cleanup = [EXE or "fstransport", "cleanup", str(tmp_path / "root"), "--older-than", "0s"]
    await asyncio.to_thread(subprocess.run, cleanup, check=True, capture_output=True, timeout=60)
    assert [f for f in srv.open_files(tmp_path) if "(deleted)" in f] == []
    assert "Traceback" not in srv.stderr()


# -- running out of descriptors ------------------------------------------------------------


def hold_connections(port: int, count: int, stop: threading.Event) -> None:
    """Keep `count` idle connections open against the server, reopening those it closes."""
    socks: list[socket.socket] = []
    try:
        while not stop.is_set():
            while len(socks) < count:
                try:
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                except OSError:
                    break
            alive = []
            for sock in socks:
                sock.settimeout(0)
                try:
                    gone = sock.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    sock.close()
                else:
                    alive.append(sock)
            socks = alive
            stop.wait(0.05)
    finally:
        for sock in socks:
            sock.close()


NOTES = ("cannot accept connections", "closing the oldest idle one")


async def test_out_of_descriptors_is_noted_once_and_a_ship_goes_through(
    server: Any, tmp_path: Path
) -> None:
    srv = server("--idle-timeout", "1s", nofile=48)
    stop = threading.Event()
    attacker = threading.Thread(target=hold_connections, args=(srv.port, 120, stop))
    attacker.start()
    try:
        deadline = time.monotonic() + 20
        # the connection cap (descriptor limit less a reserve) closes the flood's extra
        # connections before accept() can run out; either way it is one line
        while not any(note in srv.stderr() for note in NOTES):
            assert time.monotonic() < deadline, srv.stderr()
            await asyncio.sleep(0.1)
        data = payload(512 * KiB, seed=3)
        (tmp_path / "legit.bin").write_bytes(data)
        options = TransferOptions(
            chunk_size=128 * KiB, max_in_flight=1, retry=RetryPolicy(give_up_after=90)
        )
        async with HttpNetwork(srv.url, token=TOKEN, connections=1) as net:
            await asyncio.wait_for(
                ship(str(tmp_path / "legit.bin"), "legit.bin", network=net, options=options), 120
            )
        await asyncio.sleep(1.5)  # more failed accepts, still within the minute
    finally:
        stop.set()
        attacker.join(30)
    assert (tmp_path / "root" / "legit.bin").read_bytes() == data
    log = srv.stderr()
    assert sum(log.count(note) for note in NOTES) in (1, 2), log[-3000:]
    assert all(log.count(note) <= 1 for note in NOTES), log[-3000:]
    assert "Traceback" not in log
    assert len(log) < 100_000


@pytest.mark.parametrize(("floor", "status"), [("0", 200), ("16", 408)])
def test_the_body_rate_floor_is_set_on_the_command_line(
    server: Any, floor: str, status: int
) -> None:
    """An 8-byte body at one byte per 0.3 s (about 3 B/s, 2.4 s in all, longer than the 1 s
    window): ``--min-body-rate 0`` lets it finish, a floor of 16 B/s cuts it off with 408."""
    srv = server("--idle-timeout", "1s", "--min-body-rate", floor)
    assert trickle_body(srv.port, f"slow-{floor}", 8, threading.Event()) == status
    assert ("BodyStalled" in srv.stderr()) == (status == 408)
    assert "Traceback" not in srv.stderr()


def _open_from(address: str, port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
        time.sleep(0.01)
    return socks


def _still_open(socks: list[socket.socket]) -> int:
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


async def test_one_peer_holds_at_most_its_share_of_connections(server: Any, tmp_path: Path) -> None:
    """20 idle connections from 127.0.0.2 keep 4 open (``--max-connections-per-peer 4``);
    a sender on 127.0.0.1 with 4 connections is not touched by them and ships."""
    srv = server("--max-connections-per-peer", "4")
    flood = await asyncio.to_thread(_open_from, "127.0.0.2", srv.port, 20)
    try:
        await asyncio.sleep(0.3)
        assert _still_open(flood) == 4
        data = payload(1 * MiB, seed=11)
        (tmp_path / "fair.bin").write_bytes(data)
        options = TransferOptions(chunk_size=64 * KiB, max_in_flight=4)
        async with HttpNetwork(srv.url, token=TOKEN, connections=4) as net:
            report = await ship(
                str(tmp_path / "fair.bin"), "fair.bin", network=net, options=options
            )
        assert report.retries == 0  # none of its connections was closed under it
    finally:
        for sock in flood:
            sock.close()
    assert (tmp_path / "root" / "fair.bin").read_bytes() == data
    assert srv.stderr().count("connections open from 127.0.0.2") == 1  # one note a minute
    assert "Traceback" not in srv.stderr()
