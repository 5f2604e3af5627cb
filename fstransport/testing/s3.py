"""The pytest fixtures of an S3 server for tests: moto in server mode over real HTTP on 127.0.0.1,
or any S3 endpoint you name.

Installed with fstransport (entry point ``pytest11``), so its fixtures are available in any
project that has fstransport installed (``pip install "fstransport[testing]"`` for moto):

- ``s3_server``: the session's S3 server (`S3TestServer`): endpoint, credentials, region, and
  what kind of server it is (`S3Flavor`);
- ``s3_endpoint`` (and its older name ``moto_server``): that server's endpoint URL;
- ``s3_server_kind``: ``"moto"``, ``"ceph-rgw"``, ``"minio"``, ``"aws"`` or ``"external"``;
- ``s3_flavor``: the `S3Flavor`, with what the server was seen to do at the session's start;
- ``s3_storage_options``: s3fs storage options for that server (moto is reset to empty first);
- ``s3_bucket``: a fresh, empty bucket's name (implies ``s3_storage_options``); on an external
  server it is emptied (objects and incomplete multipart uploads) and deleted after the test;
- ``s3_client``: a boto3 S3 client for the same server, to check results independently.

Without ``FSTRANSPORT_TEST_S3_ENDPOINT`` the server is moto, started once per session.  With it,
the tests run against that endpoint, with the credentials of ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN`` if set) in the region of
``AWS_DEFAULT_REGION`` (default ``us-east-1``).  Every test that uses these fixtures is marked
``s3``, so ``pytest -m s3`` selects exactly the tests that talk to the server.

moto's in-process ``mock_aws`` does not work with s3fs (aiobotocore); the server mode does.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import os
import secrets
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fstransport.moto_server import (
    REGION,
    TEST_CREDENTIALS,
    reset_moto,
    start_moto_server,
)

__all__ = [
    "ENDPOINT_ENV",
    "KIND_ENV",
    "S3Flavor",
    "S3MarkerWarning",
    "S3TestServer",
    "moto_server",
    "probe_flavor",
    "s3_bucket",
    "s3_client",
    "s3_endpoint",
    "s3_flavor",
    "s3_server",
    "s3_server_kind",
    "s3_storage_options",
]

ENDPOINT_ENV = "FSTRANSPORT_TEST_S3_ENDPOINT"
"""Set to an S3 endpoint URL to run the S3 fixtures against it instead of moto."""

KIND_ENV = "FSTRANSPORT_TEST_S3_SERVER"
"""Optionally names the external server's kind (``ceph-rgw``, ``minio``, ...) when it cannot be
told from its answers."""

S3_MARKER = "s3"
_S3_FIXTURES = {"s3_server"}  # every S3 fixture depends on it

_bucket_numbers = itertools.count(1)


@dataclass(frozen=True)
class S3Flavor:
    """What an S3 server does where servers differ, seen on the server itself at the start of
    the session (`probe_flavor`), so that tests can state what they expect of each server.

    - `kind`: ``"moto"``, ``"ceph-rgw"``, ``"minio"``, ``"aws"`` or ``"external"``;
    - `verifies_checksums`: a part sent with a wrong ``x-amz-checksum-crc32c`` is refused (AWS);
      moto and Ceph RGW 16 accept it and ignore the header;
    - `full_object_checksums`: ``ChecksumType=FULL_OBJECT`` is taken and echoed back, so the
      server checks the whole object's CRC32C at completion;
    - `dates_uploads`: multipart uploads carry the time they were started (moto dates every
      one in 2010, which matters for ``cleanup(older_than=...)``);
    - `gone_upload_status`: the HTTP status of a part upload into an aborted upload (404
      ``NoSuchUpload`` on AWS and RGW; moto answers 500);
    - `completion_etag`: CompleteMultipartUpload answers with the object's ETag (RGW 16 answers
      an empty one).
    """

    kind: str
    verifies_checksums: bool
    full_object_checksums: bool
    dates_uploads: bool
    gone_upload_status: int
    completion_etag: bool


@dataclass(frozen=True)
class S3TestServer:
    """The S3 server of a test session: where it is, how to log in, and what kind it is."""

    endpoint_url: str
    key: str
    secret: str
    region: str
    flavor: S3Flavor
    token: str | None = None

    @property
    def kind(self) -> str:
        return self.flavor.kind

    @property
    def external(self) -> bool:
        """Whether the server is one the session did not start (buckets are removed after use)."""
        return self.kind != "moto"

    def storage_options(self) -> dict[str, Any]:
        """s3fs storage options for this server."""
        options: dict[str, Any] = {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }
        if self.token is not None:
            options["token"] = self.token
        return options

    @property
    def env(self) -> dict[str, str]:
        """The environment that gives a child process (``fstransport ship ...``) the same
        credentials, as a user would give them: boto's variables."""
        env = {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }
        if self.token is not None:
            env["AWS_SESSION_TOKEN"] = self.token
        return env

    def client(self, *, attempts: int | None = None) -> Any:
        """A boto3 S3 client for this server (making up to `attempts` tries per call, if given).
        It adds no checksums of its own (servers that predate botocore's default CRC32
        trailers, such as RGW 16, refuse them)."""
        import boto3
        from botocore.config import Config

        retries = {} if attempts is None else {"retries": {"total_max_attempts": attempts}}

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            aws_session_token=self.token,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                **retries,
            ),
        )


