"""The ``fstransport`` command: ``demo``, ``ship``, ``serve``, ``bench`` and ``cleanup``.

User errors (a missing file, a bad size, an unreachable target) are printed as one line on
stderr with exit code 1 — never a traceback.  ``--debug`` shows the traceback anyway.  A command
line that cannot run as given (a bad flag, an empty token, an unusable ROOT for ``serve``) exits
with 2, as argparse's usage errors do.  Ctrl-C (SIGINT) exits with 130 and SIGTERM with 143
(128 + the signal's number), both after the same clean-up: an interrupted ``ship`` leaves no
partial data and no S3 multipart upload behind.  A reader that closes stdout early (``| head``)
ends the output quietly; the exit code stays the command's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import select
import shutil
import signal
import ssl
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from aiohttp import web

from fstransport import __version__
from fstransport.bench import (
    DEFAULT_CHUNK_SIZES,
    DEFAULT_WINDOWS,
    BenchCell,
    BenchPlan,
    Kind,
    check_output,
    plot_result,
    run_bench,
    write_json,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.errors import (
    ConfigurationError,
    FstransportError,
    HigherVote,
    StorageError,
    UntrustedPeer,
)
from fstransport.messages import Vote
from fstransport.network.base import Network
from fstransport.network.http import HttpNetwork
from fstransport.network.wire import check_token
from fstransport.options import MiB, TransferOptions
from fstransport.progress import ProgressBar
from fstransport.server import IDLE_TIMEOUT, MAX_BUFFERED, create_app
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage.s3 import is_s3, open_s3
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import TransferReport, ship
from fstransport.units import (
    format_rate,
    format_size,
    parse_bandwidth,
    parse_duration,
    parse_size,
)

__all__ = ["TOKEN_ENV", "UsageError", "main"]

_V = TypeVar("_V")

DEMO_SIZE = 64 * MiB
DEMO_BUCKET = "fstransport-demo"
TOKEN_ENV = "FSTRANSPORT_TOKEN"
"""The environment variable ``serve`` and ``ship --via`` take the bearer token from (unless
``--token`` or ``--token-file`` is given): unlike ``--token``, it does not show in ``ps``."""
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

DEMO_NEEDS_MOTO = (
    "fstransport: error: the demo runs an embedded moto S3 server; "
    "install it with: pip install 'fstransport[testing]'"
)


def _argument(parse: Callable[[str], _V]) -> Callable[[str], _V]:
    """`parse` as an argparse type: its `ConfigurationError` becomes argparse's usage error."""

    def convert(text: str) -> _V:
        try:
            return parse(text)
        except FstransportError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


_size_arg = _argument(parse_size)
_duration_arg = _argument(parse_duration)
_bandwidth_arg = _argument(parse_bandwidth)


class UsageError(ConfigurationError):
    """A command line that cannot run as given: one line on stderr, exit code 2."""


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, not {text!r}")
    return int(text)


def _vote(text: str) -> Vote:
    """``TERM[,NODE[,COMMITTED]]``: e.g. ``7``, ``7,3`` or ``7,3,1`` (committed is 0 or 1)."""
    parts = [part.strip() for part in text.split(",")]
    usage = f"a vote is TERM[,NODE[,COMMITTED]], e.g. 7 or 7,3 or 7,3,1; not {text!r}"
    if not 1 <= len(parts) <= 3:
        raise argparse.ArgumentTypeError(usage)
    if not all(part.isascii() and part.isdigit() and len(part) <= 20 for part in parts):
        raise argparse.ArgumentTypeError(usage)
    if len(parts) == 3 and parts[2] not in ("0", "1"):
        raise argparse.ArgumentTypeError(usage)
    node = int(parts[1]) if len(parts) > 1 else 0
    return Vote(int(parts[0]), node, len(parts) == 3 and parts[2] == "1")


