"""`SharedSource`: one read of a source for several senders (fan-out to several targets).

Each sender reads through its own `SharedSource.reader`.  A chunk one reader asked for is read
once from the source and kept until every other reader has taken it or moved more than `ahead`
bytes past it (a reader that resumed, or that skips chunks, never asks for some); a reader may
run at most `ahead` bytes in front of the slowest one, so memory stays bounded whatever the
snapshot's size.  A chunk asked for again after it was dropped (a rewind, a retry, a shrunken
chunk) is read from the source again.  `bytes_read` counts what came from the source.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from fstransport.checksum import chunk_crc
from fstransport.messages import Buffer
from fstransport.storage.base import ChunkSource, read_checked

__all__ = ["SharedReader", "SharedSource"]


@dataclass
class _Entry:
    offset: int
    waiting: set[int]
    """Readers that may still ask for this chunk."""
    ready: asyncio.Future[tuple[Buffer, int | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SharedSource:
    """Reads of `source` shared by `readers` senders; see the module's docstring."""

    def __init__(self, source: ChunkSource, readers: int, ahead: int) -> None:
        self.source = source
        self.size = source.size
        self.ahead = max(1, ahead)
        self.bytes_read = 0
        self._cache: dict[tuple[int, int], _Entry] = {}
        self._position = dict.fromkeys(range(readers), 0)
        """Active readers → the offset of the latest chunk each asked for."""
        self._waiting: dict[int, list[int]] = {}
        """Readers → the offsets they wait to read at (held back, too far ahead)."""
        self._moved = asyncio.Condition()
        self.readers = [SharedReader(self, i) for i in range(readers)]

    def _behind(self, reader: int, offset: int) -> int:
        """How far `reader`, reading at `offset`, is in front of the slowest other reader.

        A reader waiting to read counts as being where it waits (else two readers that both
        jumped ahead, resuming, would wait for each other)."""
        others = [
            max(position, min(self._waiting.get(r) or [position]))
            for r, position in self._position.items()
            if r != reader
        ]
        return offset - min(others, default=offset)

    async def _advance(self, reader: int, offset: int) -> None:
        """Wait while `reader` is too far ahead of the rest; then note that it reached
        `offset`."""
        async with self._moved:
            waiting = self._waiting.setdefault(reader, [])
            waiting.append(offset)
            self._moved.notify_all()
            try:
                await self._moved.wait_for(lambda: self._behind(reader, offset) <= self.ahead)
            finally:
                waiting.remove(offset)
            # (the position moves once the read is let through: a later read of the same
            # reader let through first would otherwise count as having passed this chunk)
            if reader in self._position and offset > self._position[reader]:
                self._position[reader] = offset
                self._drop_passed()
                self._moved.notify_all()

    def _may_ask(self, reader: int, offset: int) -> bool:
        """Whether the active `reader` may still ask for the chunk at `offset`: it is not more
        than `ahead` bytes past it, or one of its reads at or below it is still held back.  (A
        sender's window reads several chunks at once and a later read may be let through first,
        even before the earlier one asked; reading the chunk again would break "read once".)"""
        position = self._position.get(reader)
        if position is None:
            return False
        return position <= offset + self.ahead or any(
            w <= offset for w in self._waiting.get(reader, ())
        )

    def _drop_passed(self) -> None:
        """Forget chunks that no active reader will ask for any more."""
        for key, entry in list(self._cache.items()):
            entry.waiting = {r for r in entry.waiting if self._may_ask(r, entry.offset)}
            if not entry.waiting and entry.ready.done():
                del self._cache[key]

    async def read(
        self, reader: int, offset: int, length: int, crc: bool
    ) -> tuple[Buffer, int | None, bool]:
        """The chunk, its CRC32C (when `crc` or known) and whether it came from the source."""
        await self._advance(reader, offset)
        key = (offset, length)
        entry = self._cache.get(key)
        if entry is not None and reader in entry.waiting:
            entry.waiting.discard(reader)
            try:
                data, known = await asyncio.shield(entry.ready)
            except asyncio.CancelledError:
                if not entry.ready.cancelled():
                    raise  # this reader is cancelled
                # the reader that was reading it was cancelled: read it ourselves
                return await self._fetch(reader, offset, length, crc)
            if not entry.waiting and self._cache.get(key) is entry:
                del self._cache[key]
            if crc and known is None:
                known = chunk_crc(data)
            return data, known, False
        return await self._fetch(reader, offset, length, crc)

    async def read_many(self, reader: int, ranges: Sequence[tuple[int, int]]) -> list[Buffer]:
        """Several short ranges (a delta's changed pages, asked for by one reader: each target's
        differ) read from the source for `reader` alone, in one call where the source has
        ``read_many``; the reader moves to the first range, as for a chunk read there."""
        if not ranges:
            return []
        await self._advance(reader, ranges[0][0])
        many = getattr(self.source, "read_many", None)
        if many is not None:
            parts: list[Buffer] = list(await many(ranges))
        else:
            parts = [await self.source.read(at, length) for at, length in ranges]
        self.bytes_read += sum(len(part) for part in parts)
        return parts

    async def _fetch(
        self, reader: int, offset: int, length: int, crc: bool
    ) -> tuple[Buffer, int | None, bool]:
        """Read the chunk from the source, for `reader` and for the readers still behind it."""
        key = (offset, length)
        others = {r for r in self._position if r != reader and self._may_ask(r, offset)}
        entry = _Entry(offset, others)
        if others and key not in self._cache:
            self._cache[key] = entry
        try:
            if crc:
                data, known = await read_checked(self.source, offset, length)
            else:
                data, known = await self.source.read(offset, length), None
        except BaseException as exc:
            if self._cache.get(key) is entry:
                del self._cache[key]
            if isinstance(exc, asyncio.CancelledError):
                entry.ready.cancel()  # the others read it themselves
            else:
                entry.ready.set_exception(exc)
                entry.ready.exception()  # (retrieved: the readers waiting on it raise it)
            raise
        self.bytes_read += len(data)
        entry.ready.set_result((data, known))
        return data, known, True

    async def leave(self, reader: int) -> None:
        """`reader` asks for nothing more: nobody waits for it, and its chunks are dropped."""
        async with self._moved:
            self._position.pop(reader, None)
            self._drop_passed()
            for entry in self._cache.values():
                entry.waiting.discard(reader)
            self._moved.notify_all()


