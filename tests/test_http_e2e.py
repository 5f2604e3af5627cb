"""End to end over real HTTP: ``fstransport serve`` in its own process, the sender in the test.

Every wait has a timeout (the machine is small and shared: they are generous), and every server
process is killed in the fixture's teardown, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import fsspec
import pytest

from fstransport import (
    RetryExhausted,
    RetryPolicy,
    TransferOptions,
    TransferReport,
    Unreachable,
    UntrustedPeer,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.http.client import HttpNetwork
from fstransport.options import KiB, MiB
from fstransport.testing import S3TestServer
from fstransport.transfer import ship
from tests.conftest import payload

# The entry point pip installed next to this interpreter (the venv's bin/ or Scripts/).
EXE = shutil.which("fstransport", path=str(Path(sys.executable).parent))
TOKEN = "e2e-t0k3n"
START_TIMEOUT = 60.0  # a server process prints its address within this (usually ~1 s)
SHIP_TIMEOUT = 120.0  # no ship() in this file may take longer, whatever goes wrong
CHUNK, WINDOW = 256 * KiB, 2  # of the slow transfers that a server's death interrupts
S3_PART = 8 * MiB  # the part size a receiver chooses for the snapshots below (< 80 GB)


class ServerProcess:
    """One ``fstransport --debug serve ROOT ...`` process, its stderr kept in a file.

    (``--debug`` lets the receiver's notes through, e.g. "resuming snapshot ...".)
    """

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log_file, env=env, stdin=subprocess.DEVNULL
        )
        self.url = ""

    def read_url(self, timeout: float) -> str:
        """The URL from the line the server prints once it listens."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no address from the server in {timeout} s: {self.stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                piece = os.read(fd, 4096)
                if not piece:
                    self.proc.wait(timeout=30)
                    raise RuntimeError(
                        f"the server exited ({self.proc.returncode}): {self.stderr()}"
                    )
                out += piece
        line = out.decode().splitlines()[0]
        self.url = line.rsplit(" ", 1)[-1]
        assert re.fullmatch(r"https?://127\.0\.0\.1:\d+", self.url), line
        return self.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to tidy up (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()

    def stderr(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    """Starts ``fstransport serve ROOT ARGS`` processes on 127.0.0.1; all killed at teardown.

    ``serve(root, *args, port=0, env=None, fsize=None)`` returns the running server (its ``url``
    read); with `fsize`, the server process alone runs with RLIMIT_FSIZE `fsize` bytes.
    """
    assert EXE is not None, "the fstransport command is not installed: pip install -e ."
    servers: list[ServerProcess] = []

    def start(
        root: Path | str,
        *args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        fsize: int | None = None,
    ) -> ServerProcess:
        root = str(root)
        if "://" not in root:  # a local ROOT must exist (serve refuses one that does not)
            Path(root).mkdir(parents=True, exist_ok=True)
        argv = [EXE, "--debug", "serve", root, "--host", "127.0.0.1", "--port", str(port), *args]
        if fsize is not None:  # the limit of the server process alone, set before it runs
            limit = f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))"
            argv = [sys.executable, "-c", f"import os, resource, sys; {limit}; "
                    "os.execv(sys.argv[1], sys.argv[1:])", *argv]  # fmt: skip
        log = tmp_path / f"server-{len(servers)}.log"
        server = ServerProcess(argv, log, {**clean_environ(), **(env or {})})
        servers.append(server)
        server.read_url(START_TIMEOUT)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


def clean_environ() -> dict[str, str]:
    """This process's environment without a token the developer may have exported."""
    return {k: v for k, v in os.environ.items() if k != "FSTRANSPORT_TOKEN"}


def checksum_of(data: bytes) -> str:
    return format_checksum(chunk_crc(data))


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def s3_object(s3_client: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def no_multipart_uploads_left(s3_client: Any, bucket: str) -> bool:
    return not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


# -- shipping through a server process ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tuning", "parts"),
    [((), 3), (("--part-size", "6MiB", "--upload-concurrency", "2"), 4)],
    ids=["default parts", "6 MiB parts"],
)
async def test_file_to_s3_through_a_server_process(
    serve: StartServer,
    tmp_path: Path,
    s3_server: S3TestServer,
    s3_bucket: str,
    s3_client: Any,
    tuning: tuple[str, ...],
    parts: int,
) -> None:
    root = f"s3://{s3_bucket}/received"
    server = serve(
        root, "--endpoint-url", s3_server.endpoint_url, "--token", TOKEN, *tuning, env=s3_server.env
    )
    data = payload(19 * MiB + 7, seed=11)  # 8 MiB parts on S3 by default, the last a short one
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    options = TransferOptions(chunk_size=MiB, max_in_flight=4)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        report = await asyncio.wait_for(
            ship(str(source), "snap.bin", network=net, options=options), SHIP_TIMEOUT
        )
    assert s3_object(s3_client, s3_bucket, "received/snap.bin") == data
    etag = s3_client.head_object(Bucket=s3_bucket, Key="received/snap.bin")["ETag"]
    assert etag.endswith(f'-{parts}"'), etag  # the server's store cut it into these parts
    assert report.size == len(data)
    assert report.checksum == checksum_of(data)
    assert report.bytes_sent == len(data)
    assert no_multipart_uploads_left(s3_client, s3_bucket)
    listed = s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == ["received/snap.bin"], "no state object left behind"


async def test_memory_to_local_through_a_server_process(serve: StartServer, tmp_path: Path) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN)
    data = payload(5 * MiB + 3, seed=12)
    fsspec.filesystem("memory").pipe_file("/snapshots/42.bin", data)
    options = TransferOptions(chunk_size=256 * KiB, max_in_flight=4)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        report = await asyncio.wait_for(
            ship("memory://snapshots/42.bin", "42.bin", network=net, options=options),
            SHIP_TIMEOUT,
        )
    assert (root / "42.bin").read_bytes() == data
    assert report.chunks_sent == 21
    assert report.checksum == checksum_of(data)
    assert files_under(root) == {"42.bin"}, "no partial data or journal left behind"


