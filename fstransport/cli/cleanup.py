"""``fstransport cleanup ROOT``: remove the partial data abandoned transfers left in a store,
or (``--staging``) the staging areas a relay no longer needs."""

from __future__ import annotations

import argparse
from typing import Any

from fstransport.cli.args import add_endpoint_option, duration_arg, is_s3_url, storage_options
from fstransport.cli.errors import UsageError

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``cleanup`` command to `commands` (argparse's subparsers)."""
    cleanup = commands.add_parser(
        "cleanup",
        parents=parents,
        help="remove abandoned partial transfers under a store's ROOT",
        description="Remove partial data that transfers into ROOT abandoned more than "
        "--older-than ago: partial files and their journals, and on S3 incomplete multipart "
        "uploads. Installed snapshots are never touched. With --staging, ROOT is a relay's "
        "staging prefix (ship --relay URL): staging areas whose manifest expired, and areas "
        "abandoned (no manifest, or one without a TTL) more than --older-than ago, are "
        "removed; an area whose manifest is live is never touched.",
    )
    cleanup.add_argument("root", metavar="ROOT", help="the store's root URL or path")
    cleanup.add_argument(
        "--older-than",
        type=duration_arg,
        default=24 * 3600.0,
        metavar="AGE",
        help="only what was last touched longer ago than this, e.g. 30m, 6h, 2d (default 1d)",
    )
    cleanup.add_argument(
        "--dry-run", action="store_true", help="list what would be removed; remove nothing"
    )
    cleanup.add_argument("--json", action="store_true", help="print what was removed as JSON")
    cleanup.add_argument(
        "--staging",
        action="store_true",
        help="ROOT is a relay's staging prefix (ship --relay URL), not a store",
    )
    add_endpoint_option(cleanup)
    cleanup.set_defaults(run=run, parser=cleanup)


async def run(args: argparse.Namespace) -> int:
    """Remove what is old enough; print it, and how much was kept for being younger."""
    import json

    from fstransport.cli.probe import probe, s3_cli_options
    from fstransport.errors import ConfigurationError
    from fstransport.storage.store import FsspecSnapshotStore

    if is_s3_url(args.root) and not args.root.split("://", 1)[1].strip("/"):
        raise UsageError(f"ROOT {args.root} names no bucket")
    options = storage_options(args, args.root)
    if is_s3_url(args.root):
        options = s3_cli_options(options)
    if args.staging:
        return await _staging(args, options)
    found = await probe(args.root, options, verb="clean up", bucket_only=True)
    if not found.is_dir and not is_s3_url(args.root):
        raise ConfigurationError(f"ROOT {args.root} does not exist or is not a folder")
    async with FsspecSnapshotStore(args.root, **options) as store:
        everything = await store.cleanup(older_than=0, dry_run=True)
        removed = await store.cleanup(older_than=args.older_than, dry_run=args.dry_run)
    kept = max(0, len(everything) - len(removed))
    if args.json:
        report = {"root": args.root, "removed": removed, "kept": kept, "dry_run": args.dry_run}
        print(json.dumps(report, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for what in removed:
        print(f"{verb} {what}")
    done = "would be removed" if args.dry_run else "removed"
    summary = f"{len(removed)} abandoned partial transfer item(s) {done} from {args.root}"
    if kept:
        summary += (
            f"; {kept} kept, younger than --older-than {_age(args.older_than)} "
            "(give a shorter --older-than to remove them too)"
        )
    if args.dry_run:
        summary += " (dry run: nothing removed)"
    print(summary)
    return 0


async def _staging(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Remove the staging areas under ROOT that nobody needs any more."""
    import json

    from fstransport.storage.staging import cleanup_staging

    removed = await cleanup_staging(args.root, args.older_than, dry_run=args.dry_run, **options)
    if args.json:
        report = {"root": args.root, "removed": removed, "dry_run": args.dry_run}
        print(json.dumps(report, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for area in removed:
        print(f"{verb} {area}")
    done = "would be removed" if args.dry_run else "removed"
    summary = f"{len(removed)} staging area(s) {done} from {args.root}"
    print(summary + (" (dry run: nothing removed)" if args.dry_run else ""))
    return 0


def _age(seconds: float) -> str:
    """86400 → ``"1d"``, 5400 → ``"90m"``: the largest unit that gives a whole number."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
