"""The ``fstransport`` command: ``demo``, ``ship``, ``serve``, ``bench`` and ``cleanup``.

User errors (a missing file, a bad size, an unreachable target) are printed as one line on
stderr with exit code 1 — never a traceback.  ``--debug`` shows the traceback anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import ssl
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
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
    StorageError,
    UntrustedPeer,
)
from fstransport.network.base import Network
from fstransport.network.http import HttpNetwork
from fstransport.options import MiB, TransferOptions
from fstransport.progress import ProgressBar
from fstransport.protocol.receiver import DEFAULT_MAX_SNAPSHOT_SIZE, ReceiverLimits
from fstransport.server import IDLE_TIMEOUT, MAX_BUFFERED, create_app, make_runner
from fstransport.storage._aio import close_async_filesystem
from fstransport.storage.s3 import open_s3
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import TransferReport, ship
from fstransport.units import (
    format_rate,
    format_size,
    parse_bandwidth,
    parse_duration,
    parse_size,
)

__all__ = ["main"]

_V = TypeVar("_V")

DEMO_SIZE = 64 * MiB
DEMO_BUCKET = "fstransport-demo"
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
    _add_s3_tuning(ship_cmd, "DST")

    serve = commands.add_parser(
        "serve",
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
        type=_duration_arg,
        default=IDLE_TIMEOUT,
        metavar="DURATION",
        help="a connection must send a request's headers within this, e.g. 30s or 2m; a body "
        "slower than 64KiB/s over it gets 408; a transfer with no chunk for this long gives "
        f"back its slot, keeping its partial data (default {IDLE_TIMEOUT:g}s)",
    )
    serve.add_argument(
        "--max-buffered",
        type=_size_arg,
        default=MAX_BUFFERED,
        metavar="SIZE",
        help="chunk bodies held at once, e.g. 512MiB; requests beyond it get 503 and are "
        f"retried by their senders (default {format_size(MAX_BUFFERED)})",
    )
    serve.add_argument(
        "--max-snapshot-size",
        type=_size_arg,
        default=DEFAULT_MAX_SNAPSHOT_SIZE,
        metavar="SIZE",
        help="refuse snapshots larger than this, and chunks reaching beyond it "
        f"(default {format_size(DEFAULT_MAX_SNAPSHOT_SIZE)})",
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


async def _serve(args: argparse.Namespace) -> int:
    # every refused request is one WARNING line, shown without --debug too
    logging.getLogger("fstransport.server").setLevel(
        logging.INFO if args.debug else logging.WARNING
    )
    tls = _server_tls(args.certfile, args.keyfile)
    scheme = "https" if tls is not None else "http"
    options = {**_storage_options(args, args.root), **_s3_tuning(args, args.root)}
    async with FsspecSnapshotStore(args.root, **options) as store:
        app = create_app(
            store,
            token=args.token,
            idle_timeout=args.idle_timeout,
            max_buffered=args.max_buffered,
            limits=ReceiverLimits(max_snapshot_size=args.max_snapshot_size),
        )
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


async def _ship(args: argparse.Namespace) -> int:
    options = TransferOptions(chunk_size=args.chunk_size, max_in_flight=args.window)
    http: HttpNetwork | None = None
    network: Network | None = None
    if args.via:
        tls = _client_tls(_check_via(args.via), args.cafile)
        network = http = HttpNetwork(args.via, token=args.token, ssl=tls)
    elif args.cafile is not None or args.token is not None:
        raise ConfigurationError("--token and --cafile are for shipping --via a server")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    _quiet_logging(args.debug)
    commands = {"demo": _demo, "ship": _ship, "cleanup": _cleanup, "serve": _serve}
    run = {**commands, "bench": _bench}[args.command]
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print("fstransport: interrupted", file=sys.stderr)
        return 130
    except FstransportError as exc:
        if args.debug:
            raise
        print(f"fstransport: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
