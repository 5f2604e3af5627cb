"""``fstransport ship SRC DST``: copy one file, or one folder as a directory snapshot, through
the transport, in process or ``--via``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fstransport.cli.args import format_vote, is_s3_url, s3_tuning, storage_options, token_from
from fstransport.cli.errors import EXIT_CODES
from fstransport.cli.report import print_report
from fstransport.cli.ship_args import DESCRIPTION, add_arguments, check_args, client_tls
from fstransport.errors import ConfigurationError, FstransportError
from fstransport.options import TransferOptions

if TYPE_CHECKING:
    from fstransport.http.client import HttpNetwork
    from fstransport.network.base import Network
    from fstransport.progress import ProgressBar
    from fstransport.transfer import TransferReport

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``ship`` command to `commands` (argparse's subparsers)."""
    ship_cmd = commands.add_parser(
        "ship",
        help="copy SRC to DST (any fsspec URLs) through the transport",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    add_arguments(ship_cmd)
    ship_cmd.set_defaults(run=run, parser=ship_cmd)


class Refused(FstransportError):
    """The receiver refused the transfer for a reason the user can act on (exit code 1)."""


def _join(folder: str, name: str) -> str:
    return f"{folder}{name}" if folder.endswith("/") else f"{folder}/{name}"


async def resolve_target(args: argparse.Namespace, *, src_is_dir: bool = False) -> str:
    """DST as a file name: a folder (existing, or ending in /) gets SRC's file name.  For a
    folder SRC, DST names the tree itself (replaced if it exists) unless it ends in /."""
    import posixpath

    dst: str = args.dst
    name = posixpath.basename(args.src.rstrip("/"))
    if dst.endswith("/"):
        return _join(dst, name)
    if is_s3_url(dst) and "/" not in dst.split("://", 1)[1]:
        return _join(dst, name)  # s3://bucket: the bucket is the folder
    if args.via is None and args.src != "-" and not src_is_dir:
        from fstransport.cli.probe import probe

        found = await probe(dst, storage_options(args, dst), verb="write to")
        if found.is_dir:
            return _join(dst, name)
        args.dst_probe = (dst, found)  # what run() would ask again (on S3: a client, 2 requests)
    return dst


async def run(args: argparse.Namespace) -> int:
    """Ship SRC to DST; print the report."""
    import asyncio
    import contextlib
    import json
    import sys

    from fstransport.cli.probe import probe, s3_cli_options
    from fstransport.errors import HigherVote, UntrustedPeer
    from fstransport.messages import Vote
    from fstransport.progress import ProgressBar
    from fstransport.transfer import ship

    if len(args.dst) > 1 or len(args.via or ()) > 1:
        from fstransport.cli.ship_many import run_many

        return await run_many(args)
    args.dst = args.dst[0]
    args.via = args.via[0] if args.via else None
    check_args(args)
    token = token_from(args) if args.via else None
    tls = client_tls(args.via, args.cafile) if args.via else None
    vote: Vote = args.vote or Vote(0, 0)
    options = TransferOptions(
        chunk_size=args.chunk_size,
        max_in_flight=args.window,
        rate_limit=args.bwlimit,
        read_streams=args.read_streams,
        read_part_size=args.read_part_size,
        copy_cutoff=args.copy_cutoff,
    )
    out = sys.stderr if args.dst == "-" else sys.stdout  # the data owns stdout
    source_options = storage_options(args, args.src)
    if is_s3_url(args.src):
        source_options = s3_cli_options(source_options)
    found = None if args.src == "-" else await probe(args.src, source_options, verb="open")
    src_is_dir = found is not None and found.is_dir
    dst = "-" if args.dst == "-" else await resolve_target(args, src_is_dir=src_is_dir)
    args.shown_target = dst
    target_options = storage_options(args, dst)
    if is_s3_url(dst):
        target_options = s3_cli_options(target_options)

    size: int | None = None
    files: int | None = None  # a folder SRC: a directory snapshot of this many files
    if found is not None:
        if found.is_dir:
            from fstransport.tree import scan_summary

            if dst == "-":
                raise ConfigurationError(
                    f"SRC {args.src} is a folder; a folder cannot be written to standard output"
                )
            if args.server_side:
                raise ConfigurationError(
                    "a folder is shipped through this process, not server-side"
                )
            files, size = await asyncio.to_thread(scan_summary, args.src, **source_options)
        elif found.size is None:
            raise ConfigurationError(f"cannot open {args.src}: no such file")
        else:
            size = found.size
    exists = False
    if dst != "-" and args.via is None:
        seen = getattr(args, "dst_probe", None)
        there = (
            seen[1]
            if seen and seen[0] == dst
            else await probe(dst, target_options, verb="write to")
        )
        if there.is_special:
            # installing replaces the target: never a device or a pipe (use - for stdout)
            raise ConfigurationError(f"DST {dst} is not a regular file; give a file name or -")
        exists = there.size is not None or (files is not None and there.is_dir)

    shown_size = "unknown size" if size is None else f"{size} bytes"
    if files is not None:
        shown_size = f"{files} files, {size} bytes"
    where = f" via {args.via}" if args.via else ""
    if args.ignore_existing and exists:
        if not args.quiet:
            print(f"fstransport: {dst} exists; skipped (--ignore-existing)", file=sys.stderr)
        return 0
    if args.dry_run and args.json:
        plan = {"dry_run": True, "source": args.src, "target": dst, "size": size, "exists": exists}
        if files is not None:
            plan["files"] = files
        print(json.dumps({**plan, "via": args.via}, indent=2), file=out)
        return 0
    if args.dry_run:
        verb = ("replace" if files is not None else "overwrite") if exists else "create"
        print(
            f"would ship {args.src} ({shown_size}) -> {dst}{where} ({verb}); dry run, nothing sent",
            file=out,
        )
        return 0
    if dst.startswith("memory://") and args.via is None and not args.quiet:
        print(
            f"fstransport: warning: {dst} lives in this process's memory and vanishes when "
            "the command exits",
            file=sys.stderr,
        )

    with contextlib.ExitStack() as cleanup:
        src = args.src
        if src == "-":
            src, size = await asyncio.to_thread(_spool_stdin, cleanup)
        target = dst
        if dst == "-":
            target = _scratch_target(cleanup, args.src)
        finishing = "completing upload…" if is_s3_url(target) else "finishing…"
        # (a folder's packed stream is a little longer than its files: the bar's size is unknown)
        bar = ProgressBar(
            None if files is not None else size, finishing=finishing, enabled=not args.quiet
        )
        ticker = asyncio.create_task(tick(bar))
        http: HttpNetwork | None = None
        network: Network | None = None
        completed = False
        try:
            if args.via:
                from fstransport.http.client import HttpNetwork

                network = http = HttpNetwork(args.via, token=token, ssl=tls)
            report = await ship(
                src,
                target,
                options=options,
                network=network,
                source_options=source_options,
                target_options=target_options,
                store_options=s3_tuning(args, dst),
                progress=bar,  # (told of resumed bytes through its skip)
                checksum=args.checksum,
                vote=vote,
                server_side=True if args.server_side else None,
                relay=args.relay,
                relay_options=relay_options(args),
            )
            completed = True
        except UntrustedPeer as exc:
            raise ConfigurationError(
                f"{exc}; give the CA that signed it with --cafile PEM"
            ) from exc
        except HigherVote as exc:
            raise Refused(
                f"{exc}; to replace what it holds, ship with --vote {format_vote(exc.higher)} "
                "or higher"
            ) from exc
        finally:
            ticker.cancel()
            bar.close(completed=completed)
            if http is not None:
                await http.close()
        if dst == "-":
            await asyncio.to_thread(_copy_to_stdout, target)
        report = _as_given(report, args.src, dst)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2), file=out)
    elif not args.quiet:
        print_report(report, options, verified=None, file=out)
    return 0


