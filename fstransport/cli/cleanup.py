"""``fstransport cleanup ROOT``: remove the partial data abandoned transfers left in a store."""

from __future__ import annotations

import argparse
from typing import Any

from fstransport.cli.args import add_endpoint_option, duration_arg, storage_options

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``cleanup`` command to `commands` (argparse's subparsers)."""
    cleanup = commands.add_parser(
        "cleanup",
        parents=parents,
        help="remove abandoned partial transfers under a store's ROOT",
        description="Remove partial data that transfers into ROOT abandoned more than "
        "--older-than ago: partial files and their journals, and on S3 incomplete multipart "
        "uploads. Installed snapshots are never touched.",
    )
    cleanup.add_argument("root", metavar="ROOT", help="the store's root URL or path")
    cleanup.add_argument(
        "--older-than",
        type=duration_arg,
        default=24 * 3600.0,
        metavar="AGE",
        help="only what was last touched longer ago than this, e.g. 30m, 6h, 2d (default 1d)",
    )
    cleanup.add_argument("--json", action="store_true", help="print what was removed as JSON")
    add_endpoint_option(cleanup)
    cleanup.set_defaults(run=run, parser=cleanup)


async def run(args: argparse.Namespace) -> int:
    """Remove what is old enough; print it."""
    import json

    from fstransport.storage.store import FsspecSnapshotStore

    async with FsspecSnapshotStore(args.root, **storage_options(args, args.root)) as store:
        removed = await store.cleanup(older_than=args.older_than)
    if args.json:
        print(json.dumps({"root": args.root, "removed": removed}, indent=2))
    else:
        for what in removed:
            print(f"removed {what}")
        print(f"{len(removed)} abandoned partial transfer item(s) removed from {args.root}")
    return 0
