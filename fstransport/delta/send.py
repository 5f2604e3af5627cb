"""The sender's side of a delta transfer, I/O: ask for an offer, map the source against it, send
the recipe (`fstransport.protocol.delta_session` has the rules; ``docs/delta.md`` the exchange).

Any failure on the way (no offer, a refused recipe, a lost answer) leaves a full transfer: the
receiver records copied ranges only for an accepted recipe, and a chunk sent over one replaces
it, so what is installed is checked the same way either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.delta.source_map import map_source, plan_source, start_map
from fstransport.errors import FstransportError
from fstransport.messages import (
    Buffer,
    DeltaOffer,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    SnapshotMeta,
    Vote,
)
from fstransport.options import TransferOptions
from fstransport.protocol.delta import Recipe, choose_block_size, new_key
from fstransport.protocol.delta_restart import offer_lost
from fstransport.protocol.delta_session import read_offer
from fstransport.protocol.delta_wire import encode_recipe
from fstransport.protocol.sender import SendWindow
from fstransport.storage.source import ChunkSource

__all__ = [
    "DeltaPlan",
    "RecipeMemory",
    "map_source",
    "negotiate",
    "read_extents",
    "run_exchange",
    "send_recipe",
    "unless_cancelled",
]

log = logging.getLogger("fstransport.sender")

DELTA_IN_FLIGHT = 64
"""Short chunks a delta may have in flight at once (their bytes within the usual window)."""

Ask = Callable[[InstallSnapshotRequest], Awaitable[InstallSnapshotResponse]]
"""Sends one request and returns its answer (the sender's RPC with its deadline)."""


@dataclass(frozen=True)
class DeltaPlan:
    """What a delta exchange settled: the ranges the receiver holds now (skip them), the
    source's checksum (from its map), the bytes the receiver copies from its base, the
    bytes of map and recipe that crossed the network, and whether the receiver takes several
    ranges a request (`fstransport.protocol.delta_pack`)."""

    held: tuple[tuple[int, int], ...]
    checksum: str | None
    reused: int
    wire_bytes: int
    extents: bool = False

    def apply(self, window: SendWindow) -> bool:
        """Count it in `window`'s stats and skip what is held; whether a checksum is known."""
        window.stats.delta_bytes += self.wire_bytes
        window.stats.bytes_reused += self.reused
        if self.held:
            window.on_held(self.held)
            window.short_in_flight = max(window.short_in_flight, DELTA_IN_FLIGHT)
            window.pack = self.extents
        return self.checksum is not None


async def unless_cancelled(
    exchange: Coroutine[Any, Any, DeltaPlan | None], cancel: asyncio.Future[Any] | None
) -> DeltaPlan | None:
    """`exchange`'s result, or None as soon as `cancel` completes (the exchange is cancelled)."""
    task = asyncio.ensure_future(exchange)
    try:
        await asyncio.wait(
            {task} if cancel is None else {task, cancel}, return_when="FIRST_COMPLETED"
        )
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return None if task.cancelled() else task.result()


async def _stop(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


_AGAIN = DeltaPlan((), None, 0, 0)  # (`negotiate` asks again, with a fresh key)


@dataclass
class RecipeMemory:
    """What a send's exchange asked with and planned, for the next exchange of the same send
    (after the receiver started over: `fstransport.protocol.delta_restart`): the same key, so
    that a receiver offering the same base offers the same map, and then the same recipe,
    without reading the source again.  Any other offer is not planned against (its map was
    made with a key sent before, and content written since could aim at it): the exchange is
    asked again with a fresh key.  A recipe the receiver cannot take for want of its offer
    (`offer_lost`: restarted after offering) asks for the offer again, once."""

    key: bytes | None = None
    offer: DeltaOffer | None = None
    recipe: Recipe | None = None
    crc: int = 0
    lost: int = 0  # offers the receiver lost before the recipe came (asked again once)
    spent: int = 0  # map bytes of offers asked in vain, counted with the next plan


async def negotiate(
    ask: Ask,
    vote: Vote,
    meta: SnapshotMeta,
    source: ChunkSource,
    options: TransferOptions,
    *,
    early: bool = True,
    memory: RecipeMemory | None = None,
) -> DeltaPlan | None:
    """Ask the receiver for a base and send a recipe against it; None when there is nothing to
    reuse (no offer, a higher vote, a failure: the transfer is a full one).  `early`: map the
    source while the first request is on its way (not for a receiver in this process, whose
    answer comes at once and whose base map competes for the same CPU).  `memory`: what an
    earlier exchange of this send planned (an offer equal to its offer takes its recipe)."""
    mode, piece = options.delta, options.chunk_size
    memory = memory or RecipeMemory()
    key = memory.key or new_key()  # fresh for this transfer: the receiver tags its map with it
    memory.key, early = key, early and memory.recipe is None
    first = InstallSnapshotRequest(vote, meta, 0, b"", False, 0, delta=mode, delta_key=key)
    # The source's map starts now, with this key and the block size a base of the source's
    # size would have, while the first request is on its way; without an offer it is stopped
    # at once (at most one round trip of reading wasted).
    block = choose_block_size(source.size) if mode == "blocks" else 0
    task = start_map(source, mode, key=key, block_size=block, piece=piece) if early else None
    try:
        plan = await _negotiate(ask, vote, meta, source, options, first, (task, block), memory)
    finally:
        if task is not None:
            await _stop(task)
    if plan is _AGAIN:  # asked again (`RecipeMemory`)
        return await negotiate(ask, vote, meta, source, options, early=early, memory=memory)
    if plan is not None and memory.spent:  # (offers asked in vain crossed the network too)
        plan, memory.spent = replace(plan, wire_bytes=plan.wire_bytes + memory.spent), 0
    return plan


async def _negotiate(
    ask: Ask,
    vote: Vote,
    meta: SnapshotMeta,
    source: ChunkSource,
    options: TransferOptions,
    first: InstallSnapshotRequest,
    started: tuple[asyncio.Future[Any] | None, int],
    memory: RecipeMemory,
) -> DeltaPlan | None:
    mode, piece, key = options.delta, options.chunk_size, first.delta_key
    early, block = started
    try:
        answer = await ask(first)
        if not isinstance(answer, InstallSnapshotResponse) or answer.vote > vote:
            return None
        base_map = read_offer(answer.offer, meta, mode)
        if base_map is None or answer.offer is None:
            return None
        offer = answer.offer
        map_bytes = len(offer.map)
        if memory.recipe is not None:  # (an exchange again, with the key sent before)
            if memory.offer != offer:  # another map made with a key seen before: not used
                memory.key = memory.offer = memory.recipe = None
                memory.spent += map_bytes
                return _AGAIN
            recipe, crc = memory.recipe, memory.crc  # the same base, the same map
        else:
            recipe, crc = await plan_source(source, mode, base_map, early, (key, block), piece)
            memory.offer, memory.recipe, memory.crc = offer, recipe, crc
        checksum = format_checksum(crc)
        if meta.checksum is not None and meta.checksum != checksum:
            return None  # the data is not what the caller named: the full transfer says so
        try:
            plan = await send_recipe(ask, vote, meta, mode, recipe, checksum, map_bytes)
        except FstransportError as exc:
            if not offer_lost(exc) or memory.lost:
                raise
            log.info("the receiver lost its offer (restarted?); asking for it again")
            memory.lost, memory.spent = memory.lost + 1, memory.spent + map_bytes
            return _AGAIN
        if plan is not None and plan.reused:
            log.info(
                "delta against %r: %d of %d bytes reused", offer.base_id, plan.reused, meta.size
            )
        return plan
    except (FstransportError, EOFError) as exc:
        log.warning("delta exchange failed (%s); sending the whole snapshot", exc)
        return None


async def send_recipe(
    ask: Ask,
    vote: Vote,
    meta: SnapshotMeta,
    mode: str,
    recipe: Recipe,
    checksum: str,
    map_bytes: int,
) -> DeltaPlan | None:
    """The exchange's second request: `recipe` (built against the base offered, for content
    whose checksum is `checksum`), and the plan the receiver's answer makes of it; nothing is
    asked when the recipe reuses nothing.  None: the receiver answered with a higher vote."""
    if not recipe.reused:
        return DeltaPlan((), checksum, 0, map_bytes)
    raw = encode_recipe(recipe)
    named = replace(meta, checksum=checksum)
    second = InstallSnapshotRequest(vote, named, 0, b"", False, 0, delta=mode, recipe=raw)
    answer = await ask(second)
    if not isinstance(answer, InstallSnapshotResponse) or answer.vote > vote:
        return None
    wire = map_bytes + len(raw)
    return DeltaPlan(
        tuple(answer.held or ()), checksum, recipe.reused, wire, answer.extents is True
    )


async def run_exchange(
    ask: Callable[[InstallSnapshotRequest], Awaitable[InstallSnapshotResponse]],
    vote: Vote,
    meta: SnapshotMeta,
    source: ChunkSource,
    options: TransferOptions,
    window: SendWindow,
    cancel_task: asyncio.Future[Any] | None,
    *,
    early: bool = True,
    memory: RecipeMemory | None = None,
) -> str | None:
    """The sender's whole delta exchange through `ask`: `negotiate` (a directory snapshot:
    `negotiate_tree`), stopped when `cancel_task` completes; what the receiver holds after it
    is marked in `window` (`early`: see `negotiate`).  Returns the checksum the exchange
    named (it reads the source whole), or None.  `memory`: see `RecipeMemory`."""
    from fstransport.delta.tree_send import negotiate_tree  # (loaded for directory snapshots only)

    if meta.kind == "tree":
        exchange = negotiate_tree(ask, vote, meta, source, options)
    else:
        exchange = negotiate(ask, vote, meta, source, options, early=early, memory=memory)
    plan = await unless_cancelled(exchange, cancel_task)
    if cancel_task is not None and cancel_task.done():
        return None
    if plan is not None and plan.apply(window):
        return plan.checksum
    return None


async def read_extents(
    source: ChunkSource, extents: tuple[tuple[int, int], ...], *, checked: bool
) -> tuple[bytes, int | None]:
    """The bytes of `extents` of `source` joined (a request with extents:
    `fstransport.protocol.delta_pack`), and their CRC32C if `checked`.  A source with
    ``read_many`` reads them all in one call (one worker thread for a local file, not one
    each)."""
    read_many = getattr(source, "read_many", None)
    parts: list[Buffer]
    if read_many is not None:
        parts = list(await read_many(extents))
    else:
        parts = [await source.read(at, length) for at, length in extents]
    data = b"".join(parts)
    return data, chunk_crc(data) if checked else None
