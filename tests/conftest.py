"""Shared fixtures: a clean memory:// filesystem per test, payloads, and recording networks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from fstransport import (
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LoopbackNetwork,
    Receiver,
    TransferOptions,
)
from fstransport.moto_server import REGION, TEST_CREDENTIALS

S3_ENV = {
    "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["key"],
    "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["secret"],
    "AWS_DEFAULT_REGION": REGION,
}
"""moto's credentials, as a user gives them to an ``fstransport`` process: the environment.
Only for moto; a test that may run on another server (``-m s3``) uses ``s3_server.env``."""


@pytest.fixture(autouse=True)
def clean_memory_fs() -> Iterator[MemoryFileSystem]:
    """memory:// is process-global: start and end every test with it empty."""
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield fs
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


class RecordingNetwork:
    """Delivers to a real receiver and records every request it saw (offset, length, done)."""

    def __init__(self, receiver: Receiver) -> None:
        self.inner = LoopbackNetwork(receiver)
        self.seen: list[tuple[int, int, bool]] = []
        self.max_concurrent = 0
        self._active = 0

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.seen.append((req.offset, len(req.data), req.done))
        self._active += 1
        self.max_concurrent = max(self.max_concurrent, self._active)
        try:
            await asyncio.sleep(0)  # let other chunks in flight interleave
            return await self.inner.install_snapshot(req, option)
        finally:
            self._active -= 1


@pytest.fixture
def memory_store() -> FsspecSnapshotStore:
    return FsspecSnapshotStore("memory://store")
