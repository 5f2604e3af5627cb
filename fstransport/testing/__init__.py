"""fstransport's test kit, for its own tests and for code built on it.

Installed with fstransport as a pytest plugin (entry point ``pytest11``), so these fixtures are
available in any project that has fstransport installed (``pip install "fstransport[testing]"``
brings moto):

- ``s3_server``, ``s3_endpoint`` (and its older name ``moto_server``), ``s3_server_kind``,
  ``s3_flavor``, ``s3_storage_options``, ``s3_bucket``, ``s3_client``: an S3 server for tests,
  moto over real HTTP on 127.0.0.1, or any endpoint named by ``FSTRANSPORT_TEST_S3_ENDPOINT``
  (see `fstransport.testing.s3`; the servers themselves, `S3TestServer` and `S3Flavor`, are
  described in `fstransport.testing.s3_server`).

And, to import:

- `MockNetwork`: a `Network` whose requests go to a function of yours (with the handlers
  `deliver_to`, `answer`, `hang`, `fail`), in `fstransport.testing.mock` (which also holds
  the combinators `after`, `before` and `stop_after`);
- `FakeClock`: virtual time for asyncio, so backoffs and TTLs take no real time
  (`fstransport.testing.clock`);
- `fstransport.testing.network_suite.NetworkSuite` and
  `fstransport.testing.store_suite.StoreSuite`: conformance suites (mixins) for your own
  `Network` or `SnapshotStore`, bound with one small fixture (see docs/testing.md).
"""

from fstransport.testing.clock import FakeClock
from fstransport.testing.mock import MockNetwork, answer, deliver_to, fail, hang
from fstransport.testing.s3 import (
    ENDPOINT_ENV,
    KIND_ENV,
    S3Flavor,
    S3MarkerWarning,
    S3TestServer,
    moto_server,
    probe_flavor,
    pytest_collection_modifyitems,
    pytest_configure,
    s3_bucket,
    s3_client,
    s3_endpoint,
    s3_flavor,
    s3_server,
    s3_server_kind,
    s3_storage_options,
)

__all__ = [
    "ENDPOINT_ENV",
    "KIND_ENV",
    "FakeClock",
    "MockNetwork",
    "S3Flavor",
    "S3MarkerWarning",
    "S3TestServer",
    "answer",
    "deliver_to",
    "fail",
    "hang",
    "moto_server",
    "probe_flavor",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "s3_bucket",
    "s3_client",
    "s3_endpoint",
    "s3_flavor",
    "s3_server",
    "s3_server_kind",
    "s3_storage_options",
]
