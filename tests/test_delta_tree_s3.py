"""Directory-snapshot delta onto S3 targets, on the session's S3 server (moto, or Ceph RGW):
the new tree built in the bucket from the base tree's objects (unchanged, renamed and moved
files copied whole, changed files by parts), nothing uploaded for an unchanged file; a base file
replaced between the offer and the install (never installed wrong); a cancel mid-assembly (no
upload, no manifest, no new generation left)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from fstransport import TransferOptions
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.delta.tree_s3 import s3_tree
from fstransport.delta.tree_s3_build import build_s3_tree
from fstransport.errors import ChecksumMismatch, InvalidRequest, SourceChanged
from fstransport.http.client import HttpNetwork
from fstransport.messages import SnapshotMeta, Vote
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB, MiB, RetryPolicy
from fstransport.protocol.delta import SEND, Recipe, build_map, new_key
from fstransport.protocol.receiver import ReceiverLimits
from fstransport.receiver import Receiver
from fstransport.sender import send_source
from fstransport.storage.backends.s3 import S3Backend
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.testing import S3TestServer
from fstransport.transfer import ship
from fstransport.tree import MANIFEST_NAME, TREE, open_tree_source
from tests.helpers import keys, object_bytes, s3_calls, uploads
from tests.test_delta_s3 import Uploaded, spools
from tests.test_delta_tree import write_tree
from tests.test_http_e2e import SHIP_TIMEOUT, TOKEN, StartServer, serve

__all__ = ["serve"]  # the fixture, used by name

Tree = dict[str, bytes]
OPTIONS = TransferOptions(chunk_size=256 * KiB)
FAST = RetryPolicy(max_attempts=2, initial_backoff=0.0, jitter=0.0)


def installed(client: Any, bucket: str, prefix: str) -> Tree:
    """The tree the manifest at `prefix` names, each file checked against it."""
    manifest = json.loads(object_bytes(client, bucket, f"{prefix}/{MANIFEST_NAME}"))
    out = {}
    for path, size, crc in manifest["files"]:
        data = object_bytes(client, bucket, f"{prefix}/{manifest['generation']}/{path}")
        assert (len(data), format_checksum(chunk_crc(data))) == (size, crc)
        out[path] = data
    return out


def generations(client: Any, bucket: str, prefix: str) -> set[str]:
    return {k.split("/")[2] for k in keys(client, bucket) if k.count("/") >= 3 and "/g-" in k}


def old_and_new(seed: int) -> tuple[Tree, Tree]:
    """A base tree and a new one with unchanged, renamed, moved, changed, new and removed
    files (one changed file large enough for a copied part: 12 MiB, a page rewritten)."""
    rng = random.Random(seed)
    old = {f"sst/{i:03d}.sst": rng.randbytes(rng.randint(1, 64) * KiB) for i in range(12)}
    old["big.db"] = rng.randbytes(12 * MiB)
    old["MANIFEST"] = rng.randbytes(3000)
    new = dict(old)
    new["renamed.sst"] = new.pop("sst/001.sst")
    new["deep/moved.sst"] = new.pop("sst/002.sst")
    del new["sst/003.sst"], new["sst/004.sst"]  # removed
    new["sst/new.sst"] = rng.randbytes(50 * KiB)  # new
    new["MANIFEST"] = rng.randbytes(3100)  # changed, small
    big = bytearray(new["big.db"])
    big[6 * MiB : 6 * MiB + 100] = rng.randbytes(100)  # one page of a large file
    new["big.db"] = bytes(big)
    new["empty"] = b""
    return old, new


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
async def test_a_tree_delta_onto_s3_copies_what_the_base_holds(
    mode: str, tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    old, new = old_and_new(1)
    folder, target = tmp_path / "tree", f"s3://{s3_bucket}/trees/ckpt"
    options = TransferOptions(chunk_size=256 * KiB, delta=mode)
    write_tree(folder, old)
    await ship(str(folder), target, options=options, target_options=s3_storage_options)
    assert installed(s3_client, s3_bucket, "trees/ckpt") == old
    write_tree(folder, new)
    count = Uploaded()
    with s3_calls(before=count.before) as calls:
        report = await ship(str(folder), target, options=options, target_options=s3_storage_options)
    assert installed(s3_client, s3_bucket, "trees/ckpt") == new
    changed = len(new["sst/new.sst"]) + len(new["MANIFEST"])
    total = sum(map(len, new.values()))
    assert report.bytes_reused > total - changed - 2 * MiB
    assert report.bytes_sent < changed + 200 * KiB  # the new and changed bytes, table, maps
    # nothing uploaded for unchanged, renamed or moved files: the new, the changed small
    # file, and around the changed page of big.db (its other 6+ MiB runs copied by parts)
    assert count.uploaded <= changed + 2 * 8 * MiB
    assert count.uploaded < 0.75 * total
    assert calls["copy_object"] >= 9  # 7 unchanged + renamed + moved, copied whole
    assert calls["upload_part_copy"] >= 1  # big.db's unchanged head
    assert count.bytes["copied"] >= 6 * MiB
    assert calls["put_object"] <= 4  # new, MANIFEST, empty and the tree's manifest
    assert len(generations(s3_client, s3_bucket, "trees/ckpt")) == 1
    assert not any(k.startswith("trees/.fstransport/packed") for k in keys(s3_client, s3_bucket))
    assert uploads(s3_client, s3_bucket) == []
    assert spools() == []


@pytest.mark.parametrize("how", ["replaced", "removed"])
async def test_a_base_file_changed_after_the_offer_is_never_installed(
    how: str, tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    old, new = old_and_new(2)
    folder, target = tmp_path / "tree", f"s3://{s3_bucket}/trees/ckpt"
    write_tree(folder, old)
    await ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
    manifest = json.loads(object_bytes(s3_client, s3_bucket, f"trees/ckpt/{MANIFEST_NAME}"))
    victim = f"trees/ckpt/{manifest['generation']}/sst/000.sst"
    swapped = bytes(b ^ 0xFF for b in old["sst/000.sst"])  # same size, other bytes
    replaced = asyncio.Event()

    async def swap_at_first_copy(method: str, kwargs: dict[str, Any]) -> None:
        if method in ("copy_object", "upload_part_copy") and not replaced.is_set():
            replaced.set()
            if how == "removed":
                await asyncio.to_thread(s3_client.delete_object, Bucket=s3_bucket, Key=victim)
                return
            put = s3_client.put_object
            await asyncio.to_thread(put, Bucket=s3_bucket, Key=victim, Body=swapped)

    write_tree(folder, new)
    with s3_calls(before=swap_at_first_copy):
        report = await ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
    assert replaced.is_set()
    assert installed(s3_client, s3_bucket, "trees/ckpt") == new  # sent again, in full
    assert report.bytes_reused == 0
    assert uploads(s3_client, s3_bucket) == []
    assert len(generations(s3_client, s3_bucket, "trees/ckpt")) == 1
    assert spools() == []


async def test_an_unchanged_tree_onto_s3_uploads_nothing_but_its_manifest(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    old, _ = old_and_new(6)
    folder, target = tmp_path / "tree", f"s3://{s3_bucket}/trees/ckpt"
    write_tree(folder, old)
    await ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
    count = Uploaded()
    with s3_calls(before=count.before) as calls:
        report = await ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
    manifest = object_bytes(s3_client, s3_bucket, f"trees/ckpt/{MANIFEST_NAME}")
    assert installed(s3_client, s3_bucket, "trees/ckpt") == old
    assert count.uploaded == len(manifest)  # (its one PUT)
    assert calls["copy_object"] == len(old)
    assert report.bytes_sent < 8 * KiB  # the table, the identities' offer, the recipe
    assert uploads(s3_client, s3_bucket) == []


async def test_a_cancel_mid_assembly_leaves_nothing(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    old, new = old_and_new(3)
    folder, target = tmp_path / "tree", f"s3://{s3_bucket}/trees/ckpt"
    write_tree(folder, old)
    await ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
    before = installed(s3_client, s3_bucket, "trees/ckpt")
    manifest_before = object_bytes(s3_client, s3_bucket, f"trees/ckpt/{MANIFEST_NAME}")
    copying = asyncio.Event()
    hold = asyncio.Event()

    async def stall_in_a_part_copy(method: str, kwargs: dict[str, Any]) -> None:
        if method == "upload_part_copy":  # an upload of big.db is open now
            copying.set()
            await hold.wait()

    write_tree(folder, new)
    with s3_calls(before=stall_in_a_part_copy):
        job = asyncio.ensure_future(
            ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
        )
        await asyncio.wait_for(copying.wait(), 60)
        assert len(uploads(s3_client, s3_bucket)) == 1
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert object_bytes(s3_client, s3_bucket, f"trees/ckpt/{MANIFEST_NAME}") == manifest_before
    assert installed(s3_client, s3_bucket, "trees/ckpt") == before
    assert uploads(s3_client, s3_bucket) == []
    assert len(generations(s3_client, s3_bucket, "trees/ckpt")) == 1
    assert spools() == []


async def test_a_base_tree_whose_listing_disagrees_is_no_base(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    manifest = {"generation": "g-1", "files": [["a", 5, "crc32c:00000000"]]}
    s3_client.put_object(Bucket=s3_bucket, Key=f"t/x/{MANIFEST_NAME}", Body=json.dumps(manifest))
    s3_client.put_object(Bucket=s3_bucket, Key="t/x/g-1/a", Body=b"12345")
    store = FsspecSnapshotStore(f"s3://{s3_bucket}/t", **s3_storage_options)
    try:
        backend = store.backend
        assert isinstance(backend, S3Backend)
        fs = await backend.client()
        found = await s3_tree("x", fs, f"{s3_bucket}/t/x", store.retry)
        assert found is not None
        assert found.files == (("a", 5),)
        assert b"".join(await asyncio.to_thread(lambda: list(found.read("a", 5)))) == b"12345"
        s3_client.put_object(Bucket=s3_bucket, Key="t/x/g-1/a", Body=b"1234")  # another size
        assert await s3_tree("x", fs, f"{s3_bucket}/t/x", store.retry) is None
        s3_client.put_object(Bucket=s3_bucket, Key="t/x/g-1/a", Body=b"54321")  # other bytes
        with pytest.raises(SourceChanged):
            await asyncio.to_thread(lambda: list(found.read("a", 5)))  # pinned by the ETag
        s3_client.put_object(Bucket=s3_bucket, Key=f"t/x/{MANIFEST_NAME}", Body=b"[not json")
        assert await s3_tree("x", fs, f"{s3_bucket}/t/x", store.retry) is None
        for hostile in (
            {"generation": "../g-1", "files": [["a", 5, ""]]},
            {"generation": "g-1", "files": [["../a", 5, ""]]},
            {"generation": "g-1", "files": [["a", -5, ""]]},
            {"generation": "g-1", "files": [["a", "5", ""]]},
            {"generation": "g-1", "files": [[]]},
            {"generation": "g-1"},
            [1, 2],
        ):
            body = json.dumps(hostile)
            s3_client.put_object(Bucket=s3_bucket, Key=f"t/x/{MANIFEST_NAME}", Body=body)
            assert await s3_tree("x", fs, f"{s3_bucket}/t/x", store.retry) is None
        assert await s3_tree("y", fs, f"{s3_bucket}/t/y", store.retry) is None
    finally:
        await store.close()


async def test_a_tree_under_a_new_name_reuses_the_one_installed_last(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """A long-lived receiver on S3 notes the snapshot it installed last (as for files): a tree
    under a new name uses that tree as its base, copied from the other name's generation."""
    old, new = old_and_new(4)
    folder = tmp_path / "tree"
    store = FsspecSnapshotStore(f"s3://{s3_bucket}/r", **s3_storage_options)
    receiver = Receiver(store, long_lived=True)
    try:
        write_tree(folder, old)
        await send_named(receiver, folder, "ckpt-1")
        write_tree(folder, new)
        count = Uploaded()
        with s3_calls(before=count.before) as calls:
            result = await send_named(receiver, folder, "ckpt-2")
        assert installed(s3_client, s3_bucket, "r/ckpt-1") == old  # (the base stays)
        assert installed(s3_client, s3_bucket, "r/ckpt-2") == new
        assert result.stats.bytes_reused > 12 * MiB
        assert calls["copy_object"] >= 9
        assert count.uploaded < 0.75 * sum(map(len, new.values()))
    finally:
        await store.close()
    assert uploads(s3_client, s3_bucket) == []


