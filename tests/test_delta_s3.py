"""Delta transfer onto S3 targets, on the session's S3 server (moto, or Ceph RGW): the sent
ranges spooled, the object assembled in the bucket with ``UploadPartCopy`` from the base; a
base missing (full transfer); a base replaced between the offer and the install (never
installed wrong, no upload left); the bytes uploaded for changes in one region."""

from __future__ import annotations

import asyncio
import glob
import os
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fstransport import TransferOptions
from fstransport.checksum import chunk_crc
from fstransport.delta.s3 import COPY_SPLIT, plan_parts
from fstransport.errors import ChecksumMismatch, InvalidRequest
from fstransport.http.client import HttpNetwork
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta, Vote
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB, MiB, RetryPolicy
from fstransport.protocol.delta import SEND, Recipe, build_map, new_key, plan_recipe
from fstransport.protocol.parts import MIN_PART_SIZE
from fstransport.receiver import Receiver
from fstransport.sender import send_source
from fstransport.storage.backends.s3 import S3Backend
from fstransport.storage.backends.s3.delta import SPOOL_RESERVE, S3DeltaSink
from fstransport.storage.faults import flaky_s3
from fstransport.storage.source import BufferSource
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.testing import S3TestServer
from fstransport.transfer import ship
from tests.helpers import keys, object_bytes, s3_calls, uploads
from tests.test_http_e2e import SHIP_TIMEOUT, TOKEN, StartServer, serve

__all__ = ["serve"]  # the fixture, used by name

SIZE = 24 * MiB
GiB = 1 << 30
OPTIONS = TransferOptions(chunk_size=256 * KiB)
FAST = RetryPolicy(max_attempts=2, initial_backoff=0.0, jitter=0.0)


def pages_changed(base: bytes, pages: list[int], seed: int) -> bytes:
    rng = random.Random(seed)
    new = bytearray(base)
    for page in pages:
        new[page * 4096 : page * 4096 + 100] = rng.randbytes(100)
    return bytes(new)


