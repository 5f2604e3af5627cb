"""Argument types and option blocks the commands share: sizes, durations, rates, S3 options.

Only light modules are imported here (no aiohttp, fsspec, s3fs or botocore), so that building
the parser for ``--help`` and ``--version`` stays quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from fstransport.cli.errors import UsageError
from fstransport.errors import FstransportError
from fstransport.options import KiB, MiB, TransferOptions
from fstransport.units import format_size, parse_bandwidth, parse_duration, parse_size

__all__ = [
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "add_endpoint_option",
    "add_s3_tuning",
    "add_transfer_options",
    "bandwidth_arg",
    "bwlimit_arg",
    "chunk_size_arg",
    "duration_arg",
    "is_s3_url",
    "list_arg",
    "part_size_arg",
    "positive_duration_arg",
    "positive_int",
    "positive_size_arg",
    "s3_tuning",
    "size_arg",
    "storage_options",
]

_V = TypeVar("_V")


def _argument(parse: Callable[[str], _V]) -> Callable[[str], _V]:
    """`parse` as an argparse type: its `ConfigurationError` becomes argparse's usage error."""

    def convert(text: str) -> _V:
        try:
            return parse(text)
        except FstransportError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


size_arg = _argument(parse_size)
duration_arg = _argument(parse_duration)
bandwidth_arg = _argument(parse_bandwidth)

MIN_CHUNK_SIZE = 4 * KiB
"""Smaller chunks cost a round trip per few bytes: 20 MiB in 8-byte chunks took 17 minutes."""
MAX_CHUNK_SIZE = 5 * 1024 * MiB
"""S3's largest part; a chunk is held in memory whole, so larger is never what one wants."""
MIN_PART_SIZE = 5 * MiB


def _bounded_size(low: int, high: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = size_arg(text)
        if value < low or (high is not None and value > high):
            limit = (
                f"at least {format_size(low)}"
                if value < low
                else f"at most {format_size(high or 0)}"
            )
            raise argparse.ArgumentTypeError(
                f"must be {limit}, got {text} ({value} bytes; a bare number is bytes)"
            )
        return value

    parse.__name__ = "size"
    return parse


chunk_size_arg = _bounded_size(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
part_size_arg = _bounded_size(MIN_PART_SIZE, MAX_CHUNK_SIZE)
positive_size_arg = _bounded_size(1, None)


def positive_duration_arg(text: str) -> float:
    """A duration longer than zero, as an argparse type."""
    value = duration_arg(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text}")
    return value


def bwlimit_arg(text: str) -> int:
    """``--bwlimit``: bytes per second, as a size (``20MiB``, ``20MiB/s``, ``512KiB``, bare
    bytes) or a link speed in bits (``100Mbit``)."""
    plain = text.strip().removesuffix("/s")
    try:
        rate = float(parse_size(plain))
    except FstransportError:
        try:
            rate = parse_bandwidth(text)
        except FstransportError:
            raise argparse.ArgumentTypeError(
                f"not a rate: {text!r} (try 20MiB, 20MiB/s, 512KiB or 100Mbit)"
            ) from None
    if rate < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte per second, got {text}")
    return int(rate)


def positive_int(text: str) -> int:
    """A whole number of at least 1, as an argparse type."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def list_arg(parse: Callable[[str], int]) -> Callable[[str], tuple[int, ...]]:
    """A comma-separated list of what `parse` reads, as an argparse type."""

    def parse_list(text: str) -> tuple[int, ...]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}")
        return tuple(parse(item) for item in items)

    return parse_list


def add_transfer_options(parser: argparse.ArgumentParser) -> None:
    """``--chunk-size``, ``--window`` and ``--json``."""
    defaults = TransferOptions()
    parser.add_argument(
        "--chunk-size",
        type=chunk_size_arg,
        default=defaults.chunk_size,
        metavar="SIZE",
        help="bytes per chunk, e.g. 256KiB or 8MiB; a bare number is bytes; 4KiB to 5GiB "
        f"(default {format_size(defaults.chunk_size)})",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=defaults.max_in_flight,
        metavar="N",
        help=f"chunks in flight at once (default {defaults.max_in_flight})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def is_s3_url(url: str) -> bool:
    """Whether `url` names an S3 location."""
    return url.startswith(("s3://", "s3a://"))


def add_s3_tuning(parser: argparse.ArgumentParser, where: str) -> None:
    """``--part-size`` and ``--upload-concurrency`` for the S3 store at `where`."""
    parser.add_argument(
        "--part-size",
        type=part_size_arg,
        metavar="SIZE",
        help=f"S3 part size for an s3:// {where}, 5MiB to 5GiB (default 8MiB; keep the "
        "senders' --chunk-size a multiple of it so chunks become parts without a copy)",
    )
    parser.add_argument(
        "--upload-concurrency",
        type=positive_int,
        metavar="N",
        help=f"S3 parts uploaded at once for an s3:// {where} (default 4)",
    )


def s3_tuning(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """The store options ``--part-size`` and ``--upload-concurrency`` give, for the store at
    `url`; `UsageError` if they are given for a store that is not on S3."""
    tuning = {
        name: value
        for name, value in [
            ("part_size", args.part_size),
            ("upload_concurrency", args.upload_concurrency),
        ]
        if value is not None
    }
    if tuning and not is_s3_url(url):
        raise UsageError(f"--part-size and --upload-concurrency are for s3:// stores, not {url}")
    return tuning


def add_endpoint_option(parser: argparse.ArgumentParser) -> None:
    """``--endpoint-url``."""
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint for s3:// URLs (credentials come from the environment, as for boto)",
    )


def storage_options(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """s3fs options from the command line, for `url` if it is an S3 URL."""
    endpoint = getattr(args, "endpoint_url", None)
    if not endpoint or not is_s3_url(url):
        return {}
    return {"client_kwargs": {"endpoint_url": endpoint}}
