"""The top of the ``fstransport`` command: global flags, the subcommands, exit codes.

User errors (a missing file, a bad size, an unreachable target) are printed as one line on
stderr with exit code 1 — never a traceback.  ``--debug`` shows the traceback anyway.

Every command lives in a module of its own (``fstransport.cli.ship``, ...) that imports its
heavy dependencies (aiohttp, fsspec, s3fs, botocore, matplotlib, moto) only when it runs, so
``--help`` and ``--version`` answer without loading them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fstransport.cli import bench, cleanup, demo, serve, ship
from fstransport.errors import FstransportError

__all__ = ["build_parser", "main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fstransport")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+unknown"


class _VersionAction(argparse.Action):
    """``--version``, with the version looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"fstransport {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line's parser."""
    parser = argparse.ArgumentParser(
        prog="fstransport",
        description="Ship large snapshots in verified chunks between fsspec locations.",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(commands)
    ship.add_parser(commands)
    serve.add_parser(commands)
    bench.add_parser(commands)
    cleanup.add_parser(commands)
    return parser


def _quiet_logging(debug: bool) -> None:
    """Errors only on stderr (retries are not errors: a failed transfer ends in one line of its
    own); with ``--debug`` also warnings and progress notes such as retries and resumes."""
    import logging

    logger = logging.getLogger("fstransport")
    if not any(getattr(h, "_fstransport_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fstransport: %(levelname)s: %(message)s"))
        handler._fstransport_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if debug else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    _quiet_logging(args.debug)
    import asyncio

    try:
        code: int = asyncio.run(args.run(args))
        return code
    except KeyboardInterrupt:
        print("fstransport: interrupted", file=sys.stderr)
        return 130
    except FstransportError as exc:
        if args.debug:
            raise
        print(f"fstransport: error: {exc}", file=sys.stderr)
        return 1
