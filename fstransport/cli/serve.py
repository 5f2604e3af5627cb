"""``fstransport serve ROOT``: a receiver server writing incoming snapshots into ROOT."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from fstransport.cli.args import (
    TOKEN_ENV,
    add_endpoint_option,
    add_s3_tuning,
    min_body_rate_arg,
    port_arg,
    positive_duration_arg,
    positive_int,
    positive_size_arg,
    s3_tuning,
    storage_options,
    token_from,
)
from fstransport.cli.errors import UsageError
from fstransport.errors import ConfigurationError, StorageError

if TYPE_CHECKING:
    import ssl

    from fstransport.storage.store import FsspecSnapshotStore

__all__ = ["add_parser", "check_root", "os_reason", "run", "server_token"]

# create_app's defaults, repeated here so that --help does not import aiohttp
IDLE_TIMEOUT_HELP = "60s"
MAX_BUFFERED_HELP = "1.0 GiB"
MAX_SNAPSHOT_SIZE_HELP = "256.0 GiB"
"""`ReceiverLimits`' default `max_snapshot_size`, as --help shows it (importing the protocol
module for it would load crc32c, whose import costs a third of --help's time)."""


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command to `commands` (argparse's subparsers)."""
    serve = commands.add_parser(
        "serve",
        parents=parents,
        help="run a receiver server that writes incoming snapshots into ROOT",
        description="Receive snapshots over HTTP into ROOT (any fsspec URL, s3:// included; "
        "a local ROOT must exist and be writable). Every request needs the bearer token "
        f"(--token-file PATH, ${TOKEN_ENV} or --token T), unless --no-auth says otherwise. "
        "Prints the address it listens on, then serves until interrupted (Ctrl-C: exit 130, "
        "SIGTERM: exit 143).",
    )
    serve.add_argument("root", metavar="ROOT", help="where received snapshots are installed")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument(
        "--port", type=port_arg, default=0, help="port, 0 to 65535 (default 0: any free port)"
    )
    serve.add_argument(
        "--token",
        metavar="T",
        help=f"require 'Authorization: Bearer T' (visible in ps: prefer --token-file or "
        f"${TOKEN_ENV}, which is used when neither --token nor --token-file is given)",
    )
    serve.add_argument(
        "--token-file", metavar="PATH", help="read the required bearer token from PATH"
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="accept snapshots from anyone who can connect (no token); only on a loopback "
        "--host unless --allow-remote-no-auth is given too",
    )
    serve.add_argument(
        "--allow-remote-no-auth",
        action="store_true",
        help="let --no-auth listen on a non-loopback --host (anyone on the network may write)",
    )
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
        "slower than --min-body-rate over it gets 408; a transfer with no chunk for this long "
        f"gives back its slot, keeping its partial data (default {IDLE_TIMEOUT_HELP})",
    )
    serve.add_argument(
        "--max-buffered",
        type=positive_size_arg,
        metavar="SIZE",
        help="chunk bodies held at once, e.g. 512MiB; requests beyond it get 503 and are "
        f"retried by their senders (default {MAX_BUFFERED_HELP})",
    )
    serve.add_argument(
        "--min-body-rate",
        type=min_body_rate_arg,
        metavar="RATE",
        help="a request body slower than RATE on average over each --idle-timeout gets 408 and "
        "is retried by its sender, e.g. 16KiB or 1Mbit; 0 cuts off only a body that stops "
        "(default 64KiB)",
    )
    serve.add_argument(
        "--keep-delta-state",
        action="store_true",
        help="keep under ROOT/.fstransport what makes later deltas cheaper: the id of the "
        "snapshot installed last (still a base after a restart) and the block maps of bases",
    )
    serve.add_argument(
        "--max-connections-per-peer",
        type=positive_int,
        metavar="N",
        help="connections one address may hold open; beyond it its oldest idle one is closed "
        "(default: half of what the descriptor limit allows)",
    )
    serve.add_argument(
        "--max-snapshot-size",
        type=positive_size_arg,
        metavar="SIZE",
        help="refuse snapshots larger than this, and chunks reaching beyond it "
        f"(default {MAX_SNAPSHOT_SIZE_HELP})",
    )
    serve.add_argument(
        "--access-log",
        metavar="PATH",
        help="append the transfer lines (finished, failed, refused) to PATH instead of "
        "standard output (default: --log-file if given)",
    )
    add_endpoint_option(serve)
    serve.add_argument(
        "--relay-endpoint-url",
        metavar="URL",
        help="fetch chunks a sender staged in a bucket (ship --relay) from this S3 endpoint "
        "(credentials from the environment, as for boto)",
    )
    serve.add_argument(
        "--relay-prefix",
        metavar="URL",
        action="append",
        help="fetch staged chunks (ship --relay) only from under this staging URL, e.g. "
        "s3://bucket/stage; repeatable. Without it and without --relay-endpoint-url, senders "
        "must send the bytes themselves (a relay falls back to that)",
    )
    serve.add_argument(
        "--no-prefill",
        action="store_true",
        help="a local ROOT: copy a delta's base at install, not while the sender plans",
    )
    add_s3_tuning(serve, "ROOT")
    serve.set_defaults(run=run, parser=serve)


def store_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `FsspecSnapshotStore` options of ``serve``'s ROOT."""
    options = {**storage_options(args, args.root), **s3_tuning(args, args.root)}
    return {**options, "prefill": not args.no_prefill}


