"""``fstransport serve``'s log through the installed command: one line per finished or failed
transfer, refused tokens rate-limited, ``--quiet``, ``--access-log``."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.conftest import payload
from tests.test_cli import EXE, run


@asynccontextmanager
async def serving(root: Path, *args: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    assert EXE is not None
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)  # serve needs it to exist
    server = await asyncio.create_subprocess_exec(
        EXE, "serve", str(root), "--token", "t0k3n", *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        yield line.rsplit(" ", 1)[-1].strip(), server
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()


async def ship_via(url: str, src: Path, name: str, token: str) -> subprocess.CompletedProcess[str]:
    args = ("ship", str(src), name, "--via", url, "--token", token, "--chunk-size", "64KiB")
    return await asyncio.to_thread(run, *args)


async def test_one_line_per_transfer_and_refusals_rate_limited(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(payload(300_000))
    async with serving(tmp_path / "received") as (url, server):
        assert (await ship_via(url, src, "copy.bin", "t0k3n")).returncode == 0
        for _ in range(3):
            assert (await ship_via(url, src, "other.bin", "wrong")).returncode == 1
        server.terminate()
        assert server.stdout is not None
        lines = (await server.stdout.read()).decode().splitlines()
    finished = [line for line in lines if " finished copy.bin " in line]
    assert len(finished) == 1, lines
    assert "293.0 KiB (300000 bytes) in " in finished[0]
    assert "/s  from 127.0.0.1" in finished[0]
    refused = [line for line in lines if " refused 127.0.0.1: missing or wrong bearer" in line]
    assert len(refused) == 1, "three refusals within seconds are one line"


async def test_failed_transfer_is_a_line(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(payload(100_000))
    async with serving(tmp_path / "received") as (url, server):
        wrong = ("ship", str(src), "x.bin", "--via", url, "--token", "t0k3n")
        result = await asyncio.to_thread(run, *wrong, "--checksum", "crc32c:00000000")
        assert result.returncode == 1
        server.terminate()
        assert server.stdout is not None
        lines = (await server.stdout.read()).decode().splitlines()
    failed = [line for line in lines if " failed x.bin  HTTP 4" in line]
    assert failed, lines
    assert "from 127.0.0.1" in failed[0]


async def test_quiet_and_access_log(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(payload(10_000))
    async with serving(tmp_path / "r1", "--quiet") as (url, server):
        assert (await ship_via(url, src, "q.bin", "t0k3n")).returncode == 0
        server.terminate()
        assert server.stdout is not None
        assert (await server.stdout.read()) == b""
    log = tmp_path / "access.log"
    async with serving(tmp_path / "r2", "--access-log", str(log)) as (url, server):
        assert (await ship_via(url, src, "l.bin", "t0k3n")).returncode == 0
        server.terminate()
        assert server.stdout is not None
        assert (await server.stdout.read()) == b""
    assert " finished l.bin " in log.read_text()
