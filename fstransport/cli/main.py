"""The top of the ``fstransport`` command: global flags, the subcommands, exit codes.

User errors (a missing file, a bad size, an unreachable target) are printed as one line on
stderr — never a traceback.  ``--debug`` shows the traceback anyway.  Exit codes: 0 done,
1 the command failed, 2 the command line is wrong, 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM).  SIGTERM cancels the command as Ctrl-C does, so both run the same clean-up: an
interrupted ``ship`` leaves no partial data and no S3 multipart upload behind.  A reader that
closes stdout early (``| head``) ends the output quietly; the exit code stays the command's own.

Every command lives in a module of its own (``fstransport.cli.ship``, ...) that imports its
heavy dependencies (aiohttp, fsspec, s3fs, botocore, matplotlib, moto) only when it runs, so
``--help`` and ``--version`` answer without loading them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fstransport.cli import bench, cleanup, demo, serve, ship
from fstransport.cli.errors import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    UsageError,
    describe,
)
from fstransport.errors import FstransportError

__all__ = ["EXIT_CODES", "build_parser", "main"]


# -q/-v/--debug/--log-file: given before or after the command.  The subcommands' copies
# default to SUPPRESS, so that a flag given before the command is not reset by them.
GLOBAL_DEFAULTS: dict[str, Any] = {"quiet": False, "verbose": 0, "debug": False, "log_file": None}


def _version() -> str:
    from fstransport._version import __version__

    return __version__


class _VersionAction(argparse.Action):
    """``--version``, with the version looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"fstransport {_version()}")
        parser.exit()


def _global_flags(*, suppress: bool) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("output")

    def default(name: str) -> Any:
        return argparse.SUPPRESS if suppress else GLOBAL_DEFAULTS[name]

    group.add_argument(
        "-q", "--quiet", action="store_true", default=default("quiet"),
        help="print only errors: no progress bar, no report (--json still prints)",
    )  # fmt: skip
    group.add_argument(
        "-v", "--verbose", action="count", default=default("verbose"),
        help="also print retries, resumes and other notes (-vv: debug messages)",
    )  # fmt: skip
    group.add_argument(
        "--debug", action="store_true", default=default("debug"),
        help="debug messages, and a traceback for errors",
    )  # fmt: skip
    group.add_argument(
        "--log-file", metavar="PATH", default=default("log_file"),
        help="append messages (with times) to PATH instead of stderr; errors still end "
        "on stderr",
    )  # fmt: skip
    return flags


def build_parser() -> argparse.ArgumentParser:
    """The whole command line's parser."""
    parser = argparse.ArgumentParser(
        prog="fstransport",
        description="Ship large snapshots in verified chunks between fsspec locations.",
        epilog=EXIT_CODES + "\nsee docs/cli.md for every flag and rclone/aws-cli equivalents",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_flags(suppress=False)],
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _global_flags(suppress=True)
    for module in (demo, ship, serve, bench, cleanup):
        module.add_parser(commands, [common])
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    """Errors only on stderr by default (retries are not errors: a failed transfer ends in one
    line of its own); ``-v`` adds warnings and notes such as retries and resumes, ``-vv`` and
    ``--debug`` debug messages; ``-q`` nothing but the final error line."""
    import logging

    if args.debug or args.verbose >= 2:
        level = logging.DEBUG
    elif args.verbose:
        level = logging.INFO
    elif args.quiet:
        level = logging.CRITICAL
    else:
        level = logging.ERROR
    logger = logging.getLogger("fstransport")
    for old in [h for h in logger.handlers if getattr(h, "_fstransport_cli", False)]:
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    if args.log_file:
        try:
            handler = logging.FileHandler(args.log_file, encoding="utf-8")
        except OSError as exc:
            from fstransport.cli.errors import reason

            raise UsageError(f"--log-file: cannot open {args.log_file}: {reason(exc)}") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        level = min(level, logging.INFO)  # a log file is for reading later: notes included
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fstransport: %(levelname)s: %(message)s"))
    setattr(handler, "_fstransport_cli", True)  # noqa: B010 - marks our own handler
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(level)


def _usage(args: argparse.Namespace, parser: argparse.ArgumentParser, message: str) -> int:
    command_parser: argparse.ArgumentParser = getattr(args, "parser", parser)
    command_parser.print_usage(sys.stderr)
    print(f"{command_parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


class _Terminated(Exception):
    """SIGTERM arrived; the command was cancelled as Ctrl-C cancels it, and cleaned up."""


async def _until_terminated(
    run: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """`run(args)`, cancelled on SIGTERM exactly as asyncio cancels it on Ctrl-C, so that its
    clean-up runs (a ship aborts its S3 multipart upload, a server closes its connections);
    then `_Terminated`.  A second SIGTERM during the clean-up is ignored."""
    import asyncio
    import contextlib
    import signal

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
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that nothing (not even the flush at exit) writes into the
    closed pipe again."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    try:
        _setup_logging(args)
    except UsageError as exc:
        return _usage(args, parser, str(exc))
    import asyncio

    try:
        code: int = asyncio.run(_until_terminated(args.run, args))
        return code
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
        return EXIT_OK
    except UsageError as exc:
        return _usage(args, parser, str(exc))
    except FstransportError as exc:
        if args.debug:
            raise
        target = getattr(args, "shown_target", None)
        endpoint = getattr(args, "endpoint_url", None)
        line = describe(exc, target=target, endpoint=endpoint)
        print(f"fstransport: error: {line}", file=sys.stderr)
        return EXIT_FAILED
