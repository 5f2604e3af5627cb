"""``fstransport bench``: sweep chunk sizes x windows for a source, target and link."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fstransport.cli.args import (
    bandwidth_arg,
    duration_arg,
    list_arg,
    positive_int,
    size_arg,
)
from fstransport.cli.errors import UsageError

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` command to `commands` (argparse's subparsers)."""
    bench = commands.add_parser(
        "bench",
        parents=parents,
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
        type=size_arg,
        metavar="SIZE",
        help="snapshot size (default 64MiB; 32MiB over a simulated link)",
    )
    bench.add_argument(
        "--chunk-sizes",
        type=list_arg(size_arg),
        metavar="LIST",
        help="comma-separated (default 64KiB,256KiB,1MiB,4MiB,8MiB,16MiB,64MiB)",
    )
    bench.add_argument(
        "--windows",
        type=list_arg(positive_int),
        metavar="LIST",
        help="comma-separated chunks in flight (default 1,2,4,8,16,32)",
    )
    bench.add_argument("--rounds", type=positive_int, default=1, help="copies per setting (1)")
    bench.add_argument(
        "--latency",
        type=duration_arg,
        default=0.0,
        metavar="RTT",
        help="simulate a link with this round trip, e.g. 10ms (each way gets half)",
    )
    bench.add_argument(
        "--bandwidth",
        type=bandwidth_arg,
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
    bench.add_argument(
        "--plot",
        metavar="FILE",
        help="draw MiB/s against chunk size into FILE, in the format its extension names "
        "(.png, .svg or .pdf)",
    )
    bench.set_defaults(run=run, parser=bench)


async def run(args: argparse.Namespace) -> int:
    """Run the sweep; print the table (or JSON), write the plot."""
    import json

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
    from fstransport.units import format_rate, format_size

    def kind(name: str) -> Kind:
        return "file" if name == "local" else name  # type: ignore[return-value]

    plan = BenchPlan(
        source=kind(args.source),
        target=kind(args.target),
        size=args.size,
        chunk_sizes=args.chunk_sizes or DEFAULT_CHUNK_SIZES,
        windows=args.windows or DEFAULT_WINDOWS,
        rounds=args.rounds,
        latency=args.latency,
        bandwidth=args.bandwidth,
        directory=args.dir,
        endpoint_url=args.endpoint_url,
        bucket=args.bucket,
    )
    if args.plot is not None:
        from fstransport.bench.output import plot_format
        from fstransport.errors import ConfigurationError

        try:
            plot_format(args.plot)
        except ConfigurationError as exc:
            raise UsageError(f"argument --plot: {exc}") from None
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
