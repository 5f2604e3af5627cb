"""Delta through the relay, I/O: the sender stages each chunk's block map after its bytes (one
object, one PUT), and a receiver that holds a base fetches only the ranges its base lacks.
See ``docs/relay.md`` ("Delta and the relay") and `fstransport.protocol.relay_trailer`.

A receiver fetches a staged chunk with a block map (its name carries the map's SHA-256) so:

1. it finds its base once per snapshot it receives: the snapshot held under the same id, else
   the one it installed last, mapped by its store's `DeltaBase` in the map's mode (a long-lived
   receiver's kept map: no read of the base); a lookup that failed for a passing reason is
   tried again by a later chunk (`fstransport.delta.lookups`);
2. reads the map (one ranged GET behind the chunk's bytes) and checks its SHA-256 against the
   name; plans the chunk (`plan_chunk`): blocks whose digest the base holds come from the base;
3. fetches the other ranges (ranged GETs, several at once), checks each fetched extent's
   digest (`extent_digest`) against the map, reads the rest from the base, and checks the
   chunk's CRC32C (the reference's) from the assembled bytes.

Any check that fails, a map that does not pay (most of the chunk would be fetched anyway, or
too many ranges), or a base that cannot be read: the chunk is fetched whole, as without a base.
The chunk then goes through the store like any other, and the whole snapshot's checksum is
checked at install as ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import IO, Any, TypedDict

from fstransport.checksum import chunk_crc
from fstransport.delta.lookups import Found, Lookups
from fstransport.errors import InvalidRequest, StorageError
from fstransport.messages import Buffer, SnapshotMeta, StagedChunk
from fstransport.protocol.delta import DeltaMap, new_key
from fstransport.protocol.delta_tags import DIGEST_SIZE, extent_digest
from fstransport.protocol.relay_trailer import (
    Trailer,
    build_trailer,
    decode_trailer,
    digest_index,
    max_trailer_bytes,
    plan_chunk,
    trailer_digest,
    trailer_mode,
)
from fstransport.storage.staging import StagingStore, trailer_of

__all__ = [
    "MAX_RANGES",
    "NOT_FETCHED",
    "RANGE_STREAMS",
    "Counts",
    "Fetched",
    "RelayBases",
    "chunk_trailer",
    "fetch_staged",
]

log = logging.getLogger("fstransport.relay")

MAX_RANGES = 64
"""Ranges of one chunk fetched at most; a chunk that needs more is fetched whole (one GET)."""
RANGE_STREAMS = 8
"""Ranged GETs of one chunk at once."""
_MAX_BASES = 8  # snapshots whose base a receiver remembers at once


async def chunk_trailer(
    delta: str, meta: SnapshotMeta, offset: int, data: Buffer, ref: StagedChunk
) -> tuple[bytes, StagedChunk]:
    """The block map to stage after the chunk `data` at `offset` (sent with ``delta``), and
    `ref` named for it; ``b""`` and `ref` as it is when none is staged (`trailer_mode`)."""
    how = trailer_mode(delta, meta, offset)
    if how is None or not len(memoryview(data)):
        return b"", ref
    raw = await asyncio.to_thread(build_trailer, how[0], how[1], data)  # (off the event loop)
    head, sep, generation = ref.name.partition("-r")  # (the name's hex has no "r")
    return raw, replace(ref, name=f"{head}-t{trailer_digest(raw)}{sep}{generation}")


class Counts(TypedDict):
    """`InstallSnapshotResponse`'s fields for a staged chunk."""

    reused: int
    fetched: int


@dataclass
class Fetched:
    """A staged chunk's bytes, the bytes of it taken from a base, and those fetched."""

    data: Buffer
    reused: int = 0
    fetched: int = 0

    @property
    def counts(self) -> Counts:
        return {"reused": self.reused, "fetched": self.fetched}


NOT_FETCHED = Fetched(b"")
"""What a request that named no staged chunk fetched: nothing."""


Mapped = tuple[DeltaMap, "dict[bytes, int] | None"]
"""A base's map in a trailer's mode, with a digest index for CDC."""


