"""An embedded moto S3 server on 127.0.0.1, for the demo, tests and benchmarks.

Needs ``moto[server]`` (``pip install "fstransport[testing]"``).  moto's in-process
``mock_aws`` does not work with s3fs (aiobotocore); its server mode, over real HTTP, does.
"""

from __future__ import annotations

import logging
import urllib.request
from typing import Any

__all__ = ["REGION", "TEST_CREDENTIALS", "reset_moto", "start_moto_server", "storage_options_for"]

TEST_CREDENTIALS = {"key": "testing", "secret": "testing"}
REGION = "us-east-1"


def start_moto_server() -> tuple[Any, str]:
    """Start a moto S3 server on 127.0.0.1 (a free port); return ``(server, endpoint_url)``.

    Stop it with ``server.stop()``.  Raises ``ImportError`` when ``moto[server]`` is missing.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def reset_moto(endpoint_url: str) -> None:
    """Empty the moto server at `endpoint_url` (every bucket, object and upload)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def storage_options_for(endpoint_url: str) -> dict[str, Any]:
    """s3fs storage options for the S3 server at `endpoint_url` (moto's test credentials)."""
    return {
        **TEST_CREDENTIALS,
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": REGION},
    }
