"""Shared fixtures: a clean memory:// filesystem per test, and payloads."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from fstransport import FsspecSnapshotStore
from fstransport.moto_server import REGION, TEST_CREDENTIALS

S3_ENV = {
    "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["key"],
    "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["secret"],
    "AWS_DEFAULT_REGION": REGION,
}
"""moto's credentials, as a user gives them to an ``fstransport`` process: the environment.
Only for moto; a test that may run on another server (``-m s3``) uses ``s3_server.env``."""


def pytest_configure(config: pytest.Config) -> None:
    """A test run started in the background of a non-interactive shell (``cmd &``) inherits
    SIGINT *ignored*, and so would every ``fstransport`` process the tests start: the tests
    that press Ctrl-C on one would see it carry on.  Handling SIGINT here again (as Python does
    by default) lets the children start with the default disposition, as from a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture
def memory_store() -> FsspecSnapshotStore:
    return FsspecSnapshotStore("memory://store")