class RelayBases:
    """The bases one receiver fills staged chunks from, found once per snapshot it receives.

    `latest` returns the id the receiver installed last (None: none).  `drop` forgets a
    snapshot's base (the receiver installed it, or closes).  A lookup that failed for a passing
    reason (a storage error, a base read that raised) is not kept as "no base": a later chunk
    of the snapshot looks again (`fstransport.delta.lookups`, at most `MAX_ATTEMPTS` times)."""

    def __init__(
        self, store: Any, latest: Callable[[], Awaitable[str | None]], *, keep: bool = False
    ) -> None:
        self.store, self.latest, self.keep = store, latest, keep
        self.found: Lookups[str, str] = Lookups(keep=_MAX_BASES)
        """The base id of each snapshot id."""
        self.maps: Lookups[tuple[str, str, str, int], Mapped] = Lookups(keep=2 * _MAX_BASES)
        """Each snapshot's base map by (snapshot id, base id, mode, block size)."""

    def _backend(self) -> Any:
        from fstransport.delta.receive import delta_base

        return delta_base(self.store, keep=self.keep)

    async def base(self, meta: SnapshotMeta) -> str | None:
        """The id of `meta`'s base: the snapshot held under its id, else the one installed last;
        None when the receiver holds neither (or its store cannot serve as a base)."""
        if self._backend() is None or meta.kind == "tree":
            return None
        return await self.found.get(meta.snapshot_id, lambda: self._find(meta))

    async def _find(self, meta: SnapshotMeta) -> Found[str]:
        exists = getattr(self.store, "exists", None)
        if exists is None:
            return Found(None)
        sure = True
        try:
            latest = await self.latest()
        except Exception as exc:  # (a backend's own error): not known now, asked again later
            log.info("the last installed snapshot could not be read: %s", exc)
            latest, sure = None, False
        for base_id in dict.fromkeys([meta.snapshot_id, latest]):
            try:
                if base_id is not None and await exists(base_id):
                    return Found(base_id, definite=sure)
            except InvalidRequest:
                continue  # an id the store refuses: never a base
            except Exception as exc:  # (a backend's own error): asked again by a later chunk
                log.info("delta base %r not usable for the relay now: %s", base_id, exc)
                sure = False
        return Found(None, definite=sure)

    async def mapped(self, meta: SnapshotMeta, base_id: str, trailer: Trailer) -> Mapped | None:
        """The map of `base_id` (`meta`'s base) in the trailer's mode (made once: its store
        maps it, or takes its kept map), with a digest index for CDC; None when its blocks
        cannot match the trailer's (or it cannot be mapped now)."""
        key = (meta.snapshot_id, base_id, trailer.mode, trailer.block_size)
        return await self.maps.get(key, lambda: self._map(base_id, trailer))

    async def _map(self, base_id: str, trailer: Trailer) -> Found[Mapped]:
        backend = self._backend()
        if backend is None:
            return Found(None)
        found = await backend.map_base(base_id, trailer.mode, new_key())
        if found is None:  # not held (definite), or not readable now (held: asked again)
            return Found(None, definite=not await self._held(base_id))
        base_map: DeltaMap = found.map
        if len(base_map.digests) != DIGEST_SIZE * len(base_map):
            return Found(None)
        if trailer.mode == "blocks":
            return Found((base_map, None) if base_map.block_size == trailer.block_size else None)
        return Found((base_map, await asyncio.to_thread(digest_index, base_map)))

    async def _held(self, base_id: str) -> bool:
        """Whether the store still holds `base_id` (True when it cannot say)."""
        try:
            return bool(await self.store.exists(base_id))
        except Exception:  # (a backend's own error): maybe held
            return True

    def drop(self, snapshot_id: str) -> None:
        """Forget the base found for `snapshot_id`, and its maps."""
        self.found.drop(lambda key: key == snapshot_id)
        self.maps.drop(lambda key: key[0] == snapshot_id)


async def fetch_staged(
    store: StagingStore,
    ref: StagedChunk,
    meta: SnapshotMeta,
    offset: int,
    bases: RelayBases | None,
) -> Fetched:
    """The bytes of the staged chunk `ref` (at `offset` of `meta`'s snapshot), checked against
    its CRC32C: from the receiver's base where its block map allows (see the module), else
    fetched whole (`StagingStore.fetch`: `ChecksumMismatch`, `StorageError`)."""
    digest = trailer_of(ref.name)
    base = None
    if bases is not None and digest is not None and ref.length:
        base = await bases.base(meta)  # (a base id)
    spent = 0
    if base is not None and bases is not None and digest is not None:
        end = ref.length + max_trailer_bytes(ref.length)
        try:  # (an object cut short has no map: a GET past its end may fail, and is no worse)
            raw: Buffer = await store.fetch_range(ref.url, ref.length, end)
        except StorageError as exc:
            log.warning("block map of %s not read (%s): fetching the chunk whole", ref.url, exc)
            raw = b""
        spent = len(raw)
        try:
            if trailer_digest(raw) != digest:
                raise InvalidRequest("its SHA-256 is not the one its name names", field="staged")
            trailer = decode_trailer(raw, ref.length)
        except InvalidRequest as exc:
            log.warning("block map of %s refused (%s): fetching the chunk whole", ref.url, exc)
        else:
            mapped = await bases.mapped(meta, base, trailer)
            if mapped is not None:
                done = await _from_base(store, ref, offset, trailer, base, mapped, bases)
                spent += done.fetched
                if done.reused:
                    return replace(done, fetched=spent)
    data = await store.fetch(ref)
    return Fetched(data, 0, spent + len(memoryview(data)))


