"""Many changed ranges per request (``InstallSnapshotRequest.extents``,
`fstransport.protocol.delta_pack`): the checks before anything is written, the sender's window
cutting such requests, in-process transfers onto local and memory stores (a receiver that does
not take them, hostile extents, a receiver restarted mid-transfer).  Under faults:
test_delta_pack_properties.py; over a real ``fstransport serve``: test_delta_pack_http.py."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fstransport import TransferOptions
from fstransport.checksum import chunk_crc
from fstransport.delta.send import read_extents
from fstransport.errors import InvalidRequest, RemoteError
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    SnapshotMeta,
    Vote,
    contiguous,
)
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.protocol.delta_pack import (
    EXTENT_SIZE,
    MAX_EXTENTS,
    SentRanges,
    check_extents,
    decode_extents,
    encode_extents,
    split_extents,
    take_extents,
)
from fstransport.protocol.sender import SendWindow
from fstransport.receiver import Receiver
from fstransport.sender import send_source
from fstransport.storage.shared_source import SharedSource
from fstransport.storage.source import BufferSource
from fstransport.storage.store import FsspecSnapshotStore
from tests.helpers import object_bytes, uploads
from tests.test_delta_ship import _done, edited, read, target_url

SIZE = 1024 * KiB
OPTIONS = TransferOptions(chunk_size=64 * KiB, delta="blocks")


def request(extents: object, data: bytes, **changes: object) -> InstallSnapshotRequest:
    offset = extents[0][0] if isinstance(extents, tuple) and extents else 4096
    req = InstallSnapshotRequest(
        Vote(1, 0), SnapshotMeta("snap.bin", size=SIZE), offset, data, False, None
    )
    return replace(req, extents=extents, **changes)  # type: ignore[arg-type]


GOOD = ((4096, 4096), (12288, 100))


def test_well_formed_extents_pass() -> None:
    check_extents(request(GOOD, b"x" * 4196))
    check_extents(request(((4096, SIZE - 4097),), b"x" * (SIZE - 4097)))  # up to the last byte


@pytest.mark.parametrize(
    ("extents", "length", "changes"),
    [
        ((), 0, {}),
        ([(4096, 10)], 10, {}),  # a list, not a tuple
        (((4096, 4096), (8000, 100)), 4196, {}),  # overlapping
        (((12288, 100), (4096, 4096)), 4196, {}),  # not increasing
        (((4096, 0), (8192, 10)), 10, {}),  # an empty extent
        (((0, 4096), (8192, 10)), 4106, {}),  # at offset 0
        (((4096, SIZE - 4096),), SIZE - 4096, {}),  # the last byte
        (((4096, SIZE),), SIZE, {}),  # past the snapshot
        (GOOD, 4195, {}),  # lengths do not add up
        (GOOD, 4197, {}),
        (((True, 10),), 10, {}),  # not integers
        (((4096, -1),), 0, {}),
        (((4096, 10, 1),), 10, {}),
        (GOOD, 4196, {"offset": 8192}),  # the offset is not the first extent's
        (GOOD, 4196, {"done": True}),
        (GOOD, 4196, {"delta": "blocks"}),
        (GOOD, 4196, {"meta": SnapshotMeta("snap.bin")}),  # no size named
        (tuple((4096 + 2 * i, 1) for i in range(MAX_EXTENTS + 1)), MAX_EXTENTS + 1, {}),
    ],
)
def test_malformed_extents_are_refused(
    extents: object, length: int, changes: dict[str, object]
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_extents(request(extents, b"x" * length, **changes))
    assert caught.value.field == "extents"


async def test_a_receiver_refuses_malformed_extents_before_writing(tmp_path: Path) -> None:
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path / "received")))
    overlapping = ((4096, 4096), (8000, 100))
    with pytest.raises(InvalidRequest) as caught:
        await receiver.handle(request(overlapping, b"x" * 4196, crc32c=chunk_crc(b"x" * 4196)))
    assert caught.value.field == "extents"
    assert receiver.receiving == []
    assert not (tmp_path / "received").exists() or not list((tmp_path / "received").iterdir())


def test_sent_ranges_check() -> None:
    sent = SentRanges([(8192, 16384), (0, 4096), (40960, 45056)])
    sent.check(((0, 4096), (8192, 100), (12000, 4384), (40960, 4096)))
    for bad in [((4096, 1),), ((16000, 1000),), ((45056, 1),), ((0, 4097),)]:
        with pytest.raises(InvalidRequest):
            sent.check(bad)


def test_take_extents() -> None:
    pending = [(4096, 8192), (12288, 16384), (40960, 50000), (60000, 65536)]
    assert take_extents(pending, 1 << 20, 65536) == ((4096, 4096), (12288, 4096), (40960, 9040))
    # cut to the budget, which holds the data and a table entry (EXTENT_SIZE) for each range
    assert take_extents(pending, 6000, 65536) == ((4096, 4096), (12288, 6000 - 4096 - 32))
    assert take_extents(pending, 4096 + EXTENT_SIZE, 65536) == ((4096, 4096),)
    assert take_extents(pending, 1 << 20, 65536, limit=2) == ((4096, 4096), (12288, 4096))
    assert take_extents([(0, 10), (20, 30)], 100, 1000) == ()  # offset 0 goes alone
    assert take_extents([(60000, 65536)], 100, 65536) == ()  # so does the final range


def test_the_extent_table_round_trips() -> None:
    extents = ((4096, 4096), (1 << 40, 7))
    table = encode_extents(extents)
    assert len(table) == 2 * EXTENT_SIZE
    assert decode_extents(table, 2) == extents
    got, data = split_extents(table + b"abc", 2)
    assert (got, bytes(data)) == (extents, b"abc")
    for body, count in [(table, 3), (table[:-1], 2), (table, 0), (table, MAX_EXTENTS + 1)]:
        with pytest.raises(InvalidRequest):
            split_extents(body, count)


def test_the_window_gathers_short_ranges_but_never_the_first_or_last() -> None:
    options = TransferOptions(chunk_size=16 * KiB, max_in_flight=4)
    window = SendWindow(SIZE, options)
    changed = [(0, 4096), (40960, 45056), (81920, 86016), (200704, 212992), (SIZE - 4096, SIZE)]
    held = [(a[1], b[0]) for a, b in itertools.pairwise(changed)]
    window.on_held(held)
    window.pack = True
    first = window.next_chunk(0.0)
    assert first is not None
    assert (first.offset, first.length, first.extents) == (0, 4096, ())
    assert window.next_chunk(0.0) is None  # offset 0 goes alone
    window.on_ack(first, 0, 0.0)
    packed = window.next_chunk(0.0)
    assert packed is not None
    cut = 16384 - 3 * EXTENT_SIZE - 2 * 4096  # data and table within the chunk size
    assert packed.extents == ((40960, 4096), (81920, 4096), (200704, cut))
    assert (packed.offset, packed.length, packed.done) == (40960, 8192 + cut, False)
    more = window.next_chunk(0.0)  # one range left before the final one: a plain chunk
    assert more is not None
    assert (more.offset, more.length, more.extents) == (200704 + cut, 212992 - 200704 - cut, ())
    assert window.next_chunk(0.0) is None  # the final chunk waits for the others
    window.on_failure(packed, OSError("lost"), 0.0)  # every extent goes back
    window._resume_at = 0.0
    again = window.next_chunk(0.0)
    assert again is not None
    assert again.extents == packed.extents
    window.on_mismatch(again, 0, OSError("start over"), 0.0)
    assert window.pack is False  # a receiver starting over lost the recipe: one range a request


class Recording:
    """A network that records every request, and may hide ``extents`` from the answers (a
    receiver that does not take several ranges a request)."""

    carries_delta = True

    def __init__(self, inner: LoopbackNetwork, *, older: bool = False) -> None:
        self.inner, self.older = inner, older
        self.requests: list[InstallSnapshotRequest] = []

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.requests.append(req)
        answer = await self.inner.install_snapshot(req, option)
        return replace(answer, extents=False) if self.older else answer


async def _ship_twice(
    url: str, base: bytes, new: bytes, *, older: bool = False
) -> tuple[Recording, Receiver, object]:
    receiver = Receiver(FsspecSnapshotStore(url.rpartition("/")[0]))
    net = Recording(LoopbackNetwork(receiver), older=older)
    meta = SnapshotMeta("snap.bin")
    await send_source(net, Vote(1, 0), meta, BufferSource(base, "b"), None, OPTIONS)
    await receiver._io.installing.get("snap.bin", _done())
    net.requests.clear()
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "n"), None, OPTIONS)
    await receiver._io.installing.get("snap.bin", _done())
    return net, receiver, result


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_scattered_pages_travel_many_to_a_request(kind: str, tmp_path: Path) -> None:
    base = random.Random(30).randbytes(SIZE)
    new = edited(base, 60, seed=31)
    url = target_url(kind, tmp_path)
    net, _, result = await _ship_twice(url, base, new)
    assert read(url) == new
    data = [r for r in net.requests if r.delta is None]
    packed = [r for r in data if r.extents]
    assert packed, "no request carried several ranges"
    assert sum(len(r.extents or ()) for r in packed) > 40
    assert len(data) < 10  # (one a page: about 60)
    assert result.stats.bytes_sent <= 60 * 4096 + 4096  # type: ignore[attr-defined]


async def test_a_receiver_that_does_not_say_so_gets_one_range_a_request(tmp_path: Path) -> None:
    base = random.Random(32).randbytes(SIZE)
    new = edited(base, 60, seed=33)
    url = target_url("local", tmp_path)
    net, _, _ = await _ship_twice(url, base, new, older=True)
    assert read(url) == new
    data = [r for r in net.requests if r.delta is None]
    assert not any(r.extents for r in data)
    assert len(data) > 40


class Tampers:
    """Changes the first request with extents as `mutate` says (its CRC made to fit)."""

    carries_delta = True

    def __init__(self, inner: LoopbackNetwork, mutate: object) -> None:
        self.inner, self.mutate, self.done = inner, mutate, False

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        if req.extents and not self.done:
            self.done = True
            req = self.mutate(req)  # type: ignore[operator]
            req = replace(req, crc32c=chunk_crc(contiguous(req.data)))
        return await self.inner.install_snapshot(req, option)


def _into_a_copied_range(req: InstallSnapshotRequest) -> InstallSnapshotRequest:
    assert req.extents is not None
    (at, length), rest = req.extents[0], req.extents[1:]
    moved = at - 4096 if at >= 8192 else at + length  # next to it: a range the recipe copies
    extents = tuple(sorted(((moved, length), *rest)))
    return replace(req, offset=extents[0][0], extents=extents)


async def test_extents_outside_the_recipe_are_refused_and_nothing_is_installed(
    tmp_path: Path,
) -> None:
    base = random.Random(34).randbytes(SIZE)
    new = edited(base, 20, seed=35)
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path / "received")))
    loop = LoopbackNetwork(receiver)
    meta = SnapshotMeta("snap.bin")
    await send_source(loop, Vote(1, 0), meta, BufferSource(base, "b"), None, OPTIONS)
    await receiver._io.installing.get("snap.bin", _done())
    hostile = Tampers(loop, _into_a_copied_range)
    with pytest.raises((InvalidRequest, RemoteError)) as caught:
        await send_source(hostile, Vote(1, 0), meta, BufferSource(new, "n"), None, OPTIONS)
    assert hostile.done
    error = caught.value
    refused = error.source if isinstance(error, RemoteError) else error
    assert getattr(refused, "field", None) == "extents"
    assert receiver.receiving == []  # the transfer was dropped
    assert (tmp_path / "received" / "snap.bin").read_bytes() == base


async def test_a_receiver_restarted_mid_transfer_answers_extents_with_a_rewind(
    tmp_path: Path,
) -> None:
    """The receiver dies after the recipe (its partial data and journal stay); a new one over
    the same folder has no recipe for the sender's next request with extents: it answers a
    mismatch at 0, and the sender goes on one range a request, whole and correct."""
    base = random.Random(36).randbytes(SIZE)
    new = edited(base, 60, seed=37)
    root = str(tmp_path / "received")
    first = Receiver(FsspecSnapshotStore(root))
    meta = SnapshotMeta("snap.bin")
    await send_source(LoopbackNetwork(first), Vote(1, 0), meta, BufferSource(base, "b"), None)
    await first._io.installing.get("snap.bin", _done())
    dying_store = FsspecSnapshotStore(root)
    dying = LoopbackNetwork(Receiver(dying_store))
    second = Receiver(FsspecSnapshotStore(root))

    class Restarts:
        carries_delta = True

        def __init__(self) -> None:
            self.packed = 0
            self.restarted = False

        async def install_snapshot(
            self, req: InstallSnapshotRequest, option: TransferOptions
        ) -> InstallSnapshotResponse:
            if req.extents:
                self.packed += 1
                if self.packed == 2 and not self.restarted:
                    self.restarted = True
                    await dying_store.release("snap.bin")  # the first receiver's process is gone
            target = LoopbackNetwork(second) if self.restarted else dying
            return await target.install_snapshot(req, option)

    small = TransferOptions(chunk_size=16 * KiB, delta="blocks", max_in_flight=1)
    net = Restarts()
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "n"), None, small)
    await second._io.installing.get("snap.bin", _done())
    assert result.completed
    assert (tmp_path / "received" / "snap.bin").read_bytes() == new
    assert result.stats.rewinds >= 1
    assert net.restarted


async def test_a_shared_reader_reads_many_ranges_in_one_call() -> None:
    data = bytes(range(256)) * 64
    shared = SharedSource(BufferSource(data), 2, 1 << 20)
    reader = shared.readers[0]
    parts = await reader.read_many([(10, 5), (300, 7), (16000, 384)])
    assert [bytes(p) for p in parts] == [data[10:15], data[300:307], data[16000:16384]]
    assert reader.bytes_read == shared.bytes_read == 396
    got, _ = await read_extents(reader, ((10, 5), (300, 7)), checked=False)
    assert got == data[10:15] + data[300:307]


async def test_scattered_pages_onto_s3_travel_together(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """Onto S3 the ranges of a request go into the spool (`S3DeltaSink.write_checked_many`)."""
    base = random.Random(42).randbytes(6 * 1024 * KiB)
    new = edited(base, 60, seed=43)
    store = FsspecSnapshotStore(f"s3://{s3_bucket}/packed", **s3_storage_options)
    receiver = Receiver(store)
    net = Recording(LoopbackNetwork(receiver))
    meta = SnapshotMeta("snap.bin")
    options = TransferOptions(chunk_size=256 * KiB, delta="blocks")
    await send_source(net, Vote(1, 0), meta, BufferSource(base, "b"), None, options)
    net.requests.clear()
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "n"), None, options)
    await store.close()
    assert result.completed
    assert object_bytes(s3_client, s3_bucket, "packed/snap.bin") == new
    assert sum(len(r.extents or ()) for r in net.requests) > 40
    assert result.stats.bytes_reused > len(new) // 2
    assert uploads(s3_client, s3_bucket) == []
