"""Server-side S3 -> S3 copies (``UploadPartCopy`` / ``CopyObject``), on a real moto server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fstransport import (
    ChecksumMismatch,
    ConfigurationError,
    LoopbackNetwork,
    Receiver,
    RetryPolicy,
    SourceChanged,
    StorageError,
    TransferOptions,
    TransferReport,
    ship,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.options import MiB
from fstransport.protocol.parts import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from fstransport.storage.backends.s3 import crc32c_header
from fstransport.storage.backends.s3.copy import (
    DEFAULT_COPY_PART_SIZE,
    combined_crc,
    copy_part_size,
    copy_ranges,
    parse_crc32c,
    s3_endpoint,
    stored_crc32c,
)
from fstransport.storage.faults import flaky_s3
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.testing import S3TestServer
from tests.conftest import payload
from tests.helpers import keys, object_bytes, s3_calls, uploads
from tests.test_cli import run as run_cli

PARTS = TransferOptions(copy_cutoff=0)
"""server_side=True copies of 5 MiB and more in UploadPartCopy parts (below: one CopyObject,
see tests/test_s3_copy_object.py)."""
FAST = replace(PARTS, retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, jitter=0.0))
SMALL_PARTS = {"part_size": MIN_PART_SIZE, "upload_concurrency": 3}


def copy_within(
    bucket: str, s3_options: dict[str, Any], **kwargs: Any
) -> Awaitable[TransferReport]:
    """ship() of ``s3://BUCKET/src.bin`` to ``s3://BUCKET/copy.bin``, both with `s3_options`."""
    return ship(
        f"s3://{bucket}/src.bin",
        f"s3://{bucket}/copy.bin",
        source_options=s3_options,
        target_options=s3_options,
        **kwargs,
    )


def reporting_crcs(data: bytes, wrong_part: int | None = None) -> Any:
    """An answer hook that makes moto report checksums as AWS does: the source's full-object
    CRC32C on HEAD (``ChecksumMode=ENABLED``), and each part copy's CRC32C (moto does neither)."""

    def answer(method: str, kwargs: dict[str, Any], response: Any) -> Any:
        if method == "head_object" and kwargs.get("ChecksumMode") == "ENABLED":
            response["ChecksumCRC32C"] = crc32c_header(chunk_crc(data))
            response["ChecksumType"] = "FULL_OBJECT"
        if method == "upload_part_copy":
            first, last = map(int, kwargs["CopySourceRange"].removeprefix("bytes=").split("-"))
            crc = chunk_crc(data[first : last + 1])
            if kwargs["PartNumber"] == wrong_part:
                crc ^= 1
            response["CopyPartResult"]["ChecksumCRC32C"] = crc32c_header(crc)
        return response

    return answer


# -- pure parts ----------------------------------------------------------------------------------


