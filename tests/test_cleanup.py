"""Removing abandoned partial transfers: `store.cleanup(older_than=...)`, `fstransport cleanup`."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

from fstransport import (
    Chunked,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    LoopbackNetwork,
    Receiver,
    Snapshot,
    SnapshotMeta,
    Vote,
)
from fstransport.options import MiB
from fstransport.storage.backends.s3.client import list_uploads
from fstransport.testing import S3Flavor
from tests.conftest import payload
from tests.test_cli import run

V = Vote(1, 0)


async def leave_partial(store: FsspecSnapshotStore, snapshot_id: str, size: int = 1000) -> None:
    """A transfer whose sender went away after its first chunk."""
    meta = SnapshotMeta(snapshot_id, size=size)
    await Receiver(store).handle(InstallSnapshotRequest(V, meta, 0, b"x" * min(size, 400), False))


def age(paths: list[Path], seconds: float) -> None:
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


async def test_cleanup_removes_only_old_abandoned_partials(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FsspecSnapshotStore(str(root))
    await Chunked.send_snapshot(
        LoopbackNetwork(Receiver(store)), V, Snapshot(SnapshotMeta("done"), io.BytesIO(b"ok")), None
    )
    await leave_partial(FsspecSnapshotStore(str(root)), "old")
    await leave_partial(FsspecSnapshotStore(str(root)), "recent")
    hidden = root / ".fstransport"
    age([hidden / "partial" / "old", hidden / "journal" / "old"], 7200)
    removed = await FsspecSnapshotStore(str(root)).cleanup(older_than=3600)
    assert sorted(Path(p).name for p in removed) == ["old", "old"]
    assert sorted(p.name for p in (hidden / "partial").iterdir()) == ["recent"]
    assert (root / "done").read_bytes() == b"ok"


async def test_cleanup_leaves_transfers_in_progress_alone(tmp_path: Path) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "s"))
    await leave_partial(store, "busy")
    assert await store.cleanup(older_than=0) == []
    assert await store.has_partial("busy")


async def test_cleanup_aborts_old_s3_uploads(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, s3_flavor: S3Flavor
) -> None:
    data = payload(12 * MiB, seed=1)

    class Stop(Exception):
        pass

    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=5 * MiB, **s3_storage_options
    ) as store:
        receiver = Receiver(store)
        meta = SnapshotMeta("snap", size=len(data))
        for offset in range(0, 6 * MiB, MiB):
            await receiver.handle(
                InstallSnapshotRequest(V, meta, offset, data[offset : offset + MiB], False)
            )
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="p/deeper/other")  # not a snapshot here
    assert len(s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]) == 2
    async with FsspecSnapshotStore(f"s3://{s3_bucket}/p", **s3_storage_options) as store:
        if s3_flavor.dates_uploads:  # Ceph RGW, AWS: the upload began a few seconds ago
            assert await store.cleanup(older_than=3600) == []
            assert len(s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]) == 2
            removed = await store.cleanup(older_than=0)
        else:  # moto dates every upload in 2010: an hour-old limit finds it old already
            removed = await store.cleanup(older_than=3600)
    assert any(r.startswith(f"s3://{s3_bucket}/p/snap (upload ") for r in removed), removed
    keys = [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert keys == ["p/deeper/other"]


def test_cleanup_command(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / ".fstransport" / "partial").mkdir(parents=True)
    stale = root / ".fstransport" / "partial" / "gone"
    stale.write_bytes(b"partial")
    age([stale], 3 * 86400)
    result = run("cleanup", str(root), "--older-than", "2d", "--json")
    assert result.returncode == 0, result.stderr
    assert '"removed"' in result.stdout
    assert not stale.exists()
    result = run("cleanup", str(root), "--older-than", "soon")
    assert result.returncode != 0
    assert "not a duration" in result.stderr


class _PagedUploads:
    """An S3 client that answers ListMultipartUploads two uploads at a time, as S3 and RGW
    do past their page size."""

    def __init__(self, keys: list[str], *, repeat: bool = False) -> None:
        self.uploads = [{"Key": k, "UploadId": f"id-{i}"} for i, k in enumerate(keys)]
        self.repeat, self.calls = repeat, 0

    async def _call_s3(self, method: str, **kwargs: Any) -> dict[str, Any]:
        assert method == "list_multipart_uploads"
        self.calls += 1
        start = 0
        if "KeyMarker" in kwargs and not self.repeat:
            start = 1 + next(
                i for i, u in enumerate(self.uploads) if u["UploadId"] == kwargs["UploadIdMarker"]
            )
        page = self.uploads[start : start + 2]
        truncated = start + 2 < len(self.uploads)
        return {
            "Uploads": page,
            "IsTruncated": truncated,
            "NextKeyMarker": page[-1]["Key"] if truncated else "",
            "NextUploadIdMarker": page[-1]["UploadId"] if truncated else "",
        }


async def test_upload_listing_follows_every_page() -> None:
    client = _PagedUploads([f"k{i}" for i in range(5)])
    got = [u["Key"] async for u in list_uploads(client, "b", "")]
    assert got == ["k0", "k1", "k2", "k3", "k4"]
    assert client.calls == 3


async def test_upload_listing_stops_when_a_server_repeats_its_page() -> None:
    client = _PagedUploads([f"k{i}" for i in range(5)], repeat=True)
    got = [u["Key"] async for u in list_uploads(client, "b", "")]
    assert got == ["k0", "k1", "k0", "k1"]  # the first page twice, then it gives up
    assert client.calls == 2


async def test_cleanup_aborts_uploads_beyond_the_first_page(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, s3_flavor: S3Flavor
) -> None:
    for i in range(5):
        s3_client.create_multipart_upload(Bucket=s3_bucket, Key=f"q/snap{i}")
    async with FsspecSnapshotStore(f"s3://{s3_bucket}/q", **s3_storage_options) as store:
        s3 = await store.backend.client()  # type: ignore[attr-defined]
        listed = [u["Key"] async for u in list_uploads(s3, s3_bucket, "q/", page_size=2)]
        assert sorted(listed) == [f"q/snap{i}" for i in range(5)]
        removed = await store.cleanup(older_than=0 if s3_flavor.dates_uploads else 3600)
    assert len(removed) == 5, removed
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
