"""The receiver's side of a delta transfer, I/O: find a base and map it for an offer, and build
the target from it before install (`fstransport.protocol.delta_session` decides the rest).

What a store can do as a delta base is its backend's (`DeltaBase`, from the backend's
``delta_base()``): local folders and ``memory://`` fill the partial file from the base; S3
spools the sent ranges and assembles the object in the bucket (``UploadPartCopy``).  A store
without one offers nothing and receives in full.  The base's map is computed when the offer is
due (reading the base once; ``docs/delta.md`` has the cost), with the key the sender sent,
else a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fstransport.checksum import format_checksum, parse_checksum
from fstransport.errors import ChecksumMismatch, InvalidRequest
from fstransport.messages import DeltaOffer, InstallSnapshotRequest, SnapshotMeta
from fstransport.protocol.delta import SEND, Recipe, new_key
from fstransport.protocol.delta_restart import begin_exchange, start_over
from fstransport.protocol.delta_session import ReceiverDelta, accept_recipe
from fstransport.protocol.delta_wire import encode_map
from fstransport.storage.base import DeltaBase, MappedBase, SnapshotSink

if TYPE_CHECKING:
    from fstransport.protocol.receiver import StreamState

Held = tuple[tuple[int, int], ...]

__all__ = ["BaseDelta", "answer_delta", "assemble", "delta_base", "find_base"]

log = logging.getLogger("fstransport.receiver")


@dataclass
class BaseDelta(ReceiverDelta):
    """`ReceiverDelta` with the base as its store found it (`MappedBase`: what pins it)."""

    base: MappedBase | None = None


def delta_base(store: Any, *, keep: bool = False) -> DeltaBase | None:
    """`store`'s `DeltaBase` (from its backend), or None: no delta onto it.  `keep`: a
    long-lived receiver's, which keeps its bases' maps in the store."""
    backend = getattr(store, "backend", None)
    get = getattr(backend, "delta_base", None)
    if get is None:
        return None
    found: DeltaBase | None = get(keep=keep)
    return found


async def find_base(
    store: Any,
    candidates: Iterable[str],
    mode: str,
    key: bytes | None = None,
    *,
    keep: bool = False,
) -> tuple[BaseDelta, bytes] | None:
    """The first of `candidates` (snapshot ids) `store` holds as a file, mapped in `mode` with
    `key` (the sender's, else a fresh one), with its encoded map; None when there is none (or the
    store cannot serve as a delta base)."""
    bases = delta_base(store, keep=keep)
    if bases is None:
        return None
    key = key or new_key()
    for base_id in dict.fromkeys(candidates):
        found = await bases.map_base(base_id, mode, key)
        if found is not None:
            delta = BaseDelta(base_id, found.map.size, found.map, base=found)
            return delta, encode_map(found.map)
    return None


async def answer_delta(
    store: Any,
    latest: str | None,
    state: StreamState,
    req: InstallSnapshotRequest,
    sink: SnapshotSink,
    *,
    keep: bool = False,
    failed: Collection[str] = (),
) -> tuple[Held, DeltaOffer | None, SnapshotSink]:
    """Answer a delta request for `state`'s stream (writing into `sink`): without a recipe,
    find a base (the snapshot held under the same id, else `latest`, the one installed last)
    and offer it (not one of `failed`, whose assembly failed for this snapshot); with one,
    accept it against the base offered (`InvalidRequest` if none was).
    Returns what to tell the sender is held, the offer, and the sink the stream writes into
    from now on (the store's backend may put another in its place for a delta)."""
    assert req.delta is not None
    bases = delta_base(store, keep=keep)
    if req.recipe is None:
        begin_exchange(state)  # (what an earlier recipe copied is not held any more)
        offer = None
        if bases is not None and bases.takes_delta(state.meta, sink, bool(state.ledger.held())):
            named = [state.meta.snapshot_id, *([latest] if latest else [])]
            candidates = [c for c in named if c not in failed]  # (`FailedBases`)
            found: tuple[ReceiverDelta, bytes] | None
            if state.meta.kind == "tree":  # a base tree, by whole files (fstransport.delta.tree)
                from fstransport.delta.tree import find_tree_base

                size = state.meta.size or 0
                found = await find_tree_base(store, candidates, req.delta, req.delta_key, size)
            else:
                found = await find_base(store, candidates, req.delta, req.delta_key, keep=keep)
            if found is not None:
                state.delta, offer = found[0], found[0].offer(found[1])
                await _prefill(bases, sink, state, found[0])
        return tuple(state.ledger.held()), offer, sink
    if bases is not None and state.delta is None:  # offered by a receiver gone since?
        raise start_over(state, req)  # (the sender asks again: `delta_restart.offer_lost`)
    if bases is None or state.delta is None or state.delta.base_map.mode != req.delta:
        raise InvalidRequest("a recipe for a base that was not offered", field="recipe")
    from fstransport.protocol.delta_tree_wire import is_want

    if is_want(req.recipe):  # a tree's base files asked for (fstransport.delta.tree)
        from fstransport.delta.tree import answer_want

        return tuple(state.ledger.held()), await answer_want(store, state, req), sink
    sink = await bases.delta_sink(state.meta, sink)
    held = accept_recipe(state.delta, req.meta, req.recipe, state.ledger)
    accepted = getattr(bases, "accepted", None)
    if accepted is not None:
        accepted(sink)
    if state.meta.checksum is None and req.meta.checksum is not None:
        state.meta = replace(state.meta, checksum=req.meta.checksum)
    log.info(
        "snapshot %r: %d bytes reused from %r",
        state.meta.snapshot_id,
        state.delta.reused,
        state.delta.base_id,
    )
    return held, None, sink


async def _prefill(
    bases: DeltaBase, sink: SnapshotSink, state: StreamState, delta: ReceiverDelta
) -> None:
    """Let the base's backend start filling a fresh partial file from a file base while the
    sender plans (local folders: `fstransport.storage.backends.local.prefill`).  The ledger
    holds nothing yet; a write of this stream still running in a thread is the backend's to
    see (it does not start then: such a write would not claim its range)."""
    prefill = getattr(bases, "prefill", None)
    base = delta.base if isinstance(delta, BaseDelta) else None
    if prefill is not None and base is not None and not state.ledger.held():
        await prefill(sink, base, state.meta.size or 0)


def _recipe_of(delta: ReceiverDelta, copied: list[tuple[int, int, int]]) -> Recipe:
    """The accepted recipe with every copied range that is not in `copied` turned into a sent
    one (its bytes are in the partial data already)."""
    assert delta.recipe is not None
    keep = {(at, length) for at, length, _ in copied}
    ranges = tuple(
        (length, base if (at, length) in keep else SEND)
        for at, length, base in delta.recipe.targets()
    )
    return Recipe(delta.recipe.size, delta.recipe.base_size, ranges)


async def assemble(
    store: Any, sink: SnapshotSink, state: StreamState, meta: SnapshotMeta, *, keep: bool = False
) -> int:
    """Build the target of `sink` (if `state` accepted a delta recipe) from the base's copied
    ranges and the sent ones, checking its CRC32C against the final `meta`'s checksum before
    it can be installed (the store's `DeltaBase` does it: see its ``assemble``); return the
    bytes copied.

    `ChecksumMismatch` (``whole=True``) or `SourceChanged` when the base changed since it was
    offered: the caller drops the partial data, nothing is installed."""
    delta, checksum = state.delta, meta.checksum
    if delta is None or delta.recipe is None or checksum is None:
        return 0
    from fstransport.delta.tree import assemble_tree
    from fstransport.protocol.delta_tree import TreeReceiverDelta

    if isinstance(delta, TreeReceiverDelta):  # a directory snapshot's base tree
        return await assemble_tree(store, sink, delta, delta.still_copied(state.ledger), checksum)
    bases = delta_base(store, keep=keep)
    base = delta.base if isinstance(delta, BaseDelta) else None
    if bases is None or base is None:  # (cannot happen: an offer came from them)
        raise InvalidRequest("a delta recipe without a base", field="recipe")
    recipe = _recipe_of(delta, delta.still_copied(state.ledger))
    crc, reused = await bases.assemble(sink, base, recipe, parse_checksum(checksum))
    if format_checksum(crc) != checksum:
        raise ChecksumMismatch(
            f"snapshot assembled from base {delta.base_id!r}",
            checksum,
            format_checksum(crc),
            whole=True,
        )
    keep_map = getattr(bases, "keep_assembled", None)
    if keep and keep_map is not None:  # its map kept for the next offer (docs/delta.md)
        await keep_map(meta.snapshot_id, sink, recipe, delta.base_map)
    return reused