async def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    import logging

    token = server_token(args)
    server_log = logging.getLogger("fstransport.server")
    if not args.quiet and server_log.getEffectiveLevel() > logging.WARNING:
        server_log.setLevel(logging.WARNING)  # every refused request is one line, by default
    tls = _server_tls(args.certfile, args.keyfile)
    options = store_settings(args)
    from fstransport.protocol.receiver import ReceiverLimits

    limits: dict[str, Any] = {"limits": ReceiverLimits()}
    if args.max_snapshot_size is not None:
        limits["limits"] = ReceiverLimits(max_snapshot_size=args.max_snapshot_size)
    if args.idle_timeout is not None:
        limits["idle_timeout"] = args.idle_timeout
    if args.max_buffered is not None:
        limits["max_buffered"] = args.max_buffered
    if args.min_body_rate is not None:
        limits["min_body_rate"] = args.min_body_rate
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
        await _serve(args, token, tls, options, limits)
    finally:
        if access_file is not None:
            access_file.close()
    return 0


async def _serve(
    args: argparse.Namespace,
    token: str | None,
    tls: ssl.SSLContext | None,
    options: dict[str, Any],
    limits: dict[str, Any],
) -> None:
    import asyncio
    import logging

    from aiohttp import web

    from fstransport.http import create_app, make_runner
    from fstransport.storage.store import FsspecSnapshotStore

    scheme = "https" if tls is not None else "http"
    async with FsspecSnapshotStore(args.root, **options) as store:
        await check_root(store, args.root)
        server_log = logging.getLogger("fstransport.server")
        level = server_log.level
        server_log.setLevel(logging.ERROR)  # no_auth's warning: ours below names the address
        try:
            receiver = _relay_receiver(args, store, limits)
            app = create_app(
                store,
                token=token,
                no_auth=token is None,
                receiver=receiver,
                long_lived=args.keep_delta_state,
                **limits,
            )
        finally:
            server_log.setLevel(level)
        runner = make_runner(app, max_connections_per_peer=args.max_connections_per_peer)
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
            if token is None:
                print(
                    f"fstransport: warning: --no-auth: anyone who can connect to {host}:{port} "
                    "may write snapshots into ROOT",
                    file=sys.stderr,
                    flush=True,
                )
            print(
                f"fstransport: receiving into {args.root} on {scheme}://{host}:{port}", flush=True
            )
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _relay_receiver(args: argparse.Namespace, store: Any, limits: dict[str, Any]) -> Any:
    """The server's receiver when it fetches staged chunks (``--relay-endpoint-url``,
    ``--relay-prefix``); None: `create_app` makes one that takes only bytes."""
    if args.relay_endpoint_url is None and not args.relay_prefix:
        return None
    from fstransport.cli.probe import s3_cli_options
    from fstransport.receiver import Receiver

    relay_options: dict[str, Any] = {}
    if args.relay_endpoint_url is not None:
        relay_options = s3_cli_options({"client_kwargs": {"endpoint_url": args.relay_endpoint_url}})
    return Receiver(
        store,
        limits=limits["limits"],
        idle_timeout=limits.get("idle_timeout"),
        vote_scope="snapshot",
        relay_options=relay_options,
        relay_prefixes=args.relay_prefix,
        long_lived=args.keep_delta_state,
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def server_token(args: argparse.Namespace) -> str | None:
    """The token ``serve`` requires, or None for an explicit ``--no-auth`` (on a loopback
    address, or with ``--allow-remote-no-auth``); anything unclear is a `UsageError`."""
    import os

    if args.allow_remote_no_auth and not args.no_auth:
        raise UsageError("--allow-remote-no-auth goes with --no-auth")
    if not args.no_auth:
        token = token_from(args)
        if token is None:
            raise UsageError(
                f"serve needs a token: --token-file PATH, ${TOKEN_ENV}, or --token T "
                "(or --no-auth to accept snapshots from anyone who can connect)"
            )
        return token
    if args.token is not None or args.token_file is not None:
        raise UsageError("--no-auth and a token (--token, --token-file) contradict each other")
    if os.environ.get(TOKEN_ENV) is not None:
        raise UsageError(f"--no-auth, but ${TOKEN_ENV} is set: unset it, or drop --no-auth")
    if not _is_loopback(args.host) and not args.allow_remote_no_auth:
        raise UsageError(
            f"--no-auth on {args.host or 'every address'}, which is not a loopback address: "
            "anyone who can connect could write into ROOT; give a token, or add "
            "--allow-remote-no-auth if that is really meant"
        )
    return None


async def check_root(store: FsspecSnapshotStore, url: str) -> None:
    """`UsageError` unless the store's ROOT exists and takes a file: a local folder (one empty
    file made and removed in it), or a bucket on S3 (an empty object under
    ``ROOT/.fstransport/``, made and removed).  Other filesystems are not probed."""
    import asyncio
    import os
    import tempfile
    import uuid

    from fstransport.storage.backends.s3 import is_s3

    fs, root = store.fs, store.root
    if is_s3(fs):
        probe = f"{root}/.fstransport/probe-{uuid.uuid4().hex}"
        try:
            await asyncio.to_thread(fs.pipe_file, probe, b"")
            await asyncio.to_thread(fs.rm_file, probe)
        except Exception as exc:  # s3fs's and botocore's errors: all of them mean "not usable"
            raise UsageError(f"cannot write into ROOT {url}: {_exc_reason(exc)}") from None
        return
    if not getattr(fs, "local_file", False) and "file" not in _protocols(fs):
        return

    def probe_local() -> bool:
        if not os.path.isdir(root):
            return False
        fd, name = tempfile.mkstemp(prefix=".fstransport-probe-", dir=root)
        os.close(fd)
        os.unlink(name)
        return True

    try:
        if not await asyncio.to_thread(probe_local):
            raise UsageError(f"ROOT {url} does not exist or is not a folder (create it first)")
    except OSError as exc:
        raise UsageError(f"cannot write into ROOT {url}: {os_reason(exc)}") from None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _exc_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return os_reason(exc)
    return f"{type(exc).__name__}: {exc}"


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
