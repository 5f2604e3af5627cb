"""The store conformance suite (`fstransport.testing.store_suite`), bound to every target of
`FsspecSnapshotStore`, one fixtures class per backend:

- ``memory``: ``memory://`` with its default sink (written in place);
- ``memory-sequential``: ``memory://`` forced through the sequential sink and its reorder buffer;
- ``local``: a folder under ``tmp_path`` (``os.pwrite`` sink, ``os.replace`` install);
- ``s3-multipart``: S3 on the moto server with the default multipart sink, 5 MiB parts;
- ``s3-sequential``: S3 with ``sink="sequential"``; s3fs's own block size is set to 5 MiB so that
  its write file starts a multipart upload of the partial object in the multi-part cases.

Each target carries the store and an independent view of what is visible at its root: boto3 for
S3, the memory filesystem's dictionary for ``memory://``, pathlib for local folders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import FsspecSnapshotStore
from fstransport.testing.store_suite import PART, StoreSuite, Target

# -- targets -------------------------------------------------------------------------------------


class MemoryTarget(Target):
    def __init__(self, name: str, store: FsspecSnapshotStore) -> None:
        self.name = name
        self.store = store
        self.fs = fsspec.filesystem("memory")
        self.root = "/suite"

    def files(self) -> list[str]:
        prefix = self.root + "/"
        return sorted(p[len(prefix) :] for p in self.fs.store if p.startswith(prefix))

    def read(self, name: str) -> bytes:
        return bytes(self.fs.store[f"{self.root}/{name}"].getvalue())


class LocalTarget(Target):
    def __init__(self, name: str, store: FsspecSnapshotStore, root: Path) -> None:
        self.name = name
        self.store = store
        self.root = root

    def files(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class S3Target(Target):
    s3 = True

    def __init__(
        self, name: str, store: FsspecSnapshotStore, client: Any, bucket: str, prefix: str
    ) -> None:
        self.name = name
        self.store = store
        self.client = client
        self.bucket = bucket
        self.prefix = prefix + "/"
        self.needs_size = store.sink_kind != "sequential"
        self.visible_when_finished = self.needs_size

    def files(self) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys.extend(o["Key"][len(self.prefix) :] for o in page.get("Contents", []))
        return sorted(keys)

    def read(self, name: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)[
            "Body"
        ].read()
        return body

    def uploads(self) -> list[str]:
        found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return sorted(f"{u['Key']} {u['UploadId']}" for u in found.get("Uploads", []))


# -- one fixtures class per backend ----------------------------------------------------------------


class TestMemory(StoreSuite):
    @pytest.fixture
    async def target(self) -> AsyncIterator[Target]:
        made = MemoryTarget("memory", FsspecSnapshotStore("memory://suite"))
        yield made
        await made.store.close()


class TestMemorySequential(StoreSuite):
    @pytest.fixture
    async def target(self) -> AsyncIterator[Target]:
        store = FsspecSnapshotStore("memory://suite", sink="sequential")
        made = MemoryTarget("memory-sequential", store)
        yield made
        await made.store.close()


class TestLocal(StoreSuite):
    @pytest.fixture
    async def target(self, tmp_path: Path) -> AsyncIterator[Target]:
        root = tmp_path / "store"
        made = LocalTarget("local", FsspecSnapshotStore(str(root)), root)
        yield made
        await made.store.close()


@pytest.mark.s3
class TestS3Multipart(StoreSuite):
    @pytest.fixture
    async def target(
        self, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
    ) -> AsyncIterator[Target]:
        url = f"s3://{s3_bucket}/suite"
        store = FsspecSnapshotStore(url, part_size=PART, **s3_storage_options)
        made = S3Target("s3-multipart", store, s3_client, s3_bucket, "suite")
        yield made
        await made.store.close()


@pytest.mark.s3
class TestS3Sequential(StoreSuite):
    @pytest.fixture
    async def target(
        self, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
    ) -> AsyncIterator[Target]:
        url = f"s3://{s3_bucket}/suite"
        options = {"sink": "sequential", "default_block_size": PART, **s3_storage_options}
        store = FsspecSnapshotStore(url, **options)
        made = S3Target("s3-sequential", store, s3_client, s3_bucket, "suite")
        yield made
        await made.store.close()


def test_an_unbound_suite_says_what_is_missing() -> None:
    with pytest.raises(NotImplementedError, match="target"):
        StoreSuite.target.__wrapped__(StoreSuite())  # type: ignore[attr-defined]
