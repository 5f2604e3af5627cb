"""The local assembly started early: the ranges a delta copies from its base are copied into
the partial file as soon as the recipe is accepted, while the sent ranges arrive, instead of
all at install (``docs/delta.md``, "Assembly overlapped with the chunks").

Only for a local target whose base is a local file (a `PwriteSink` partial file, a base pinned
by its path); memory, S3 and directory targets assemble at install as before.  The copied and
the sent ranges of a recipe are disjoint, but a sender may still send a copied range (after a
rewind, the ledger then records the sent chunk instead), so each batch of copies runs under the
stream's lock, as chunk writes do, and copies only ranges the ledger still records as copied at
that moment: a chunk written later over a copied range simply overwrites it, one written before
makes the batch skip it.  What was copied is noted in `BaseDelta.prefilled`; at install the
prefill is stopped (it waits for the lock the final chunk holds, so it is never inside a copy
then) and the assembly copies only what is left, then truncates and reads the whole result for
its CRC32C, as ever: a base changed meanwhile is caught there.  A prefill that fails (the base
gone, a short read) just stops; the assembly at install meets the same failure and reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from fstransport.protocol.delta import SEND

__all__ = ["BATCH", "ENABLED", "start_prefill", "stop_prefill"]

log = logging.getLogger("fstransport.receiver")

ENABLED = True
"""Whether a local delta's copies start at the recipe (benchmarks turn it off to compare)."""
BATCH = 64 * 1024 * 1024
"""Bytes copied under the stream's lock at a time (a chunk waits at most for one batch)."""


def start_prefill(stream: Any) -> asyncio.Future[None] | None:
    """Begin copying the accepted recipe's copied ranges of `stream` (a `receive_streams`
    stream, its lock held by the caller) in a task of its own; None where it does not apply."""
    from fstransport.delta.receive import BaseDelta
    from fstransport.storage.backends.local.sink import PwriteSink

    delta, sink = stream.state.delta, stream.sink
    if not (ENABLED and isinstance(delta, BaseDelta) and isinstance(sink, PwriteSink)):
        return None
    base = delta.base
    if base is None or not isinstance(base.pin, str) or delta.recipe is None:
        return None
    task = asyncio.ensure_future(_prefill(stream, delta, base.pin, sink.path))
    task.add_done_callback(_consume)
    return task


async def stop_prefill(task: asyncio.Future[None] | None) -> None:
    """Stop a prefill (its stream's lock held by the caller: it is between batches)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("an early delta assembly stopped: %s", task.exception())


async def _prefill(stream: Any, delta: Any, base_path: str, target_path: str) -> None:
    recipe = delta.recipe
    batch: list[tuple[int, int, int]] = []
    size = 0
    batches: list[list[tuple[int, int, int]]] = []
    for at, length, base_at in recipe.targets():
        if base_at == SEND:
            continue
        batch.append((at, length, base_at))
        size += length
        if size >= BATCH:
            batches.append(batch)
            batch, size = [], 0
    if batch:
        batches.append(batch)
    for todo in batches:
        async with stream.lock:
            if stream.closed or stream.state.delta is not delta:
                return  # dropped, or a new exchange began: none of this is wanted now
            still = {(at, length) for at, length, _ in delta.still_copied(stream.state.ledger)}
            todo = [
                r for r in todo if (r[0], r[1]) in still and (r[0], r[1]) not in delta.prefilled
            ]
            await asyncio.to_thread(_copy, base_path, target_path, recipe.base_size, todo)
            delta.prefilled.update((at, length) for at, length, _ in todo)


def _copy(
    base_path: str, target_path: str, base_size: int, ranges: list[tuple[int, int, int]]
) -> None:
    from fstransport.delta.local import copy_range

    if not ranges:
        return
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    base = os.open(base_path, os.O_RDONLY | nofollow)
    try:
        if os.fstat(base).st_size != base_size:
            raise EOFError("the base changed size since its map was made")
        target = os.open(target_path, os.O_WRONLY | nofollow)
        try:
            for at, length, base_at in ranges:
                copy_range(base, target, base_at, at, length, kernel=True)
        finally:
            os.close(target)
    finally:
        os.close(base)
