"""A pytest plugin with an S3 server for tests: moto in server mode, over real HTTP on 127.0.0.1.

Installed with fstransport (entry point ``pytest11``), so its fixtures are available in any
project that has fstransport and ``moto[server]`` installed
(``pip install "fstransport[testing]"``):

- ``moto_server``: the endpoint URL of a moto S3 server started once per test session;
- ``s3_storage_options``: s3fs storage options for that server, with moto reset to empty first;
- ``s3_bucket``: a fresh, empty bucket's name (implies ``s3_storage_options``);
- ``s3_client``: a boto3 S3 client for the same server, to check results independently.

moto's in-process ``mock_aws`` does not work with s3fs (aiobotocore); the server mode does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from fstransport.moto_server import (
    REGION,
    TEST_CREDENTIALS,
    reset_moto,
    start_moto_server,
    storage_options_for,
)

__all__ = ["moto_server", "s3_bucket", "s3_client", "s3_storage_options"]

_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server for this test session."""
    pytest.importorskip(
        "moto.server", reason="moto[server] is not installed: pip install 'fstransport[testing]'"
    )
    server, endpoint = start_moto_server()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_storage_options(moto_server: str) -> dict[str, Any]:
    """s3fs storage options for the session's moto server, reset to empty for this test."""
    reset_moto(moto_server)
    return storage_options_for(moto_server)


@pytest.fixture
def s3_client(moto_server: str) -> Any:
    """A boto3 S3 client for the moto server, for independent checks of what landed."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name=REGION,
        aws_access_key_id=TEST_CREDENTIALS["key"],
        aws_secret_access_key=TEST_CREDENTIALS["secret"],
    )


@pytest.fixture
def s3_bucket(s3_storage_options: dict[str, Any], s3_client: Any) -> str:
    """The name of a fresh, empty bucket on the moto server."""
    name = f"fstransport-test-{next(_bucket_numbers)}"
    s3_client.create_bucket(Bucket=name)
    return name
