"""Delta transfer for directory snapshots, the receiver's side (I/O): identify the files of a
base tree for its offer, map the base files a sender asks for, and have the copied ranges of the
packed stream filled from the base tree's files before install.  The sender's side is
`fstransport.delta.tree_send`; the rules are in `fstransport.protocol.delta_tree` (sans I/O);
``docs/delta.md`` has the exchange.

What a store can do with base trees is its backend's `DeltaBase` (``tree_base``, listing them;
``assemble_tree``, building the new one): local folders and ``memory://`` fill the packed
partial file (`fstransport.delta.tree_bases`), S3 builds the new tree's objects in the bucket
(`fstransport.delta.tree_s3`).  A store without one offers nothing: the tree is sent in full.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from fstransport.checksum import format_checksum, parse_checksum
from fstransport.delta.receive import _recipe_of, delta_base
from fstransport.errors import ChecksumMismatch, FstransportError, InvalidRequest
from fstransport.messages import DeltaOffer, InstallSnapshotRequest
from fstransport.protocol.delta import DeltaMap, choose_block_size, new_key
from fstransport.protocol.delta_session import max_offer_size
from fstransport.protocol.delta_tree import (
    PIECE,
    TreeMap,
    TreeMapBuilder,
    TreeReceiverDelta,
    max_tree_offer_bytes,
    whole_tree_crc,
)
from fstransport.protocol.delta_tree_wire import decode_want, encode_tree_offer
from fstransport.storage.base import BaseTree

__all__ = ["BaseTreeDelta", "answer_want", "assemble_tree", "find_tree_base"]

log = logging.getLogger("fstransport.delta")


# -- the receiver: a base tree and its offer --------------------------------------------------


@dataclass
class BaseTreeDelta(TreeReceiverDelta):
    """`TreeReceiverDelta` with the base tree as its store found it (`BaseTree`: its files,
    their reader, what pins them)."""

    base: BaseTree | None = None


def _identify(base: BaseTree, mode: str, key: bytes) -> TreeMap:
    """The `TreeMap` of `base`'s files with their identities only (extents: whole pieces): a
    file whose digest was recorded for the version its pin holds (`BaseTree.known`) from that
    record, any other read and hashed.  Every file's digest goes to `BaseTree.digests`."""
    block = choose_block_size(sum(size for _, size in base.files))
    builder = TreeMapBuilder(mode, key=key, block_size=block, extents=False)
    for path, size in base.files:
        known = base.known.get(path)
        if known is not None and size <= PIECE:
            builder.known_file(size, *known)
            continue
        for piece in base.read(path, size):
            builder.update(piece)
        builder.end_file()
    base.digests.update(zip((path for path, _ in base.files), builder.digests, strict=True))
    return builder.finish()


async def find_tree_base(
    store: Any, candidates: list[str], mode: str, key: bytes | None, size: int
) -> tuple[TreeReceiverDelta, bytes] | None:
    """The first of `candidates` `store` holds as a tree, its files identified with `key`
    (the sender's, else a fresh one), with its encoded offer; None when there is none, the store
    cannot serve as a base, or the offer would be longer than a sender of a `size`-byte packed
    tree takes.  Extents of files come later, for the files a sender asks for (`answer_want`)."""
    key = key or new_key()
    bases = delta_base(store)
    if bases is None:
        return None
    for base_id in dict.fromkeys(candidates):
        try:
            base = await bases.tree_base(base_id)
            if base is None:
                continue
            tree = await asyncio.to_thread(_identify, base, mode, key)
        except Exception as exc:  # a base that cannot be read whole is no base
            log.warning("tree delta base %r could not be read: %s", base_id, exc)
            continue
        if tree.size > max_offer_size(size):
            return None
        encoded = encode_tree_offer(tree)
        if len(encoded) > max_tree_offer_bytes(size):
            return None
        crc = whole_tree_crc(0, list(zip(tree.sizes, tree.crcs, tree.tags, strict=True)))
        delta = BaseTreeDelta(
            base_id,
            tree.size,
            _labelled(tree),
            files=base.placed(),
            root=base.root,
            stream_crc=crc,
            tree=tree,
            base=base,
        )
        return delta, encoded
    return None


def _labelled(tree: TreeMap) -> DeltaMap:
    """`tree`'s extents under the request's mode, which a recipe must name (only the extents
    are read on the receiver's side)."""
    return replace(tree.extents, mode=tree.mode)


async def answer_want(store: Any, state: Any, req: InstallSnapshotRequest) -> DeltaOffer | None:
    """A sender asks for the extents of some base files (`encode_want` as its recipe): cut them
    and answer with an offer of those files alone (`TreeMap.subset`), in the order asked; None
    when that would be too long."""
    delta = state.delta
    if not isinstance(delta, BaseTreeDelta) or delta.tree is None or req.recipe is None:
        raise InvalidRequest("base extents asked for without a tree offer", field="recipe")
    tree, base = delta.tree, delta.base
    assert base is not None
    asked = decode_want(req.recipe, len(delta.files))
    numbers = [n for n in asked if not tree.mapped[n]]
    cutter = TreeMapBuilder(tree.mode, key=tree.key, block_size=tree.block_size or 4096)

    def cut() -> dict[int, DeltaMap]:
        read, out = base.read, {}
        for number in numbers:
            path, _, size = delta.files[number]
            builder = cutter.file_builder()
            for piece in read(path, size):
                builder.update(piece)
            out[number] = builder.finish()
        return out

    try:
        maps = await asyncio.to_thread(cut)
    except (OSError, FstransportError) as exc:  # the base changed: offer it no further
        log.warning("tree delta base %r could not be mapped: %s", delta.base_id, exc)
        return None
    tree = tree.with_maps(maps)
    delta.tree, delta.base_map = tree, _labelled(tree)
    part = tree.subset(asked)
    encoded = encode_tree_offer(part)
    if len(encoded) > max_tree_offer_bytes(state.meta.size or 0):
        return None
    return DeltaOffer(delta.base_id, format_checksum(delta.stream_crc), part.size, encoded)


# -- the receiver: assembly -------------------------------------------------------------------


async def assemble_tree(
    store: Any, sink: Any, delta: TreeReceiverDelta, copied: Any, checksum: str
) -> int:
    """Fill the packed stream's copied ranges (those of `copied` the ledger still holds) from
    the base tree and check its CRC32C, from its bytes, against `checksum`; return the bytes
    copied.  `ChecksumMismatch` (``whole=True``) or `SourceChanged` when the base changed."""
    recipe = _recipe_of(delta, copied)
    bases = delta_base(store)
    base = delta.base if isinstance(delta, BaseTreeDelta) else None
    if bases is None or base is None:  # (cannot happen: an offer came from them)
        raise InvalidRequest("a tree delta recipe without a base", field="recipe")
    crc, reused = await bases.assemble_tree(
        sink, base, delta.base_map, recipe, parse_checksum(checksum)
    )
    if format_checksum(crc) != checksum:
        raise ChecksumMismatch(
            f"directory snapshot assembled from base {delta.base_id!r}",
            checksum,
            format_checksum(crc),
            whole=True,
        )
    return reused