def _format_vote(vote: Vote) -> str:
    return f"{vote.term},{vote.node_id},{int(vote.committed)}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_transfer_options(parser: argparse.ArgumentParser) -> None:
    defaults = TransferOptions()
    parser.add_argument(
        "--chunk-size",
        type=_size_arg,
        default=defaults.chunk_size,
        metavar="SIZE",
        help=f"bytes per chunk, e.g. 256KiB or 8MiB (default {format_size(defaults.chunk_size)})",
    )
    parser.add_argument(
        "--window",
        type=_positive_int,
        default=defaults.max_in_flight,
        metavar="N",
        help=f"chunks in flight at once (default {defaults.max_in_flight})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _is_s3_url(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def _add_s3_tuning(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument(
        "--part-size",
        type=_size_arg,
        metavar="SIZE",
        help=f"S3 part size for an s3:// {where}, at least 5MiB (default 8MiB; keep the "
        "senders' --chunk-size a multiple of it so chunks become parts without a copy)",
    )
    parser.add_argument(
        "--upload-concurrency",
        type=_positive_int,
        metavar="N",
        help=f"S3 parts uploaded at once for an s3:// {where} (default 4)",
    )


def _s3_tuning(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """The store options ``--part-size`` and ``--upload-concurrency`` give, for the store at
    `url`; `ConfigurationError` if they are given for a store that is not on S3."""
    tuning = {
        name: value
        for name, value in [
            ("part_size", args.part_size),
            ("upload_concurrency", args.upload_concurrency),
        ]
        if value is not None
    }
    if tuning and not _is_s3_url(url):
        raise ConfigurationError(
            f"--part-size and --upload-concurrency are for s3:// stores, not {url}"
        )
    return tuning


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fstransport",
        description="Ship large snapshots in verified chunks between fsspec locations.",
    )
    parser.add_argument("--version", action="version", version=f"fstransport {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="ship a generated snapshot memory:// -> S3 (embedded moto) -> local file",
        description="Generate a snapshot in memory://, ship it into a bucket on an embedded moto "
        "S3 server and from there to a local file, verify both hops and print a report. "
        "Needs no cloud account and no setup.",
    )
    demo.add_argument(
        "--size",
        type=_size_arg,
        default=DEMO_SIZE,
        metavar="SIZE",
        help="snapshot size (default 64MiB)",
    )
    demo.add_argument(
        "--target",
        metavar="PATH",
        help="where to write the copy (default: a temporary folder, removed after)",
    )
    _add_transfer_options(demo)

    ship_cmd = commands.add_parser(
        "ship",
        help="copy SRC to DST (any fsspec URLs) through the transport",
        description="Copy one file between fsspec locations (local paths, memory://, s3://, ...) "
        "in verified chunks. DST appears only once the whole copy is verified.",
    )
    ship_cmd.add_argument("src", metavar="SRC", help="source URL or path")
    ship_cmd.add_argument("dst", metavar="DST", help="target URL or path (a file name)")
    _add_transfer_options(ship_cmd)
    _add_endpoint_option(ship_cmd)
    ship_cmd.add_argument(
        "--via", metavar="URL", help="ship through the receiver server at URL (fstransport serve)"
    )
    ship_cmd.add_argument(
        "--token",
        metavar="T",
        help=f"bearer token for --via (visible in ps: prefer --token-file or ${TOKEN_ENV})",
    )
    ship_cmd.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"read the bearer token for --via from PATH (default: ${TOKEN_ENV}, if set)",
    )
    ship_cmd.add_argument(
        "--vote",
        type=_vote,
        default=None,
        metavar="TERM[,NODE[,C]]",
        help="the sender's vote, e.g. 7,3 (default 0,0): a receiver refuses a vote lower than "
        "the one it holds (fstransport serve: per snapshot id), and adopts a higher one",
    )
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
    _add_s3_tuning(ship_cmd, "DST")

    serve = commands.add_parser(
        "serve",
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
        "--port", type=_port, default=0, help="port, 0 to 65535 (default 0: any free port)"
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
        type=_duration_arg,
        default=IDLE_TIMEOUT,
        metavar="DURATION",
        help=f"drop a request whose body sends nothing for this long, e.g. 30s or 2m "
        f"(default {IDLE_TIMEOUT:g}s)",
    )
    serve.add_argument(
        "--max-buffered",
        type=_size_arg,
        default=MAX_BUFFERED,
        metavar="SIZE",
        help="chunk bodies held at once, e.g. 512MiB; requests beyond it get 503 and are "
        f"retried by their senders (default {format_size(MAX_BUFFERED)})",
    )
    _add_endpoint_option(serve)
    _add_s3_tuning(serve, "ROOT")

    _add_bench_parser(commands)

    cleanup = commands.add_parser(
        "cleanup",
        help="remove abandoned partial transfers under a store's ROOT",
        description="Remove partial data that transfers into ROOT abandoned more than "
        "--older-than ago: partial files and their journals, and on S3 incomplete multipart "
        "uploads. Installed snapshots are never touched.",
    )
    cleanup.add_argument("root", metavar="ROOT", help="the store's root URL or path")
    cleanup.add_argument(
        "--older-than",
        type=_duration_arg,
        default=24 * 3600.0,
        metavar="AGE",
        help="only what was last touched longer ago than this, e.g. 30m, 6h, 2d (default 1d)",
    )
    cleanup.add_argument("--json", action="store_true", help="print what was removed as JSON")
    _add_endpoint_option(cleanup)
    return parser


