"""Delta transfer through the protocol: `ship` with ``TransferOptions(delta=...)`` onto local and
memory targets, in process (loopback); a base missing, a base changed under the receiver, a
resumed stream, hostile delta requests.  Over a real ``fstransport serve``: test_delta_http.py.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest

from fstransport import TransferOptions
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.errors import InvalidRequest, SnapshotMismatch
from fstransport.messages import (
    DeltaOffer,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    SnapshotMeta,
    Vote,
)
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.receiver import Receiver
from fstransport.sender import send_source
from fstransport.storage.source import BufferSource
from fstransport.storage.store import FsspecSnapshotStore
from fstransport.transfer import ship

SIZE = 1024 * KiB
OPTIONS = TransferOptions(chunk_size=64 * KiB)


def edited(base: bytes, pages: int, seed: int) -> bytes:
    """`base` with `pages` random 4 KiB pages rewritten."""
    rng = random.Random(seed)
    out = bytearray(base)
    for page in rng.sample(range(len(base) // 4096), pages):
        out[page * 4096 : page * 4096 + 100] = rng.randbytes(100)
    return bytes(out)


def inserted(base: bytes, at: int, count: int) -> bytes:
    return base[:at] + random.Random(at).randbytes(count) + base[at:]


def target_url(kind: str, tmp_path: Path) -> str:
    if kind == "local":
        return str(tmp_path / "received" / "snap.bin")
    return f"memory://delta-{uuid.uuid4().hex}/snap.bin"


def over_loopback(url: str) -> LoopbackNetwork:
    """A network to an in-process receiver of `url`'s folder (one that does not trust the
    sender's CRCs, as a remote one)."""
    return LoopbackNetwork(Receiver(FsspecSnapshotStore(url.rpartition("/")[0])))


def read(url: str) -> bytes:
    with fsspec.open(url, "rb") as fh:
        data: bytes = fh.read()
    return data


