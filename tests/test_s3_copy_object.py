"""Server-side S3 -> S3 copies in one ``CopyObject`` up to ``copy_cutoff`` (``server_side=True``),
on a real S3 server: moto, or the endpoint ``FSTRANSPORT_TEST_S3_ENDPOINT`` names (Ceph RGW)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import s3fs

from fstransport import (
    ChecksumMismatch,
    ConfigurationError,
    RetryPolicy,
    SourceChanged,
    StorageError,
    TransferOptions,
    TransferReport,
    ship,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.options import MAX_COPY_OBJECT, MiB
from fstransport.protocol.parts import MIN_PART_SIZE
from fstransport.storage.backends.s3 import crc32c_header
from fstransport.storage.backends.s3.copy import S3Object, copies_whole
from fstransport.storage.backends.s3.copy_object import plain_etag, same_version
from fstransport.storage.faults import flaky_s3
from fstransport.testing import S3Flavor, S3TestServer
from tests.conftest import payload
from tests.helpers import keys, object_bytes, s3_calls, uploads
from tests.test_cli import run as run_cli

CUTOFF = MIN_PART_SIZE + MiB
SMALL_PARTS = {"part_size": MIN_PART_SIZE, "upload_concurrency": 3}


def copy_within(
    bucket: str, s3_options: dict[str, Any], cutoff: int = CUTOFF, **kwargs: Any
) -> Awaitable[TransferReport]:
    """``ship(server_side=True)`` of ``s3://BUCKET/src.bin`` to ``s3://BUCKET/copy.bin``."""
    kwargs.setdefault("options", TransferOptions(copy_cutoff=cutoff))
    return ship(
        f"s3://{bucket}/src.bin",
        f"s3://{bucket}/copy.bin",
        source_options=s3_options,
        target_options=s3_options,
        store_options=SMALL_PARTS,
        server_side=True,
        **kwargs,
    )


def reports_copy_crc(flavor: S3Flavor) -> bool | None:
    """Whether the server answers a CopyObject asked with ``ChecksumAlgorithm=CRC32C`` with the
    copy's CRC32C: moto does (computed from the bytes), Ceph RGW 16 ignores the request; None:
    not known for this server (AWS does)."""
    return {"moto": True, "ceph-rgw": False}.get(flavor.kind)


# -- pure parts ----------------------------------------------------------------------------------


def test_copy_cutoff_is_an_option_within_s3s_limit() -> None:
    assert TransferOptions().copy_cutoff == MAX_COPY_OBJECT == 5 * 1024 * MiB
    assert TransferOptions(copy_cutoff=0).copy_cutoff == 0
    for wrong in (-1, MAX_COPY_OBJECT + 1):
        with pytest.raises(ConfigurationError, match="copy_cutoff"):
            TransferOptions(copy_cutoff=wrong)


def test_which_copies_are_one_copy_object() -> None:
    assert copies_whole(CUTOFF, CUTOFF, require_proof=False)
    assert not copies_whole(CUTOFF + 1, CUTOFF, require_proof=False)
    assert copies_whole(0, 0, require_proof=False)  # no part can hold 0 bytes
    assert copies_whole(MIN_PART_SIZE - 1, 0, require_proof=False)  # below the part minimum
    assert not copies_whole(MIN_PART_SIZE, 0, require_proof=False)
    # a copy that must be proved before it appears is never one CopyObject
    assert not copies_whole(MIN_PART_SIZE, MAX_COPY_OBJECT, require_proof=True)


def test_etags_tell_the_copied_version_only_where_they_can() -> None:
    md5, other = "0" * 31 + "a", "0" * 31 + "b"
    single = S3Object("b", "k", 10, f'"{md5}"', None)
    assert plain_etag(f' "{md5.upper()}" ') == md5
    assert same_version(single, md5, None) is True  # RGW's answer is unquoted, moto's quoted
    assert same_version(single, f'"{other}"', None) is False
    assert same_version(single, other, "AES256") is False  # SSE-S3 keeps MD5 ETags
    assert same_version(single, other, "aws:kms") is None  # KMS ETags are no MD5s
    assert same_version(S3Object("b", "k", 10, md5, None, "SSE-C"), other, None) is None
    multipart = S3Object("b", "k", 10, f'"{md5}-3"', None)
    assert same_version(multipart, f"{md5}-3", None) is True  # RGW copies it as it is
    assert same_version(multipart, other, None) is None  # moto gives the copy its MD5
    assert same_version(multipart, f"{other}-3", None) is None
    assert same_version(single, "", None) is None


