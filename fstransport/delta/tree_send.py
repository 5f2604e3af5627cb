"""Delta transfer for directory snapshots, the sender's side (I/O): ask for a base tree, read
the packed tree's files' identities meanwhile, ask for the extents of base files where a file of
the new tree has no whole match, map only those files, and send the recipe.  The rules are in
`fstransport.protocol.delta_tree`; ``docs/delta.md`` (Directory snapshots) has the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.delta.send import Ask, DeltaPlan, send_recipe
from fstransport.errors import FstransportError
from fstransport.messages import InstallSnapshotRequest, InstallSnapshotResponse, SnapshotMeta, Vote
from fstransport.options import TransferOptions
from fstransport.protocol.delta import DeltaMap, new_key
from fstransport.protocol.delta_session import max_offer_size, max_recipe_bytes
from fstransport.protocol.delta_tree import (
    FileIdentity,
    TreeMap,
    TreeMapBuilder,
    max_tree_offer_bytes,
    plan_tree_recipe,
    whole_matches,
    whole_tree_crc,
)
from fstransport.protocol.delta_tree_wire import decode_tree_offer, encode_want
from fstransport.storage.source import ChunkSource
from fstransport.tree.table import HEADER_SIZE, TreeTable, parse_header, parse_table

__all__ = ["identify_files", "map_files", "negotiate_tree", "source_table"]

log = logging.getLogger("fstransport.delta")
Identity = tuple[int, int, int]


async def _read(source: ChunkSource, offset: int, length: int) -> bytes:
    data = bytes(await source.read(offset, length))
    if len(data) != length:
        raise EOFError(f"{source.description} ended at {offset + len(data)}")
    return data


async def source_table(source: ChunkSource) -> tuple[TreeTable, bytes]:
    """The table of the packed tree `source` sends (read from its first bytes and checked as
    any table), and its header and table bytes."""
    length = parse_header(await _read(source, 0, HEADER_SIZE), source.size)
    head = await _read(source, 0, HEADER_SIZE + length)
    return parse_table(head[HEADER_SIZE:], source.size, None), head


async def identify_files(
    source: ChunkSource, table: TreeTable, key: bytes, piece: int
) -> list[tuple[int, int, int]]:
    """The `FileIdentity` of each file of the packed tree `source`, in the table's order, read
    once in `piece`-byte reads."""
    out = []
    for entry in table.files:
        ident, at, end = FileIdentity(key), entry.offset, entry.offset + entry.size
        while at < end:
            data = await _read(source, at, min(piece, end - at))
            ident.update(data)
            at += len(data)
        out.append(ident.identity())
    return out


async def map_files(
    source: ChunkSource, table: TreeTable, numbers: list[int], base: TreeMap, piece: int
) -> dict[int, DeltaMap]:
    """The extents of the files `numbers` (indexes into `table.files`) of `source`, cut as
    `base`'s (its mode, key and block size)."""
    cutter = TreeMapBuilder(base.mode, key=base.key, block_size=base.block_size)
    out = {}
    for number in numbers:
        entry = table.files[number]
        builder, at, end = cutter.file_builder(), entry.offset, entry.offset + entry.size
        while at < end:
            data = await _read(source, at, min(piece, end - at))
            builder.update(data)
            at += len(data)
        out[number] = builder.finish()
    return out


def _base_of(answer: object, meta: SnapshotMeta, vote: Vote) -> TreeMap | None:
    if not isinstance(answer, InstallSnapshotResponse) or answer.vote > vote:
        return None
    offer, size = answer.offer, meta.size
    if offer is None or size is None:
        return None
    if not isinstance(offer.map, bytes) or len(offer.map) > max_tree_offer_bytes(size):
        return None
    limit = max_offer_size(size)
    if not isinstance(offer.size, int) or not 0 <= offer.size <= limit:
        return None
    base = decode_tree_offer(offer.map, max_size=limit)
    return base if base.size == offer.size else None


async def _ask_extents(
    ask: Ask, vote: Vote, meta: SnapshotMeta, mode: str, base: TreeMap, files: list[Identity]
) -> tuple[TreeMap, int] | None:
    """Ask for the extents of the base files that no file of the new tree matches whole (the
    files changed or removed since): the base again with them, and the bytes that cost; None
    when there are none, or the answer is not that base with more extents."""
    held = set(files)
    idents = zip(base.sizes, base.crcs, base.tags, strict=True)
    wanted = [j for j, i in enumerate(idents) if not base.mapped[j] and i not in held]
    wanted = wanted[: (max_recipe_bytes(meta.size or 0) - 16) // 4]
    if not wanted:
        return None
    raw = encode_want(wanted)
    req = InstallSnapshotRequest(vote, meta, 0, b"", False, 0, delta=mode, recipe=raw)
    answer = await ask(req)
    part = _base_of(answer, meta, vote)  # those files alone, in the order asked
    if part is None or not isinstance(answer, InstallSnapshotResponse) or answer.offer is None:
        return None
    pick = [(base.sizes[j], base.crcs[j], base.tags[j]) for j in wanted]
    got = list(zip(part.sizes, part.crcs, part.tags, strict=True))
    if (part.mode, part.key, part.block_size, got) != (base.mode, base.key, base.block_size, pick):
        return None
    maps = dict(zip(wanted, part.file_maps(), strict=True))
    return base.with_maps(maps), len(raw) + len(answer.offer.map)


async def negotiate_tree(
    ask: Ask, vote: Vote, meta: SnapshotMeta, source: ChunkSource, options: TransferOptions
) -> DeltaPlan | None:
    """`fstransport.delta.send.negotiate` for a directory snapshot: ask for a base tree, match
    the packed tree's files against it whole, ask for the extents of the base files left over
    where a file has no whole match, map only those files, send the recipe.  None leaves a full
    transfer."""
    mode, key, piece = options.delta, new_key(), options.chunk_size
    first = InstallSnapshotRequest(vote, meta, 0, b"", False, 0, delta=mode, delta_key=key)
    try:
        table, head = await source_table(source)
        # the files' identities are read while the receiver maps its base
        identities = asyncio.ensure_future(identify_files(source, table, key, piece))
        try:
            answer = await ask(first)
            base = _base_of(answer, meta, vote)
            if base is None or answer.offer is None:
                return None  # (no base: the identities are not waited for)
            files = await identities
        finally:
            if not identities.done():
                identities.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await identities
        map_bytes = len(answer.offer.map)
        checksum = format_checksum(whole_tree_crc(chunk_crc(head), files))
        if meta.checksum is not None and meta.checksum != checksum:
            return None  # the data is not what the caller named: the full transfer says so
        whole = whole_matches(base)
        changed = [i for i, ident in enumerate(files) if ident[0] and ident not in whole]
        if changed:  # base files the new tree has no whole match for: their extents
            asked = await _ask_extents(ask, vote, meta, mode, base, files)
            if asked is not None:
                base, extra = asked
                map_bytes += extra
        if not any(base.mapped):  # no base extents to match against: send those files
            changed = []
        extents = await map_files(source, table, changed, base, piece)
        recipe = plan_tree_recipe(base, files, extents, table.body_offset)
        plan = await send_recipe(ask, vote, meta, mode, recipe, checksum, map_bytes)
        if plan is not None and plan.reused:
            log.info("tree delta: %d of %d bytes reused", plan.reused, meta.size)
        return plan
    except (FstransportError, EOFError) as exc:
        log.warning("tree delta exchange failed (%s); sending the whole tree", exc)
        return None
