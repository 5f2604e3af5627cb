"""``fstransport serve`` and ``ship --via`` as a user runs them (real processes on 127.0.0.1):
authentication that fails closed, tokens kept out of ``ps``, votes that do not lock senders out
of each other's snapshots, and storage errors that reach the sender with their reason, once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import fsspec
import pytest

from fstransport import (
    HigherVote,
    RemoteError,
    RetryPolicy,
    StorageError,
    TransferOptions,
    Vote,
    ship,
)
from fstransport import cli as cli_module
from fstransport.checksum import chunk_crc
from fstransport.cli.args import token_from
from fstransport.cli.main import build_parser
from fstransport.cli.serve import server_token
from fstransport.http.client import HttpNetwork
from fstransport.options import KiB, MiB
from tests.conftest import S3_ENV, payload
from tests.test_http_e2e import EXE, ServerProcess, StartServer, clean_environ, run_cli, serve

TOKEN = "hard3ned-t0ken"

Serve = StartServer

__all__ = ["serve"]  # (the fixture, imported for pytest)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, message: str) -> str:
    """A failure (exit 1) is one line, ``fstransport: error: ...``; a usage error (exit 2) is
    the command's usage, then one line ``fstransport COMMAND: error: ...``."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    if code == 2:
        assert lines[0].startswith("usage: fstransport "), result.stderr
        errors = [line for line in lines if ": error: " in line]
        assert errors == [lines[-1]], result.stderr
        assert lines[-1].startswith("fstransport "), lines[-1]
    else:
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("fstransport: error: "), lines[0]
    assert message in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(payload(300 * KiB + 7, seed=41))
    return path


# -- authentication ----------------------------------------------------------------------------


SERVE_REFUSALS = [
    (("--token", ""), {}, "--token is empty (is $FSTRANSPORT_TOKEN set?)"),
    ((), {"FSTRANSPORT_TOKEN": ""}, "$FSTRANSPORT_TOKEN is set but empty"),
    ((), {}, "serve needs a token: --token-file PATH, $FSTRANSPORT_TOKEN, or --token T"),
    (("--token", "two words"), {}, "--token must be visible ASCII"),
    (("--token", "a", "--token-file", "t.txt"), {}, "--token or with --token-file, not both"),
    (("--token-file", "empty.txt"), {}, "--token-file empty.txt is empty"),
    (("--token-file", "none.txt"), {}, "cannot read --token-file none.txt: No such file"),
    (("--no-auth", "--token", "a"), {}, "--no-auth and a token"),
    (("--no-auth", "--token-file", "t.txt"), {}, "--no-auth and a token"),
    (("--no-auth",), {"FSTRANSPORT_TOKEN": "a"}, "--no-auth, but $FSTRANSPORT_TOKEN is set"),
    (("--no-auth", "--host", "0.0.0.0"), {}, "not a loopback address"),
    (("--no-auth", "--host", "::"), {}, "not a loopback address"),
    (("--no-auth", "--host", ""), {}, "--no-auth on every address"),
    (("--allow-remote-no-auth",), {}, "--allow-remote-no-auth goes with --no-auth"),
]
"""A serve command line that must not start: (flags, environment, its one line of error)."""


