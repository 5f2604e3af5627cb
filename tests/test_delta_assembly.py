"""Delta assembly: a local target from its base (copy_file_range or pread/pwrite), and an S3
target from UploadPartCopy parts of the base plus uploaded parts, on a real moto server."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest
import s3fs
from hypothesis import given, settings
from hypothesis import strategies as st

from fstransport.checksum import chunk_crc
from fstransport.delta import tree_segments
from fstransport.delta.local import assemble_local, map_file
from fstransport.delta.s3 import Part, assemble_s3, plan_parts, recipe_crc
from fstransport.errors import ChecksumMismatch, ConfigurationError, SourceChanged, StorageError
from fstransport.options import MiB, RetryPolicy
from fstransport.protocol.delta import SEND, Recipe, build_map, new_key, plan_recipe
from fstransport.protocol.parts import MAX_PART_SIZE, MIN_PART_SIZE
from fstransport.storage.backends.s3.copy import head_source
from fstransport.storage.faults import flaky_s3

GiB = 1 << 30


def make_recipe(base: bytes, new: bytes, mode: str = "blocks") -> tuple[Recipe, Any]:
    key = new_key()
    base_map = build_map(mode, base, key=key)
    recipe = plan_recipe(base_map, build_map(mode, new, key=key, block_size=base_map.block_size))
    return recipe, base_map


def received(path: Path, new: bytes, recipe: Recipe) -> None:
    """The target as the receiver leaves it before assembly: sent ranges at their offsets."""
    with open(path, "wb") as f:
        for a, b in recipe.sends():
            f.seek(a)
            f.write(new[a:b])


def pages_changed(base: bytes, pages: list[int], seed: int) -> bytes:
    rng = random.Random(seed)
    new = bytearray(base)
    for page in pages:
        new[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    return bytes(new)


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("mode", ["blocks", "cdc"])
def test_local_assembly_is_byte_exact(tmp_path: Path, kernel: bool, mode: str) -> None:
    base = random.Random(1).randbytes(3 * MiB + 123)
    new = pages_changed(base, [0, 17, 18, 500], 2)[: 2 * MiB] + b"tail" * 1000
    recipe, _ = make_recipe(base, new, mode)
    (tmp_path / "base").write_bytes(base)
    received(tmp_path / "target", new, recipe)
    done = assemble_local(
        recipe,
        str(tmp_path / "base"),
        str(tmp_path / "target"),
        expected_crc=chunk_crc(new),
        kernel_copy=kernel,
    )
    assert (tmp_path / "target").read_bytes() == new
    assert done.crc32c == chunk_crc(new)
    assert done.bytes_reused == recipe.reused > MiB
    if not kernel:
        assert done.copied_in_kernel == 0


def test_copy_file_range_refused_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def refuse(*args: Any) -> int:
        calls.append(args)
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    base = random.Random(3).randbytes(MiB)
    new = pages_changed(base, [3], 4)
    recipe, _ = make_recipe(base, new)
    (tmp_path / "base").write_bytes(base)
    received(tmp_path / "target", new, recipe)
    done = assemble_local(recipe, str(tmp_path / "base"), str(tmp_path / "target"))
    assert calls
    assert done.copied_in_kernel == 0
    assert (tmp_path / "target").read_bytes() == new


def test_a_base_changed_underneath_is_caught(tmp_path: Path) -> None:
    base = random.Random(5).randbytes(MiB)
    new = pages_changed(base, [1], 6)
    recipe, _ = make_recipe(base, new)
    changed = pages_changed(base, [100], 7)  # same size, other bytes
    (tmp_path / "base").write_bytes(changed)
    received(tmp_path / "target", new, recipe)
    with pytest.raises(ChecksumMismatch) as caught:
        assemble_local(
            recipe, str(tmp_path / "base"), str(tmp_path / "target"), expected_crc=chunk_crc(new)
        )
    assert caught.value.whole
    (tmp_path / "base").write_bytes(base[:-1])  # shrank
    with pytest.raises(SourceChanged):
        assemble_local(recipe, str(tmp_path / "base"), str(tmp_path / "target"))


# -- the S3 part planner (pure) -----------------------------------------------------------------


def check_plan(recipe: Recipe, parts: list[Part]) -> None:
    at = 0
    for i, part in enumerate(parts):
        assert part.start == at
        assert part.length <= MAX_PART_SIZE
        assert part.length >= MIN_PART_SIZE or i == len(parts) - 1
        at = part.end
    assert at == recipe.size
    for part in parts:  # a copied part lies inside one reused range, at its base offset
        if part.base is None:
            continue
        assert any(
            base != SEND
            and t <= part.start
            and part.end <= t + n
            and base + part.start - t == part.base
            for t, n, base in recipe.targets()
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40 * MiB)), min_size=1, max_size=30))
def test_plans_are_valid_multipart_uploads(pieces: list[tuple[bool, int]]) -> None:
    ranges, base_at = [], 0
    for copy, length in pieces:
        ranges.append((length, base_at if copy else SEND))
        base_at += length
    recipe = Recipe(sum(n for n, _ in ranges), base_at, tuple(ranges))
    check_plan(recipe, plan_parts(recipe))


def test_one_changed_region_uploads_little() -> None:
    size = GiB
    recipe = Recipe(size, size, ((300 * MiB, 0), (8 * MiB, SEND), (size - 308 * MiB, 308 * MiB)))
    parts = plan_parts(recipe)
    check_plan(recipe, parts)
    uploaded = sum(p.length for p in parts if p.base is None)
    assert uploaded <= 0.03 * size
    assert uploaded == 8 * MiB
    huge = Recipe(12 * GiB, 12 * GiB, ((12 * GiB, 0),))
    assert all(p.length <= MAX_PART_SIZE for p in plan_parts(huge))
    alternate = [(5 * MiB, 10 * MiB * i) for i in range(6000)]  # copies between sends
    ranges = tuple(r for copy in alternate for r in (copy, (5 * MiB, SEND)))
    many = Recipe(60000 * MiB, 60000 * MiB, ranges)
    with pytest.raises(ConfigurationError):
        plan_parts(many)


# -- the S3 executor, on moto -------------------------------------------------------------------


FAST = RetryPolicy(max_attempts=4, initial_backoff=0.0, jitter=0.0)


async def run_s3(
    fs: Any, bucket: str, base: bytes, new: bytes, *, change_base: bool = False
) -> Any:
    recipe, base_map = make_recipe(base, new)
    info = await head_source(fs, bucket, "base.bin", RetryPolicy())
    if change_base:
        await fs._pipe_file(f"{bucket}/base.bin", pages_changed(base, [5], 99))

    async def read_sent(start: int, end: int) -> bytes:
        return new[start:end]

    sends = [chunk_crc(new[a:b]) for a, b in recipe.sends()]
    crc = recipe_crc(recipe, base_map, sends)
    assert crc == chunk_crc(new)
    return await assemble_s3(
        fs,
        recipe,
        plan_parts(recipe),
        base=info,
        base_map=base_map,
        bucket=bucket,
        key="new.bin",
        read_sent=read_sent,
        expected_crc=crc,
        concurrency=3,
        retry=FAST,
    )


async def test_s3_assembly_copies_unchanged_ranges_in_the_bucket(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    base = random.Random(8).randbytes(24 * MiB)
    # one changed region, and a lone page whose neighbours are too short for copy parts
    new = pages_changed(base, [3000, 3001, 5100], 9)
    s3_client.put_object(Bucket=s3_bucket, Key="base.bin", Body=base)
    fs = s3fs.S3FileSystem(asynchronous=True, **s3_storage_options)
    session = await fs.set_session()
    try:
        done = await run_s3(fs, s3_bucket, base, new)
    finally:
        await session.close()
    assert s3_client.get_object(Bucket=s3_bucket, Key="new.bin")["Body"].read() == new
    assert done.bytes_copied >= 10 * MiB
    assert done.bytes_copied + done.bytes_uploaded == len(new)
    assert done.bytes_read_from_base > 0  # reused ranges too short for copy parts of their own
    assert done.bytes_uploaded - done.bytes_read_from_base == 3 * 4096
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


async def test_s3_base_replaced_before_assembly_aborts(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    base = random.Random(10).randbytes(12 * MiB)
    new = pages_changed(base, [1000], 11)
    s3_client.put_object(Bucket=s3_bucket, Key="base.bin", Body=base)
    fs = s3fs.S3FileSystem(asynchronous=True, **s3_storage_options)
    session = await fs.set_session()
    try:
        with pytest.raises(SourceChanged):
            await run_s3(fs, s3_bucket, base, new, change_base=True)
    finally:
        await session.close()
    listed = s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == ["base.bin"]
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_tree_segments_are_file_starts() -> None:
    assert tree_segments([30, 0, 30, 10]) == [0, 10, 30]


@pytest.mark.parametrize("mode", ["blocks", "cdc"])
def test_map_file_reads_in_pieces_what_build_map_sees_whole(tmp_path: Path, mode: str) -> None:
    data = random.Random(12).randbytes(MiB + 777)
    (tmp_path / "f").write_bytes(data)
    key, cuts = new_key(), [1000, 300_000]
    got = map_file(str(tmp_path / "f"), mode, key=key, segments=cuts, piece=100_000)
    want = build_map(mode, data, key=key, segments=cuts)
    assert (got.size, got.lengths, got.crcs, got.tags) == (
        want.size,
        want.lengths,
        want.crcs,
        want.tags,
    )
    with pytest.raises(StorageError):
        map_file(str(tmp_path / "missing"), mode, key=key)


async def test_s3_upload_part_takes_the_head_of_a_copy(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    base = random.Random(13).randbytes(24 * MiB)
    new = pages_changed(base, [256], 14)  # 1 MiB in: too short alone, so it borrows 4 MiB
    s3_client.put_object(Bucket=s3_bucket, Key="base.bin", Body=base)
    recipe, _ = make_recipe(base, new)
    parts = plan_parts(recipe)
    assert [p.base is None for p in parts] == [True, False]
    assert parts[0].length == MIN_PART_SIZE
    fs = s3fs.S3FileSystem(asynchronous=True, **s3_storage_options)
    session = await fs.set_session()
    try:
        done = await run_s3(fs, s3_bucket, base, new)
    finally:
        await session.close()
    assert s3_client.get_object(Bucket=s3_bucket, Key="new.bin")["Body"].read() == new
    assert done.bytes_uploaded == MIN_PART_SIZE
    assert done.bytes_copied == len(new) - MIN_PART_SIZE


@pytest.mark.parametrize("rate", [0.3, 1.0])
async def test_s3_assembly_on_a_flaky_bucket_retries_or_leaves_nothing(
    rate: float, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    base = random.Random(15).randbytes(16 * MiB)
    new = pages_changed(base, [10, 2000, 3500], 16)
    s3_client.put_object(Bucket=s3_bucket, Key="base.bin", Body=base)
    ops = frozenset({"upload_part", "upload_part_copy", "get_object", "complete_multipart_upload"})
    fs = s3fs.S3FileSystem(asynchronous=True, **s3_storage_options)
    session = await fs.set_session()
    try:
        with flaky_s3(rate, seed=3, operations=ops) as faults:
            if rate < 1:
                await run_s3(fs, s3_bucket, base, new)
            else:
                with pytest.raises(StorageError):
                    await run_s3(fs, s3_bucket, base, new)
    finally:
        await session.close()
    assert faults.total > 0
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    names = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    if rate < 1:
        assert s3_client.get_object(Bucket=s3_bucket, Key="new.bin")["Body"].read() == new
    else:
        assert names == ["base.bin"]
