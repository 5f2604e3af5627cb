"""The sender's map of its source, I/O: a block-mode source is sketched by super-blocks while the
first request is on its way, and hashed block by block only inside the super-blocks that differ
from the offered base's (`fstransport.protocol.delta_super`); a CDC source, a base map without
a second level, or a source that is not cheap to read twice (`rereads_cheaply`: anything but a
local file through its memory map or a buffer, e.g. an S3 object) is mapped whole in one read
(`map_source`).  See ``docs/delta.md``."""

from __future__ import annotations

import asyncio
import os
from array import array
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fstransport.messages import Buffer
from fstransport.protocol.delta import SUPER_SHIFT, DeltaMap, MapBuilder, Recipe, plan_recipe
from fstransport.protocol.delta_super import Sketch, plan_two_level, refine, two_level
from fstransport.protocol.delta_tags import derive_tags, hash_pieces
from fstransport.storage.shared_source import SharedReader
from fstransport.storage.source import BufferSource, ChunkSource, PreadSource

__all__ = [
    "HASH_WORKERS",
    "map_source",
    "plan_against_sketch",
    "plan_source",
    "rereads_cheaply",
    "sketch_source",
    "start_map",
]


HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Pieces of a source read and hashed at once (BLAKE3 and CRC32C release the GIL over a
piece, so each worker thread keeps a core busy)."""

T = TypeVar("T")


async def _each_piece(
    source: ChunkSource,
    jobs: Sequence[tuple[int, int, Callable[[Buffer], T]]],
    workers: int = HASH_WORKERS,
) -> list[T]:
    """For each ``(offset, length, work)`` of `jobs`, in order, `work` of those bytes of
    `source`: up to `workers` pieces read and worked on at once, each in a worker thread."""
    gate = asyncio.Semaphore(workers)

    async def one(at: int, length: int, work: Callable[[Buffer], T]) -> T:
        async with gate:
            data = await source.read(at, length)
            if len(data) != length:
                raise EOFError(f"{source.description} ended before {at + length}")
            return await asyncio.to_thread(work, data)

    tasks = [asyncio.ensure_future(one(*job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # (a failed or cancelled piece stops the others: nothing reads on behind it)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def rereads_cheaply(source: ChunkSource) -> bool:
    """Whether reading `source`'s differing super-blocks again costs no more than a memory
    copy (a local file read through its memory map or with ``pread``, a buffer, or a
    `SharedReader` of one), so that a sketch first pays."""
    if isinstance(source, SharedReader):  # (ship() reads through one, even for one target)
        return rereads_cheaply(source.source)
    return isinstance(source, (PreadSource, BufferSource))


async def map_source(
    source: ChunkSource, mode: str, *, key: bytes, block_size: int, piece: int
) -> DeltaMap:
    """The map of `source` read once in `piece`-byte reads."""
    builder = MapBuilder(mode, key=key, block_size=block_size)
    at = 0
    while at < source.size:
        data = await source.read(at, min(piece, source.size - at))
        if not len(data):
            raise EOFError(f"{source.description} ended at {at}")
        await asyncio.to_thread(builder.update, data)  # (the loop serves the answer meanwhile)
        at += len(data)
    builder.segment()
    return await asyncio.to_thread(builder.finish)


async def sketch_source(source: ChunkSource, *, key: bytes, block_size: int, piece: int) -> Sketch:
    """The `Sketch` of `source` (its super-blocks), read once in pieces of about `piece` bytes
    (whole super-blocks), several hashed at once."""
    unit = block_size << SUPER_SHIFT
    step = max(unit, piece - piece % unit)
    spans = [(at, min(step, source.size - at)) for at in range(0, source.size, step)]
    hashed = await _each_piece(
        source, [(at, length, lambda data: hash_pieces(data, unit)) for at, length in spans]
    )
    crcs, digests = array("I"), bytearray()
    for part_crcs, part_digests in hashed:
        crcs.extend(part_crcs)
        digests += part_digests
    tags = await asyncio.to_thread(derive_tags, key, bytes(digests))
    return Sketch(source.size, bytes(key), block_size, crcs, tags)


def start_map(
    source: ChunkSource, mode: str, *, key: bytes, block_size: int, piece: int
) -> asyncio.Future[Any]:
    """The source's map started before the offer: a `Sketch` for blocks (of a source that
    `rereads_cheaply`), else a `DeltaMap`."""
    if mode == "blocks" and rereads_cheaply(source):
        return asyncio.ensure_future(
            sketch_source(source, key=key, block_size=block_size, piece=piece)
        )
    return asyncio.ensure_future(
        map_source(source, mode, key=key, block_size=block_size, piece=piece)
    )


async def plan_against_sketch(
    source: ChunkSource, base: DeltaMap, sketch: Sketch, piece: int
) -> Recipe:
    """Hash the source's blocks inside the super-blocks that differ and plan: each run of them
    within `piece` bytes is one read, hashed in one worker-thread call."""
    unit, wanted = sketch.unit, sketch.differing(base)
    runs: list[list[int]] = []
    for index in wanted:
        if runs and (index - runs[-1][0] + 1) * unit <= piece:
            runs[-1].append(index)
        else:
            runs.append([index])

    def job(run: list[int]) -> tuple[int, int, Callable[[Buffer], dict[int, Any]]]:
        lo, hi = run[0] * unit, min((run[-1] + 1) * unit, sketch.size)

        def hash_run(data: Buffer) -> dict[int, Any]:
            view = memoryview(data).cast("B")
            pieces = [(i, view[i * unit - lo : (i + 1) * unit - lo]) for i in run]
            return refine(sketch.key, sketch.block_size, pieces)

        return lo, hi - lo, hash_run

    refined: dict[int, Any] = {}
    # One thread: a call per 4 KiB block holds the GIL between hashes, and threads taking turns
    # at it were slower (160 MiB of blocks: 0.13 s in one, 0.17 s in two, 0.33 s in four).
    for found in await _each_piece(source, [job(run) for run in runs], workers=1):
        refined.update(found)
    return await asyncio.to_thread(plan_two_level, base, sketch, refined)


async def plan_source(
    source: ChunkSource,
    mode: str,
    base: DeltaMap,
    early: asyncio.Future[Any] | None,
    started: tuple[bytes | None, int],
    piece: int,
) -> tuple[Recipe, int]:
    """The recipe of `source` against the offered `base`, and the source's whole CRC32C: from
    the map started early (`start_map` with the key and block size `started`) when the offer
    uses them, else made now (an early map that cannot serve is cancelled; the caller awaits
    it)."""
    sketching = mode == "blocks" and rereads_cheaply(source)
    blocks = sketching and two_level(base)
    usable = early is not None and (base.key, base.block_size) == started
    if sketching and not blocks:
        usable = False  # (the early map is a sketch, and this base has no second level)
    if early is not None and not usable:
        early.cancel()
    found = await early if early is not None and usable else None
    if blocks:
        sketch = found if isinstance(found, Sketch) else None
        if sketch is None:
            sketch = await sketch_source(
                source, key=base.key, block_size=base.block_size, piece=piece
            )
        return await plan_against_sketch(source, base, sketch, piece), sketch.whole_crc()
    made = found if isinstance(found, DeltaMap) else None
    if made is None:
        made = await map_source(source, mode, key=base.key, block_size=base.block_size, piece=piece)
    return plan_recipe(base, made), made.whole_crc()