def test_copy_part_size_grows_to_stay_within_10000_parts() -> None:
    assert copy_part_size(0) == DEFAULT_COPY_PART_SIZE
    assert copy_part_size(MAX_PARTS * DEFAULT_COPY_PART_SIZE) == DEFAULT_COPY_PART_SIZE
    grown = copy_part_size(MAX_PARTS * DEFAULT_COPY_PART_SIZE + 1)
    assert grown == DEFAULT_COPY_PART_SIZE + MiB
    for size in (1, 5 * MiB, 700 * 1024 * MiB, 10 * 1024 * 1024 * MiB, MAX_PARTS * MAX_PART_SIZE):
        part = copy_part_size(size, MIN_PART_SIZE)
        assert MIN_PART_SIZE <= part <= MAX_PART_SIZE
        assert part % MiB == 0
        assert -(-size // part) <= MAX_PARTS
    with pytest.raises(ConfigurationError):
        copy_part_size(MAX_PARTS * MAX_PART_SIZE + 1)
    with pytest.raises(ConfigurationError):
        copy_part_size(10 * MiB, MIN_PART_SIZE - 1)


def test_copy_ranges_cover_the_object_once() -> None:
    assert copy_ranges(0, MIN_PART_SIZE) == []
    assert copy_ranges(1, MIN_PART_SIZE) == [(0, 0)]
    size = 3 * MIN_PART_SIZE + 1
    ranges = copy_ranges(size, MIN_PART_SIZE)
    assert ranges == [
        (0, MIN_PART_SIZE - 1),
        (MIN_PART_SIZE, 2 * MIN_PART_SIZE - 1),
        (2 * MIN_PART_SIZE, 3 * MIN_PART_SIZE - 1),
        (3 * MIN_PART_SIZE, 3 * MIN_PART_SIZE),
    ]
    assert len(copy_ranges(MAX_PARTS * 7, 7)) == MAX_PARTS
    with pytest.raises(ConfigurationError):
        copy_ranges(MAX_PARTS * 7 + 1, 7)


def test_stored_checksums_and_their_combination() -> None:
    data = payload(1000, seed=1)
    header = crc32c_header(chunk_crc(data))
    assert parse_crc32c(header) == chunk_crc(data)
    assert parse_crc32c("not base64!") is None
    assert parse_crc32c("AAAA") is None  # three bytes
    assert stored_crc32c({"ChecksumCRC32C": header}) == chunk_crc(data)
    assert stored_crc32c({"ChecksumCRC32C": header, "ChecksumType": "FULL_OBJECT"}) is not None
    assert stored_crc32c({"ChecksumCRC32C": f"{header}-3", "ChecksumType": "COMPOSITE"}) is None
    assert stored_crc32c({"ChecksumCRC32C": header, "ChecksumType": "COMPOSITE"}) is None
    assert stored_crc32c({}) is None
    pieces = [(chunk_crc(data[a:b]), b - a) for a, b in [(0, 1), (1, 600), (600, 1000)]]
    assert combined_crc(pieces) == chunk_crc(data)
    assert combined_crc([*pieces, (None, 5)]) is None
    assert combined_crc([]) == 0


def test_endpoints_compare_normalised() -> None:
    def at(url: str) -> dict[str, Any]:
        return {"client_kwargs": {"endpoint_url": url}}

    assert s3_endpoint({}) == ""
    assert s3_endpoint(at("http://LOCALHOST:9000/")) == s3_endpoint(
        {"endpoint_url": "http://localhost:9000"}
    )
    assert s3_endpoint(at("https://s3.example")) == s3_endpoint(at("https://s3.example:443"))
    assert s3_endpoint(at("http://127.0.0.1:9000")) != s3_endpoint(at("http://127.0.0.1:9001"))


# -- copies on moto ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, MIN_PART_SIZE - 1, MIN_PART_SIZE, MIN_PART_SIZE + 1, 3 * MIN_PART_SIZE + 12345],
    ids=["0", "1", "5MiB-1", "5MiB", "5MiB+1", "4parts"],
)
async def test_server_side_copy_is_byte_exact(
    size: int, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(size, seed=size % 97)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    with s3_calls() as calls:
        report = await ship(
            f"s3://{s3_bucket}/src.bin",
            f"s3://{s3_bucket}/dst/copy.bin",
            source_options=s3_storage_options,
            target_options=s3_storage_options,
            store_options=SMALL_PARTS,
            options=PARTS,
            server_side=True,
        )
    assert object_bytes(s3_client, s3_bucket, "dst/copy.bin") == data
    assert report.server_side
    assert report.size == size
    assert report.bytes_sent == 0
    assert calls["get_object"] == 0  # not one byte through this process
    parts = -(-size // MIN_PART_SIZE)
    if size < MIN_PART_SIZE:
        assert calls["copy_object"] == 1
        assert calls["upload_part_copy"] == 0
        assert report.chunks_sent == 0
    else:
        assert calls["upload_part_copy"] == parts
        assert calls["complete_multipart_upload"] == 1
        assert report.chunks_sent == parts
    assert uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == ["dst/copy.bin", "src.bin"]


async def test_copy_verified_by_part_crcs_against_the_stored_checksum(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """Where the source has a full-object CRC32C and the server reports each part's, a copy is
    made on the server without being asked (moto does not report part CRCs: a double adds them
    as AWS does)."""
    data = payload(2 * MIN_PART_SIZE + 99, seed=3)
    crc = chunk_crc(data)
    s3_client.put_object(
        Bucket=s3_bucket, Key="src.bin", Body=data, ChecksumCRC32C=crc32c_header(crc)
    )
    with s3_calls(answer=reporting_crcs(data)) as calls:
        report = await copy_within(s3_bucket, s3_storage_options, store_options=SMALL_PARTS)
    assert report.server_side
    assert report.checksum == format_checksum(crc)
    assert calls["head_object"] == 2  # before the copy, and once more before completing it
    assert calls["upload_part_copy"] == 3
    assert calls["get_object"] == 0
    assert object_bytes(s3_client, s3_bucket, "copy.bin") == data
    assert uploads(s3_client, s3_bucket) == []


async def test_copy_refuted_by_a_part_crc_is_a_mismatch_and_leaves_nothing(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(3 * MIN_PART_SIZE, seed=4)
    s3_client.put_object(
        Bucket=s3_bucket, Key="src.bin", Body=data, ChecksumCRC32C=crc32c_header(chunk_crc(data))
    )
    with s3_calls(answer=reporting_crcs(data, wrong_part=2)), pytest.raises(ChecksumMismatch):
        await copy_within(s3_bucket, s3_storage_options, store_options=SMALL_PARTS)
    assert keys(s3_client, s3_bucket) == ["src.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_unprovable_copy_is_streamed_unless_asked_for(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """The caller names the data's CRC32C, but moto does not report part CRCs: without
    server_side=True, one part is copied, found unprovable, its upload aborted, and the data
    streamed (and verified against the named checksum) instead."""
    data = payload(2 * MIN_PART_SIZE + 5, seed=5)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    with s3_calls() as calls:
        report = await copy_within(
            s3_bucket,
            s3_storage_options,
            store_options=SMALL_PARTS,
            checksum=format_checksum(chunk_crc(data)),
        )
    assert not report.server_side
    assert report.bytes_sent == len(data)
    assert calls["upload_part_copy"] == 1
    assert calls["abort_multipart_upload"] == 1
    assert object_bytes(s3_client, s3_bucket, "copy.bin") == data
    assert uploads(s3_client, s3_bucket) == []


async def test_source_without_a_stored_checksum_is_streamed_without_trying(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(MIN_PART_SIZE + 5, seed=6)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    with s3_calls() as calls:
        report = await copy_within(s3_bucket, s3_storage_options)
    assert not report.server_side
    assert calls["upload_part_copy"] == calls["copy_object"] == 0
    assert calls["create_multipart_upload"] <= 1  # only the streamed upload's, if any
    assert object_bytes(s3_client, s3_bucket, "copy.bin") == data


async def test_failed_copy_aborts_its_upload(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(3 * MIN_PART_SIZE, seed=7)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    with (
        flaky_s3(1.0, seed=1, operations=frozenset({"upload_part_copy"})) as faults,
        pytest.raises(StorageError),
    ):
        await copy_within(
            s3_bucket, s3_storage_options, store_options=SMALL_PARTS, options=FAST, server_side=True
        )
    assert faults.injected["upload_part_copy"] >= 2  # retried, then given up
    assert keys(s3_client, s3_bucket) == ["src.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_cancelled_copy_aborts_its_upload(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(4 * MIN_PART_SIZE, seed=8)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    stalled = asyncio.Event()

    async def stall_part_3(method: str, kwargs: dict[str, Any]) -> None:
        if method == "upload_part_copy" and kwargs["PartNumber"] == 3:
            stalled.set()
            await asyncio.sleep(3600)

    with s3_calls(before=stall_part_3) as calls:
        task = asyncio.ensure_future(
            copy_within(
                s3_bucket,
                s3_storage_options,
                store_options=SMALL_PARTS,
                options=PARTS,
                server_side=True,
            )
        )
        await asyncio.wait_for(stalled.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls["abort_multipart_upload"] == 1
    assert keys(s3_client, s3_bucket) == ["src.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_source_replaced_mid_copy_is_a_typed_error_and_leaves_nothing(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(3 * MIN_PART_SIZE, seed=9)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)

    async def replace_after_part_2(method: str, kwargs: dict[str, Any]) -> None:
        if method == "upload_part_copy" and kwargs["PartNumber"] == 2:
            s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=payload(len(data), 10))

    with s3_calls(before=replace_after_part_2), pytest.raises(SourceChanged):
        await copy_within(
            s3_bucket,
            s3_storage_options,
            store_options={"part_size": MIN_PART_SIZE, "upload_concurrency": 1},
            options=PARTS,
            server_side=True,
        )
    assert keys(s3_client, s3_bucket) == ["src.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_server_side_refused_across_endpoints_and_off_s3(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=b"x" * 10)
    elsewhere = {**s3_storage_options, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    with pytest.raises(ConfigurationError, match="one S3 endpoint"):
        await ship(
            f"s3://{s3_bucket}/src.bin",
            f"s3://{s3_bucket}/copy.bin",
            source_options=s3_storage_options,
            target_options=elsewhere,
            server_side=True,
        )
    with pytest.raises(ConfigurationError, match="s3:// source and target"):
        await ship(
            f"s3://{s3_bucket}/src.bin",
            str(tmp_path / "copy.bin"),
            source_options=s3_storage_options,
            server_side=True,
        )
    async with FsspecSnapshotStore(f"s3://{s3_bucket}/r", **s3_storage_options) as store:
        with pytest.raises(ConfigurationError, match="in-process"):
            await ship(
                f"s3://{s3_bucket}/src.bin",
                f"s3://{s3_bucket}/r/copy.bin",
                source_options=s3_storage_options,
                network=LoopbackNetwork(Receiver(store)),
                server_side=True,
            )
    assert keys(s3_client, s3_bucket) == ["src.bin"]
    # without server_side=True, a copy across endpoints (or off S3) is simply streamed
    report = await ship(
        f"s3://{s3_bucket}/src.bin", str(tmp_path / "copy.bin"), source_options=s3_storage_options
    )
    assert not report.server_side


def test_cli_server_side_copy(s3_server: S3TestServer, s3_bucket: str, s3_client: Any) -> None:
    data = payload(MIN_PART_SIZE + 17, seed=11)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    src, dst = f"s3://{s3_bucket}/src.bin", f"s3://{s3_bucket}/dst.bin"
    args = ("--endpoint-url", s3_server.endpoint_url, "--json")
    parts = ("--server-side", "--copy-cutoff", "0", "--part-size", "5MiB")
    result = run_cli("ship", src, dst, *args, *parts, env=s3_server.env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["server_side"] is True
    assert report["bytes_sent"] == 0
    assert report["chunks_sent"] == 2
    assert object_bytes(s3_client, s3_bucket, "dst.bin") == data
    human = run_cli(
        "ship",
        src,
        dst,
        "--endpoint-url",
        s3_server.endpoint_url,
        *parts,
        env=s3_server.env,
    )
    assert "copied by the S3 server (2 part copies)" in human.stdout, human.stderr
    via = run_cli("ship", src, dst, *args, "--server-side", "--via", "http://127.0.0.1:1")
    assert via.returncode != 0
    assert "--server-side copies within one S3 endpoint; not with --via" in via.stderr
    assert uploads(s3_client, s3_bucket) == []


def test_cli_read_streams_and_part_size(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    data = payload(3 * MiB + 5, seed=12)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    args = ("--endpoint-url", s3_server.endpoint_url, "--json", "--chunk-size", "1MiB")
    tuning = ("--read-streams", "3", "--read-part-size", "1MiB")
    target = tmp_path / "out.bin"
    result = run_cli(
        "ship", f"s3://{s3_bucket}/src.bin", str(target), *args, *tuning, env=s3_server.env
    )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data
    bad = run_cli("ship", f"s3://{s3_bucket}/src.bin", str(target), "--read-streams", "0")
    assert bad.returncode != 0
    assert "must be at least 1" in bad.stderr


async def test_named_checksum_against_the_stored_one_refuses_before_copying(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(MIN_PART_SIZE + 1, seed=13)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    wrong = format_checksum(chunk_crc(data) ^ 1)
    with s3_calls(answer=reporting_crcs(data)) as calls, pytest.raises(ChecksumMismatch):
        await copy_within(s3_bucket, s3_storage_options, checksum=wrong)
    assert calls["upload_part_copy"] == calls["create_multipart_upload"] == 0
    assert keys(s3_client, s3_bucket) == ["src.bin"]