# -- telling servers apart -------------------------------------------------------------------


def _error_status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _kind_of(endpoint_url: str, headers: dict[str, str]) -> str:
    named = os.environ.get(KIND_ENV)
    if named:
        return named
    request_id = headers.get("x-amz-request-id", "")
    if request_id.startswith("tx") and request_id.count("-") >= 2:
        return "ceph-rgw"  # RGW's request ids: tx<hex>-<hex>-<hex>-<zone group>
    if "minio" in headers.get("server", "").lower():
        return "minio"
    host = urllib.parse.urlsplit(endpoint_url).hostname or ""
    if host.endswith(".amazonaws.com"):
        return "aws"
    return "external"


def probe_flavor(client: Any, bucket: str, kind: str | None = None) -> S3Flavor:
    """Find out what the server behind `client` does where S3 servers differ, with a few tiny
    requests in `bucket` (which must exist; what the probe creates there it removes again).

    `kind` names the server; without it, it is told from the server's answers.
    """
    from fstransport.checksum import chunk_crc
    from fstransport.storage.backends.s3 import crc32c_header

    key = f"fstransport-probe-{secrets.token_hex(4)}"
    good = {"ChecksumCRC32C": crc32c_header(chunk_crc(b"x"))}
    wrong = {"ChecksumCRC32C": crc32c_header(chunk_crc(b"y"))}

    # Does a part with a wrong CRC32C get refused?
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32C")
    upload_id = upload["UploadId"]
    headers = upload["ResponseMetadata"].get("HTTPHeaders", {})
    try:
        client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x", **wrong
        )
        verifies = False
    except client.exceptions.ClientError:
        verifies = True
    # Is the upload dated now?
    listing = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    started = [u["Initiated"] for u in listing if u.get("UploadId") == upload_id]
    now = datetime.datetime.now(datetime.timezone.utc)
    dates = bool(started) and abs((now - started[0]).total_seconds()) < 24 * 3600
    # What does a part upload into an aborted upload get?
    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    try:
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x")
        gone_status = 200
    except client.exceptions.ClientError as exc:
        gone_status = _error_status(exc)

    # Full-object checksums, and the ETag of a completed upload.
    try:
        upload = client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32C", ChecksumType="FULL_OBJECT"
        )
        full_object = upload.get("ChecksumType") == "FULL_OBJECT"
    except client.exceptions.ClientError:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32C")
        full_object = False
    upload_id = upload["UploadId"]
    try:
        part = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x", **good
        )
        whole = {"ChecksumCRC32C": good["ChecksumCRC32C"], "ChecksumType": "FULL_OBJECT"}
        done = client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"], **good}]},
            **(whole if full_object else {}),
        )
        etag = bool(done.get("ETag", "").strip('"'))
    finally:
        with contextlib.suppress(client.exceptions.ClientError):  # completed: nothing to abort
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        client.delete_object(Bucket=bucket, Key=key)
    return S3Flavor(
        kind=kind or _kind_of(client.meta.endpoint_url, headers),
        verifies_checksums=verifies,
        full_object_checksums=full_object,
        dates_uploads=dates,
        gone_upload_status=gone_status,
        completion_etag=etag,
    )


# -- buckets on an external server -----------------------------------------------------------


def _create_bucket(client: Any, name: str, region: str) -> None:
    if region == "us-east-1":
        client.create_bucket(Bucket=name)
    else:
        client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})


def _remove_bucket(client: Any, name: str) -> None:
    """Abort the bucket's incomplete uploads, delete its objects, then the bucket."""
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


def _fresh_bucket_name() -> str:
    # unique across sessions and machines (AWS bucket names are global), at most 63 characters
    return f"fstransport-test-{secrets.token_hex(4)}-{next(_bucket_numbers)}"


# -- the s3 marker ---------------------------------------------------------------------------


