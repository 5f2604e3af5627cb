"""The receiver's side of a delta transfer, I/O: find a base and map it for an offer, and fill
the copied ranges from it before install (`fstransport.protocol.delta_session` decides the rest).

Bases are found in local folders (`PwriteSink` stores) and ``memory://`` stores; any other store
offers nothing and receives in full.  The base's map is computed when the offer is due (reading
the base once, in a worker thread; ``docs/delta.md`` has the cost), with the key the sender sent
(it maps its source meanwhile), else a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.delta.cache import keep_assembled, kept_map
from fstransport.delta.local import assemble_local
from fstransport.errors import ChecksumMismatch, InvalidRequest, SourceChanged, StorageError
from fstransport.messages import DeltaOffer, InstallSnapshotRequest, SnapshotMeta
from fstransport.protocol.delta import SEND, Recipe, build_map, new_key
from fstransport.protocol.delta_session import ReceiverDelta, accept_recipe
from fstransport.protocol.delta_wire import encode_map

if TYPE_CHECKING:
    from fstransport.protocol.receiver import StreamState

Held = tuple[tuple[int, int], ...]

__all__ = ["answer_delta", "assemble", "find_base"]

log = logging.getLogger("fstransport.receiver")


def _kind(store: Any) -> str | None:
    """``"local"``, ``"memory"`` or None (no delta) for `store`."""
    backend = getattr(store, "backend", None)
    if backend is None or getattr(store, "sink_kind", None) != "auto":
        return None
    from fstransport.storage.backends.local import LocalBackend
    from fstransport.storage.backends.memory import MemoryBackend

    if isinstance(backend, LocalBackend):
        return "local"
    if isinstance(backend, MemoryBackend):
        return "memory"
    return None


def _memory_file(store: Any, path: str) -> Any:
    from fsspec.implementations.memory import MemoryFile

    found = store.backend.fs.store.get(path)
    return found if isinstance(found, MemoryFile) else None


async def find_base(
    store: Any, candidates: Iterable[str], mode: str, key: bytes | None = None
) -> tuple[ReceiverDelta, bytes] | None:
    """The first of `candidates` (snapshot ids) `store` holds as a file, mapped in `mode` with
    `key` (the sender's, else a fresh one), with its encoded map; None when there is none (or the
    store cannot serve as a delta base)."""
    key = key or new_key()
    kind = _kind(store)
    if kind is None:
        return None
    for base_id in dict.fromkeys(candidates):
        try:
            path = store.path(base_id)
        except Exception:  # an id the store would refuse: never a base
            continue
        if kind == "local":
            if not await asyncio.to_thread(os.path.isfile, path):
                continue
            try:
                base_map = await asyncio.to_thread(kept_map, store.root, path, mode, key=key)
            except Exception as exc:  # a base that cannot be read is no base
                log.warning("delta base %r could not be mapped: %s", base_id, exc)
                continue
        else:
            found = _memory_file(store, path)
            if found is None:
                continue
            with found.getbuffer() as view:  # (an installed file is not written to)
                base_map = await asyncio.to_thread(build_map, mode, view, key=key)
        delta = ReceiverDelta(base_id, base_map.size, base_map)
        return delta, encode_map(base_map)
    return None


async def answer_delta(
    store: Any, latest: str | None, state: StreamState, req: InstallSnapshotRequest
) -> tuple[Held, DeltaOffer | None]:
    """Answer a delta request for `state`'s stream: without a recipe, find a base (the snapshot
    held under the same id, else `latest`, the one installed last) and offer it; with one,
    accept it against the base offered (`InvalidRequest` if none was).  Returns what to tell
    the sender is held, and the offer."""
    assert req.delta is not None
    if req.recipe is None:
        if state.delta is not None:  # a new exchange: what an earlier recipe copied is not held
            for at, length, _ in state.delta.still_copied(state.ledger):
                state.ledger.discard(at, at + length)
        candidates = [state.meta.snapshot_id, *([latest] if latest else [])]
        found = await find_base(store, candidates, req.delta, req.delta_key)
        state.delta = None if found is None else found[0]
        offer = None if found is None else found[0].offer(found[1])
        return tuple(state.ledger.held()), offer
    if state.delta is None or state.delta.base_map.mode != req.delta:
        raise InvalidRequest("a recipe for a base that was not offered", field="recipe")
    held = accept_recipe(state.delta, req.meta, req.recipe, state.ledger)
    if state.meta.checksum is None and req.meta.checksum is not None:
        state.meta = replace(state.meta, checksum=req.meta.checksum)
    log.info(
        "snapshot %r: %d bytes reused from %r",
        state.meta.snapshot_id,
        state.delta.reused,
        state.delta.base_id,
    )
    return held, None


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


async def assemble(store: Any, sink: Any, state: StreamState, meta: SnapshotMeta) -> int:
    """Fill the copied ranges of `sink`'s partial data (if `state` accepted a delta recipe)
    from the base and check the result's CRC32C, computed from its bytes, against the final
    `meta`'s checksum; return the bytes copied.

    `ChecksumMismatch` (``whole=True``) or `SourceChanged` when the base changed since it was
    offered: the caller drops the partial data, nothing is installed."""
    delta, checksum = state.delta, meta.checksum
    if delta is None or delta.recipe is None or checksum is None:
        return 0
    recipe = _recipe_of(delta, delta.still_copied(state.ledger))
    base_path = store.path(delta.base_id)
    if _kind(store) == "local":
        try:
            fsync = bool(getattr(store, "fsync", False))
            done = await asyncio.to_thread(
                assemble_local, recipe, base_path, sink.path, fsync=fsync
            )
        except StorageError as exc:
            if isinstance(exc, SourceChanged) or exc.subject != base_path:
                raise
            raise SourceChanged(base_path, "reuse", exc) from exc  # gone or unreadable now
        crc, reused = done.crc32c, done.bytes_reused
    else:
        crc, reused = _assemble_memory(store, sink.path, base_path, recipe)
    if format_checksum(crc) != checksum:
        raise ChecksumMismatch(
            f"snapshot assembled from base {delta.base_id!r}",
            checksum,
            format_checksum(crc),
            whole=True,
        )
    if _kind(store) == "local":  # its map kept for the next offer (docs/delta.md)
        final = store.path(meta.snapshot_id)
        try:
            await asyncio.to_thread(
                keep_assembled, store.root, final, sink.path, recipe, delta.base_map
            )
        except Exception as exc:  # not kept: read at its first offer instead
            log.warning("could not keep the delta map of %s: %s", final, exc)
    return reused


def _assemble_memory(store: Any, path: str, base_path: str, recipe: Recipe) -> tuple[int, int]:
    target, base = _memory_file(store, path), _memory_file(store, base_path)
    if target is None:
        raise SourceChanged(path, "assemble", FileNotFoundError(path))
    source = b"" if base is None else base.getvalue()
    if base is None or len(source) != recipe.base_size:
        raise SourceChanged(base_path, "reuse", ValueError("the delta base changed"))
    reused = 0
    for at, length, base_at in recipe.targets():
        if base_at == SEND:
            continue
        target.seek(at)
        target.write(source[base_at : base_at + length])
        reused += length
    target.truncate(recipe.size)
    with target.getbuffer() as view:
        return chunk_crc(view[: recipe.size]), reused