# -- a server killed mid-transfer and restarted ------------------------------------------------


@dataclass
class Setup:
    """The receiving end of a restart test: the server's ROOT and how to read the result."""

    root: str
    args: tuple[str, ...]
    env: dict[str, str] | None
    read: Callable[[], bytes]
    leftovers: Callable[[], bool]  # True while partial data or unfinished uploads remain
    size: int
    kill_at: int  # kill the server once this many bytes were acknowledged
    held_at_least: Callable[[int], int]  # bytes a receiver must hold, given those acknowledged
    # bytes one ship() may send again after a restart (besides failed attempts), given those
    # the new receiver held; and how often it may rewind
    resent_at_most: Callable[[int], int]
    rewinds_at_most: int


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    if request.param == "local":
        root = tmp_path / "received"

        def leftovers() -> bool:
            return files_under(root) != {"snap.bin"}

        # every acknowledged chunk was written before its answer; its journal line follows
        # within ~20 ms (after an fdatasync): the last chunks acknowledged may not be recorded
        return Setup(
            str(root), ("--no-auth",), None, (root / "snap.bin").read_bytes, leftovers,
            size=12 * MiB, kill_at=4 * MiB, held_at_least=lambda acked: acked - WINDOW * CHUNK,
            # (a chunk acknowledged but not recorded is found missing at the final chunk: the
            # sender rewinds to it once and sends everything from there again)
            resent_at_most=lambda held: 12 * MiB - held + 2 * WINDOW * CHUNK, rewinds_at_most=1,
        )  # fmt: skip
    s3_server: S3TestServer = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    s3_client = request.getfixturevalue("s3_client")

    def s3_leftovers() -> bool:
        listed = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
        keys = [o["Key"] for o in listed]
        return keys != ["received/snap.bin"] or not no_multipart_uploads_left(s3_client, bucket)

    # Acknowledged bytes of the part being filled were only in the killed process's memory:
    # what a restarted receiver holds is the parts uploaded (the first, by the time of the kill).
    # Its final answer makes the sender rewind to the first byte it lacks and send everything
    # from there again: what was before it, the sender does not send again.
    size = 20 * MiB
    return Setup(
        f"s3://{bucket}/received", ("--endpoint-url", s3_server.endpoint_url, "--no-auth"),
        s3_server.env,
        lambda: s3_object(s3_client, bucket, "received/snap.bin"), s3_leftovers,
        size=size, kill_at=12 * MiB, held_at_least=lambda acked: S3_PART,
        resent_at_most=lambda held: size - held + 2 * WINDOW * CHUNK, rewinds_at_most=1,
    )  # fmt: skip