@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("mode", ["blocks", "cdc"])
async def test_a_changed_snapshot_sends_only_what_differs(
    kind: str, mode: str, tmp_path: Path
) -> None:
    base = random.Random(1).randbytes(SIZE)
    new = edited(base, 3, seed=2) if mode == "blocks" else inserted(base, 5000, 100)
    source, target = tmp_path / "snap.bin", target_url(kind, tmp_path)
    options = TransferOptions(chunk_size=64 * KiB, delta=mode)
    source.write_bytes(base)
    first = await ship(str(source), target, options=options)
    assert (first.bytes_reused, first.bytes_sent) == (0, SIZE)  # nothing to build on yet
    source.write_bytes(new)
    second = await ship(str(source), target, options=options, network=over_loopback(target))
    assert read(target) == new
    assert second.bytes_reused > 0.9 * len(new)
    assert second.bytes_sent < 0.06 * len(new)  # the changed pages (or chunks), map, recipe
    assert second.bytes_sent + second.bytes_reused >= len(new)
    assert second.rewinds == 0


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_delta_off_sends_everything(kind: str, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(SIZE)
    source, target = tmp_path / "snap.bin", target_url(kind, tmp_path)
    source.write_bytes(data)
    await ship(str(source), target, options=OPTIONS)
    report = await ship(
        str(source), target, options=TransferOptions(chunk_size=64 * KiB, delta="off")
    )
    assert (report.bytes_reused, report.bytes_sent) == (0, SIZE)
    assert read(target) == data


async def test_an_unchanged_snapshot_sends_the_map_and_one_byte(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(SIZE)
    source, target = tmp_path / "snap.bin", target_url("local", tmp_path)
    source.write_bytes(data)
    await ship(str(source), target, options=OPTIONS)
    report = await ship(str(source), target, options=OPTIONS, network=over_loopback(target))
    assert report.bytes_reused == SIZE
    # the map (48 + 12 bytes a 4 KiB block + 12 a 64 KiB super-block: CRC32C 4, tag 8), a
    # one-range recipe (48) and the final byte
    assert report.bytes_sent == 48 + 12 * (SIZE // 4096) + 12 * (SIZE // 65536) + 48 + 1
    assert read(target) == data


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_ship_without_a_network_sends_only_what_differs_too(
    kind: str, tmp_path: Path
) -> None:
    """In process (no network given) the delta runs as through a network: the default mode
    is ``"blocks"``, whatever the receiver's store."""
    base = random.Random(16).randbytes(SIZE)
    source, target = tmp_path / "snap.bin", target_url(kind, tmp_path)
    source.write_bytes(base)
    await ship(str(source), target, options=OPTIONS)
    source.write_bytes(edited(base, 1, seed=17))
    report = await ship(str(source), target, options=OPTIONS)
    assert report.bytes_reused >= SIZE - 2 * 4096
    assert report.bytes_sent < SIZE // 10
    assert read(target) == source.read_bytes()


async def test_the_last_installed_snapshot_is_the_base_for_a_new_name(tmp_path: Path) -> None:
    base = random.Random(5).randbytes(SIZE)
    new = edited(base, 2, seed=6)
    folder = tmp_path / "received"
    (tmp_path / "a.bin").write_bytes(base)
    (tmp_path / "b.bin").write_bytes(new)
    store = FsspecSnapshotStore(str(folder))
    receiver = Receiver(store)
    net = LoopbackNetwork(receiver)
    for name in ("a.bin", "b.bin"):
        source = BufferSource((tmp_path / name).read_bytes(), name)
        result = await send_source(net, Vote(1, 0), SnapshotMeta(name), source, None, OPTIONS)
        assert result.completed
        await receiver._io.installing.get(name, _done())
    assert (folder / "b.bin").read_bytes() == new
    assert (folder / "a.bin").read_bytes() == base
    assert result.stats.bytes_reused == SIZE - 2 * 4096


async def _done() -> None:
    return None


class ChangeBaseAfterRecipe:
    """Delivers to `inner`; once a recipe was accepted, rewrites the base under the receiver."""

    carries_delta = True

    def __init__(self, inner: LoopbackNetwork, change: object) -> None:
        self.inner = inner
        self.change = change
        self.changed = 0

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await self.inner.install_snapshot(req, option)
        if req.recipe is not None:
            self.change()  # type: ignore[operator]
            self.changed += 1
        return answer


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_a_base_changed_after_the_offer_is_never_installed(kind: str, tmp_path: Path) -> None:
    base = random.Random(7).randbytes(SIZE)
    new = edited(base, 2, seed=8)
    root = str(tmp_path / "received") if kind == "local" else f"memory://d-{uuid.uuid4().hex}"
    # (no prefill: it would copy the base before the change, and the copy would be right)
    store = FsspecSnapshotStore(root, prefill=False)
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    meta = SnapshotMeta("snap.bin")
    first = await send_source(loop, Vote(1, 0), meta, BufferSource(base, "base"), None, OPTIONS)
    assert first.completed
    await receiver._io.installing.get("snap.bin", _done())
    installed = store.path("snap.bin")
    fs = fsspec.filesystem("file" if kind == "local" else "memory")

    def scribble() -> None:  # same size, other bytes: only the content check can see it
        fs.pipe_file(installed, bytes(b ^ 0xFF for b in base[:8192]) + base[8192:])

    net = ChangeBaseAfterRecipe(loop, scribble)
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "new"), None, OPTIONS)
    await receiver._io.installing.get("snap.bin", _done())
    assert result.completed
    assert net.changed == 1
    assert fs.cat_file(installed) == new  # sent again in full, never assembled on a wrong base
    assert result.stats.rewinds >= 1
    assert result.stats.bytes_reused == 0


async def test_a_base_missing_means_a_full_transfer(tmp_path: Path) -> None:
    data = random.Random(9).randbytes(SIZE)
    (tmp_path / "snap.bin").write_bytes(data)
    target = target_url("local", tmp_path)
    report = await ship(str(tmp_path / "snap.bin"), target, options=OPTIONS)
    assert (report.bytes_reused, report.bytes_sent) == (0, SIZE)
    assert read(target) == data


async def test_delta_with_a_resumed_stream(tmp_path: Path) -> None:
    """A sender dies after the recipe and some chunks; the next one (a new exchange, a new key)
    finds the chunks written and the copied ranges, and the result is whole."""
    base = random.Random(10).randbytes(SIZE)
    new = edited(base, 40, seed=11)
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    meta = SnapshotMeta("snap.bin")
    await send_source(loop, Vote(1, 0), meta, BufferSource(base, "base"), None, OPTIONS)
    await receiver._io.installing.get("snap.bin", _done())

    class DiesAfter:
        carries_delta = True

        def __init__(self) -> None:
            self.data_requests = 0

        async def install_snapshot(
            self, req: InstallSnapshotRequest, option: TransferOptions
        ) -> InstallSnapshotResponse:
            if req.delta is None:
                self.data_requests += 1
                if self.data_requests > 3:
                    raise InvalidRequest("the sender's process died")  # fatal for the sender
            return await loop.install_snapshot(req, option)

    small = TransferOptions(chunk_size=4 * KiB, max_in_flight=1, delta="blocks")
    with pytest.raises(InvalidRequest):
        await send_source(DiesAfter(), Vote(1, 0), meta, BufferSource(new, "new"), None, small)
    assert receiver.receiving == ["snap.bin"]
    result = await send_source(loop, Vote(1, 0), meta, BufferSource(new, "new"), None, small)
    await receiver._io.installing.get("snap.bin", _done())
    assert result.completed
    assert (tmp_path / "received" / "snap.bin").read_bytes() == new
    assert result.stats.bytes_sent < 40 * 4096 + 4096


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"data": b"x"}, "delta"),
        ({"offset": 4096}, "delta"),
        ({"done": True}, "done"),  # (a final chunk must end at the size first)
        ({"delta": "rsync"}, "delta"),
        ({"recipe": b"FSTDRCP1" + b"\0" * 24}, "delta_recipe"),
        ({"recipe": b"\0" * (1 << 20)}, "recipe"),
        ({"delta_key": b"short"}, "delta_key"),
        ({"delta": None, "delta_key": b"k" * 16}, "delta"),
    ],
)
async def test_malformed_delta_requests_are_refused(
    changes: dict[str, object], field: str, tmp_path: Path
) -> None:
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    (tmp_path / "received").mkdir()
    (tmp_path / "received" / "snap.bin").write_bytes(random.Random(12).randbytes(SIZE))
    meta = SnapshotMeta("snap.bin", size=SIZE)
    offer = await receiver.handle(
        InstallSnapshotRequest(Vote(1, 0), meta, 0, b"", False, 0, delta="blocks")
    )
    assert offer.offer is not None
    assert offer.offer.size == SIZE
    fields: dict[str, object] = {
        "vote": Vote(1, 0),
        "meta": meta,
        "offset": 0,
        "data": b"",
        "done": False,
        "crc32c": None,
        "delta": "blocks",
        "recipe": None,
    }
    fields.update(changes)
    with pytest.raises(InvalidRequest) as caught:
        await receiver.handle(InstallSnapshotRequest(**fields))  # type: ignore[arg-type]
    assert caught.value.field == field
    assert (tmp_path / "received" / "snap.bin").stat().st_size == SIZE  # the base untouched


