"""Through a real ``fstransport serve`` process: the server is killed with SIGKILL mid-transfer,
its partial file is damaged, a new server on the same ROOT resumes — and installs exact bytes,
sending again what was damaged and not what is intact (issue #11, "Broken 1")."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from fstransport import RetryExhausted, RetryPolicy
from fstransport.options import MiB
from tests.conftest import payload
from tests.test_http_e2e import (
    CHUNK,
    SHIP_TIMEOUT,
    WINDOW,
    StartServer,
    files_under,
    killed_mid_transfer,
    serve,
    ship_again,
)

__all__ = ["serve"]  # (the fixture, imported for pytest)

SIZE = 12 * MiB
KILL_AT = 6 * MiB


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def truncate(path: Path, length: int) -> None:
    with path.open("r+b") as f:
        f.truncate(length)


def held_when_resumed(log: str) -> int:
    found = re.findall(r"resuming snapshot 'snap\.bin': (\d+) bytes already held", log)
    assert found, f"the new server did not resume:\n{log}"
    return int(found[0])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_a_partial_damaged_after_a_server_was_killed_is_not_installed(
    serve: StartServer, tmp_path: Path, damage: str
) -> None:
    data = payload(SIZE, seed=31)
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    root = tmp_path / "received"
    first = serve(str(root), "--no-auth")
    impatient = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    async with killed_mid_transfer(first, source, data, impatient, KILL_AT) as (
        transfer,
        acked_at_kill,
    ):
        with pytest.raises(RetryExhausted):
            await asyncio.wait_for(transfer, SHIP_TIMEOUT)
    partial = root / ".fstransport" / "partial" / "snap.bin"
    assert partial.stat().st_size >= acked_at_kill - WINDOW * CHUNK
    if damage == "flip":
        damaged_at = MiB + 12_345  # inside a chunk the journal records
        flip_byte(partial, damaged_at)
    else:
        damaged_at = 2 * MiB + 7
        truncate(partial, damaged_at)
    second = serve(str(root), "--no-auth", port=first.port)
    report = await ship_again(second, source, data)
    assert (root / "snap.bin").read_bytes() == data
    assert files_under(root) == {"snap.bin"}
    held = held_when_resumed(second.stderr())
    if damage == "flip":
        # everything recorded but the damaged chunk is resumed, and not sent again
        assert held >= acked_at_kill - (WINDOW + 1) * CHUNK - CHUNK, second.stderr()
        assert report.bytes_skipped >= held - 2 * CHUNK
    else:
        assert held <= damaged_at  # nothing past the cut is believed
        assert report.bytes_skipped >= damaged_at - 2 * CHUNK
    assert report.bytes_sent <= SIZE - report.bytes_skipped + WINDOW * CHUNK
    assert "sent again" in second.stderr()  # the server says what it did not trust
