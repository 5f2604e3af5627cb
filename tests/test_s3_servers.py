"""fstransport.testing on any S3 server: which server the tests are on, what it does where
servers differ, the ``s3`` marker, and buckets that leave nothing behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fstransport import (
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    Receiver,
    RetryPolicy,
    SnapshotMeta,
    StorageError,
    Vote,
)
from fstransport.options import MiB
from fstransport.testing import S3Flavor, S3TestServer, probe_flavor
from fstransport.testing.s3_server import _remove_bucket
from tests.conftest import payload

pytest_plugins = ["pytester"]


def test_the_flavor_is_what_is_known_of_the_server(s3_server: S3TestServer) -> None:
    """The probe sees what we measured by hand on moto and Ceph RGW 16, and what AWS documents
    (docs/testing.md)."""
    flavor = s3_server.flavor
    if s3_server.kind == "moto":
        assert flavor == S3Flavor(
            kind="moto",
            verifies_checksums=False,
            full_object_checksums=True,
            dates_uploads=False,
            gone_upload_status=500,
            completion_etag=True,
        )
        assert not s3_server.external
    elif s3_server.kind == "ceph-rgw":
        assert flavor == S3Flavor(
            kind="ceph-rgw",
            verifies_checksums=False,
            full_object_checksums=False,
            dates_uploads=True,
            gone_upload_status=404,
            completion_etag=False,
        )
        assert s3_server.external
    elif s3_server.kind == "aws":
        assert flavor.verifies_checksums
        assert flavor.full_object_checksums
        assert flavor.dates_uploads
        assert flavor.completion_etag
        assert flavor.gone_upload_status == 404
    else:  # another server: only that the probe saw it answer
        assert s3_server.external
        assert flavor.gone_upload_status >= 400


def test_a_second_probe_sees_the_same(
    s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    client = s3_server.client(attempts=1)  # moto answers 500 to one of its calls
    assert probe_flavor(client, s3_bucket, s3_server.kind) == s3_server.flavor
    # what the probe made, it removed
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_the_environment_for_child_processes(s3_server: S3TestServer) -> None:
    env = s3_server.env
    assert env["AWS_ACCESS_KEY_ID"] == s3_server.key
    assert env["AWS_SECRET_ACCESS_KEY"] == s3_server.secret
    assert env["AWS_DEFAULT_REGION"] == s3_server.region
    options = s3_server.storage_options()
    assert options["client_kwargs"]["endpoint_url"] == s3_server.endpoint_url


def test_removing_a_test_bucket_aborts_uploads_and_deletes_objects(
    s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    """What ``s3_bucket`` does after each test on an external server."""
    name = f"{s3_bucket}-extra"
    s3_client.create_bucket(Bucket=name)
    for key in ("a", "deep/b", "deep/er/c"):
        s3_client.put_object(Bucket=name, Key=key, Body=key.encode())
    s3_client.create_multipart_upload(Bucket=name, Key="unfinished")
    _remove_bucket(s3_client, name)
    names = [b["Name"] for b in s3_client.list_buckets().get("Buckets", [])]
    assert name not in names
    assert s3_bucket in names


def test_tests_using_s3_fixtures_are_marked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        import pytest

        def test_direct(s3_bucket):
            pass

        def test_through_the_endpoint(s3_endpoint):
            pass

        @pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.s3)])
        def where(request):
            if request.param == "s3":
                request.getfixturevalue("s3_bucket")
            return request.param

        def test_parametrized(where):
            pass

        def test_no_s3():
            pass
        """
    )
    result = pytester.runpytest(
        "-m", "s3", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio"
    )
    selected = sorted(line for line in result.outlines if line.startswith("test_user.py::"))
    assert selected == [
        "test_user.py::test_direct",
        "test_user.py::test_parametrized[s3]",
        "test_user.py::test_through_the_endpoint",
    ]


def test_an_unmarked_dynamic_use_is_reported(pytester: pytest.Pytester) -> None:
    """A test that reaches the S3 fixtures only through ``getfixturevalue`` is not marked on
    collection; the fixtures say so (a failure wherever warnings are errors, as here)."""
    pytester.makepyfile(
        test_user="""
        def test_hidden(request):
            request.getfixturevalue("s3_client")
        """
    )
    result = pytester.runpytest(
        "-W",
        "error::fstransport.testing.S3MarkerWarning",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*is not marked 's3'*"])


async def test_an_upload_aborted_under_a_transfer_ends_it_with_a_storage_error(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, s3_flavor: S3Flavor
) -> None:
    """Someone (a lifecycle rule, an operator) aborts the multipart upload while the receiver
    is filling it.  Servers answer the next part differently — 404 ``NoSuchUpload`` (Ceph RGW,
    AWS) or 500 (moto, which a sink must take for transient and retry) — and either way the
    transfer ends in `StorageError`, with no object and nothing left in the bucket."""
    data = payload(17 * MiB, seed=13)
    meta = SnapshotMeta("snap", size=len(data))
    retry = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=3)
    # botocore's own retries of moto's 500s would take half a minute: ours are enough here
    once = {**s3_storage_options, "config_kwargs": {"retries": {"total_max_attempts": 1}}}
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=5 * MiB, retry=retry, **once
    ) as store:
        receiver = Receiver(store)
        for offset in range(0, 6 * MiB, MiB):  # part 1 goes up
            await receiver.handle(chunk_request(meta, data, offset))
        for _ in range(200):
            listed = s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
            parts = (
                s3_client.list_parts(
                    Bucket=s3_bucket, Key="p/snap", UploadId=listed[0]["UploadId"]
                ).get("Parts", [])
                if listed
                else []
            )
            if parts:
                break
            await asyncio.sleep(0.05)
        [upload] = listed
        s3_client.abort_multipart_upload(
            Bucket=s3_bucket, Key="p/snap", UploadId=upload["UploadId"]
        )

        async def send_the_rest() -> None:
            for offset in range(6 * MiB, len(data), MiB):
                await receiver.handle(chunk_request(meta, data, offset))

        with pytest.raises(StorageError) as info:
            await send_the_rest()
    if s3_flavor.gone_upload_status == 404:  # Ceph RGW, AWS: the upload is gone, at once
        assert isinstance(info.value.cause, FileNotFoundError), repr(info.value.cause)
        assert not info.value.retryable
    else:  # moto: 500, tried again as a 5xx may be transient, then given up
        assert s3_flavor.gone_upload_status == 500
        assert not isinstance(info.value.cause, FileNotFoundError), repr(info.value.cause)
        assert info.value.retryable, repr(info.value.cause)
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def chunk_request(meta: SnapshotMeta, data: bytes, offset: int) -> InstallSnapshotRequest:
    end = min(offset + MiB, len(data))
    return InstallSnapshotRequest(Vote(1, 0), meta, offset, data[offset:end], end == len(data))
