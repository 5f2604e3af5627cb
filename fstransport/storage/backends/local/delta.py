"""`LocalDelta`: installed snapshots in a local folder as delta bases (`DeltaBase`): mapped
from the map kept beside them (`fstransport.delta.cache`, else read with `map_file`) when an
offer is due, a block-mode base copied into the partial file while the sender plans
(`Prefill`), the copied ranges left filled with `assemble_local` (``os.copy_file_range``)
before install, and the new snapshot's map kept."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING

from fstransport.errors import SourceChanged, StorageError
from fstransport.messages import SnapshotMeta
from fstransport.protocol.ranges import RangeSet
from fstransport.storage.backends.local.prefill import Prefill, file_identity
from fstransport.storage.backends.local.sink import PwriteSink
from fstransport.storage.base import BaseTree, MappedBase, SnapshotSink

if TYPE_CHECKING:
    from fstransport.protocol.delta import DeltaMap, Recipe
    from fstransport.storage.store import FsspecSnapshotStore

__all__ = ["LocalDelta"]

log = logging.getLogger("fstransport.receiver")

_PREFILLING: dict[str, threading.Semaphore] = {}
"""One prefill at a time per store root (an offer costs at most one background copy)."""


class LocalDelta:
    """The `DeltaBase` of a local folder's store (``sink="auto"``: a `PwriteSink` per stream)."""

    def __init__(self, store: FsspecSnapshotStore, *, keep: bool = False) -> None:
        self.store, self.keep = store, keep  # keep: write the maps' sidecars (read them anyway)

    async def prefill(self, sink: SnapshotSink, base: MappedBase, size: int) -> None:
        """Start copying a block-mode file base into `sink`'s partial file at the same offsets
        while the sender plans (`Prefill`); nothing when another prefill of this store runs,
        or the sink is not a local file.  A copy of another base (an earlier offer on this
        stream) is stopped and forgotten first."""
        if not self.store.prefill or not isinstance(sink, PwriteSink):
            return
        if sink.prefill is not None and sink.prefill.base != base.pin:
            old, sink.prefill = sink.prefill, None
            await asyncio.to_thread(old.stop)  # (what it copied is trusted by nothing now)
        if sink.prefill is not None or sink.writing:  # (a write in a thread claims nothing)
            return
        if base.map.mode != "blocks" or not isinstance(base.pin, str):
            return
        gate = _PREFILLING.setdefault(self.store.root, threading.Semaphore(1))
        if not gate.acquire(blocking=False):
            return
        prefill = _GatedPrefill(base.pin, sink.path, min(size, base.map.size), base.map.size)
        prefill.gate = gate
        sink.prefill = prefill  # (before any write can start: no await from the check)
        try:
            prefill.start()
        except RuntimeError:  # no thread to be had: the assembly copies it all, as without
            sink.prefill = None
            gate.release()

    def accepted(self, sink: SnapshotSink) -> None:
        """The stream accepted a recipe: its received bytes no longer stop the prefill."""
        prefill = getattr(sink, "prefill", None)
        if isinstance(prefill, Prefill):
            prefill.recipe = True

    def takes_delta(self, meta: SnapshotMeta, sink: SnapshotSink, holds: bool) -> bool:
        return True

    async def map_base(self, snapshot_id: str, mode: str, key: bytes) -> MappedBase | None:
        from fstransport.delta.cache import kept_map

        try:
            path = self.store.path(snapshot_id)
        except Exception:  # an id the store would refuse: never a base
            return None
        if not await asyncio.to_thread(os.path.isfile, path):
            return None
        try:
            base_map = await asyncio.to_thread(
                kept_map, self.store.root, path, mode, key=key, write=self.keep
            )
        except Exception as exc:  # a base that cannot be read is no base
            log.warning("delta base %r could not be mapped: %s", snapshot_id, exc)
            return None
        return MappedBase(snapshot_id, base_map, path)

    async def delta_sink(self, meta: SnapshotMeta, sink: SnapshotSink) -> SnapshotSink:
        return sink  # the sent ranges are written at their offsets in the partial file

    async def assemble(
        self, sink: SnapshotSink, base: MappedBase, recipe: Recipe, expected: int
    ) -> tuple[int, int]:
        from fstransport.delta.local import assemble_local

        base_path = str(base.pin)
        prefilled: RangeSet | None = None
        if isinstance(sink, PwriteSink) and sink.prefill is not None:
            prefill, sink.prefill = sink.prefill, None
            held = await asyncio.to_thread(prefill.stop)
            if prefill.base == base_path and prefill.identity == await _identity(base_path):
                prefilled = held  # (else a copy of another base, or of this one before a change)
        try:
            done = await asyncio.to_thread(
                assemble_local,
                recipe,
                base_path,
                sink.path,
                expected_crc=expected,
                fsync=self.store.fsync,
                done=prefilled,
            )
        except StorageError as exc:
            if isinstance(exc, SourceChanged) or exc.subject != base_path:
                raise
            raise SourceChanged(base_path, "reuse", exc) from exc  # gone or unreadable now
        return done.crc32c, done.bytes_reused

    async def tree_base(self, snapshot_id: str) -> BaseTree | None:
        from fstransport.delta.tree_bases import local_tree

        return await asyncio.to_thread(local_tree, snapshot_id, self.store.path(snapshot_id))

    async def assemble_tree(
        self, sink: SnapshotSink, base: BaseTree, base_map: DeltaMap, recipe: Recipe, expected: int
    ) -> tuple[int, int]:
        from fstransport.delta.tree_bases import assemble_local_tree

        fsync = self.store.fsync
        crc = await asyncio.to_thread(assemble_local_tree, base, recipe, sink.path, fsync)
        return crc, recipe.reused

    async def keep_assembled(
        self, snapshot_id: str, sink: SnapshotSink, recipe: Recipe, base_map: DeltaMap
    ) -> None:
        """Keep the map of a snapshot just assembled (and checked) from a delta, for the next
        offer; a map not kept is read at that offer instead."""
        from fstransport.delta.cache import keep_assembled

        final = self.store.path(snapshot_id)
        try:
            await asyncio.to_thread(
                keep_assembled, self.store.root, final, sink.path, recipe, base_map
            )
        except Exception as exc:
            log.warning("could not keep the delta map of %s: %s", final, exc)


async def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        return file_identity(await asyncio.to_thread(os.stat, path))
    except OSError:
        return None


class _GatedPrefill(Prefill):
    """A `Prefill` that lets its store's next one start when its copy ends."""

    gate: threading.Semaphore | None = None

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            if self.gate is not None:
                self.gate.release()