# -- copies on the server ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "whole"),
    [(0, True), (1, True), (CUTOFF, True), (CUTOFF + 1, False)],
    ids=["0", "1", "cutoff", "cutoff+1"],
)
async def test_copy_object_up_to_the_cutoff_parts_above(
    size: int,
    whole: bool,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    s3_flavor: S3Flavor,
) -> None:
    data = payload(size, seed=size % 89)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    with s3_calls() as calls:
        report = await copy_within(s3_bucket, s3_storage_options)
    assert object_bytes(s3_client, s3_bucket, "copy.bin") == data
    assert report.server_side
    assert (report.size, report.bytes_sent, report.bytes_read) == (size, 0, 0)
    assert calls["get_object"] == calls["put_object"] == 0  # no byte through this process
    if whole:
        assert calls["copy_object"] == 1
        assert calls["create_multipart_upload"] == calls["upload_part_copy"] == 0
        assert report.chunks_sent == 0  # no part copies
        # the copy's ETag names the source's version: no second look at the source is needed
        assert calls["head_object"] == 1
        crc = format_checksum(chunk_crc(data))
        known: dict[bool | None, list[str | None]] = {True: [crc], False: [None]}
        expected = known.get(reports_copy_crc(s3_flavor), [crc, None])
        assert report.checksum in expected
    else:
        assert calls["copy_object"] == 0
        assert calls["upload_part_copy"] == report.chunks_sent == 2
    assert uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == ["copy.bin", "src.bin"]