class Uploaded:
    """Counts what this process sends to S3 while in use: bytes in request bodies (parts and
    PUTs) and bytes copied inside the bucket (``UploadPartCopy`` ranges)."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()

    async def before(self, method: str, kwargs: dict[str, Any]) -> None:
        if method in ("upload_part", "put_object"):
            self.bytes[method] += len(kwargs["Body"])
        elif method == "upload_part_copy":
            first, last = kwargs["CopySourceRange"].removeprefix("bytes=").split("-")
            self.bytes["copied"] += int(last) - int(first) + 1

    @property
    def uploaded(self) -> int:
        return self.bytes["upload_part"] + self.bytes["put_object"]


def s3_backend(store: FsspecSnapshotStore) -> S3Backend:
    assert isinstance(store.backend, S3Backend)
    return store.backend


def spools() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), "fstransport-delta-*"))


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
async def test_a_delta_onto_s3_copies_unchanged_ranges_in_the_bucket(
    mode: str,
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
) -> None:
    base = random.Random(1).randbytes(SIZE)
    if mode == "blocks":
        new = pages_changed(base, [2000, 2001, 2040], seed=2)
    else:
        new = base[: 3 * MiB] + random.Random(3).randbytes(100) + base[3 * MiB :]
    source, target = tmp_path / "snap.bin", f"s3://{s3_bucket}/snaps/snap.bin"
    options = TransferOptions(chunk_size=256 * KiB, delta=mode)
    s3_client.put_object(Bucket=s3_bucket, Key="snaps/snap.bin", Body=base)  # the base
    source.write_bytes(new)
    count = Uploaded()
    with s3_calls(before=count.before) as calls:
        second = await ship(str(source), target, options=options, target_options=s3_storage_options)
    assert object_bytes(s3_client, s3_bucket, "snaps/snap.bin") == new
    assert second.bytes_reused > 0.9 * len(new)
    assert second.bytes_sent < 0.01 * len(new)  # the changed pages (or chunks), map, recipe
    assert calls["upload_part_copy"] >= 1
    assert count.bytes["copied"] >= len(new) - 10 * MiB
    assert count.uploaded + count.bytes["copied"] == len(new)
    assert keys(s3_client, s3_bucket) == ["snaps/snap.bin"]
    assert uploads(s3_client, s3_bucket) == []
    assert spools() == []


async def test_a_base_missing_on_s3_means_a_full_transfer(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = random.Random(4).randbytes(6 * MiB)
    (tmp_path / "a.bin").write_bytes(data)
    s3_client.put_object(Bucket=s3_bucket, Key="other.bin", Body=b"another id, not a base")
    report = await ship(
        str(tmp_path / "a.bin"),
        f"s3://{s3_bucket}/a.bin",
        options=OPTIONS,
        target_options=s3_storage_options,
    )
    assert (report.bytes_reused, report.bytes_sent) == (0, len(data))
    assert object_bytes(s3_client, s3_bucket, "a.bin") == data
    assert uploads(s3_client, s3_bucket) == []


class ReplaceBaseAfterRecipe:
    """Delivers to `inner`; once a recipe was accepted, replaces the base object in the bucket."""

    carries_delta = True

    def __init__(self, inner: LoopbackNetwork, client: Any, bucket: str, body: bytes) -> None:
        self.inner, self.client, self.bucket, self.body = inner, client, bucket, body
        self.replaced = 0

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await self.inner.install_snapshot(req, option)
        if req.recipe is not None:
            self.client.put_object(Bucket=self.bucket, Key="root/snap.bin", Body=self.body)
            self.replaced += 1
        return answer


async def test_a_base_replaced_on_s3_after_the_offer_is_never_installed(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    base = random.Random(5).randbytes(SIZE)
    new = pages_changed(base, [100, 5000], seed=6)
    other = pages_changed(base, [3000], seed=7)  # same size, other bytes: the ETag tells
    store = FsspecSnapshotStore(f"s3://{s3_bucket}/root", **s3_storage_options)
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    meta = SnapshotMeta("snap.bin")
    first = await send_source(loop, Vote(1, 0), meta, BufferSource(base, "base"), None, OPTIONS)
    assert first.completed
    net = ReplaceBaseAfterRecipe(loop, s3_client, s3_bucket, other)
    count = Uploaded()
    with s3_calls(before=count.before):
        result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "new"), None, OPTIONS)
    await store.close()
    assert result.completed
    assert net.replaced == 1
    # sent again in full, never assembled on the replaced base
    assert object_bytes(s3_client, s3_bucket, "root/snap.bin") == new
    assert result.stats.rewinds >= 1
    assert result.stats.bytes_reused == 0
    assert count.uploaded >= len(new)  # the full transfer uploaded it all
    assert keys(s3_client, s3_bucket) == ["root/snap.bin"]
    assert uploads(s3_client, s3_bucket) == []
    assert spools() == []


async def test_changes_in_one_region_upload_only_that_region(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """64 MiB, pages changed all over one 8 MiB region: what is uploaded is that region (at 1
    GiB, 0.78% of the object: the goal is 3%; benchmarks/bench_delta.py --s3 measures it)."""
    size, region = 64 * MiB, (24 * MiB, 32 * MiB)
    base = random.Random(8).randbytes(size)
    pages = random.Random(9).sample(range(region[0] // 4096, region[1] // 4096), 40)
    pages += [region[0] // 4096, region[1] // 4096 - 1]  # its first and last page
    new = pages_changed(base, pages, seed=10)
    source, target = tmp_path / "big.bin", f"s3://{s3_bucket}/big.bin"
    s3_client.put_object(Bucket=s3_bucket, Key="big.bin", Body=base)  # the base
    options = TransferOptions(chunk_size=MiB)
    source.write_bytes(new)
    count = Uploaded()
    with s3_calls(before=count.before):
        report = await ship(str(source), target, options=options, target_options=s3_storage_options)
    assert object_bytes(s3_client, s3_bucket, "big.bin") == new
    map_bytes = 48 + 12 * (size // 4096) + 12 * (size // 65536)  # blocks and super-blocks
    assert report.bytes_sent <= 42 * 4096 + map_bytes + 16 * 90
    assert count.uploaded <= region[1] - region[0]
    assert count.bytes["copied"] == size - count.uploaded
    assert uploads(s3_client, s3_bucket) == []


async def test_assembly_never_completes_on_bytes_that_do_not_add_up(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """The target's CRC32C is computed from the bytes uploaded: a spooled range damaged after
    it was checked on arrival is caught before completion, and the upload is aborted."""
    base = random.Random(11).randbytes(12 * MiB)
    new = pages_changed(base, [10, 1500], seed=12)
    s3_client.put_object(Bucket=s3_bucket, Key="base.bin", Body=base)
    store = FsspecSnapshotStore(f"s3://{s3_bucket}", **s3_storage_options)
    bases = store.backend.delta_base()
    assert bases is not None
    found = await bases.map_base("base.bin", "blocks", new_key())
    assert found is not None
    source_map = build_map("blocks", new, key=found.map.key, block_size=found.map.block_size)
    recipe = plan_recipe(found.map, source_map)
    meta = SnapshotMeta("new.bin", size=len(new))
    sink = await S3DeltaSink.create(
        await s3_backend(store).client(), s3_bucket, "new.bin", meta, FAST
    )
    try:
        for a, b in recipe.sends():
            damaged = bytes([new[a] ^ 1]) + new[a + 1 : b]  # (as if the disk had flipped a bit)
            await sink.write(a, damaged, chunk_crc(new[a:b]))
        with pytest.raises(ChecksumMismatch) as caught:
            await bases.assemble(sink, found, recipe, chunk_crc(new))
        assert caught.value.whole
    finally:
        await sink.abort()
        await store.close()
    assert keys(s3_client, s3_bucket) == ["base.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_a_spool_without_a_recipe_is_uploaded_whole(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """A new sender whose exchange found no base any more sends everything into the spool:
    finishing uploads it whole, checked against the snapshot's CRC32C."""
    data = random.Random(13).randbytes(7 * MiB + 5)
    store = FsspecSnapshotStore(f"s3://{s3_bucket}", **s3_storage_options)
    meta = SnapshotMeta("s.bin", size=len(data))
    client = await s3_backend(store).client()
    sink = await S3DeltaSink.create(client, s3_bucket, "s.bin", meta, FAST)
    for at in range(0, len(data), MiB):
        await sink.write_checked(at, data[at : at + MiB])
    sink.whole_crc = chunk_crc(data) ^ 1
    with pytest.raises(ChecksumMismatch):
        await sink.finish()
    assert uploads(s3_client, s3_bucket) == []
    sink = await S3DeltaSink.create(client, s3_bucket, "s.bin", meta, FAST)
    for at in range(0, len(data), MiB):
        await sink.write_checked(at, data[at : at + MiB])
    sink.whole_crc = chunk_crc(data)
    await sink.finish()
    await store.close()
    assert object_bytes(s3_client, s3_bucket, "s.bin") == data
    assert uploads(s3_client, s3_bucket) == []
    assert spools() == []


