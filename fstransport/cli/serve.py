"""``fstransport serve ROOT``: a receiver server writing incoming snapshots into ROOT."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from fstransport.cli.args import (
    add_endpoint_option,
    add_s3_tuning,
    positive_duration_arg,
    positive_size_arg,
    s3_tuning,
    storage_options,
)
from fstransport.cli.errors import UsageError
from fstransport.errors import ConfigurationError, StorageError
from fstransport.protocol.receiver import DEFAULT_MAX_SNAPSHOT_SIZE, ReceiverLimits
from fstransport.units import format_size

if TYPE_CHECKING:
    import ssl

__all__ = ["add_parser", "os_reason", "run"]

# create_app's defaults, repeated here so that --help does not import aiohttp
IDLE_TIMEOUT_HELP = "60s"
MAX_BUFFERED_HELP = "1.0 GiB"


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command to `commands` (argparse's subparsers)."""
    serve = commands.add_parser(
        "serve",
        parents=parents,
        help="run a receiver server that writes incoming snapshots into ROOT",
        description="Receive snapshots over HTTP into ROOT (any fsspec URL, s3:// included). "
        "Prints the address it listens on, then serves until interrupted.",
    )
    serve.add_argument("root", metavar="ROOT", help="where received snapshots are installed")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    serve.add_argument("--token", metavar="T", help="require 'Authorization: Bearer T'")
    serve.add_argument(
        "--certfile", metavar="PEM", help="serve HTTPS with this certificate (chain) in PEM"
    )
    serve.add_argument(
        "--keyfile",
        metavar="PEM",
        help="the private key of --certfile (default: in --certfile itself)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=positive_duration_arg,
        metavar="DURATION",
        help="a connection must send a request's headers within this, e.g. 30s or 2m; a body "
        "slower than 64KiB/s over it gets 408; a transfer with no chunk for this long gives "
        f"back its slot, keeping its partial data (default {IDLE_TIMEOUT_HELP})",
    )
    serve.add_argument(
        "--max-buffered",
        type=positive_size_arg,
        metavar="SIZE",
        help="chunk bodies held at once, e.g. 512MiB; requests beyond it get 503 and are "
        f"retried by their senders (default {MAX_BUFFERED_HELP})",
    )
    serve.add_argument(
        "--max-snapshot-size",
        type=positive_size_arg,
        default=DEFAULT_MAX_SNAPSHOT_SIZE,
        metavar="SIZE",
        help="refuse snapshots larger than this, and chunks reaching beyond it "
        f"(default {format_size(DEFAULT_MAX_SNAPSHOT_SIZE)})",
    )
    serve.add_argument(
        "--access-log",
        metavar="PATH",
        help="append the transfer lines (finished, failed, refused) to PATH instead of "
        "standard output (default: --log-file if given)",
    )
    add_endpoint_option(serve)
    add_s3_tuning(serve, "ROOT")
    serve.set_defaults(run=run, parser=serve)


async def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    import logging

    server_log = logging.getLogger("fstransport.server")
    if not args.quiet and server_log.getEffectiveLevel() > logging.WARNING:
        server_log.setLevel(logging.WARNING)  # every refused request is one line, by default
    tls = _server_tls(args.certfile, args.keyfile)
    options = {**storage_options(args, args.root), **s3_tuning(args, args.root)}
    limits: dict[str, Any] = {"limits": ReceiverLimits(max_snapshot_size=args.max_snapshot_size)}
    if args.idle_timeout is not None:
        limits["idle_timeout"] = args.idle_timeout
    if args.max_buffered is not None:
        limits["max_buffered"] = args.max_buffered
    access_file = None
    access_path = args.access_log or args.log_file  # rclone: --log-file takes serve's lines
    if access_path:
        try:
            access_file = open(access_path, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230
        except OSError as exc:
            flag = "--access-log" if args.access_log else "--log-file"
            raise UsageError(f"{flag}: cannot open {access_path}: {os_reason(exc)}") from None
    if access_file is not None or not args.quiet:
        from fstransport.cli.access import AccessLog

        limits["on_request"] = AccessLog(access_file or sys.stdout)
    try:
        await _serve(args, tls, options, limits)
    finally:
        if access_file is not None:
            access_file.close()
    return 0


async def _serve(
    args: argparse.Namespace,
    tls: ssl.SSLContext | None,
    options: dict[str, Any],
    limits: dict[str, Any],
) -> None:
    import asyncio

    from aiohttp import web

    from fstransport.server import create_app, make_runner
    from fstransport.storage.store import FsspecSnapshotStore

    scheme = "https" if tls is not None else "http"
    async with FsspecSnapshotStore(args.root, **options) as store:
        app = create_app(store, token=args.token, **limits)
        runner = make_runner(app)
        await runner.setup()
        try:
            # reuse_address: a server restarted on the port of one that died binds at once,
            # whatever connections of the old one linger in TIME_WAIT
            site = web.TCPSite(runner, args.host, args.port, ssl_context=tls, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise StorageError(f"{args.host}:{args.port}", "listen on", exc) from exc
            host, port = runner.addresses[0][:2]
            print(
                f"fstransport: receiving into {args.root} on {scheme}://{host}:{port}", flush=True
            )
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _server_tls(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """The server's TLS context for ``--certfile``/``--keyfile``, or None for plain HTTP."""
    import ssl

    if certfile is None:
        if keyfile is not None:
            raise UsageError("--keyfile needs --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except OSError as exc:  # ssl.SSLError included
        files = certfile if keyfile is None else f"{certfile} and {keyfile}"
        raise ConfigurationError(
            f"cannot load the TLS certificate and key from {files}: {os_reason(exc)}"
        ) from None
    return context


def os_reason(exc: OSError) -> str:
    """'No such file or directory' rather than '[Errno 2] No such file or directory'."""
    import ssl

    if isinstance(exc, ssl.SSLError) or not exc.strerror:
        return str(exc)
    return str(exc.strerror)