async def test_a_recipe_without_an_offer_is_answered_with_a_rewind(tmp_path: Path) -> None:
    """No offer on the stream (a receiver restarted after offering, docs/delta.md): a mismatch
    expecting 0, so that the sender asks for the offer again; nothing is held."""
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path / "received")))
    meta = SnapshotMeta("snap.bin", size=SIZE)
    req = InstallSnapshotRequest(
        Vote(1, 0), meta, 0, b"", False, 0, delta="blocks", recipe=b"FSTDRCP1" + b"\0" * 24
    )
    with pytest.raises(SnapshotMismatch) as caught:
        await receiver.handle(req)
    assert caught.value.expect.offset == 0
    assert receiver.rules.streams["snap.bin"].ledger.held().total() == 0


@pytest.mark.parametrize(
    "offer",
    [
        DeltaOffer("snap.bin", "crc32c:00000000", SIZE, b"garbage"),
        DeltaOffer("snap.bin", "crc32c:00000000", 1 << 40, b"\0" * 48),  # a base far too large
    ],
)
async def test_a_hostile_offer_means_a_full_transfer(offer: DeltaOffer, tmp_path: Path) -> None:
    data = random.Random(13).randbytes(SIZE)
    receiver = Receiver(FsspecSnapshotStore(str(tmp_path / "received")))
    loop = LoopbackNetwork(receiver)

    class Lies:
        carries_delta = True

        async def install_snapshot(
            self, req: InstallSnapshotRequest, option: TransferOptions
        ) -> InstallSnapshotResponse:
            answer = await loop.install_snapshot(req, option)
            return replace(answer, offer=offer) if req.delta is not None else answer

    meta = SnapshotMeta("snap.bin")
    result = await send_source(Lies(), Vote(1, 0), meta, BufferSource(data, "s"), None, OPTIONS)
    await receiver._io.installing.get("snap.bin", _done())
    assert result.completed
    assert (result.stats.bytes_reused, result.stats.bytes_sent) == (0, SIZE)
    assert (tmp_path / "received" / "snap.bin").read_bytes() == data