async def test_a_bucket_that_refuses_copies_leaves_no_upload(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """Every ``UploadPartCopy`` fails: the assembly's upload is aborted, the transfer starts
    over in full, and what is installed is the new snapshot, whole."""
    base = random.Random(14).randbytes(12 * MiB)
    new = pages_changed(base, [2000], seed=15)
    source, target = tmp_path / "snap.bin", f"s3://{s3_bucket}/snap.bin"
    source.write_bytes(base)
    await ship(str(source), target, options=OPTIONS, target_options=s3_storage_options)
    source.write_bytes(new)
    with flaky_s3(1.0, operations=frozenset({"upload_part_copy"})) as faults:
        report = await ship(str(source), target, options=OPTIONS, target_options=s3_storage_options)
    assert faults.total > 0
    assert object_bytes(s3_client, s3_bucket, "snap.bin") == new
    assert report.bytes_reused == 0
    assert uploads(s3_client, s3_bucket) == []
    assert spools() == []


async def test_a_delta_onto_s3_through_a_server_process(
    serve: StartServer,
    tmp_path: Path,
    s3_server: S3TestServer,
    s3_bucket: str,
    s3_client: Any,
) -> None:
    base = random.Random(16).randbytes(16 * MiB)
    new = pages_changed(base, [2048, 2050], seed=17)
    s3_client.put_object(Bucket=s3_bucket, Key="received/snap.bin", Body=base)
    server = serve(
        f"s3://{s3_bucket}/received",
        "--endpoint-url",
        s3_server.endpoint_url,
        "--token",
        TOKEN,
        env=s3_server.env,
    )
    source = tmp_path / "snap.bin"
    source.write_bytes(new)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        report = await asyncio.wait_for(
            ship(str(source), "snap.bin", network=net, options=OPTIONS), SHIP_TIMEOUT
        )
    assert object_bytes(s3_client, s3_bucket, "received/snap.bin") == new
    assert report.bytes_reused > 0.9 * len(new)
    assert report.bytes_sent < 0.01 * len(new)
    assert keys(s3_client, s3_bucket) == ["received/snap.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_no_room_to_spool_means_a_full_transfer(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A base is offered only when the temporary folder has room for the whole snapshot."""
    base = random.Random(18).randbytes(6 * MiB)
    new = pages_changed(base, [7], seed=19)
    s3_client.put_object(Bucket=s3_bucket, Key="snap.bin", Body=base)
    (tmp_path / "snap.bin").write_bytes(new)
    full = shutil.disk_usage(tempfile.gettempdir())
    monkeypatch.setattr(
        "fstransport.storage.backends.s3.delta.shutil.disk_usage",
        lambda path: full._replace(free=len(new) + SPOOL_RESERVE - 1),
    )
    report = await ship(
        str(tmp_path / "snap.bin"),
        f"s3://{s3_bucket}/snap.bin",
        options=OPTIONS,
        target_options=s3_storage_options,
    )
    assert (report.bytes_reused, report.bytes_sent) == (0, len(new))
    assert object_bytes(s3_client, s3_bucket, "snap.bin") == new
    assert uploads(s3_client, s3_bucket) == []


def test_long_unchanged_ranges_are_copied_in_parts_of_at_most_1_gib() -> None:
    size = 5 * GiB
    recipe = Recipe(size, size, ((2 * GiB, 0), (8 * MiB, SEND), (size - 2 * GiB - 8 * MiB, 0)))
    parts = plan_parts(recipe)
    copies = [p for p in parts if p.base is not None]
    assert len(copies) == 5  # 2 GiB in two parts, 3 GiB less 8 MiB in three
    assert all(MIN_PART_SIZE <= p.length <= COPY_SPLIT for p in copies)
    assert sum(p.length for p in parts if p.base is None) == 8 * MiB
    assert [p.length for p in plan_parts(recipe, copy_size=4 * GiB) if p.base is not None] == [
        2 * GiB,
        size - 2 * GiB - 8 * MiB,
    ]


async def test_a_new_sender_goes_on_with_the_spool(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """A sender dies after the recipe and a few chunks; the next one (a new exchange, a new
    key) finds the spooled chunks (re-read and checked) and the result is whole."""
    base = random.Random(20).randbytes(12 * MiB)
    new = pages_changed(base, list(range(1000, 1040)), seed=21)
    s3_client.put_object(Bucket=s3_bucket, Key="snap.bin", Body=base)
    store = FsspecSnapshotStore(f"s3://{s3_bucket}", **s3_storage_options)
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    meta = SnapshotMeta("snap.bin")

    class DiesAfter:
        carries_delta = True
        data_requests = 0

        async def install_snapshot(
            self, req: InstallSnapshotRequest, option: TransferOptions
        ) -> InstallSnapshotResponse:
            if req.delta is None:
                self.data_requests += 1
                if self.data_requests > 10:
                    raise InvalidRequest("the sender's process died")  # fatal for the sender
            return await loop.install_snapshot(req, option)

    small = TransferOptions(chunk_size=4 * KiB, max_in_flight=1, delta="blocks")
    with pytest.raises(InvalidRequest):
        await send_source(DiesAfter(), Vote(1, 0), meta, BufferSource(new, "n"), None, small)
    assert receiver.receiving == ["snap.bin"]
    result = await send_source(loop, Vote(1, 0), meta, BufferSource(new, "n"), None, small)
    await store.close()
    assert result.completed
    assert object_bytes(s3_client, s3_bucket, "snap.bin") == new
    assert result.stats.bytes_reused > len(new) - 41 * 4096
    map_bytes = 48 + 12 * (len(new) // 4096) + 12 * (len(new) // 65536)
    assert result.stats.bytes_sent <= 30 * 4096 + 1 + map_bytes + 16 * 90
    assert keys(s3_client, s3_bucket) == ["snap.bin"]
    assert uploads(s3_client, s3_bucket) == []
    assert spools() == []