class SharedReader:
    """One sender's view of a `SharedSource`: a `ChunkSource` (and a checked one)."""

    def __init__(self, shared: SharedSource, index: int) -> None:
        self._shared = shared
        self._index = index
        self.size = shared.size
        self.description = shared.source.description
        self.bytes_read = 0
        """Bytes this reader read from the source itself (not from the shared chunks)."""

    @property
    def source(self) -> ChunkSource:
        """The source all readers share (what a read that is not shared comes from)."""
        return self._shared.source

    async def read(self, offset: int, length: int) -> Buffer:
        data, _ = await self._read(offset, length, crc=False)
        return data

    async def read_checked(self, offset: int, length: int) -> tuple[Buffer, int]:
        data, crc = await self._read(offset, length, crc=True)
        assert crc is not None
        return data, crc

    async def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[Buffer]:
        """`read` of each ``(offset, length)`` of `ranges` (see `SharedSource.read_many`)."""
        parts = await self._shared.read_many(self._index, ranges)
        self.bytes_read += sum(len(part) for part in parts)
        return parts

    async def _read(self, offset: int, length: int, *, crc: bool) -> tuple[Buffer, int | None]:
        data, known, fresh = await self._shared.read(self._index, offset, length, crc)
        if fresh:
            self.bytes_read += len(data)
        return data, known

    async def close(self) -> None:
        """Leave the shared source (the source itself is closed by its owner)."""
        await self._shared.leave(self._index)
