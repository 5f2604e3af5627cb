"""`SharedSource`: a reader whose reads within one window are let through out of order still
takes the chunks another reader read for it (the source is read once)."""

from __future__ import annotations

import asyncio

from fstransport.storage.shared_source import SharedSource
from fstransport.storage.source import BufferSource
from tests.conftest import payload

CHUNK = 1000


async def test_reads_out_of_order_within_a_window_read_the_source_once() -> None:
    data = payload(6 * CHUNK, seed=3)
    shared = SharedSource(BufferSource(data), readers=2, ahead=4 * CHUNK)
    first, second = shared.readers
    for offset in (0, CHUNK, 2 * CHUNK):  # the first reader reads ahead, in order
        assert bytes(await first.read(offset, CHUNK)) == data[offset : offset + CHUNK]
    # the second one's window: its read of chunk 1 is let through before its read of chunk 0
    got = await asyncio.gather(second.read(CHUNK, CHUNK), second.read(0, CHUNK))
    assert [bytes(g) for g in got] == [data[CHUNK : 2 * CHUNK], data[:CHUNK]]

    async def rest(reader: int) -> None:
        for offset in range(2 * CHUNK if reader else 3 * CHUNK, len(data), CHUNK):
            chunk = await shared.readers[reader].read(offset, CHUNK)
            assert bytes(chunk) == data[offset : offset + CHUNK]

    await asyncio.wait_for(asyncio.gather(rest(0), rest(1)), 10)
    assert shared.bytes_read == len(data)
    assert (first.bytes_read, second.bytes_read) == (len(data), 0)


async def test_a_chunk_far_behind_every_other_reader_is_dropped() -> None:
    """Memory stays bounded: a chunk is dropped once every other reader is more than `ahead`
    bytes past it (a resumed reader that skipped it never asks for it)."""
    data = payload(20 * CHUNK, seed=4)
    shared = SharedSource(BufferSource(data), readers=2, ahead=4 * CHUNK)
    first, second = shared.readers
    await first.read(0, CHUNK)
    assert (0, CHUNK) in shared._cache, "the second reader may still ask for chunk 0"
    await second.read(3 * CHUNK, CHUNK)  # resumed: it starts 3 chunks in
    await first.read(CHUNK, CHUNK)
    await second.read(5 * CHUNK, CHUNK)  # now more than `ahead` past chunk 0
    assert (0, CHUNK) not in shared._cache, "nobody will ask for chunk 0 again"
    await second.close()
    await first.close()
