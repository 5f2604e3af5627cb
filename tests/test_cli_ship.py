"""``fstransport ship`` as rclone and aws-cli users expect it: folders, pipes, --dry-run,
--ignore-existing, --bwlimit, global flags on either side, usage errors (exit 2), one-line
failures with a hint (exit 1) — each through the installed command, in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fstransport.options import MiB
from fstransport.testing import S3TestServer
from tests.conftest import S3_ENV, payload
from tests.test_cli import EXE, assert_one_error_line, free_port, run, run_on_virtual_time

NO_AWS = {
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def run_in(cwd: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert EXE is not None
    return subprocess.run(
        [EXE, *args], cwd=cwd, input=stdin, capture_output=True, timeout=120, check=False
    )


def no_leftovers(folder: Path) -> None:
    assert not (folder / ".fstransport").exists(), "empty .fstransport folders were left"


@pytest.mark.parametrize("dst", ["out", "out/", "./out"])
def test_dst_folder_keeps_the_file_name(tmp_path: Path, dst: str) -> None:
    data = payload(70_000, seed=1)
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "out").mkdir()
    result = run_in(tmp_path, "ship", "a.bin", dst, "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "a.bin").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin"]
    assert result.stdout == b"", "-q prints no report"


def test_dst_slash_creates_the_folder_and_no_empty_internal_folders(tmp_path: Path) -> None:
    data = payload(50_000, seed=2)
    (tmp_path / "a.bin").write_bytes(data)
    result = run("ship", str(tmp_path / "a.bin"), f"{tmp_path}/new/", "--chunk-size", "16KiB")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new" / "a.bin").read_bytes() == data
    no_leftovers(tmp_path / "new")
    assert f"-> {tmp_path}/new/a.bin" in result.stdout


def test_stdin_to_file_and_file_to_stdout(tmp_path: Path) -> None:
    data = payload(300_000, seed=3)
    piped = run_in(tmp_path, "ship", "-", "in.bin", "--chunk-size", "64KiB", stdin=data)
    assert piped.returncode == 0, piped.stderr
    assert (tmp_path / "in.bin").read_bytes() == data
    assert b"- -> in.bin" in piped.stdout
    out = run_in(tmp_path, "ship", "in.bin", "-", "--chunk-size", "64KiB")
    assert out.returncode == 0, out.stderr
    assert out.stdout == data, "stdout carries the data and nothing else"
    assert b"in.bin -> -" in out.stderr, "the report goes to stderr when stdout is the data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin"]
    both = run_in(tmp_path, "ship", "-", "-", stdin=b"x")
    assert both.returncode == 2
    assert b"cannot both be -" in both.stderr


def test_help_says_pipes_do_not_resume_and_lists_exit_codes() -> None:
    result = run("ship", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "neither can resume" in text
    assert "a bare number is bytes" in text
    for code in ("0 done", "1 the command failed", "2 the command line is wrong", "130"):
        assert code in text
    top = " ".join(run("--help").stdout.split())
    assert "2 the command line is wrong" in top
    assert "130 interrupted" in top


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(1000))
    result = run_in(tmp_path, "ship", "a.bin", "out/", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == (
        "would ship a.bin (1000 bytes) -> out/a.bin (create); dry run, nothing sent"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    as_json = json.loads(run_in(tmp_path, "ship", "a.bin", "a.bin", "--dry-run", "--json").stdout)
    assert as_json == {
        "dry_run": True, "source": "a.bin", "target": "a.bin", "size": 1000, "exists": True,
        "via": None,
    }  # fmt: skip


def test_ignore_existing_skips_an_existing_target(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(1000))
    (tmp_path / "b.bin").write_bytes(b"older")
    skipped = run_in(tmp_path, "ship", "a.bin", "b.bin", "--ignore-existing")
    assert skipped.returncode == 0, skipped.stderr
    assert b"b.bin exists; skipped (--ignore-existing)" in skipped.stderr
    assert (tmp_path / "b.bin").read_bytes() == b"older"
    copied = run_in(tmp_path, "ship", "a.bin", "c.bin", "--ignore-existing")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "c.bin").read_bytes() == payload(1000)


def test_bwlimit_spaces_the_chunks(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(MiB))
    args = ("ship", "a.bin", "b.bin", "--chunk-size", "64KiB", "--bwlimit", "1MiB", "--json")
    result = run_in(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    # the first chunk goes at once, each of the other 15 waits 64 KiB / (1 MiB/s)
    assert json.loads(result.stdout)["elapsed"] >= 15 / 16 - 0.01
    bad = run("ship", "a", "b", "--bwlimit", "fast")
    assert bad.returncode == 2
    assert_one_error_line(bad, "argument --bwlimit: not a rate")


def test_global_flags_before_or_after_the_command(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(1000))
    log = tmp_path / "log.txt"
    after = run_in(tmp_path, "ship", "a.bin", "b.bin", "--debug", "-v", "--log-file", str(log))
    assert after.returncode == 0, after.stderr
    before = run_in(tmp_path, "-q", "--log-file", str(log), "ship", "a.bin", "c.bin")
    assert before.returncode == 0, before.stderr
    assert before.stdout == b""
    assert log.exists()
    failed = run_in(tmp_path, "ship", "nothere.bin", "d.bin", "--log-file", str(log), "-v")
    assert failed.returncode == 1
    assert failed.stderr.decode().startswith("fstransport: error: ")


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("0", "must be at least 4.0 KiB, got 0 (0 bytes; a bare number is bytes)"),
        ("8", "must be at least 4.0 KiB"),
        ("6GiB", "must be at most 5.0 GiB"),
        ("lots", "not a size"),
    ],
)
def test_chunk_size_out_of_range_is_a_usage_error(size: str, message: str) -> None:
    result = run("ship", "a", "b", "--chunk-size", size)
    assert result.returncode == 2
    assert_one_error_line(result, f"argument --chunk-size: {message}")


def test_missing_source_names_no_internals(tmp_path: Path) -> None:
    result = run("ship", str(tmp_path / "nothere.bin"), str(tmp_path / "out.bin"))
    assert result.returncode == 1
    assert_one_error_line(result, f"cannot open {tmp_path}/nothere.bin")
    assert "Errno" not in result.stderr
    assert ".fstransport" not in result.stderr


def test_memory_target_warns_that_it_vanishes(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(1000))
    result = run("ship", str(tmp_path / "a.bin"), "memory://x/a.bin")
    assert result.returncode == 0, result.stderr
    assert "vanishes when the command exits" in result.stderr


def test_s3_missing_bucket_is_one_line_with_a_hint(tmp_path: Path, s3_server: S3TestServer) -> None:
    (tmp_path / "a.bin").write_bytes(payload(1000))
    dst = "s3://no-such-bucket-here/a.bin"
    result = run(
        "ship",
        str(tmp_path / "a.bin"),
        dst,
        "--endpoint-url",
        s3_server.endpoint_url,
        env=s3_server.env,
    )
    assert result.returncode == 1
    assert_one_error_line(result, "does not exist")
    assert "is --endpoint-url right?" in result.stderr


def test_s3_closed_port_is_one_line_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(1000))
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    args = ("ship", str(tmp_path / "a.bin"), "s3://b/a.bin", "--endpoint-url", endpoint)
    result = run(*args, env=S3_ENV)
    assert result.returncode == 1
    assert_one_error_line(result, f"cannot reach S3 at {endpoint} for s3://b/a.bin")
    assert "is --endpoint-url right?" in result.stderr
    # not a timing claim: botocore's default would retry for far longer than this bound
    assert time.monotonic() - started < 60


def test_s3_without_credentials_is_one_line_with_a_hint(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    (tmp_path / "a.bin").write_bytes(payload(1000))
    args = (
        "ship",
        str(tmp_path / "a.bin"),
        "s3://b/a.bin",
        "--endpoint-url",
        s3_server.endpoint_url,
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    assert EXE is not None
    result = subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=120, check=False,
        env={**environ, **NO_AWS},
    )  # fmt: skip
    assert result.returncode == 1
    assert_one_error_line(result, "no S3 credentials for s3://b/a.bin")
    assert "AWS_ACCESS_KEY_ID" in result.stderr


def test_s3_bucket_as_source_is_a_usage_error() -> None:
    result = run("ship", "s3://just-a-bucket", "out.bin")
    assert result.returncode == 2
    assert_one_error_line(result, "names a bucket, not an object")


def test_s3_folder_target_and_ignore_existing(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    data = payload(100_000, seed=5)
    (tmp_path / "a.bin").write_bytes(data)
    args = ("--endpoint-url", s3_server.endpoint_url)
    result = run(
        "ship", str(tmp_path / "a.bin"), f"s3://{s3_bucket}/dir/", *args, env=s3_server.env
    )
    assert result.returncode == 0, result.stderr
    assert s3_client.get_object(Bucket=s3_bucket, Key="dir/a.bin")["Body"].read() == data
    again = run(
        "ship", str(tmp_path / "a.bin"), f"s3://{s3_bucket}/dir/a.bin", "--ignore-existing",
        "--json", *args, env=s3_server.env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "skipped (--ignore-existing)" in again.stderr
    assert again.stdout == ""


def interrupt_halfway(tmp_path: Path, args: list[str]) -> None:
    """Run ``fstransport ARGS --bwlimit 512KiB`` in `tmp_path` and SIGKILL it once its
    journal records some chunks: a partial copy to resume."""
    assert EXE is not None
    slow = subprocess.Popen([EXE, *args, "--bwlimit", "512KiB"], cwd=tmp_path)
    journal = tmp_path / ".fstransport" / "journal"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            entries = list(journal.glob("*")) if journal.exists() else []
            if entries and sum(e.stat().st_size for e in entries) > 64:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        assert slow.poll() is None, "the slow copy ended before it could be interrupted"
        os.kill(slow.pid, signal.SIGKILL)
    finally:
        slow.wait()


def test_resumed_run_says_what_it_did_not_send(tmp_path: Path) -> None:
    """Kill a slow ship halfway, ship again: the report names the bytes already there."""
    data = payload(2 * MiB, seed=6)
    (tmp_path / "a.bin").write_bytes(data)
    args = ["ship", "a.bin", "b.bin", "--chunk-size", "64KiB", "--window", "1"]
    interrupt_halfway(tmp_path, args)
    result = run_in(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b.bin").read_bytes() == data
    text = result.stdout.decode()
    assert "resumed" in text
    assert "were already there and not sent again" in text
    json_run = run_in(tmp_path, *args[:2], "c.bin", "--json")
    assert json.loads(json_run.stdout)["bytes_skipped"] == 0


def test_a_delta_run_says_reused_not_resumed(tmp_path: Path) -> None:
    """A target that holds an older version: the report names the bytes taken from it as
    reused (a delta), not as a resumed transfer, and the JSON report agrees."""
    data = bytearray(payload(1 * MiB, seed=7))
    (tmp_path / "b.bin").write_bytes(data)
    data[4096:8192] = bytes(4096)  # one page changed
    (tmp_path / "a.bin").write_bytes(data)
    small = ("--chunk-size", "64KiB")  # a delta is tried for more than one chunk
    result = run_in(tmp_path, "ship", "a.bin", "b.bin", *small)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b.bin").read_bytes() == data
    text = result.stdout.decode()
    assert "reused" in text
    assert "resumed" not in text
    (tmp_path / "c.bin").write_bytes(payload(1 * MiB, seed=7))
    report = json.loads(run_in(tmp_path, "ship", "a.bin", "c.bin", *small, "--json").stdout)
    assert report["bytes_reused"] >= 1 * MiB - 8192
    # every reused byte was skipped, but the final byte, which the last chunk always carries
    assert report["bytes_reused"] - report["bytes_skipped"] in (0, 1)


def test_retries_are_shown_on_verbose_only(tmp_path: Path) -> None:
    """(On virtual time: the backoffs before giving up take no real seconds.)"""
    (tmp_path / "a.bin").write_bytes(payload(1000))
    url = f"http://127.0.0.1:{free_port()}"
    quiet = run_on_virtual_time("ship", str(tmp_path / "a.bin"), "a.bin", "--via", url)
    assert quiet.returncode == 1
    assert "retrying" not in quiet.stderr
    verbose = run_on_virtual_time("ship", str(tmp_path / "a.bin"), "a.bin", "--via", url, "-v")
    assert verbose.returncode == 1
    retries = [line for line in verbose.stderr.splitlines() if "retrying" in line]
    assert len(retries) >= 2, verbose.stderr
    assert verbose.stderr.splitlines()[-1].startswith("fstransport: error: gave up after")


def test_a_fifo_or_device_as_dst_is_refused(tmp_path: Path) -> None:
    """Installing renames over the target: a named pipe or a device must never be replaced
    (a named pipe in tmp_path stands for a device, which a failing test must not harm)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = run("ship", __file__, str(fifo))
    assert result.returncode == 1
    assert_one_error_line(result, f"DST {fifo} is not a regular file")
    assert fifo.is_fifo()


def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    assert EXE is not None
    (tmp_path / "a.bin").write_bytes(payload(MiB))
    args = ["ship", "a.bin", "b.bin", "--chunk-size", "64KiB", "--bwlimit", "256KiB"]
    proc = subprocess.Popen([EXE, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / ".fstransport" / "journal"
    deadline = time.monotonic() + 60
    while not (journal.exists() and any(journal.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "fstransport: interrupted"
    assert not (tmp_path / "b.bin").exists()