def slow_options(retry: RetryPolicy) -> TransferOptions:
    # ~3 s for 12 MiB and ~5 s for 20 MiB: the kill lands mid-transfer
    return TransferOptions(
        chunk_size=CHUNK, max_in_flight=WINDOW, rate_limit=4 * MiB, hard_ttl=5.0, retry=retry
    )


class Acked:
    """A progress callback: bytes acknowledged so far; `reached` set once `at` are."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.bytes = 0
        self.reached = asyncio.Event()

    def __call__(self, nbytes: int) -> None:
        self.bytes += nbytes
        if self.bytes >= self.at:
            self.reached.set()


async def kill_when_acked(server: ServerProcess, acked: Acked, task: asyncio.Task[Any]) -> int:
    """SIGKILL `server` once `acked` reached its mark; the bytes acknowledged by then."""
    await asyncio.wait_for(acked.reached.wait(), SHIP_TIMEOUT)
    server.kill()  # blocks the loop for the few ms it takes: the sender waits meanwhile
    assert not task.done(), "the transfer ended before the server was killed"
    return acked.bytes


@contextlib.asynccontextmanager
async def killed_mid_transfer(
    server: ServerProcess, source: Path, data: bytes, retry: RetryPolicy, kill_at: int
) -> AsyncIterator[tuple[asyncio.Task[TransferReport], int]]:
    """ship() `source` (`data`, named by its checksum) to `server`, slowly, with `retry`; SIGKILL
    the server once `kill_at` bytes are acknowledged.  Yields the running transfer and the bytes
    acknowledged at the kill; the transfer is cancelled on the way out."""
    acked = Acked(at=kill_at)
    async with HttpNetwork(server.url) as net:
        transfer = asyncio.ensure_future(
            ship(str(source), "snap.bin", network=net, options=slow_options(retry),
                 progress=acked, checksum=checksum_of(data))
        )  # fmt: skip
        try:
            yield transfer, await kill_when_acked(server, acked, transfer)
        finally:
            transfer.cancel()
            await asyncio.gather(transfer, return_exceptions=True)


async def ship_again(server: ServerProcess, source: Path, data: bytes) -> TransferReport:
    """A second ship() of `source` (`data`, named by its checksum) to `server`, at full speed."""
    options = TransferOptions(chunk_size=CHUNK, max_in_flight=WINDOW)
    async with HttpNetwork(server.url) as net:
        return await asyncio.wait_for(
            ship(str(source), "snap.bin", network=net, options=options,
                 checksum=checksum_of(data)),
            SHIP_TIMEOUT,
        )  # fmt: skip


def resumed_bytes(server: ServerProcess) -> int:
    """Bytes the server said it held from before, when it resumed the snapshot (0: it did not)."""
    found = re.findall(r"resuming snapshot 'snap\.bin': (\d+) bytes already held", server.stderr())
    return int(found[0]) if found else 0


async def test_one_ship_outlasts_a_server_killed_mid_transfer(
    serve: StartServer, setup: Setup, tmp_path: Path
) -> None:
    """The server dies mid-transfer; a new one on the same port and ROOT picks up its partial
    data; the one ship() call, retrying meanwhile, completes without starting over."""
    data = payload(setup.size, seed=13)
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    first = serve(setup.root, *setup.args, env=setup.env)
    patient = RetryPolicy(
        max_attempts=10_000, initial_backoff=0.02, max_backoff=0.2, give_up_after=SHIP_TIMEOUT
    )
    async with killed_mid_transfer(first, source, data, patient, setup.kill_at) as (
        transfer,
        acked_at_kill,
    ):
        second = await asyncio.to_thread(
            serve, setup.root, *setup.args, port=first.port, env=setup.env
        )
        assert second.url == first.url
        report = await asyncio.wait_for(transfer, SHIP_TIMEOUT)
    assert setup.read() == data
    assert not setup.leftovers()
    assert report.retries > 0, "the sender noticed the dead server"
    held = resumed_bytes(second)
    assert held >= setup.held_at_least(acked_at_kill), second.stderr()
    # Had the new server started over, it would have made the sender rewind to 0 and send all
    # it held again.  (bytes_sent counts every attempt, those refused while no server ran too.)
    assert report.rewinds <= setup.rewinds_at_most
    resent = report.bytes_sent - len(data) - report.retries * CHUNK
    assert resent <= setup.resent_at_most(held)


async def test_next_ship_resumes_after_the_server_was_killed_mid_transfer(
    serve: StartServer, setup: Setup, tmp_path: Path
) -> None:
    """The server dies mid-transfer and the sender gives up; a new server on the same port and
    ROOT, a second ship() of the same data (named by its checksum): only the rest is sent."""
    data = payload(setup.size, seed=14)
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    first = serve(setup.root, *setup.args, env=setup.env)
    impatient = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    async with killed_mid_transfer(first, source, data, impatient, setup.kill_at) as (
        transfer,
        acked_at_kill,
    ):
        with pytest.raises(RetryExhausted):
            await asyncio.wait_for(transfer, SHIP_TIMEOUT)
    second = serve(setup.root, *setup.args, port=first.port, env=setup.env)
    assert second.url == first.url
    report = await ship_again(second, source, data)
    assert setup.read() == data
    assert not setup.leftovers()
    assert report.bytes_skipped > 0
    assert report.bytes_skipped >= setup.held_at_least(acked_at_kill) - CHUNK  # chunk 0 goes
    assert report.bytes_sent <= len(data) - report.bytes_skipped + WINDOW * CHUNK
    assert report.checksum == checksum_of(data)


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate that signed the server's
    other_ca: Path  # a CA that did not
    cert: Path  # the server's certificate chain
    key: Path  # and its private key


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    import trustme  # a dev dependency: the TLS tests run wherever the suite does

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(
        folder / "ca.pem", folder / "other-ca.pem", folder / "cert.pem", folder / "key.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    trustme.CA().cert_pem.write_to_path(str(files.other_ca))
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(files.cert), append=True)
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


def tls_args(files: TlsFiles) -> tuple[str, ...]:
    return ("--certfile", str(files.cert), "--keyfile", str(files.key))


async def test_https_with_an_ssl_context_trusting_the_ca(
    serve: StartServer, tmp_path: Path, tls_files: TlsFiles
) -> None:
    import ssl

    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN, *tls_args(tls_files))
    assert server.url.startswith("https://127.0.0.1:")
    data = payload(3 * MiB + 1, seed=15)
    fsspec.filesystem("memory").pipe_file("/s.bin", data)
    options = TransferOptions(chunk_size=512 * KiB)
    context = ssl.create_default_context(cafile=str(tls_files.ca))
    async with HttpNetwork(server.url, token=TOKEN, ssl=context) as net:
        await asyncio.wait_for(
            ship("memory://s.bin", "s.bin", network=net, options=options), SHIP_TIMEOUT
        )
    assert (root / "s.bin").read_bytes() == data

    # without the CA: the certificate cannot be verified, the sender gives up at its first
    # attempt (retrying cannot make it trusted), and nothing arrives
    patient = TransferOptions(retry=RetryPolicy(max_attempts=8, initial_backoff=1.0))
    untrusting = ssl.create_default_context(cafile=str(tls_files.other_ca))
    async with HttpNetwork(server.url, token=TOKEN, ssl=untrusting) as net:
        with pytest.raises(UntrustedPeer, match="cannot be verified") as info:
            await asyncio.wait_for(
                ship("memory://s.bin", "t.bin", network=net, options=patient), 5.0
            )
    assert isinstance(info.value, Unreachable)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert files_under(root) == {"s.bin"}


def run_cli(
    *args: str, timeout: float = SHIP_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert EXE is not None
    environ = {**clean_environ(), **(env or {})}
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=timeout, check=False, env=environ
    )


async def test_cli_ships_over_https_with_cafile_and_refuses_without(
    serve: StartServer, tmp_path: Path, tls_files: TlsFiles
) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--token", TOKEN, *tls_args(tls_files))
    source = tmp_path / "a.bin"
    data = payload(2 * MiB + 5, seed=16)
    source.write_bytes(data)
    via = ("--via", server.url, "--token", TOKEN)

    shipped = await asyncio.to_thread(
        run_cli, "ship", str(source), "a.bin", *via, "--cafile", str(tls_files.ca), "--json"
    )
    assert shipped.returncode == 0, shipped.stderr
    assert (root / "a.bin").read_bytes() == data

    for cafile in [(), ("--cafile", str(tls_files.other_ca))]:
        refused = await asyncio.to_thread(run_cli, "ship", str(source), "b.bin", *via, *cafile)
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            f"fstransport: error: the TLS certificate of {server.url} cannot be verified "
            "(unable to get local issuer certificate); give the CA that signed it with "
            "--cafile PEM"
        ]
        assert refused.stdout == ""
    assert files_under(root) == {"a.bin"}


def test_serve_with_an_unusable_certificate_is_one_line(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    for args, message in [
        (("--certfile", str(tmp_path / "none.pem")), "cannot load the TLS certificate"),
        (("--certfile", str(tls_files.cert)), "cannot load the TLS certificate"),  # no key
        (("--certfile", str(tls_files.cert), "--keyfile", str(tls_files.ca)), "cannot load"),
    ]:
        result = run_cli("serve", str(tmp_path / "r"), "--no-auth", *args, timeout=60)
        assert result.returncode == 1, (args, result.stdout)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("fstransport: error: ")
        assert message in lines[0]
        assert result.stdout == ""
    # a flag without the one it needs is a usage error: argparse's usage line, exit code 2
    result = run_cli(
        "serve", str(tmp_path / "r"), "--no-auth", "--keyfile", str(tls_files.key), timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == "fstransport serve: error: --keyfile needs --certfile"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


async def test_cli_ship_with_checksum_resumes_what_an_interrupted_ship_left(
    serve: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    server = serve(str(root), "--no-auth")
    data = payload(8 * MiB, seed=17)
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    acked = Acked(at=3 * MiB)
    async with HttpNetwork(server.url) as net:
        options = slow_options(RetryPolicy())
        transfer = asyncio.ensure_future(
            ship(str(source), "snap.bin", network=net, options=options, progress=acked,
                 checksum=checksum_of(data))
        )  # fmt: skip
        try:
            await asyncio.wait_for(acked.reached.wait(), SHIP_TIMEOUT)
            assert not transfer.done()
        finally:  # the sender dies halfway; the server keeps what it was sent
            transfer.cancel()
            await asyncio.gather(transfer, return_exceptions=True)
    assert not (root / "snap.bin").exists()

    args = ("ship", str(source), "snap.bin", "--via", server.url, "--chunk-size", "256KiB")
    result = await asyncio.to_thread(run_cli, *args, "--json", "--checksum", checksum_of(data))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes_skipped"] >= acked.bytes - 256 * KiB  # all but the first chunk
    assert report["bytes_sent"] <= len(data) - report["bytes_skipped"] + WINDOW * CHUNK
    assert (root / "snap.bin").read_bytes() == data