def _add_endpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint for s3:// URLs (credentials come from the environment, as for boto)",
    )


def _storage_options(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """s3fs options from the command line, for `url` if it is an S3 URL."""
    endpoint = getattr(args, "endpoint_url", None)
    if not endpoint or not _is_s3_url(url):
        return {}
    return {"client_kwargs": {"endpoint_url": endpoint}}


def _print_report(
    report: TransferReport, options: TransferOptions, *, verified: str | None
) -> None:
    chunk = format_size(options.chunk_size)
    chunks = f"{report.chunks_sent} x up to {chunk}, window {options.max_in_flight}"
    if report.retries or report.rewinds:
        chunks += f" ({report.retries} retries, {report.rewinds} rewinds)"
    lines = [
        f"{report.source} -> {report.target}",
        f"  size        {format_size(report.size)} ({report.size} bytes)",
        f"  chunks      {chunks}",
        f"  time        {report.elapsed:.3f} s",
        f"  throughput  {format_rate(report.throughput)}",
        f"  checksum    {report.checksum}",
    ]
    if verified:
        lines.append(f"  verified    {verified}")
    print("\n".join(lines))


def _demo_target(target: str | None) -> tuple[str | None, str]:
    """(temporary folder to remove afterwards or None, target path) for the demo's copy."""
    if target:
        return None, str(Path(target).absolute())
    workdir = tempfile.mkdtemp(prefix="fstransport-demo-")
    return workdir, str(Path(workdir, "snapshot.bin"))


async def _demo(args: argparse.Namespace) -> int:
    try:
        from fstransport.moto_server import start_moto_server, storage_options_for
    except ImportError:  # pragma: no cover - depends on the installation
        print(DEMO_NEEDS_MOTO, file=sys.stderr)
        return 1
    try:
        server, endpoint = await asyncio.to_thread(start_moto_server)
    except ImportError:
        print(DEMO_NEEDS_MOTO, file=sys.stderr)
        return 1
    memory = fsspec.filesystem("memory")
    source_url = "memory://fstransport-demo/snapshot.bin"
    workdir, target = _demo_target(args.target)
    try:
        s3_options = storage_options_for(endpoint)
        bucket_url = f"s3://{DEMO_BUCKET}/snapshot.bin"
        await _create_bucket(s3_options, DEMO_BUCKET)
        data = random.Random(20261126).randbytes(args.size)
        memory.pipe_file(source_url, data)
        expected = format_checksum(chunk_crc(data))
        options = TransferOptions(chunk_size=args.chunk_size, max_in_flight=args.window)
        hops = [
            await ship(source_url, bucket_url, options=options, target_options=s3_options),
        ]
        in_bucket = await _read_s3(s3_options, bucket_url)
        hops.append(await ship(bucket_url, target, options=options, source_options=s3_options))
        copied = await asyncio.to_thread(Path(target).read_bytes)
        checks = [
            (in_bucket == data, f"{bucket_url} (read back with s3fs) equals the source"),
            (copied == data, f"{target} equals the source"),
            (all(h.checksum == expected for h in hops), f"both hops report CRC32C {expected}"),
        ]
        failed = [what for ok, what in checks if not ok]
        if failed:
            print(f"fstransport: demo verification failed: {failed[0]}", file=sys.stderr)
            return 1
        if args.json:
            report = {
                "hops": [h.to_dict() for h in hops],
                "s3_endpoint": endpoint,
                "verified": True,
            }
            print(json.dumps(report, indent=2))
        else:
            print(f"moto S3 server on {endpoint}, bucket {DEMO_BUCKET}")
            for hop in hops:
                _print_report(hop, options, verified=None)
            print("verified:\n" + "\n".join(f"  {what}" for _, what in checks))
        return 0
    finally:
        if memory.exists(source_url):
            memory.rm_file(source_url)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        await asyncio.to_thread(server.stop)


async def _create_bucket(storage_options: dict[str, Any], bucket: str) -> None:
    s3 = await open_s3(storage_options)
    try:
        await s3._call_s3("create_bucket", Bucket=bucket)
    finally:
        await close_async_filesystem(s3)


async def _read_s3(storage_options: dict[str, Any], url: str) -> bytes:
    """The object's bytes, read with s3fs directly (not through fstransport's source)."""
    s3 = await open_s3(storage_options)
    try:
        data: bytes = await s3._cat_file(url)
        return data
    finally:
        await close_async_filesystem(s3)


async def _size_of(url: str, storage_options: dict[str, Any]) -> int | None:
    """The size of the file at `url` for the progress bar, if it can be had cheaply."""
    if _is_s3_url(url):
        return None  # not worth a second S3 client: the bar shows bytes and rate
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        return int(await asyncio.to_thread(fs.size, path))
    except Exception:  # the transfer itself reports a missing source properly
        return None


async def _cleanup(args: argparse.Namespace) -> int:
    async with FsspecSnapshotStore(args.root, **_storage_options(args, args.root)) as store:
        removed = await store.cleanup(older_than=args.older_than)
    if args.json:
        print(json.dumps({"root": args.root, "removed": removed}, indent=2))
    else:
        for what in removed:
            print(f"removed {what}")
        print(f"{len(removed)} abandoned partial transfer item(s) removed from {args.root}")
    return 0


def _token_from(args: argparse.Namespace) -> str | None:
    """The bearer token ``--token``, ``--token-file`` or ``$FSTRANSPORT_TOKEN`` gives (in that
    order; the first two together are refused), or None when none of them is given.  An empty
    or unusable token is a `UsageError`, never "no token"."""
    if args.token is not None and args.token_file is not None:
        raise UsageError("give the token with --token or with --token-file, not both")
    if args.token is not None:
        if not args.token:
            raise UsageError(f"--token is empty (is ${TOKEN_ENV} set?)")
        return _usable_token(args.token, "--token")
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                text = file.read(64 * 1024).strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = _os_reason(exc) if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read --token-file {args.token_file}: {why}") from None
        if not text:
            raise UsageError(f"--token-file {args.token_file} is empty")
        return _usable_token(text, f"the token in --token-file {args.token_file}")
    environ = os.environ.get(TOKEN_ENV)
    if environ is None:
        return None
    if not environ:
        raise UsageError(f"${TOKEN_ENV} is set but empty")
    return _usable_token(environ, f"${TOKEN_ENV}")


def _usable_token(token: str, what: str) -> str:
    try:
        return check_token(token, what)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _server_token(args: argparse.Namespace) -> str | None:
    """The token ``serve`` requires, or None for an explicit ``--no-auth`` (on a loopback
    address, or with ``--allow-remote-no-auth``); anything unclear is a `UsageError`."""
    if args.allow_remote_no_auth and not args.no_auth:
        raise UsageError("--allow-remote-no-auth goes with --no-auth")
    if not args.no_auth:
        token = _token_from(args)
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


async def _check_root(store: FsspecSnapshotStore, url: str) -> None:
    """`UsageError` unless the store's ROOT exists and takes a file: a local folder (one empty
    file made and removed in it), or a bucket on S3 (an empty object under
    ``ROOT/.fstransport/``, made and removed).  Other filesystems are not probed."""
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
        raise UsageError(f"cannot write into ROOT {url}: {_os_reason(exc)}") from None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _exc_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return _os_reason(exc)
    return f"{type(exc).__name__}: {exc}"


async def _serve(args: argparse.Namespace) -> int:
    token = _server_token(args)
    tls = _server_tls(args.certfile, args.keyfile)
    scheme = "https" if tls is not None else "http"
    options = {**_storage_options(args, args.root), **_s3_tuning(args, args.root)}
    async with FsspecSnapshotStore(args.root, **options) as store:
        app = create_app(
            store,
            token=token,
            no_auth=token is None,
            idle_timeout=args.idle_timeout,
            max_buffered=args.max_buffered,
        )
        await _check_root(store, args.root)
        runner = web.AppRunner(app)
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
    return 0


def _server_tls(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """The server's TLS context for ``--certfile``/``--keyfile``, or None for plain HTTP."""
    if certfile is None:
        if keyfile is not None:
            raise ConfigurationError("--keyfile needs --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except OSError as exc:  # ssl.SSLError included
        files = certfile if keyfile is None else f"{certfile} and {keyfile}"
        raise ConfigurationError(
            f"cannot load the TLS certificate and key from {files}: {_os_reason(exc)}"
        ) from None
    return context


def _client_tls(via: str, cafile: str | None) -> ssl.SSLContext | None:
    """The client's TLS context for ``--cafile`` (None: aiohttp's default, the system's CAs)."""
    if cafile is None:
        return None
    if not via.lower().startswith("https://"):
        raise ConfigurationError(f"--cafile needs an https:// --via URL, got {via!r}")
    try:
        return ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigurationError(
            f"cannot load CA certificates from {cafile}: {_os_reason(exc)}"
        ) from None


def _os_reason(exc: OSError) -> str:
    """'No such file or directory' rather than '[Errno 2] No such file or directory'."""
    if isinstance(exc, ssl.SSLError) or not exc.strerror:
        return str(exc)
    return str(exc.strerror)


def _check_via(via: str) -> str:
    """`via` if it is an http(s) URL naming a host; else a one-line `ConfigurationError`."""
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


class _Refused(FstransportError):
    """The receiver refused the transfer for a reason the user can act on (exit code 1)."""


async def _ship(args: argparse.Namespace) -> int:
    options = TransferOptions(chunk_size=args.chunk_size, max_in_flight=args.window)
    http: HttpNetwork | None = None
    network: Network | None = None
    if args.via:
        token = _token_from(args)
        tls = _client_tls(_check_via(args.via), args.cafile)
        network = http = HttpNetwork(args.via, token=token, ssl=tls)
    elif args.cafile is not None or args.token is not None or args.token_file is not None:
        raise ConfigurationError(
            "--token and --cafile are for shipping --via a server (and --token-file too)"
        )
    vote: Vote = args.vote or Vote(0, 0)
    store_options = _s3_tuning(args, args.dst)
    if store_options and args.via:
        raise ConfigurationError(
            "--part-size and --upload-concurrency set the store of an in-process copy; with "
            "--via, give them to the server (fstransport serve ROOT --part-size ...)"
        )
    source_options = _storage_options(args, args.src)
    bar = ProgressBar(await _size_of(args.src, source_options))
    try:
        report = await ship(
            args.src,
            args.dst,
            options=options,
            network=network,
            source_options=source_options,
            target_options=_storage_options(args, args.dst),
            store_options=store_options,
            progress=bar.update,
            checksum=args.checksum,
            vote=vote,
        )
    except UntrustedPeer as exc:
        raise ConfigurationError(f"{exc}; give the CA that signed it with --cafile PEM") from exc
    except HigherVote as exc:
        raise _Refused(
            f"{exc}; to replace what it holds, ship with --vote {_format_vote(exc.higher)} or "
            "higher"
        ) from exc
    finally:
        bar.close()
        if http is not None:
            await http.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report, options, verified=None)
    return 0


def _quiet_logging(debug: bool) -> None:
    """Errors only on stderr (retries are not errors: a failed transfer ends in one line of its
    own); with ``--debug`` also warnings and progress notes such as retries and resumes."""
    logger = logging.getLogger("fstransport")
    if not any(getattr(h, "_fstransport_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fstransport: %(levelname)s: %(message)s"))
        handler._fstransport_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if debug else logging.ERROR)


def _add_bench_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="sweep chunk sizes x windows for a source, target and link; name the best",
        description="Ship a generated snapshot once per chunk size and window, print "
        "throughput, chunks/s and peak memory per setting, and name the best one. The s3 kind "
        "runs an embedded moto server in its own process unless --bucket is given. "
        "Chunk sizes at or above the snapshot size are one chunk, so only the smallest runs.",
    )
    kinds = ["memory", "local", "file", "s3"]
    bench.add_argument("--source", choices=kinds, default="memory", help="(default memory)")
    bench.add_argument("--target", choices=kinds, default="memory", help="(default memory)")
    bench.add_argument(
        "--size",
        type=_size_arg,
        metavar="SIZE",
        help="snapshot size (default 64MiB; 32MiB over a simulated link)",
    )
    bench.add_argument(
        "--chunk-sizes",
        type=_list_arg(_size_arg),
        default=DEFAULT_CHUNK_SIZES,
        metavar="LIST",
        help="comma-separated (default 64KiB,256KiB,1MiB,4MiB,8MiB,16MiB,64MiB)",
    )
    bench.add_argument(
        "--windows",
        type=_list_arg(_positive_int),
        default=DEFAULT_WINDOWS,
        metavar="LIST",
        help="comma-separated chunks in flight (default 1,2,4,8,16,32)",
    )
    bench.add_argument("--rounds", type=_positive_int, default=1, help="copies per setting (1)")
    bench.add_argument(
        "--latency",
        type=_duration_arg,
        default=0.0,
        metavar="RTT",
        help="simulate a link with this round trip, e.g. 10ms (each way gets half)",
    )
    bench.add_argument(
        "--bandwidth",
        type=_bandwidth_arg,
        metavar="RATE",
        help="simulate a link of this speed, e.g. 1Gbit, 100Mbit or 200MB/s",
    )
    bench.add_argument("--dir", metavar="PATH", help="folder for local files (default: temp)")
    bench.add_argument("--bucket", help="use this S3 bucket instead of an embedded moto server")
    bench.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint of --bucket")
    bench.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write every measurement as JSON to PATH (no PATH: to stdout, instead of the table)",
    )
    bench.add_argument("--plot", metavar="PNG", help="draw MiB/s against chunk size into PNG")