async def test_delta_resumes_partial_data_a_dead_receiver_left(tmp_path: Path) -> None:
    """The receiver process dies mid-transfer (its partial data and journal stay); a new one over
    the same folder resumes it, and the delta exchange runs again on top: whole and correct."""
    base = random.Random(14).randbytes(SIZE)
    new = edited(base, 40, seed=15)
    root = str(tmp_path / "received")
    first = Receiver(FsspecSnapshotStore(root))
    await send_source(
        LoopbackNetwork(first),
        Vote(1, 0),
        SnapshotMeta("snap.bin"),
        BufferSource(base, "b"),
        None,
        OPTIONS,
    )
    await first._io.installing.get("snap.bin", _done())
    meta = SnapshotMeta("snap.bin", checksum=format_checksum(chunk_crc(new)))
    dying_store = FsspecSnapshotStore(root)
    dying = LoopbackNetwork(Receiver(dying_store))

    class Dies:
        carries_delta = True
        data_requests = 0

        async def install_snapshot(
            self, req: InstallSnapshotRequest, option: TransferOptions
        ) -> InstallSnapshotResponse:
            if req.delta is None:
                self.data_requests += 1
                if self.data_requests > 10:
                    raise InvalidRequest("the receiver's process died")
            return await dying.install_snapshot(req, option)

    small = TransferOptions(chunk_size=4 * KiB, max_in_flight=1)
    with pytest.raises(InvalidRequest):
        await send_source(Dies(), Vote(1, 0), meta, BufferSource(new, "n"), None, small)
    await dying_store.release("snap.bin")  # (what a dying process leaves: partial data, journal)
    second = Receiver(FsspecSnapshotStore(root))
    result = await send_source(
        LoopbackNetwork(second), Vote(1, 0), meta, BufferSource(new, "n"), None, small
    )
    await second._io.installing.get("snap.bin", _done())
    assert result.completed
    assert (tmp_path / "received" / "snap.bin").read_bytes() == new
    assert result.stats.bytes_sent <= 30 * 4096 + 1  # the 10 pages sent before are not again
    assert result.stats.bytes_reused > SIZE - 41 * 4096


async def test_a_receiver_that_draws_its_own_key_gets_a_source_map_made_again(
    tmp_path: Path,
) -> None:
    """The sender maps its source with its own key before the offer comes; an offer keyed
    otherwise (a receiver that ignored the key) is planned against a map made with its key."""
    base = random.Random(18).randbytes(SIZE)
    new = edited(base, 3, seed=19)
    store = FsspecSnapshotStore(str(tmp_path / "received"))
    receiver = Receiver(store)
    loop = LoopbackNetwork(receiver)
    meta = SnapshotMeta("snap.bin")
    await send_source(loop, Vote(1, 0), meta, BufferSource(base, "base"), None, OPTIONS)
    await receiver._io.installing.get("snap.bin", _done())
    keys: list[bytes] = []

    class KeyDropped:
        carries_delta = True

        async def install_snapshot(
            self, req: InstallSnapshotRequest, option: TransferOptions
        ) -> InstallSnapshotResponse:
            answer = await loop.install_snapshot(replace(req, delta_key=None), option)
            if answer.offer is not None:
                keys.append(answer.offer.map[32:48])  # the map header's key
            return answer

    result = await send_source(
        KeyDropped(), Vote(1, 0), meta, BufferSource(new, "new"), None, OPTIONS
    )
    await receiver._io.installing.get("snap.bin", _done())
    assert result.completed
    assert (tmp_path / "received" / "snap.bin").read_bytes() == new
    assert len(keys) == 1
    assert result.stats.bytes_reused == SIZE - 3 * 4096
