"""How a store picks its backend (`fstransport.storage.backends`), its one constructor path, and
the store conformance suite on a filesystem no specific backend serves (the generic one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import s3fs
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from fstransport import ConfigurationError, FsspecSnapshotStore
from fstransport.storage.backends import (
    BACKENDS,
    FsspecBackend,
    LocalBackend,
    MemoryBackend,
    S3Backend,
    backend_class,
)
from fstransport.storage.backends.files import SeekableFileSink, SequentialSink
from fstransport.testing.store_suite import StoreSuite, Target
from tests.test_store_suite import LocalTarget


@pytest.mark.parametrize(
    ("fs_class", "expected"),
    [
        (s3fs.S3FileSystem, S3Backend),
        (MemoryFileSystem, MemoryBackend),
        (LocalFileSystem, LocalBackend),
        (DirFileSystem, FsspecBackend),
        (fsspec.get_filesystem_class("ftp"), FsspecBackend),
    ],
)
def test_the_first_backend_that_serves_a_filesystem_is_chosen(
    fs_class: type, expected: type[FsspecBackend]
) -> None:
    assert backend_class(fs_class) is expected
    assert BACKENDS[-1] is FsspecBackend  # the generic backend serves what no other does
    assert FsspecBackend.serves(fs_class)


def test_a_store_chooses_its_backend_once_when_it_is_built(tmp_path: Path) -> None:
    assert type(FsspecSnapshotStore("memory://chosen").backend) is MemoryBackend
    assert type(FsspecSnapshotStore(str(tmp_path)).backend) is LocalBackend
    dirfs = DirFileSystem(path=str(tmp_path), fs=LocalFileSystem())
    assert type(FsspecSnapshotStore("store", filesystem=dirfs).backend) is FsspecBackend


def test_from_filesystem_is_the_constructor_with_an_open_filesystem(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    made = FsspecSnapshotStore.from_filesystem(fs, "/one/root", fsync=False, part_size=None)
    direct = FsspecSnapshotStore("/one/root", filesystem=fs)
    assert made.fs is direct.fs is fs
    assert (made.root, made.url) == (direct.root, direct.url) == ("/one/root", "memory:///one/root")
    with pytest.raises(ConfigurationError, match="storage options"):
        FsspecSnapshotStore("/one/root", filesystem=fs, auto_mkdir=True)
    with pytest.raises(ConfigurationError, match="upload_concurrency"):
        FsspecSnapshotStore.from_filesystem(fs, "/r", upload_concurrency=0)


@pytest.mark.parametrize("url", ["memory://m", "local"])
def test_a_multipart_sink_needs_a_backend_that_has_one(tmp_path: Path, url: str) -> None:
    where = str(tmp_path / url) if url == "local" else url
    with pytest.raises(ConfigurationError, match="needs an s3:// store"):
        FsspecSnapshotStore(where, sink="multipart")
    with pytest.raises(ConfigurationError, match="unknown sink kind"):
        FsspecSnapshotStore(where, sink="sideways")  # type: ignore[arg-type]


class DirTarget(LocalTarget):
    """A local folder seen through ``DirFileSystem``: no specific backend serves it, so the
    generic fsspec backend writes, installs and cleans up (seekable file objects, ``fs.mv``)."""


class TestGenericFsspec(StoreSuite):
    @pytest.fixture
    async def target(self, tmp_path: Path) -> AsyncIterator[Target]:
        root = tmp_path / "generic"
        root.mkdir()
        dirfs = DirFileSystem(path=str(root), fs=LocalFileSystem())
        store = FsspecSnapshotStore.from_filesystem(dirfs, "/")
        assert type(store.backend) is FsspecBackend
        made = DirTarget("fsspec-generic", store, root)
        yield made
        await made.store.close()


async def test_the_generic_backend_seeks_where_it_can_and_appends_where_it_cannot(
    tmp_path: Path,
) -> None:
    from fstransport import SnapshotMeta

    dirfs: Any = DirFileSystem(path=str(tmp_path), fs=LocalFileSystem())
    for kind, sink_class in (("auto", SeekableFileSink), ("sequential", SequentialSink)):
        store = FsspecSnapshotStore("/", filesystem=dirfs, sink=kind)  # type: ignore[arg-type]
        sink = await store.begin(SnapshotMeta(f"s-{kind}", size=3))
        assert type(sink) is sink_class
        await store.abort(f"s-{kind}")
        assert not (tmp_path / ".fstransport" / "partial" / f"s-{kind}").exists()