def _list_arg(parse: Callable[[str], int]) -> Callable[[str], tuple[int, ...]]:
    def parse_list(text: str) -> tuple[int, ...]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}")
        return tuple(parse(item) for item in items)

    return parse_list


async def _bench(args: argparse.Namespace) -> int:
    def kind(name: str) -> Kind:
        return "file" if name == "local" else name  # type: ignore[return-value]

    plan = BenchPlan(
        source=kind(args.source),
        target=kind(args.target),
        size=args.size,
        chunk_sizes=args.chunk_sizes,
        windows=args.windows,
        rounds=args.rounds,
        latency=args.latency,
        bandwidth=args.bandwidth,
        directory=args.dir,
        endpoint_url=args.endpoint_url,
        bucket=args.bucket,
    )
    for path, option in ((args.plot, "--plot"), (args.json, "--json")):
        if path is not None and path != "-":
            check_output(path, option)
    show = sys.stderr.isatty()

    def progress(done: int, total: int, cell: BenchCell, seconds: float) -> None:
        if show:
            rate = format_rate(cell.size / seconds)
            size = format_size(cell.chunk_size)
            print(f"  [{done}/{total}] {size} x {cell.window}: {rate}", file=sys.stderr)

    if show:
        print(f"fstransport bench: {len(plan.cells()) * plan.rounds} copies", file=sys.stderr)
    result = await run_bench(plan, progress)
    if args.json == "-":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
        if args.json:
            write_json(result, args.json)
    if args.plot:
        plot_result(result, args.plot)
    return 0