async def _from_base(
    store: StagingStore,
    ref: StagedChunk,
    offset: int,
    trailer: Trailer,
    base_id: str,
    mapped: Mapped,
    bases: RelayBases,
) -> Fetched:
    """The chunk assembled from the base and the ranges fetched; ``reused`` 0 (and what was
    fetched in vain) when it must be fetched whole instead."""
    pieces = plan_chunk(trailer, offset, *mapped)
    wanted = [(at, length) for at, length, where in pieces if where is None]
    if len(wanted) == len(pieces) or len(wanted) > MAX_RANGES:
        return Fetched(b"")  # nothing to reuse, or too many requests: one GET is cheaper
    if 2 * sum(length for _, length in wanted) >= ref.length:
        return Fetched(b"")
    gate = asyncio.Semaphore(RANGE_STREAMS)

    async def get(at: int, length: int) -> Buffer:
        async with gate:
            return await store.fetch_range(ref.url, at, at + length)

    got = await asyncio.gather(*(get(at, length) for at, length in wanted))
    fetched = sum(len(memoryview(piece)) for piece in got)
    try:
        fileobj: IO[bytes] = await bases.store.open(base_id)
    except (StorageError, OSError) as exc:
        log.info("delta base %r cannot be read: %s", base_id, exc)
        return Fetched(b"", 0, fetched)
    try:
        buffer = await asyncio.to_thread(_assemble, fileobj, ref, trailer, pieces, got)
    except OSError as exc:
        log.info("delta base %r cannot be read: %s", base_id, exc)
        buffer = None
    finally:
        await asyncio.to_thread(fileobj.close)
    if buffer is None:
        return Fetched(b"", 0, fetched)
    reused = ref.length - sum(length for _, length in wanted)
    return Fetched(buffer, reused, fetched)


def _assemble(
    fileobj: IO[bytes],
    ref: StagedChunk,
    trailer: Trailer,
    pieces: list[tuple[int, int, int | None]],
    got: list[Buffer],
) -> bytearray | None:
    """The chunk from the base's pieces (read from `fileobj`) and the fetched ones (`got`, in
    order), or None when any extent's digest is not the map's or the whole chunk's CRC32C is
    not the reference's (blocking).  Every extent is checked, those read from the base too: a
    base changed since its map was made could otherwise keep the chunk's CRC32C (four chosen
    bytes do it), and the map's digests are the only check that CRC32C's linearity cannot
    defeat."""
    buffer = bytearray(ref.length)
    view = memoryview(buffer)
    fetched = iter(got)
    spans: list[tuple[int, int]] = []
    for at, length, where in pieces:
        if where is None:
            piece = memoryview(next(fetched)).cast("B")
            if len(piece) != length:
                return None  # the object was cut short
            view[at : at + length] = piece
            spans.append((at, at + length))
            continue
        fileobj.seek(where)
        if _read_into(fileobj, view[at : at + length]) != length:  # (no copy of the bytes)
            return None  # the base shrank since its map was made
    span = iter(spans)
    current = next(span, None)
    for at, length, digest in trailer.extents():
        while current is not None and current[1] <= at:
            current = next(span, None)
        inside = current is not None and current[0] <= at
        if extent_digest(view[at : at + length]) != digest:
            what = "a fetched range of %s" if inside else "the base's bytes for %s"
            log.warning(what + " differ from its block map", ref.url)
            return None
    if chunk_crc(buffer) != ref.crc32c:
        log.warning("%s assembled from the base does not match its CRC32C", ref.url)
        return None
    return buffer


def _read_into(fileobj: IO[bytes], target: memoryview) -> int:
    """Fill `target` from `fileobj` straight into its buffer; the bytes read (fewer at the end
    of the file)."""
    done = 0
    while done < len(target):
        got = fileobj.readinto(target[done:])  # type: ignore[attr-defined]
        if not got:
            break
        done += got
    return done
