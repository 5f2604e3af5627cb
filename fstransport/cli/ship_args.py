"""The arguments of ``fstransport ship`` and the checks of what does not go together."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fstransport.cli.args import (
    TOKEN_ENV,
    add_endpoint_option,
    add_s3_tuning,
    add_transfer_options,
    bwlimit_arg,
    copy_cutoff_arg,
    duration_arg,
    is_s3_url,
    positive_int,
    positive_size_arg,
    s3_tuning,
    vote_arg,
)
from fstransport.cli.errors import UsageError
from fstransport.cli.serve import os_reason
from fstransport.errors import ConfigurationError
from fstransport.options import TransferOptions
from fstransport.units import format_size

if TYPE_CHECKING:
    import ssl

__all__ = ["DESCRIPTION", "add_arguments", "check_args", "check_via", "client_tls"]


DESCRIPTION = """\
Copy one file between fsspec locations (local paths, memory://, s3://, ...) in verified
chunks. DST appears only once the whole copy is verified; a copy that was interrupted resumes
where it stopped when shipped again.

DST may be an existing folder or end in '/': the file keeps its name there (as cp and rclone
do). SRC '-' reads standard input and DST '-' writes standard output: standard input is first
read into a temporary file (the protocol names the size before the first chunk), standard
output gets the data only once it is verified; neither can resume.

SRC may be a folder: its regular files (symlinks, devices, sockets and FIFOs are refused) are
packed into one directory snapshot with one checksum, and DST appears as a folder (on S3 and
memory://, a manifest written last marks the complete tree: see docs/directories.md). An
existing folder DST is replaced as a whole, in one step.

Several DSTs (a fan-out) read SRC once and receive it at once; with --relay URL the data
goes through a bucket: uploaded once to that staging prefix, each receiver fetching it from
there (see docs/relay.md). With --via, give one --via per DST, or one DST for every --via.
"""


def add_arguments(ship_cmd: argparse.ArgumentParser) -> None:
    """The arguments of the ``ship`` command."""
    ship_cmd.add_argument("src", metavar="SRC", help="source URL or path; - for standard input")
    ship_cmd.add_argument(
        "dst",
        metavar="DST",
        nargs="+",
        help="target URL or path: a file name, an existing folder or one ending in /; "
        "- for standard output; several DSTs receive SRC at once, read once",
    )
    add_transfer_options(ship_cmd)
    add_endpoint_option(ship_cmd)
    ship_cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be sent and where, and stop: nothing is written",
    )
    ship_cmd.add_argument(
        "--ignore-existing",
        action="store_true",
        help="do nothing if DST exists (whatever its content)",
    )
    ship_cmd.add_argument(
        "--bwlimit",
        type=bwlimit_arg,
        metavar="RATE",
        help="send at most RATE per second on average, e.g. 20MiB (or 20MiB/s, 100Mbit); "
        "a bare number is bytes per second",
    )
    ship_cmd.add_argument(
        "--via",
        metavar="URL",
        action="append",
        help="ship through the receiver server at URL (fstransport serve); repeat it to ship "
        "to several servers",
    )
    ship_cmd.add_argument(
        "--relay",
        metavar="URL",
        help="send the data through this staging prefix of a bucket (e.g. s3://bucket/stage): "
        "uploaded there once, fetched by every receiver (--endpoint-url applies to it)",
    )
    ship_cmd.add_argument(
        "--relay-keep-for",
        type=duration_arg,
        metavar="DURATION",
        help="keep what --relay staged this long (e.g. 10m) for receivers joining later: a "
        "later ship of the same data uploads nothing (default: removed once every DST has it)",
    )
    ship_cmd.add_argument(
        "--relay-stage-ahead",
        type=int,
        metavar="N",
        help="chunks --relay uploads beyond the window before their references go (default: "
        "as many as --window; 0 stages each chunk only when its turn comes)",
    )
    ship_cmd.add_argument(
        "--relay-block-maps",
        action="store_true",
        help="stage each chunk's block map with it, so that a receiver holding an earlier "
        "snapshot fetches only the ranges it lacks (costs the sender a digest of every 4 KiB)",
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
        type=vote_arg,
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
        "interrupted ship of the same data left, even after a restart. Without it, --via "
        "continues only a transfer the same server process still holds (its bytes re-checked)",
    )
    add_s3_tuning(ship_cmd, "DST")
    ship_cmd.add_argument(
        "--server-side",
        action="store_true",
        help="S3 -> S3 on one endpoint: have the server copy the data (one CopyObject up to "
        "--copy-cutoff, UploadPartCopy parts above), even where it cannot prove the copy by "
        "checksum (without it, only a provable copy is, with UploadPartCopy)",
    )
    read_defaults = TransferOptions()
    ship_cmd.add_argument(
        "--copy-cutoff",
        type=copy_cutoff_arg,
        default=read_defaults.copy_cutoff,
        metavar="SIZE",
        help="with --server-side, copy objects up to SIZE with one CopyObject request, larger "
        f"ones in parts (default and most {format_size(read_defaults.copy_cutoff)}, "
        "S3's limit for one CopyObject)",
    )
    ship_cmd.add_argument(
        "--read-streams",
        type=positive_int,
        default=read_defaults.read_streams,
        metavar="N",
        help=f"ranged GETs at once for a large s3:// SRC (default {read_defaults.read_streams}; "
        "1: one streaming GET)",
    )
    ship_cmd.add_argument(
        "--read-part-size",
        type=positive_size_arg,
        default=read_defaults.read_part_size,
        metavar="SIZE",
        help="bytes per ranged GET of an s3:// SRC "
        f"(default {format_size(read_defaults.read_part_size)})",
    )


def client_tls(via: str, cafile: str | None) -> ssl.SSLContext | None:
    """The client's TLS context for ``--cafile`` (None: aiohttp's default, the system's CAs)."""
    if cafile is None:
        return None
    if not via.lower().startswith("https://"):
        raise UsageError(f"--cafile needs an https:// --via URL, got {via!r}")
    import ssl

    try:
        return ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigurationError(
            f"cannot load CA certificates from {cafile}: {os_reason(exc)}"
        ) from None


def check_via(via: str) -> str:
    """`via` if it is an http(s) URL naming a host; else a `UsageError`."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(via)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise UsageError(f"--via {via!r} is not a usable URL: {exc}") from None
    if not ok:
        raise UsageError(
            f"--via needs an http:// or https:// URL with a host, e.g. http://receiver:8470; "
            f"got {via!r}"
        )
    return via


def check_args(args: argparse.Namespace) -> None:
    """Flags that do not go together, and S3 URLs that name no object."""
    if args.via:
        check_via(args.via)
        if s3_tuning(args, args.dst):
            raise UsageError(
                "--part-size and --upload-concurrency set the store of an in-process copy; with "
                "--via, give them to the server (fstransport serve ROOT --part-size ...)"
            )
        if args.ignore_existing:
            raise UsageError("--ignore-existing needs a DST it can see; not with --via")
        if args.server_side:
            raise UsageError("--server-side copies within one S3 endpoint; not with --via")
    elif args.cafile is not None or args.token is not None or args.token_file is not None:
        raise UsageError(
            "--token and --cafile are for shipping --via a server (and --token-file too)"
        )
    else:
        s3_tuning(args, args.dst)
    if args.relay_keep_for is not None and args.relay is None:
        raise UsageError("--relay-keep-for keeps what --relay staged; give --relay URL too")
    if args.relay_block_maps and args.relay is None:
        raise UsageError("--relay-block-maps is for --relay; give --relay URL too")
    if args.relay_stage_ahead is not None and args.relay is None:
        raise UsageError("--relay-stage-ahead is for --relay; give --relay URL too")
    if args.relay_stage_ahead is not None and args.relay_stage_ahead < 0:
        raise UsageError(f"--relay-stage-ahead must be 0 or more, got {args.relay_stage_ahead}")
    if args.relay is not None and args.server_side:
        raise UsageError("--server-side copies within one S3 endpoint; not with --relay")
    relay = args.relay
    if relay is not None and is_s3_url(relay) and not relay.split("://", 1)[1].strip("/"):
        raise UsageError(f"--relay {args.relay} names no bucket")
    if args.src == "-" and args.dst == "-":
        raise UsageError("SRC and DST cannot both be - (standard input and output)")
    if args.src == "-" and args.dst.endswith("/"):
        raise UsageError("with SRC - (standard input), DST must name a file")
    for name, url in (("SRC", args.src), ("DST", args.dst)):
        if is_s3_url(url) and not url.split("://", 1)[1].strip("/"):
            raise UsageError(f"{name} {url} names no bucket")
    if is_s3_url(args.src) and "/" not in args.src.split("://", 1)[1].strip("/"):
        raise UsageError(f"SRC {args.src} names a bucket, not an object")
