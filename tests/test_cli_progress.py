"""The progress bar as a user sees it: ``fstransport ship`` with its stderr on a terminal
(a pseudo-terminal from the `pty` module), for a local and an S3 source."""

from __future__ import annotations

import os
import pty
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fstransport.options import MiB
from fstransport.testing import S3TestServer
from tests.conftest import payload
from tests.test_cli import EXE
from tests.test_cli_ship import interrupt_halfway

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pty needs a POSIX system")


def ship_on_a_terminal(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    """Run ``fstransport ship ARGS`` with stderr on a pseudo-terminal; (exit code, screen)."""
    assert EXE is not None
    main, secondary = pty.openpty()
    environ = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        [EXE, "ship", *args], stdout=subprocess.DEVNULL, stderr=secondary, env=environ, cwd=cwd
    )
    os.close(secondary)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(main)
        code = proc.wait(timeout=60)
    return code, screen.decode(errors="replace")


def frames(screen: str) -> list[str]:
    return [f.strip() for f in screen.replace("\n", "\r").split("\r") if f.strip()]


def check_bar(screen: str, total: str) -> None:
    shown = frames(screen)
    assert shown, "nothing was drawn on the terminal"
    assert any(f"/ {total}" in f and "%" in f and "ETA" in f for f in shown), shown
    assert "100%" in shown[-1], f"the bar ends at 100%: {shown[-1]!r}"
    assert all("ETA 0:00:00" not in f for f in shown)


def test_local_source_shows_total_percent_eta_and_ends_at_100(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(3 * MiB, seed=11))
    args = (str(tmp_path / "a.bin"), str(tmp_path / "b.bin"), "--chunk-size", "256KiB")
    code, screen = ship_on_a_terminal(*args, "--bwlimit", "2MiB")
    assert code == 0, screen
    check_bar(screen, "3.0 MiB")


def test_s3_source_shows_total_percent_eta_and_ends_at_100(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=payload(3 * MiB, seed=12))
    args = (f"s3://{s3_bucket}/src.bin", str(tmp_path / "b.bin"), "--chunk-size", "256KiB")
    code, screen = ship_on_a_terminal(
        *args, "--bwlimit", "2MiB", "--endpoint-url", s3_server.endpoint_url, env=s3_server.env
    )
    assert code == 0, screen
    check_bar(screen, "3.0 MiB")
    assert (tmp_path / "b.bin").stat().st_size == 3 * MiB


def test_quiet_draws_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(MiB))
    args = (str(tmp_path / "a.bin"), str(tmp_path / "b.bin"), "--chunk-size", "64KiB")
    code, screen = ship_on_a_terminal(*args, "--bwlimit", "1MiB", "-q")
    assert code == 0, screen
    assert screen == ""


def test_resumed_copy_shows_the_bytes_already_there(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(payload(2 * MiB, seed=13))
    args = ["ship", "a.bin", "b.bin", "--chunk-size", "64KiB", "--window", "1"]
    interrupt_halfway(tmp_path, args)
    code, screen = ship_on_a_terminal(*args[1:], "--bwlimit", "1MiB", cwd=tmp_path)
    assert code == 0, screen
    shown = frames(screen)
    assert any("already there)" in f for f in shown), shown
    assert "100%" in shown[-1]
