"""``fstransport ship SRC DST``: copy one file through the transport, in process or ``--via``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fstransport.cli.args import (
    add_endpoint_option,
    add_s3_tuning,
    add_transfer_options,
    is_s3_url,
    s3_tuning,
    storage_options,
)
from fstransport.cli.report import print_report
from fstransport.cli.serve import os_reason
from fstransport.errors import ConfigurationError
from fstransport.options import TransferOptions

if TYPE_CHECKING:
    import ssl

    from fstransport.network.base import Network
    from fstransport.network.http import HttpNetwork

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add the ``ship`` command to `commands` (argparse's subparsers)."""
    ship_cmd = commands.add_parser(
        "ship",
        help="copy SRC to DST (any fsspec URLs) through the transport",
        description="Copy one file between fsspec locations (local paths, memory://, s3://, ...) "
        "in verified chunks. DST appears only once the whole copy is verified.",
    )
    ship_cmd.add_argument("src", metavar="SRC", help="source URL or path")
    ship_cmd.add_argument("dst", metavar="DST", help="target URL or path (a file name)")
    add_transfer_options(ship_cmd)
    add_endpoint_option(ship_cmd)
    ship_cmd.add_argument(
        "--via", metavar="URL", help="ship through the receiver server at URL (fstransport serve)"
    )
    ship_cmd.add_argument("--token", metavar="T", help="bearer token for --via")
    ship_cmd.add_argument(
        "--cafile",
        metavar="PEM",
        help="verify an https:// --via server against the CA certificate(s) in PEM "
        "(default: the system's trusted CAs)",
    )
    ship_cmd.add_argument(
        "--checksum",
        metavar="crc32c:HEX",
        help="SRC's CRC32C, if known: the receiver verifies it, and resumes what an earlier, "
        "interrupted ship of the same data left (through --via, only a named checksum resumes)",
    )
    add_s3_tuning(ship_cmd, "DST")
    ship_cmd.set_defaults(run=run)


def _client_tls(via: str, cafile: str | None) -> ssl.SSLContext | None:
    """The client's TLS context for ``--cafile`` (None: aiohttp's default, the system's CAs)."""
    if cafile is None:
        return None
    if not via.lower().startswith("https://"):
        raise ConfigurationError(f"--cafile needs an https:// --via URL, got {via!r}")
    import ssl

    try:
        return ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigurationError(
            f"cannot load CA certificates from {cafile}: {os_reason(exc)}"
        ) from None


def _check_via(via: str) -> str:
    """`via` if it is an http(s) URL naming a host; else a one-line `ConfigurationError`."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(via)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(f"--via {via!r} is not a usable URL: {exc}") from None
    if not ok:
        raise ConfigurationError(
            f"--via needs an http:// or https:// URL with a host, e.g. http://receiver:8470; "
            f"got {via!r}"
        )
    return via


async def _size_of(url: str, options: dict[str, Any]) -> int | None:
    """The size of the file at `url` for the progress bar, if it can be had cheaply."""
    if is_s3_url(url):
        return None  # not worth a second S3 client: the bar shows bytes and rate
    import asyncio

    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
        return int(await asyncio.to_thread(fs.size, path))
    except Exception:  # the transfer itself reports a missing source properly
        return None


async def run(args: argparse.Namespace) -> int:
    """Ship SRC to DST; print the report."""
    import json

    from fstransport.errors import UntrustedPeer
    from fstransport.progress import ProgressBar
    from fstransport.transfer import ship

    options = TransferOptions(chunk_size=args.chunk_size, max_in_flight=args.window)
    http: HttpNetwork | None = None
    network: Network | None = None
    if args.via:
        tls = _client_tls(_check_via(args.via), args.cafile)
        from fstransport.network.http import HttpNetwork

        network = http = HttpNetwork(args.via, token=args.token, ssl=tls)
    elif args.cafile is not None or args.token is not None:
        raise ConfigurationError("--token and --cafile are for shipping --via a server")
    store_options = s3_tuning(args, args.dst)
    if store_options and args.via:
        raise ConfigurationError(
            "--part-size and --upload-concurrency set the store of an in-process copy; with "
            "--via, give them to the server (fstransport serve ROOT --part-size ...)"
        )
    source_options = storage_options(args, args.src)
    bar = ProgressBar(await _size_of(args.src, source_options))
    try:
        report = await ship(
            args.src,
            args.dst,
            options=options,
            network=network,
            source_options=source_options,
            target_options=storage_options(args, args.dst),
            store_options=store_options,
            progress=bar.update,
            checksum=args.checksum,
        )
    except UntrustedPeer as exc:
        raise ConfigurationError(f"{exc}; give the CA that signed it with --cafile PEM") from exc
    finally:
        bar.close()
        if http is not None:
            await http.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, options, verified=None)
    return 0