@pytest.mark.parametrize(("args", "env", "message"), SERVE_REFUSALS)
def test_serve_refuses_to_start_without_a_clear_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    env: dict[str, str],
    message: str,
) -> None:
    """Every case, through the command line's own parser and checks (no process: fast)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("tok\n")
    (tmp_path / "empty.txt").write_text("\n")
    monkeypatch.delenv("FSTRANSPORT_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parsed = build_parser().parse_args(["serve", "root", *args])
    with pytest.raises(cli_module.UsageError) as info:
        server_token(parsed)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        case
        for case in SERVE_REFUSALS
        if case[0]
        in (("--token", ""), ("--no-auth", "--host", "0.0.0.0"), ("--token-file", "none.txt"))
    ],
)
def test_a_refused_serve_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    """The same through the real process: exit 2, one line, never listening."""
    (tmp_path / "root").mkdir()
    argv = [EXE or "", "serve", "root", "--port", "0", *args]
    result = subprocess.run(
        argv, cwd=tmp_path, env={**clean_environ(), **env}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert_one_line(result, 2, message)
    assert result.stdout == "", "it never listened"


def test_the_documented_token_from_an_unset_variable_refuses_to_start(tmp_path: Path) -> None:
    """``--token "$FSTRANSPORT_TOKEN"`` with the variable unset, through a real shell."""
    (tmp_path / "root").mkdir()
    result = subprocess.run(
        ["sh", "-c", f'exec "{EXE}" serve root --token "$FSTRANSPORT_TOKEN"'],
        cwd=tmp_path, env=clean_environ(), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert_one_line(result, 2, "--token is empty")


def test_the_remote_no_auth_flag_is_what_lets_no_auth_leave_loopback() -> None:
    """(Parsed only: the tests never listen beyond 127.0.0.1.)"""
    parser = build_parser()
    for host in ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"]:
        args = parser.parse_args(["serve", "r", "--no-auth", "--host", host])
        assert server_token(args) is None, host
    for host in ["0.0.0.0", "10.0.0.1", "::", "receiver.example"]:
        refused = parser.parse_args(["serve", "r", "--no-auth", "--host", host])
        with pytest.raises(cli_module.UsageError, match="not a loopback address"):
            server_token(refused)
        allowed = parser.parse_args(
            ["serve", "r", "--no-auth", "--allow-remote-no-auth", "--host", host]
        )
        assert server_token(allowed) is None


def cmdline(server: ServerProcess) -> str:
    return Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("how", ["env", "file"])
async def test_token_from_the_environment_or_a_file_for_serve_and_ship(
    serve: Serve, tmp_path: Path, source: Path, how: str
) -> None:
    root = tmp_path / "received"
    root.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as `echo`/editors write it: the newline is dropped
    args = ("--token-file", str(token_file)) if how == "file" else ()
    env = {"FSTRANSPORT_TOKEN": TOKEN} if how == "env" else {}
    server = serve(root, *args, env=env)
    if sys.platform.startswith("linux"):
        assert TOKEN not in cmdline(server), "the token is not visible in ps"
    data = source.read_bytes()  # noqa: ASYNC240
    if how == "env":  # the server's token from the environment, the sender's from a file
        shipped = await asyncio.to_thread(
            run_cli, "ship", str(source), "a.bin", "--via", server.url,
            "--token-file", str(token_file),
        )  # fmt: skip
        assert shipped.returncode == 0, shipped.stderr
        none = await asyncio.to_thread(run_cli, "ship", str(source), "b.bin", "--via", server.url)
        line = assert_one_line(none, 1, "Unauthorized: missing or wrong bearer token")
        assert "gave up" not in line, "a refused token is not retried"
        assert not (root / "b.bin").exists()
    else:  # the server's from a file, the sender's from the environment (a flag wins over it)
        shipped = await asyncio.to_thread(
            run_cli, "ship", str(source), "a.bin", "--via", server.url,
            env={"FSTRANSPORT_TOKEN": TOKEN},
        )  # fmt: skip
        assert shipped.returncode == 0, shipped.stderr
        by_flag = await asyncio.to_thread(
            run_cli, "ship", str(source), "c.bin", "--via", server.url, "--token", TOKEN,
            env={"FSTRANSPORT_TOKEN": "stale"},
        )  # fmt: skip
        assert by_flag.returncode == 0, by_flag.stderr
        assert (root / "c.bin").read_bytes() == data
    assert (root / "a.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--token", ""), {}, "--token is empty"),
        ((), {"FSTRANSPORT_TOKEN": ""}, "$FSTRANSPORT_TOKEN is set but empty"),
        (("--token", "a", "--token-file", "t"), {}, "not both"),
        (("--token-file", "/no/such/token"), {}, "cannot read --token-file /no/such/token"),
        (("--token", "é"), {}, "visible ASCII"),
    ],
)
def test_ship_via_refuses_an_unclear_token(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    monkeypatch.delenv("FSTRANSPORT_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parsed = build_parser().parse_args(["ship", "a", "b", "--via", "http://h:1", *args])
    with pytest.raises(cli_module.UsageError, match=message.replace("$", r"\$")):
        token_from(parsed)


def test_ship_via_with_an_empty_token_is_one_line_and_exit_2(source: Path) -> None:
    result = run_cli("ship", str(source), "x.bin", "--via", "http://127.0.0.1:9", "--token", "")
    assert_one_line(result, 2, "--token is empty (is $FSTRANSPORT_TOKEN set?)")


async def test_no_auth_on_loopback_works_and_warns(
    serve: Serve, tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "received"
    root.mkdir()
    server = serve(root, "--no-auth")
    result = await asyncio.to_thread(run_cli, "ship", str(source), "a.bin", "--via", server.url)
    assert result.returncode == 0, result.stderr
    assert (root / "a.bin").read_bytes() == source.read_bytes()  # noqa: ASYNC240
    # (the warning is printed before the address line the fixture waited for)
    assert "fstransport: warning: --no-auth: anyone who can connect" in server.stderr()


# -- votes --------------------------------------------------------------------------------------


async def test_one_senders_vote_does_not_lock_out_the_others(
    serve: Serve, tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "received"
    root.mkdir()
    server = serve(root, env={"FSTRANSPORT_TOKEN": TOKEN})
    env = {"FSTRANSPORT_TOKEN": TOKEN}
    first, second = source.read_bytes(), payload(200 * KiB, seed=48)  # noqa: ASYNC240
    other_source = tmp_path / "other.bin"
    other_source.write_bytes(second)

    async def ship_cli(src: Path, name: str, *vote: str) -> subprocess.CompletedProcess[str]:
        argv = ("ship", str(src), name, "--via", server.url, *vote)
        return await asyncio.to_thread(run_cli, *argv, env=env)

    def installed(name: str) -> bytes:
        return (root / name).read_bytes()

    assert (await ship_cli(source, "a.bin", "--vote", "7,3,1")).returncode == 0
    other = await ship_cli(source, "b.bin")  # another sender, default vote 0,0, another id
    assert other.returncode == 0, other.stderr
    assert installed("b.bin") == first

    stale = await ship_cli(other_source, "a.bin")  # the same id, a lower vote: refused
    assert_one_line(
        stale, 1,
        "receiver has a higher vote T7-N3:committed than ours T0-N0; to replace what it "
        "holds, ship with --vote 7,3,1 or higher",
    )  # fmt: skip
    assert installed("a.bin") == first, "nothing replaced"
    # the rest through the API (the same rule, fewer processes): equal and higher votes go
    # through, and a lower one is refused after a higher one was seen
    async with HttpNetwork(server.url, token=TOKEN) as net:
        await ship(str(other_source), "a.bin", network=net, vote=Vote(7, 3, True))
        assert installed("a.bin") == second
        await ship(str(source), "a.bin", network=net, vote=Vote(8, 0))
        assert installed("a.bin") == first
        with pytest.raises(HigherVote) as info:
            await ship(str(other_source), "a.bin", network=net, vote=Vote(7, 9, True))
    assert info.value.higher == Vote(8, 0)
    assert installed("a.bin") == first


@pytest.mark.parametrize("vote", ["x", "1,2,3,4", "1,2,5", "-1", "²", "1,,0", "9" * 21, ""])
def test_a_malformed_vote_is_a_usage_error(capsys: pytest.CaptureFixture[str], vote: str) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["ship", "a", "b", "--vote", vote])
    assert info.value.code == 2
    assert "a vote is TERM[,NODE[,COMMITTED]]" in capsys.readouterr().err.splitlines()[-1]


def test_a_malformed_vote_exits_2_without_a_traceback(source: Path) -> None:
    result = run_cli("ship", str(source), str(source) + ".copy", "--vote", "7;3")
    assert result.returncode == 2, result.stderr
    assert "a vote is TERM[,NODE[,COMMITTED]]" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_ship_vote_reaches_the_api() -> None:
    parser = build_parser()
    assert parser.parse_args(["ship", "a", "b", "--vote", "7"]).vote == Vote(7, 0)
    assert parser.parse_args(["ship", "a", "b", "--vote", "7,3"]).vote == Vote(7, 3)
    assert parser.parse_args(["ship", "a", "b", "--vote", "7, 3, 1"]).vote == Vote(7, 3, True)
    assert parser.parse_args(["ship", "a", "b"]).vote is None


# -- storage errors -----------------------------------------------------------------------------


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {mounted.stderr}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("size=1m")``: a fresh tmpfs mounted with those options; unmounted afterwards."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command to make a small file system with")
    mounted: list[Path] = []

    def make(options: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounted)}"
        mount_tmpfs(where, options)
        mounted.append(where)
        return where

    try:
        yield make
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


class Retries(logging.Handler):
    """The sender's "retrying" notes, caught on the fstransport logger itself (whatever an
    earlier test did to its propagation)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.seen.append(record.getMessage())


