"""``fstransport ship SRC DST [DST ...]`` and repeated ``--via``: one read of SRC for several
receivers, optionally through a bucket (``--relay``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fstransport.cli.args import is_s3_url, s3_tuning, storage_options, token_from
from fstransport.cli.errors import UsageError
from fstransport.cli.ship_args import check_args, client_tls
from fstransport.options import TransferOptions

if TYPE_CHECKING:
    from fstransport.http.client import HttpNetwork
    from fstransport.network.base import Network
    from fstransport.transfer import TransferReport

__all__ = ["pair_targets", "run_many"]


def pair_targets(dsts: list[str], vias: list[str]) -> list[tuple[str, str | None]]:
    """(DST, --via or None) for every receiver: one --via per DST, one DST for every --via, or
    no --via at all (every DST written by this process)."""
    if not vias:
        pairs: list[tuple[str, str | None]] = [(dst, None) for dst in dsts]
    elif len(dsts) == 1:
        pairs = [(dsts[0], via) for via in vias]
    elif len(vias) == len(dsts):
        pairs = list(zip(dsts, vias, strict=True))
    else:
        raise UsageError(
            f"{len(dsts)} DSTs and {len(vias)} --via: give one --via per DST, or one DST (the "
            "snapshot's name) for every --via"
        )
    for index, pair in enumerate(pairs):
        if pair in pairs[:index]:
            shown = pair[0] if pair[1] is None else f"{pair[0]} --via {pair[1]}"
            raise UsageError(f"{shown} is given twice")
    return pairs


def _checked(args: argparse.Namespace, dst: str, via: str | None) -> argparse.Namespace:
    """`args` for one receiver, checked as a ship to that one DST would be."""
    if dst == "-" or args.src == "-":
        raise UsageError("with several receivers, neither SRC nor DST can be - (standard streams)")
    if args.ignore_existing:
        raise UsageError("--ignore-existing ships to one DST; not with several")
    one = argparse.Namespace(**{**vars(args), "dst": dst, "via": via})
    check_args(one)
    return one


async def run_many(args: argparse.Namespace) -> int:
    """Ship SRC to every DST (through every --via) at once; print one report for all."""
    import asyncio
    import json

    from fstransport.cli.probe import probe, s3_cli_options
    from fstransport.cli.ship import Refused, relay_options, resolve_target, tick
    from fstransport.errors import ConfigurationError, HigherVote
    from fstransport.messages import Vote
    from fstransport.progress import ProgressBar
    from fstransport.transfer import ship

    pairs = pair_targets(list(args.dst), list(args.via or []))
    each = [_checked(args, dst, via) for dst, via in pairs]
    remote = pairs[0][1] is not None
    options = TransferOptions(
        chunk_size=args.chunk_size,
        max_in_flight=args.window,
        rate_limit=args.bwlimit,
        read_streams=args.read_streams,
        read_part_size=args.read_part_size,
    )
    source_options = storage_options(args, args.src)
    if is_s3_url(args.src):
        source_options = s3_cli_options(source_options)
    found = await probe(args.src, source_options, verb="open")
    if not found.is_dir and found.size is None:
        raise ConfigurationError(f"cannot open {args.src}: no such file")
    targets = [await resolve_target(one, src_is_dir=found.is_dir) for one in each]
    target_options = {}
    store_options = {}
    if not remote:
        # one set of options for every in-process target: the S3 ones when any DST is on S3
        s3_targets = [t for t in targets if is_s3_url(t)]
        if s3_targets:
            target_options = s3_cli_options(storage_options(args, s3_targets[0]))
            store_options = s3_tuning(args, s3_targets[0])
    if args.dry_run:
        plan = {"dry_run": True, "source": args.src, "targets": targets, "via": args.via}
        if args.json:
            print(json.dumps({**plan, "relay": args.relay}, indent=2))
        else:
            where = f" through {args.relay}" if args.relay else ""
            for target, (_, via) in zip(targets, pairs, strict=True):
                shown = f"{target} via {via}" if via else target
                print(f"would ship {args.src} -> {shown}{where}; dry run, nothing sent")
        return 0
    networks: list[Network] | None = None
    opened: list[HttpNetwork] = []
    bar = ProgressBar(None if found.is_dir else found.size, enabled=not args.quiet)
    ticker = asyncio.create_task(tick(bar))
    completed = False
    try:
        if remote:
            from fstransport.http.client import HttpNetwork

            token = token_from(args)
            for _, via in pairs:
                assert via is not None
                opened.append(HttpNetwork(via, token=token, ssl=client_tls(via, args.cafile)))
            networks = list(opened)
        report = await ship(
            args.src,
            targets,
            options=options,
            network=networks,
            source_options=source_options,
            target_options=target_options,
            store_options=store_options,
            progress=bar.update,
            checksum=args.checksum,
            vote=args.vote or Vote(0, 0),
            relay=args.relay,
            relay_options=relay_options(args),
        )
        completed = True
    except HigherVote as exc:
        raise Refused(f"{exc}; ship with a higher --vote to replace what it holds") from exc
    finally:
        ticker.cancel()
        bar.close(completed=completed)
        for network in opened:
            await network.close()
    _print(args, report, options)
    return 0


def _print(args: argparse.Namespace, report: TransferReport, options: TransferOptions) -> None:
    import json

    from fstransport.cli.report import print_report

    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        print_report(report, options, verified=None)
