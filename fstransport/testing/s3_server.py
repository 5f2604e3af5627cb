"""The S3 servers of fstransport's tests: what one is (`S3TestServer`), what it does where servers
differ (`S3Flavor`, found by `probe_flavor`), and the buckets made on it.

The pytest fixtures that start or connect to such a server are in `fstransport.testing.s3`; moto
itself is started by `fstransport.moto_server`.
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
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENDPOINT_ENV",
    "KIND_ENV",
    "S3Flavor",
    "S3TestServer",
    "probe_flavor",
]

ENDPOINT_ENV = "FSTRANSPORT_TEST_S3_ENDPOINT"
"""Set to an S3 endpoint URL to run the S3 fixtures against it instead of moto."""

KIND_ENV = "FSTRANSPORT_TEST_S3_SERVER"
"""Optionally names the external server's kind (``ceph-rgw``, ``minio``, ...) when it cannot be
told from its answers."""

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