def relay_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """`ship`'s relay_options from ``--relay``, ``--relay-keep-for``, ``--relay-stage-ahead``,
    ``--relay-block-maps`` and ``--endpoint-url``."""
    if args.relay is None:
        return None
    from fstransport.cli.probe import s3_cli_options

    options = storage_options(args, args.relay)
    if is_s3_url(args.relay):
        options = s3_cli_options(options)
    if args.relay_keep_for is not None:
        options["keep_for"] = args.relay_keep_for
    if args.relay_stage_ahead is not None:
        options["stage_ahead"] = args.relay_stage_ahead
    if args.relay_block_maps:
        options["block_maps"] = True
    return options


async def tick(bar: ProgressBar) -> None:
    """Redraw `bar` while no chunk is acknowledged (the finishing phase, a slow link)."""
    import asyncio

    while True:
        await asyncio.sleep(0.25)
        bar.refresh()


def _spool_stdin(cleanup: Any) -> tuple[str, int]:
    """Standard input, read into a temporary file: (its path, its size)."""
    import os
    import shutil
    import sys
    import tempfile

    handle, path = tempfile.mkstemp(prefix="fstransport-stdin-")
    cleanup.callback(_remove, path)
    with os.fdopen(handle, "wb") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, 1024 * 1024)
        return path, spool.tell()


def _scratch_target(cleanup: Any, src: str) -> str:
    """A file in a temporary folder for DST -, written to standard output once verified."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="fstransport-stdout-")
    cleanup.callback(shutil.rmtree, folder, True)
    return f"{folder}/stdout.bin"


def _copy_to_stdout(path: str) -> None:
    import shutil
    import sys

    with open(path, "rb") as data:
        shutil.copyfileobj(data, sys.stdout.buffer, 1024 * 1024)
    sys.stdout.buffer.flush()


def _remove(path: str) -> None:
    import contextlib
    import os

    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _as_given(report: TransferReport, src: str, dst: str) -> TransferReport:
    """`report` naming SRC and DST as the user wrote them (- for the standard streams)."""
    import dataclasses

    return dataclasses.replace(report, source=src, target=dst)
