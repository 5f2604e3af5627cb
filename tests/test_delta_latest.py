"""The snapshot a receiver installed last survives a restart (``Receiver(long_lived=True)``, as
``fstransport serve`` runs it): it is the delta base for a snapshot under a new name."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fstransport import TransferOptions
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.receiver import Receiver
from fstransport.storage.layout import LATEST_FILE
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import ship
from tests.test_delta_ship import edited

SIZE = 512 * KiB
OPTIONS = TransferOptions(chunk_size=64 * KiB)


async def _ship(source: Path, name: str, root: Path, long_lived: bool) -> int:
    """Ship `source` as `name` to a fresh receiver over `root` (a restarted node); the bytes
    reused."""
    async with FsspecSnapshotStore(str(root)) as store:
        network = LoopbackNetwork(Receiver(store, long_lived=long_lived))
        report = await ship(str(source), name, network=network, options=OPTIONS)
    assert _same(root / name, source)
    return report.bytes_reused


def _same(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("long_lived", [True, False])
async def test_the_last_installed_snapshot_is_a_base_after_a_restart(
    tmp_path: Path, long_lived: bool
) -> None:
    base = random.Random(41).randbytes(SIZE)
    source = tmp_path / "snap.bin"
    source.write_bytes(base)
    root = tmp_path / "root"
    assert await _ship(source, "term-1", root, long_lived) == 0
    source.write_bytes(edited(base, 2, seed=42))
    reused = await _ship(source, "term-2", root, long_lived)  # another receiver: a restart
    if long_lived:
        assert reused >= SIZE - 2 * 4096
        assert (root / LATEST_FILE).read_text() == "term-2"
    else:  # only its own installs: none yet
        assert reused == 0
        assert not (root / LATEST_FILE).exists()


@pytest.mark.parametrize(
    "content", [b"\xff\xfe not utf-8", b"../../etc/passwd", b"gone-since", b""]
)
async def test_a_latest_note_that_names_no_base_means_a_full_transfer(
    tmp_path: Path, content: bytes
) -> None:
    root = tmp_path / "root"
    (root / LATEST_FILE).parent.mkdir(parents=True)
    (root / LATEST_FILE).write_bytes(content)
    source = tmp_path / "snap.bin"
    source.write_bytes(random.Random(43).randbytes(SIZE))
    assert await _ship(source, "fresh", root, long_lived=True) == 0
    assert (root / LATEST_FILE).read_text() == "fresh"