@pytest.mark.parametrize(
    ("size", "whole"), [(1, True), (CUTOFF + 1, False)], ids=["whole", "parts"]
)
async def test_only_one_copy_object_keeps_the_sources_metadata(
    size: int, whole: bool, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """What ``docs/s3.md`` says: one ``CopyObject`` copies the object with its user metadata
    and Content-Type (S3's ``MetadataDirective=COPY``); a copy by parts makes a new object
    from the bytes alone, as every other ``ship`` does."""
    s3_client.put_object(
        Bucket=s3_bucket,
        Key="src.bin",
        Body=payload(size, seed=5),
        Metadata={"origin": "leader-3"},
        ContentType="application/x-snapshot",
    )
    await copy_within(s3_bucket, s3_storage_options)
    head = s3_client.head_object(Bucket=s3_bucket, Key="copy.bin")
    if whole:
        assert head["Metadata"] == {"origin": "leader-3"}
        assert head["ContentType"] == "application/x-snapshot"
    else:
        assert head["Metadata"] == {}
        assert head["ContentType"] != "application/x-snapshot"


async def test_copy_of_a_multipart_source(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, s3_flavor: S3Flavor
) -> None:
    """A source with a ``-N`` ETag: Ceph RGW gives the copy the same ETag, moto the MD5 of the
    bytes (then the source is asked for its ETag once more)."""
    data = payload(MIN_PART_SIZE + 3, seed=21)
    upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="src.bin")["UploadId"]
    parts = []
    for number, start in enumerate((0, MIN_PART_SIZE), 1):
        body = data[start : start + MIN_PART_SIZE]
        part = s3_client.upload_part(
            Bucket=s3_bucket, Key="src.bin", UploadId=upload, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    s3_client.complete_multipart_upload(
        Bucket=s3_bucket, Key="src.bin", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    with s3_calls() as calls:
        report = await copy_within(s3_bucket, s3_storage_options)
    assert report.server_side
    assert report.chunks_sent == 0
    assert object_bytes(s3_client, s3_bucket, "copy.bin") == data
    heads = {"moto": [2], "ceph-rgw": [1]}.get(s3_flavor.kind, [1, 2])
    assert calls["head_object"] in heads


@pytest.mark.parametrize("multipart", [False, True], ids=["single", "multipart"])
async def test_source_replaced_before_the_copy_is_a_typed_error_and_leaves_nothing(
    multipart: bool, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """The copy names the ETag the source had when it was looked at; moto and Ceph RGW 16 copy
    whatever is there regardless, and the copy's ETag (or a second look) tells."""
    size = 2 * MIN_PART_SIZE if multipart else MiB

    def put(data: bytes) -> None:
        if not multipart:
            s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
            return
        upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="src.bin")["UploadId"]
        part = s3_client.upload_part(
            Bucket=s3_bucket, Key="src.bin", UploadId=upload, PartNumber=1, Body=data
        )
        done = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
        s3_client.complete_multipart_upload(
            Bucket=s3_bucket, Key="src.bin", UploadId=upload, MultipartUpload=done
        )

    put(payload(size, seed=23))

    async def replace_first(method: str, kwargs: dict[str, Any]) -> None:
        if method == "copy_object":
            put(payload(size, seed=24))

    with s3_calls(before=replace_first) as calls, pytest.raises(SourceChanged):
        await copy_within(s3_bucket, s3_storage_options, cutoff=2 * MIN_PART_SIZE)
    assert calls["copy_object"] == 1
    assert keys(s3_client, s3_bucket) == ["src.bin"]
    assert uploads(s3_client, s3_bucket) == []


async def test_copy_refuted_by_the_servers_crc_is_removed(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """A server that reports the copy's CRC32C (a double adds a wrong one, on any server): the
    copy is deleted and `ChecksumMismatch` raised."""
    data = payload(MiB + 1, seed=25)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    s3_client.put_object(Bucket=s3_bucket, Key="copy.bin", Body=b"what was there before")

    def wrong_crc(method: str, kwargs: dict[str, Any], response: Any) -> Any:
        if method == "copy_object":
            wrong = crc32c_header(chunk_crc(data) ^ 1)
            response.setdefault("CopyObjectResult", {})["ChecksumCRC32C"] = wrong
        return response

    with s3_calls(answer=wrong_crc), pytest.raises(ChecksumMismatch):
        await copy_within(s3_bucket, s3_storage_options, checksum=format_checksum(chunk_crc(data)))
    assert keys(s3_client, s3_bucket) == ["src.bin"]


async def test_failed_copy_object_leaves_nothing(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=payload(MiB, seed=26))
    fast = TransferOptions(
        copy_cutoff=CUTOFF, retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, jitter=0.0)
    )
    with (
        flaky_s3(1.0, seed=2, operations=frozenset({"copy_object"})) as faults,
        pytest.raises(StorageError),
    ):
        await copy_within(s3_bucket, s3_storage_options, options=fast)
    assert faults.injected["copy_object"] == 2  # retried, then given up
    assert keys(s3_client, s3_bucket) == ["src.bin"]


@contextmanager
def slow_copy_answers(copied: asyncio.Event, answer: asyncio.Event) -> Iterator[None]:
    """CopyObject requests reach the server at once, but their answers come back only once
    `answer` is set (`copied` is set when the server has made the copy)."""
    real = s3fs.S3FileSystem._call_s3

    async def slow(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        response = await real(self, method, *args, **kwargs)
        if method == "copy_object":
            copied.set()
            await answer.wait()
        return response

    s3fs.S3FileSystem._call_s3 = slow
    try:
        yield
    finally:
        s3fs.S3FileSystem._call_s3 = real


async def test_cancelled_copy_object_waits_for_the_answer_and_removes_the_copy(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=payload(MiB, seed=27))
    copied, answer = asyncio.Event(), asyncio.Event()
    with slow_copy_answers(copied, answer):
        task = asyncio.ensure_future(copy_within(s3_bucket, s3_storage_options))
        await asyncio.wait_for(copied.wait(), 30)
        assert "copy.bin" in keys(s3_client, s3_bucket)  # made by the server, not answered yet
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # the cancelled copy waits for the server's answer...
        answer.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert keys(s3_client, s3_bucket) == ["src.bin"]  # ...and then removes what it made


async def test_cancelled_copy_object_gives_up_waiting_after_the_install_timeout(
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=payload(MiB, seed=28))
    copied, never = asyncio.Event(), asyncio.Event()
    options = TransferOptions(copy_cutoff=CUTOFF, install_timeout=0.2)
    with slow_copy_answers(copied, never), caplog.at_level(logging.WARNING, "fstransport.s3"):
        task = asyncio.ensure_future(copy_within(s3_bucket, s3_storage_options, options=options))
        await asyncio.wait_for(copied.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    assert "may still complete the copy" in caplog.text


async def test_copy_onto_itself_changes_nothing(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """S3 refuses a CopyObject of an object onto itself; the object already is the copy."""
    data = payload(MiB, seed=30)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    url = f"s3://{s3_bucket}/src.bin"
    with s3_calls() as calls:
        report = await ship(
            url,
            url,
            source_options=s3_storage_options,
            target_options=s3_storage_options,
            server_side=True,
        )
    assert report.server_side
    assert (report.size, report.bytes_sent, report.chunks_sent) == (len(data), 0, 0)
    assert calls["copy_object"] == calls["put_object"] == calls["delete_object"] == 0
    assert object_bytes(s3_client, s3_bucket, "src.bin") == data


def test_cli_copy_cutoff(s3_server: S3TestServer, s3_bucket: str, s3_client: Any) -> None:
    data = payload(MIN_PART_SIZE + 17, seed=29)
    s3_client.put_object(Bucket=s3_bucket, Key="src.bin", Body=data)
    src, dst = f"s3://{s3_bucket}/src.bin", f"s3://{s3_bucket}/dst.bin"
    args = ("--endpoint-url", s3_server.endpoint_url, "--server-side")
    result = run_cli("ship", src, dst, *args, "--json", env=s3_server.env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["server_side"], report["bytes_sent"], report["chunks_sent"]) == (True, 0, 0)
    assert object_bytes(s3_client, s3_bucket, "dst.bin") == data
    human = run_cli("ship", src, dst, *args, "--copy-cutoff", "5GiB", env=s3_server.env)
    assert "copied by the S3 server (one CopyObject)" in human.stdout, human.stderr
    over = run_cli("ship", src, dst, *args, "--copy-cutoff", "6GiB", env=s3_server.env)
    assert over.returncode != 0
    assert "--copy-cutoff" in over.stderr
    assert "at most 5.0 GiB" in over.stderr
    assert uploads(s3_client, s3_bucket) == []