class S3MarkerWarning(pytest.PytestWarning):
    """A test reached the S3 fixtures through ``request.getfixturevalue`` without being marked
    ``s3``: ``pytest -m s3`` would not select it."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{S3_MARKER}: the test talks to the S3 server of fstransport.testing (applied to every "
        f"test that uses its fixtures; select them with -m {S3_MARKER})",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses an S3 fixture ``s3`` (before ``-m`` selects)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _S3_FIXTURES and item.get_closest_marker(S3_MARKER) is None:
            item.add_marker(S3_MARKER)


def _check_marked(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker(S3_MARKER) is None:
        warnings.warn(
            S3MarkerWarning(
                f"{request.node.nodeid} uses the S3 fixtures through getfixturevalue but is not "
                f"marked {S3_MARKER!r}: mark it (or its parameter: "
                f"pytest.param(..., marks=pytest.mark.{S3_MARKER}))"
            ),
            stacklevel=2,
        )


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    """The S3 server of this session: the endpoint of ``FSTRANSPORT_TEST_S3_ENDPOINT`` if set,
    else a moto server started for the session."""
    endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
    if endpoint:
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            pytest.fail(
                f"{ENDPOINT_ENV} is set: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must give "
                "the credentials for it",
                pytrace=False,
            )
        region = os.environ.get("AWS_DEFAULT_REGION") or REGION
        token = os.environ.get("AWS_SESSION_TOKEN") or None
        yield _probed(S3TestServer(endpoint, key, secret, region, _UNKNOWN, token))
        return
    pytest.importorskip(
        "moto.server", reason="moto[server] is not installed: pip install 'fstransport[testing]'"
    )
    server, url = start_moto_server()
    try:
        found = _probed(
            S3TestServer(url, TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"], REGION, _MOTO)
        )
        reset_moto(url)
        yield found
    finally:
        server.stop()


_UNKNOWN = S3Flavor("external", False, False, True, 404, True)
_MOTO = S3Flavor("moto", False, False, False, 500, True)


def _probed(server: S3TestServer) -> S3TestServer:
    """`server` with the flavor its answers show (probed in a bucket made for it)."""
    client = server.client(attempts=1)  # a 500 is an answer here, not a reason to try again
    bucket = _fresh_bucket_name()
    _create_bucket(client, bucket, server.region)
    started = time.monotonic()
    werkzeug = logging.getLogger("werkzeug")  # moto logs a traceback with each 500 it answers
    level = werkzeug.level
    werkzeug.setLevel(logging.CRITICAL)
    try:
        kind = "moto" if server.kind == "moto" else None
        flavor = probe_flavor(client, bucket, kind)
    finally:
        werkzeug.setLevel(level)
        _remove_bucket(client, bucket)
    assert time.monotonic() - started < 120, "probing the S3 server took over two minutes"
    return S3TestServer(
        server.endpoint_url, server.key, server.secret, server.region, flavor, server.token
    )


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3TestServer) -> str:
    """The endpoint URL of the session's S3 server."""
    return s3_server.endpoint_url


@pytest.fixture(scope="session")
def moto_server(s3_server: S3TestServer) -> str:
    """The endpoint URL of the session's S3 server (the older name of ``s3_endpoint``: moto,
    unless ``FSTRANSPORT_TEST_S3_ENDPOINT`` names another server)."""
    return s3_server.endpoint_url


@pytest.fixture(scope="session")
def s3_flavor(s3_server: S3TestServer) -> S3Flavor:
    """What the session's S3 server does where servers differ."""
    return s3_server.flavor


@pytest.fixture(scope="session")
def s3_server_kind(s3_server: S3TestServer) -> str:
    """``"moto"``, ``"ceph-rgw"``, ``"minio"``, ``"aws"`` or ``"external"``."""
    return s3_server.kind


@pytest.fixture
def s3_storage_options(request: pytest.FixtureRequest, s3_server: S3TestServer) -> dict[str, Any]:
    """s3fs storage options for the session's S3 server; moto is reset to empty for the test."""
    _check_marked(request)
    if s3_server.kind == "moto":
        reset_moto(s3_server.endpoint_url)
    return s3_server.storage_options()


@pytest.fixture
def s3_client(request: pytest.FixtureRequest, s3_server: S3TestServer) -> Any:
    """A boto3 S3 client for the session's S3 server, for independent checks of what landed."""
    _check_marked(request)
    return s3_server.client()


@pytest.fixture
def s3_bucket(
    s3_server: S3TestServer, s3_storage_options: dict[str, Any], s3_client: Any
) -> Iterator[str]:
    """The name of a fresh, empty bucket; on an external server it is emptied (uploads
    aborted, objects deleted) and removed after the test."""
    name = _fresh_bucket_name()
    _create_bucket(s3_client, name, s3_server.region)
    yield name
    if s3_server.external:
        _remove_bucket(s3_client, name)
