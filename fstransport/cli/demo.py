"""``fstransport demo``: memory:// -> S3 on an embedded moto server -> a local file, verified."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fstransport.cli.args import add_transfer_options, size_arg
from fstransport.cli.report import print_report
from fstransport.options import MiB, TransferOptions

__all__ = ["add_parser", "run"]

DEMO_SIZE = 64 * MiB
DEMO_BUCKET = "fstransport-demo"
DEMO_NEEDS_MOTO = (
    "fstransport: error: the demo runs an embedded moto S3 server; "
    "install it with: pip install 'fstransport[testing]'"
)


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command to `commands` (argparse's subparsers)."""
    demo = commands.add_parser(
        "demo",
        parents=parents,
        help="ship a generated snapshot memory:// -> S3 (embedded moto) -> local file",
        description="Generate a snapshot in memory://, ship it into a bucket on an embedded moto "
        "S3 server and from there to a local file, verify both hops and print a report. "
        "Needs no cloud account and no setup.",
    )
    demo.add_argument(
        "--size",
        type=size_arg,
        default=DEMO_SIZE,
        metavar="SIZE",
        help="snapshot size (default 64MiB)",
    )
    demo.add_argument(
        "--target",
        metavar="PATH",
        help="where to write the copy (default: a temporary folder, removed after)",
    )
    add_transfer_options(demo)
    demo.set_defaults(run=run, parser=demo)


def _demo_target(target: str | None) -> tuple[str | None, str]:
    """(temporary folder to remove afterwards or None, target path) for the demo's copy."""
    import tempfile

    if target:
        return None, str(Path(target).absolute())
    workdir = tempfile.mkdtemp(prefix="fstransport-demo-")
    return workdir, str(Path(workdir, "snapshot.bin"))


def _s3(storage_options: dict[str, Any]) -> Any:
    """A synchronous s3fs filesystem of its own (used from a worker thread)."""
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True, **storage_options)


async def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when both hops verified."""
    import asyncio
    import json
    import random
    import shutil

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
    import fsspec

    from fstransport.checksum import chunk_crc, format_checksum
    from fstransport.transfer import ship

    memory = fsspec.filesystem("memory")
    source_url = "memory://fstransport-demo/snapshot.bin"
    workdir, target = _demo_target(args.target)
    try:
        s3_options = storage_options_for(endpoint)
        bucket_url = f"s3://{DEMO_BUCKET}/snapshot.bin"
        s3 = _s3(s3_options)
        # (s3fs's mkdir would ask for a LocationConstraint of us-east-1, which S3 refuses)
        no_region = {**s3_options, "client_kwargs": {"endpoint_url": endpoint}}
        await asyncio.to_thread(_s3(no_region).mkdir, DEMO_BUCKET)
        data = random.Random(20261126).randbytes(args.size)
        memory.pipe_file(source_url, data)
        expected = format_checksum(chunk_crc(data))
        options = TransferOptions(chunk_size=args.chunk_size, max_in_flight=args.window)
        hops = [
            await ship(source_url, bucket_url, options=options, target_options=s3_options),
        ]
        # read back with s3fs directly, not through fstransport's source
        in_bucket = await asyncio.to_thread(s3.cat_file, bucket_url)
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
                print_report(hop, options, verified=None)
            print("verified:\n" + "\n".join(f"  {what}" for _, what in checks))
        return 0
    finally:
        if memory.exists(source_url):
            memory.rm_file(source_url)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        await asyncio.to_thread(server.stop)
