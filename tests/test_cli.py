"""The installed ``fstransport`` command, run as a user runs it (subprocess)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fstransport import __version__
from tests.conftest import payload

# The entry point pip installed next to this interpreter (the venv's bin/ or Scripts/).
EXE = shutil.which("fstransport", path=str(Path(sys.executable).parent))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert EXE is not None, "the fstransport command is not installed: pip install -e ."
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120, check=False)


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
        (("demo", "--chunk-size", "lots"), "not a size"),
        (("ship", "a", "b", "--window", "0"), "must be at least 1"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], "the error is the last line (argparse prints its usage above)"
    assert sum("error" in line for line in lines) == 1


async def test_serve_and_ship_via_it(tmp_path: Path) -> None:
    """`fstransport serve` in its own process, `fstransport ship --via` from another."""
    assert EXE is not None
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
        assert "bearer token" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert not (tmp_path / "received" / "other.bin").exists()
    finally:
        server.terminate()
        await server.wait()