async def ship_once(server: ServerProcess, data: bytes, name: str) -> StorageError:
    """ship() through `server` with a patient retry policy, expecting a permanent storage
    error: it must come at the first attempt (no retry logged) as a typed `StorageError`."""
    patient = RetryPolicy(max_attempts=8, initial_backoff=0.5, max_backoff=1.0)
    options = TransferOptions(chunk_size=256 * KiB, max_in_flight=2, retry=patient)
    source = f"memory://hardening/{name}"
    fsspec.filesystem("memory").pipe_file(source, data)
    started = time.monotonic()
    logger = logging.getLogger("fstransport")
    retries, level = Retries(), logger.level
    logger.addHandler(retries)
    logger.setLevel(logging.WARNING)
    try:
        async with HttpNetwork(server.url, token=TOKEN) as net:
            with pytest.raises(RemoteError) as info:
                await asyncio.wait_for(ship(source, name, network=net, options=options), 60)
    finally:
        logger.removeHandler(retries)
        logger.setLevel(level)
    assert retries.seen == [], "a permanent storage error is not retried"
    assert time.monotonic() - started < 0.5, "no backoff was waited for"
    assert isinstance(info.value.source, StorageError)
    assert info.value.source.retryable is False
    return info.value.source


async def test_a_full_disk_fails_at_once_with_its_reason(
    serve: Serve, tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    root = tmpfs("size=1m")
    server = serve(root, "--token", TOKEN)
    error = await ship_once(server, payload(3 * MiB, seed=42), "big.bin")
    assert "No space left on device" in str(error)
    assert isinstance(error.cause, OSError)
    assert error.cause.errno == 28
    assert not (root / "big.bin").exists()

    # through the command line: one line with the receiver's reason
    src = tmp_path / "big.bin"
    src.write_bytes(payload(3 * MiB, seed=43))
    result = await asyncio.to_thread(
        run_cli, "ship", str(src), "big.bin", "--via", server.url, "--token", TOKEN
    )
    line = assert_one_line(result, 1, "StorageError: cannot write big.bin: No space left on device")
    assert "gave up" not in line

    # the answer itself: typed, its reason and errno, and no path of the server's
    headers = {
        "Authorization": f"Bearer {TOKEN}", "X-Fstransport-Vote": "0,0,0",
        "X-Fstransport-Meta": json.dumps({"size": 2 * MiB}), "X-Fstransport-Offset": "0",
        "X-Fstransport-Done": "1",
    }  # fmt: skip
    body = payload(2 * MiB, seed=44)
    headers["X-Fstransport-Crc32c"] = str(chunk_crc(body))
    url = f"{server.url}/v1/snapshots/raw.bin"
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, data=io.BytesIO(body), headers=headers) as r,
    ):
        status, text = r.status, await r.text()
    assert status == 500
    answer = json.loads(text)
    assert answer["error"] == "StorageError"
    assert (answer["errno"], answer["retryable"]) == ("ENOSPC", False)
    assert answer["reason"] == "No space left on device"
    assert str(root) not in text
    assert str(tmp_path) not in text
    assert "Traceback" not in server.stderr()


