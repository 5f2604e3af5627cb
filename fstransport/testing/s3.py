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

import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from fstransport.moto_server import REGION, TEST_CREDENTIALS, reset_moto, start_moto_server
from fstransport.testing.s3_server import (
    _MOTO,
    _UNKNOWN,
    ENDPOINT_ENV,
    KIND_ENV,
    S3Flavor,
    S3TestServer,
    _create_bucket,
    _fresh_bucket_name,
    _probed,
    _remove_bucket,
    probe_flavor,
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

S3_MARKER = "s3"
_S3_FIXTURES = {"s3_server"}  # every S3 fixture depends on it


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