class _Terminated(Exception):
    """SIGTERM arrived; the command was cancelled as Ctrl-C cancels it, and cleaned up."""


async def _until_terminated(
    run: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """`run(args)`, cancelled on SIGTERM exactly as asyncio cancels it on Ctrl-C, so that its
    clean-up runs (a ship aborts its S3 multipart upload, a server closes its connections);
    then `_Terminated`.  A second SIGTERM during the clean-up is ignored."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signalled: list[int] = []

    def on_sigterm() -> None:
        if not signalled and task is not None:
            signalled.append(signal.SIGTERM)
            task.cancel()

    # (not on Windows, nor outside the main thread: there SIGTERM keeps its default)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await run(args)
    except asyncio.CancelledError:
        if signalled:
            raise _Terminated() from None
        raise
    finally:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGTERM)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``fstransport ... | head``)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that nothing (not even the flush at exit) writes into the
    closed pipe again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    _quiet_logging(args.debug)
    commands = {"demo": _demo, "ship": _ship, "cleanup": _cleanup, "serve": _serve}
    run = {**commands, "bench": _bench}[args.command]
    try:
        return asyncio.run(_until_terminated(run, args))
    except KeyboardInterrupt:
        print("fstransport: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("fstransport: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        if args.debug or not _stdout_reader_gone():
            raise
        # the reader of our output went away (| head): the work itself was done
        _discard_stdout()
        return 0
    except FstransportError as exc:
        if args.debug:
            raise
        print(f"fstransport: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