async def test_a_root_made_read_only_or_replaced_while_serving(
    serve: Serve, tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    root = tmpfs("size=4m")
    server = serve(root, "--token", TOKEN)
    remount = ["mount", "-o", "remount,ro", str(root)]
    await asyncio.to_thread(subprocess.run, remount, check=True, capture_output=True)
    error = await ship_once(server, payload(600 * KiB, seed=45), "ro.bin")
    assert "Read-only file system" in str(error)

    other = tmp_path / "gone"
    other.mkdir()
    second = serve(other, "--token", TOKEN)
    other.rmdir()  # (a missing ROOT is made again by the store) and a file put in its place
    other.write_bytes(b"")
    error = await ship_once(second, payload(600 * KiB, seed=46), "gone.bin")
    assert "Not a directory" in str(error) or "File exists" in str(error)
    assert str(other) not in str(error)


async def test_past_the_file_size_limit_fails_at_once(serve: Serve, tmp_path: Path) -> None:
    root = tmp_path / "received"
    root.mkdir()
    server = serve(root, "--token", TOKEN, fsize=MiB)  # RLIMIT_FSIZE of the server: 1 MiB
    error = await ship_once(server, payload(3 * MiB, seed=47), "huge.bin")
    assert "File too large" in str(error)
    assert not (root / "huge.bin").exists()


def test_serve_refuses_a_missing_or_read_only_root(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    missing = tmp_path / "no" / "such"
    result = run_cli("serve", str(missing), "--no-auth", timeout=60)
    assert_one_line(result, 2, f"ROOT {missing} does not exist or is not a folder")
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    assert_one_line(run_cli("serve", str(a_file), "--no-auth", timeout=60), 2, "not a folder")
    read_only = tmpfs("size=1m,ro")
    result = run_cli("serve", str(read_only), "--no-auth", timeout=60)
    assert_one_line(result, 2, f"cannot write into ROOT {read_only}: Read-only file system")
    assert result.stdout == ""


def test_serve_refuses_an_s3_root_it_cannot_write(moto_server: str, s3_bucket: str) -> None:
    args = ("--no-auth", "--endpoint-url", moto_server)
    result = run_cli("serve", "s3://no-such-bucket/p", *args, timeout=60, env=S3_ENV)
    assert_one_line(result, 2, "cannot write into ROOT s3://no-such-bucket/p")
