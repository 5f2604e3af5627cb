"""The installed ``fstransport`` command, run as a user runs it (subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fstransport import __version__
from fstransport.options import MiB
from fstransport.testing import S3TestServer
from tests.conftest import payload

# The entry point pip installed next to this interpreter (the venv's bin/ or Scripts/).
EXE = shutil.which("fstransport", path=str(Path(sys.executable).parent))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert EXE is not None, "the fstransport command is not installed: pip install -e ."
    # (without a token the developer may have exported: the tests give their own)
    environ = {k: v for k, v in os.environ.items() if k != "FSTRANSPORT_TOKEN"}
    environ.update(env or {})
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=120, check=False, env=environ
    )


VIRTUAL_TIME_CLI = (
    "import asyncio, sys\n"
    "from fstransport.testing.clock import FakeClock\n"
    "asyncio.run = FakeClock(autojump_threshold=0.05).run  # backoffs take no real time\n"
    "from fstransport.cli import main\n"
    "sys.exit(main())"
)


def run_on_virtual_time(*args: str) -> subprocess.CompletedProcess[str]:
    """`run`, in a process whose event loop keeps virtual time (`FakeClock`): waits on timers
    only (backoffs, TTLs) are skipped; I/O is real and gets 50 ms before time jumps."""
    return subprocess.run(
        [sys.executable, "-c", VIRTUAL_TIME_CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fstransport {__version__}"


def test_demo_ships_through_s3_and_verifies() -> None:
    result = run("demo", "--size", "3MiB", "--chunk-size", "256KiB")
    assert result.returncode == 0, result.stderr
    assert "moto S3 server on http://127.0.0.1:" in result.stdout
    assert (
        "memory://fstransport-demo/snapshot.bin -> s3://fstransport-demo/snapshot.bin"
        in result.stdout
    )
    assert result.stdout.count("3.0 MiB (3145728 bytes)") == 2
    assert result.stdout.count("12 x up to 256.0 KiB") == 2
    assert "equals the source" in result.stdout
    assert "throughput" in result.stdout


def test_demo_json_report(tmp_path: Path) -> None:
    target = tmp_path / "demo.bin"
    result = run("demo", "--size", "1MiB", "--json", "--target", str(target))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [hop["size"] for hop in report["hops"]] == [1024 * 1024] * 2
    assert report["hops"][0]["target"] == "s3://fstransport-demo/snapshot.bin"
    assert report["hops"][1]["source"] == "s3://fstransport-demo/snapshot.bin"
    assert report["verified"] is True
    assert target.stat().st_size == 1024 * 1024


def test_ship_to_s3_with_part_size_and_upload_concurrency(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    src = tmp_path / "a.bin"
    data = payload(11 * MiB + 3, seed=8)
    src.write_bytes(data)
    dst = f"s3://{s3_bucket}/tuned.bin"
    args = ("--endpoint-url", s3_server.endpoint_url, "--chunk-size", "5MiB", "--json")
    tuning = ("--part-size", "5MiB", "--upload-concurrency", "2")
    result = run("ship", str(src), dst, *args, *tuning, env=s3_server.env)
    assert result.returncode == 0, result.stderr
    assert s3_client.get_object(Bucket=s3_bucket, Key="tuned.bin")["Body"].read() == data
    # 5 MiB parts: three of them (the default, 8 MiB, would make two)
    assert s3_client.head_object(Bucket=s3_bucket, Key="tuned.bin")["ETag"].endswith('-3"')
    too_small = run("ship", str(src), dst, *args, "--part-size", "1MiB", env=s3_server.env)
    assert too_small.returncode == 2
    assert_one_error_line(too_small, "argument --part-size: must be at least 5.0 MiB")


def test_ship_json(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    data = payload(100_000)
    src.write_bytes(data)
    dst = tmp_path / "out" / "b.bin"
    result = run("ship", str(src), str(dst), "--chunk-size", "16KiB", "--window", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["size"] == len(data)
    assert report["chunks_sent"] == 7
    assert report["checksum"].startswith("crc32c:")
    assert dst.read_bytes() == data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("ship", "/definitely/not/here.bin", "/tmp/x.bin"),
            "cannot open /definitely/not/here.bin",
        ),
        (("ship", "nosuch://a/b.bin", "/tmp/x.bin"), "Protocol not known: nosuch"),
        (("demo", "--chunk-size", "lots"), "not a size"),
        (("ship", "a", "b", "--window", "0"), "must be at least 1"),
        (("ship", "a", "b", "--via", "receiver:8470"), "--via needs an http:// or https:// URL"),
        (("ship", "a", "b", "--via", "http://[::1"), "is not a usable URL"),
        (("ship", "a", "b", "--via", "http://127.0.0.1:port"), "is not a usable URL"),
        (("ship", "a", "b", "--cafile", "ca.pem"), "--token and --cafile are for shipping --via"),
        (
            ("ship", "a", "s3://b/c", "--via", "http://127.0.0.1:1", "--part-size", "8MiB"),
            "with --via, give them to the server (fstransport serve ROOT --part-size ...)",
        ),
        (
            ("ship", "a", "/tmp/b.bin", "--upload-concurrency", "2"),
            "--part-size and --upload-concurrency are for s3:// stores, not /tmp/b.bin",
        ),
        (
            ("serve", "/tmp/r", "--no-auth", "--part-size", "8MiB"),
            "--part-size and --upload-concurrency are for s3:// stores, not /tmp/r",
        ),
        (
            ("serve", "/tmp/r", "--no-auth", "--idle-timeout", "0s"),
            "argument --idle-timeout: must be longer",
        ),
        (
            ("serve", "/tmp/r", "--no-auth", "--max-buffered", "0"),
            "argument --max-buffered: must be at least",
        ),
        (
            ("serve", "/tmp/r", "--no-auth", "--min-body-rate", "fast"),
            "argument --min-body-rate: not a rate: 'fast'",
        ),
        (
            ("serve", "/tmp/r", "--no-auth", "--min-body-rate", "0.5B"),
            "argument --min-body-rate: must be 0 or at least 1 byte per second",
        ),
        (
            ("serve", "/tmp/r", "--no-auth", "--min-body-rate", "1bit"),
            "argument --min-body-rate: must be 0 or at least 1 byte per second",
        ),
        (
            ("ship", "a", "b", "--via", "http://127.0.0.1:1", "--cafile", "ca.pem"),
            "--cafile needs an https:// --via URL",
        ),
        (
            ("ship", "a", "b", "--via", "https://127.0.0.1:1", "--cafile", "/no/ca.pem"),
            "cannot load CA certificates from /no/ca.pem: No such file or directory",
        ),
        (
            ("serve", "/tmp/r", "--no-auth", "--certfile", "/no/cert.pem"),
            "cannot load the TLS certificate and key from /no/cert.pem: No such file",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert_one_error_line(result, message)


def assert_one_error_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], "the error is the last line (argparse prints its usage above)"
    assert sum("error" in line for line in lines) == 1
    if not lines[0].startswith("usage:"):  # our own errors: that line and nothing else
        assert lines == [lines[-1]], result.stderr
        assert lines[0].startswith("fstransport: error: ")


def free_port() -> int:
    """A port nothing listens on (bound once by us, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_server_is_one_line_after_the_retries(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    url = f"http://127.0.0.1:{free_port()}"
    result = run_on_virtual_time("ship", str(src), "a.bin", "--via", url)
    assert result.returncode == 1
    assert_one_error_line(result, f"gave up after 8 attempts: Unreachable: cannot reach {url}")
    assert result.stdout == ""


async def test_serve_and_ship_via_it(tmp_path: Path) -> None:
    """`fstransport serve` in its own process, `fstransport ship --via` from another."""
    assert EXE is not None
    (tmp_path / "received").mkdir()
    server = await asyncio.create_subprocess_exec(
        EXE, "serve", str(tmp_path / "received"), "--token", "t0k3n",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        src = tmp_path / "a.bin"
        data = payload(700_000)
        src.write_bytes(data)
        args = ("ship", str(src), "copy.bin", "--via", url, "--token", "t0k3n", "--json")
        result = await asyncio.to_thread(run, *args, "--chunk-size", "64KiB")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["size"] == len(data)
        assert (tmp_path / "received" / "copy.bin").read_bytes() == data
        refused = await asyncio.to_thread(
            run, "ship", str(src), "other.bin", "--via", url, "--token", "nope"
        )
        assert refused.returncode == 1
        assert_one_error_line(refused, "missing or wrong bearer token")
        assert not (tmp_path / "received" / "other.bin").exists()
    finally:
        server.terminate()
        await server.wait()


# -- ports, signals and pipes ------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "-1", "\uff18\uff10"])  # (full-width 80)
def test_a_port_out_of_range_is_a_usage_error(port: str) -> None:
    result = run("serve", "/tmp/r", "--no-auth", "--port", port)
    assert result.returncode == 2, result.stderr
    assert "a port is a whole number from 0 to 65535" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_mid_s3_upload_leaves_no_multipart_upload(
    tmp_path: Path,
    s3_server: S3TestServer,
    s3_bucket: str,
    s3_client: Any,
    sig: signal.Signals,
    code: int,
    word: str,
) -> None:
    assert EXE is not None
    src = tmp_path / "big.bin"
    src.write_bytes(payload(96 * MiB, seed=9))
    dst = f"s3://{s3_bucket}/big.bin"
    argv = [EXE, "ship", str(src), dst, "--endpoint-url", s3_server.endpoint_url, "--window", "1"]
    proc = subprocess.Popen(
        argv, env={**os.environ, **s3_server.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"):
            assert proc.poll() is None, "the ship ended before its upload was seen"
            assert time.monotonic() < deadline, "no multipart upload started within 60 s"
            time.sleep(0.02)
        proc.send_signal(sig)  # mid-upload: the first part at most is in
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert err.splitlines()[-1] == f"fstransport: {word}", err
    assert "Traceback" not in err
    assert out == ""
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert not s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents")


def test_serve_stops_on_sigterm_with_143(tmp_path: Path) -> None:
    assert EXE is not None
    root = tmp_path / "r"
    root.mkdir()
    proc = subprocess.Popen(
        [EXE, "serve", str(root), "--no-auth"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "receiving into" in proc.stdout.readline()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143
    assert err.splitlines()[-1] == "fstransport: terminated"
    assert "Traceback" not in err


def test_a_closed_stdout_after_a_finished_copy_is_quiet(tmp_path: Path) -> None:
    """``fstransport ship ... | head``: the reader went away before the report was printed."""
    assert EXE is not None
    src = tmp_path / "a.bin"
    data = payload(2 * MiB, seed=10)
    src.write_bytes(data)
    dst = tmp_path / "b.bin"
    for report in [("--json",), ()]:
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will read what it prints
        try:
            result = subprocess.run(
                [EXE, "ship", str(src), str(dst), *report], stdout=write_end,
                stderr=subprocess.PIPE, text=True, timeout=120, check=False,
            )  # fmt: skip
        finally:
            os.close(write_end)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", "no BrokenPipeError, no traceback, nothing at exit either"
        assert dst.read_bytes() == data
        dst.unlink()


def test_a_closed_stdout_through_head(tmp_path: Path) -> None:
    assert EXE is not None
    src = tmp_path / "a.bin"
    src.write_bytes(payload(MiB, seed=11))
    # a report longer than the pipe's buffer, so that head's exit breaks the pipe for sure
    pipeline = (
        f'"{EXE}" ship "{src}" "{tmp_path}/b.bin" --json --chunk-size 4KiB | head -c 1 >/dev/null'
        f'; echo "${{PIPESTATUS[0]}}"'
    )
    result = subprocess.run(
        ["bash", "-c", pipeline], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.strip() == "0", result.stderr
    assert result.stderr == ""


def test_ctrl_c_stops_the_moto_server_quietly() -> None:
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fstransport.moto_server"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert len(proc.stdout.readline().split()) == 2  # "host port": it listens
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


@pytest.mark.parametrize("zero", ["0", "0B", "0B/s", "0KiB", "0 MiB/s", "0Mbit", "0.0GiB"])
def test_min_body_rate_takes_zero_in_any_spelling_of_a_rate(zero: str) -> None:
    import argparse

    from fstransport.cli.args import min_body_rate_arg

    assert min_body_rate_arg(zero) == 0
    with pytest.raises(argparse.ArgumentTypeError, match="not a rate"):
        min_body_rate_arg(zero + "x")
    assert min_body_rate_arg("16B/s") == 16
    assert min_body_rate_arg("8bit") == 1
