"""An embedded moto S3 server on 127.0.0.1, for the demo, tests and benchmarks.

Needs ``moto[server]`` (``pip install "fstransport[testing]"``).  moto's in-process
``mock_aws`` does not work with s3fs (aiobotocore); its server mode, over real HTTP, does.
"""

from __future__ import annotations

import contextlib
import logging
import select
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

__all__ = [
    "REGION",
    "TEST_CREDENTIALS",
    "moto_process",
    "reset_moto",
    "start_moto_server",
    "storage_options_for",
]

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


@contextlib.contextmanager
def moto_process(timeout: float = 60.0) -> Iterator[str]:
    """A moto S3 server in a child process (so that its CPU time and memory are not the
    caller's); yields its endpoint URL and stops it on exit.

    The child is ``python -m fstransport.moto_server``: it prints ``host port`` once it listens
    and serves until its stdin closes, so it also ends when this process dies.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "fstransport.moto_server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if len(line.split()) != 2:
            raise RuntimeError(f"the moto server did not start within {timeout:g} s")
        host, port = line.split()
        yield f"http://{host}:{port}"
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _usage(endpoint: str) -> str:
    """How to use the server at `endpoint`: printed on stderr when it starts."""
    key, secret = TEST_CREDENTIALS["key"], TEST_CREDENTIALS["secret"]
    return (
        f"moto S3 server on {endpoint} (in memory: every bucket vanishes when it stops)\n"
        f"  credentials: AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} "
        f"(any pair works), region {REGION}\n"
        "  it starts empty: create a bucket first, e.g.\n"
        f"    AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} "
        f"aws --endpoint-url {endpoint} s3 mb s3://demo\n"
        f"    (or: python -c \"import s3fs; s3fs.S3FileSystem(key='{key}', secret='{secret}', "
        f"endpoint_url='{endpoint}').mkdir('demo')\")\n"
        "  then, e.g.:\n"
        f"    AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} "
        f"fstransport ship FILE s3://demo/ --endpoint-url {endpoint}\n"
        "  stop it with Ctrl-C or by closing its standard input"
    )


def _serve_until_stdin_closes() -> int:
    """Serve until stdin closes (0) or Ctrl-C (130, quietly: stopping it is what Ctrl-C is for)."""
    try:
        server, endpoint = start_moto_server()
    except KeyboardInterrupt:
        return 130
    try:
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        print(host, port, flush=True)
        print(_usage(endpoint), file=sys.stderr, flush=True)
        sys.stdin.read()
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_serve_until_stdin_closes())