async def send_named(receiver: Receiver, folder: Path, snapshot_id: str) -> Any:
    source = await open_tree_source(str(folder))
    meta = SnapshotMeta(snapshot_id, size=source.size, checksum=source.checksum, kind=TREE)
    try:
        net = LoopbackNetwork(receiver)
        result = await send_source(net, Vote(1, 0), meta, source, None, OPTIONS)
    finally:
        await source.close()
    install = receiver._io.installing.get(snapshot_id)
    if install is not None:
        await install
    assert result.completed
    return result


async def packed_stream(folder: Path, files: Tree) -> bytes:
    write_tree(folder, files)
    source = await open_tree_source(str(folder))
    try:
        return bytes(await source.read(0, source.size))
    finally:
        await source.close()


@pytest.mark.parametrize("lie", ["header copied", "table lies", "whole checksum"])
async def test_a_tree_built_on_s3_is_checked_before_anything_can_be_named(
    lie: str, tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """`build_s3_tree` on hostile input: a recipe that copies the header (it must be sent),
    a table whose CRC32C of a file is not its bytes', a stream whose whole CRC32C is not the
    snapshot's: refused, and the new generation's files are gone again."""
    manifest = {"generation": "g-1", "files": [["a", 64, "crc32c:00000000"]]}
    s3_client.put_object(Bucket=s3_bucket, Key=f"t/x/{MANIFEST_NAME}", Body=json.dumps(manifest))
    s3_client.put_object(Bucket=s3_bucket, Key="t/x/g-1/a", Body=b"b" * 64)
    packed = await packed_stream(tmp_path / "new", {"a": b"a" * 64, "sub/c": b"c" * 3000})
    expected = chunk_crc(packed)
    recipe = Recipe(len(packed), 64, ((len(packed), SEND),))
    if lie == "header copied":
        recipe = Recipe(len(packed), 64, ((16, 0), (len(packed) - 16, SEND)))
    elif lie == "table lies":
        crc = format_checksum(chunk_crc(b"c" * 3000)).encode()
        packed = packed.replace(crc, crc[:-8] + b"0badf00d")
        expected = chunk_crc(packed)
    else:
        expected ^= 1

    async def read_sent(start: int, end: int) -> bytes:
        return packed[start:end]

    store = FsspecSnapshotStore(f"s3://{s3_bucket}/t", **s3_storage_options)
    try:
        backend = store.backend
        assert isinstance(backend, S3Backend)
        fs = await backend.client()
        base = await s3_tree("x", fs, f"{s3_bucket}/t/x", store.retry)
        assert base is not None
        with pytest.raises((InvalidRequest, ChecksumMismatch)) as raised:
            await build_s3_tree(
                fs,
                final=f"{s3_bucket}/t/new",
                base=base,
                base_map=build_map("blocks", b"b" * 64, key=new_key()),
                recipe=recipe,
                read_sent=read_sent,
                expected_crc=expected,
                retry=FAST,
            )
    finally:
        await store.close()
    wanted = InvalidRequest if lie == "header copied" else ChecksumMismatch
    assert isinstance(raised.value, wanted)
    assert [k for k in keys(s3_client, s3_bucket) if k.startswith("t/new")] == []
    assert uploads(s3_client, s3_bucket) == []


async def test_a_tree_delta_onto_s3_through_a_server_process(
    serve: StartServer, tmp_path: Path, s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    """Over HTTP to a real ``fstransport serve`` whose store is the bucket: the offer, the
    request for the changed files' extents and the recipe cross the wire."""
    old, new = old_and_new(5)
    folder = tmp_path / "tree"
    server = serve(
        f"s3://{s3_bucket}/received",
        "--endpoint-url",
        s3_server.endpoint_url,
        "--token",
        TOKEN,
        env=s3_server.env,
    )
    async with HttpNetwork(server.url, token=TOKEN) as net:
        write_tree(folder, old)
        await asyncio.wait_for(ship(str(folder), "ckpt", network=net, options=OPTIONS), 120)
        write_tree(folder, new)
        report = await asyncio.wait_for(
            ship(str(folder), "ckpt", network=net, options=OPTIONS), SHIP_TIMEOUT
        )
    assert installed(s3_client, s3_bucket, "received/ckpt") == new
    assert report.bytes_reused > 12 * MiB
    assert report.bytes_sent < 200 * KiB  # the new and changed files, table, offer, recipe
    assert len(generations(s3_client, s3_bucket, "received/ckpt")) == 1
    assert uploads(s3_client, s3_bucket) == []


async def test_a_table_longer_than_the_build_takes_is_sent_in_full(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The build takes at most `ReceiverLimits`' default number of files (it runs before the
    receiver's own table check); a longer table falls back to a full transfer, not an error."""
    import fstransport.delta.tree_s3_build as build

    old, new = old_and_new(7)
    folder, target = tmp_path / "tree", f"s3://{s3_bucket}/trees/ckpt"
    write_tree(folder, old)
    await ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
    monkeypatch.setattr(build, "ReceiverLimits", lambda: ReceiverLimits(max_tree_files=3))
    write_tree(folder, new)
    with s3_calls() as calls:
        report = await ship(str(folder), target, options=OPTIONS, target_options=s3_storage_options)
    assert installed(s3_client, s3_bucket, "trees/ckpt") == new
    assert report.bytes_reused == 0
    assert calls["copy_object"] == 0
    assert uploads(s3_client, s3_bucket) == []
    assert len(generations(s3_client, s3_bucket, "trees/ckpt")) == 1
