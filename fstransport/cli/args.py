"""Argument types and option blocks the commands share: sizes, durations, rates, S3 options.

Only light modules are imported here (no aiohttp, fsspec, s3fs or botocore), so that building
the parser for ``--help`` and ``--version`` stays quick.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fstransport.cli.errors import UsageError, reason
from fstransport.errors import FstransportError
from fstransport.options import MAX_COPY_OBJECT, KiB, MiB, TransferOptions
from fstransport.units import format_size, parse_bandwidth, parse_duration, parse_size

if TYPE_CHECKING:
    from fstransport.messages import Vote

__all__ = [
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "TOKEN_ENV",
    "add_endpoint_option",
    "add_s3_tuning",
    "add_transfer_options",
    "bandwidth_arg",
    "bwlimit_arg",
    "chunk_size_arg",
    "copy_cutoff_arg",
    "duration_arg",
    "format_vote",
    "is_s3_url",
    "list_arg",
    "part_size_arg",
    "port_arg",
    "positive_duration_arg",
    "positive_int",
    "positive_size_arg",
    "s3_tuning",
    "size_arg",
    "storage_options",
    "token_from",
    "vote_arg",
]

_V = TypeVar("_V")

TOKEN_ENV = "FSTRANSPORT_TOKEN"
"""The environment variable ``serve`` and ``ship --via`` take the bearer token from (unless
``--token`` or ``--token-file`` is given): unlike ``--token``, it does not show in ``ps``."""


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
copy_cutoff_arg = _bounded_size(0, MAX_COPY_OBJECT)
"""``--copy-cutoff``: up to 5 GiB, S3's limit for one ``CopyObject``."""


def positive_duration_arg(text: str) -> float:
    """A duration longer than zero, as an argparse type."""
    value = duration_arg(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text}")
    return value


def _rate(text: str) -> float:
    """A rate as ``--bwlimit`` reads it, in bytes per second (0 allowed here)."""
    plain = text.strip().removesuffix("/s")
    try:
        return float(parse_size(plain))
    except FstransportError:
        try:
            return parse_bandwidth(text)
        except FstransportError:
            raise argparse.ArgumentTypeError(
                f"not a rate: {text!r} (try 20MiB, 20MiB/s, 512KiB or 100Mbit)"
            ) from None


def bwlimit_arg(text: str) -> int:
    """``--bwlimit``: bytes per second, as a size (``20MiB``, ``20MiB/s``, ``512KiB``, bare
    bytes) or a link speed in bits (``100Mbit``)."""
    rate = _rate(text)
    if rate < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte per second, got {text}")
    return int(rate)


def min_body_rate_arg(text: str) -> int:
    """``serve --min-body-rate``: a rate as for ``--bwlimit``, or zero in any of its spellings
    (``0``, ``0B/s``, ``0KiB``, ``0Mbit``): then only a body that stops altogether for a whole
    ``--idle-timeout`` is cut off."""
    number = re.match(r"^\s*\d+(?:\.\d*)?", text)
    if number is not None and float(number.group()) == 0:
        try:  # the unit must still be one a rate may have
            _rate("1" + text[number.end() :])
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"not a rate: {text!r} (try 0, 20MiB/s or 100Mbit)"
            ) from None
        return 0
    rate = _rate(text)
    if rate < 1:
        raise argparse.ArgumentTypeError(f"must be 0 or at least 1 byte per second, got {text}")
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


def port_arg(text: str) -> int:
    """A TCP port, 0 to 65535, as an argparse type."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, not {text!r}")
    return int(text)


def vote_arg(text: str) -> Vote:
    """``TERM[,NODE[,COMMITTED]]``: e.g. ``7``, ``7,3`` or ``7,3,1`` (committed is 0 or 1)."""
    from fstransport.messages import Vote

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


def format_vote(vote: Vote) -> str:
    """`vote` as ``--vote`` takes it: ``TERM,NODE,COMMITTED``."""
    return f"{vote.term},{vote.node_id},{int(vote.committed)}"


def token_from(args: argparse.Namespace) -> str | None:
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
            why = reason(exc) if isinstance(exc, OSError) else "not UTF-8 text"
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
    from fstransport.http.wire import check_token

    try:
        return check_token(token, what)
    except FstransportError as exc:
        raise UsageError(str(exc)) from None
