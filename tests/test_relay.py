"""RelayNetwork on memory://: stage once, send references, fetch, verify, commit, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import (
    ChecksumMismatch,
    Chunked,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    InvalidRequest,
    LoopbackNetwork,
    Network,
    Receiver,
    RelayNetwork,
    RemoteError,
    Snapshot,
    SnapshotMeta,
    StagedChunk,
    StorageError,
    TransferOptions,
    Vote,
    cleanup_staging,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.network.base import window_options
from fstransport.storage.staging import MANIFEST_NAME, StagingStore, chunk_name
from fstransport.testing.mock import MockNetwork, before, deliver_to, stop_after
from fstransport.testing.network_suite import Connect, NetworkSuite
from tests.conftest import payload
from tests.helpers import staged_files

STAGE = "memory://stage"
V1 = Vote(1, 1)
V2 = Vote(2, 2)
OPTIONS = TransferOptions(chunk_size=64 << 10, max_in_flight=3)


class CountingFile(io.RawIOBase):
    """A seekable file over `data` that counts the bytes read from it (the source)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        piece = self._data[self._pos : self._pos + len(buffer)]
        buffer[: len(piece)] = piece
        self._pos += len(piece)
        self.bytes_read += len(piece)
        return len(piece)


async def installed(store: FsspecSnapshotStore, snapshot_id: str) -> bytes | None:
    if not await store.exists(snapshot_id):
        return None
    with await store.open(snapshot_id) as f:
        data: bytes = f.read()
        return data


def snapshot(data: bytes, snapshot_id: str = "snap", *, checksum: bool = False) -> Snapshot:
    meta = SnapshotMeta(
        snapshot_id, checksum=format_checksum(chunk_crc(data)) if checksum else None
    )
    return Snapshot(meta, CountingFile(data))  # type: ignore[arg-type]


def receiver_at(root: str) -> tuple[Receiver, FsspecSnapshotStore]:
    store = FsspecSnapshotStore(root)
    return Receiver(store, relay_options={}), store


async def test_one_receiver_gets_references_and_installs_the_bytes() -> None:
    data = payload(300_000)
    receiver, store = receiver_at("memory://recv")
    recording = MockNetwork(deliver_to(receiver, interleave=False))
    relay = RelayNetwork(recording, STAGE)
    snap = snapshot(data)
    await Chunked.send_snapshot(relay, V1, snap, option=OPTIONS)
    assert await installed(store, "snap") == data
    assert snap.data.bytes_read == len(data)  # type: ignore[attr-defined]
    assert relay.bytes_uploaded == len(data)
    chunks = -(-len(data) // OPTIONS.chunk_size)
    assert relay.puts == chunks + 1  # one PUT per chunk, one manifest
    assert len(recording.requests) == chunks
    for req in recording.requests:
        assert req.staged is not None
        assert len(req.data) == 0
        assert req.crc32c == req.staged.crc32c
        wire = json.dumps(
            [req.staged.area, req.staged.name, req.staged.length, req.staged.crc32c]
        ).encode()
        assert len(wire) <= 1024, "a reference is small"
    assert staged_files() == [], "nothing stays staged once the receiver acknowledged"
    await receiver.close()
    await relay.close()


async def test_three_receivers_share_one_upload_and_one_read_of_the_source() -> None:
    data = payload(400_000, seed=3)
    snap = snapshot(data, checksum=True)
    pairs = [receiver_at(f"memory://recv{i}") for i in range(3)]
    relay = RelayNetwork(LoopbackNetwork(pairs[0][0]), STAGE, keep_for=3600)
    for i, (receiver, store) in enumerate(pairs):
        net = relay if i == 0 else relay.to(LoopbackNetwork(receiver))
        await Chunked.send_snapshot(net, V1, snap, option=OPTIONS)
        assert await installed(store, "snap") == data
    chunks = -(-len(data) // OPTIONS.chunk_size)
    assert snap.data.bytes_read == len(data), "the source is read once"  # type: ignore[attr-defined]
    assert relay.bytes_uploaded == len(data), "the bytes are uploaded once"
    assert relay.puts == chunks + 1
    assert len(staged_files()) == chunks + 1, "kept for later receivers (keep_for)"
    await relay.close()
    assert staged_files() == []
    for receiver, _ in pairs:
        await receiver.close()


async def test_a_second_send_without_a_checksum_reads_again_but_uploads_nothing() -> None:
    data = payload(200_000, seed=4)
    (r1, s1), (r2, s2) = receiver_at("memory://a"), receiver_at("memory://b")
    relay = RelayNetwork(LoopbackNetwork(r1), STAGE, keep_for=60)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    puts = relay.puts
    await Chunked.send_snapshot(relay.to(LoopbackNetwork(r2)), V1, snapshot(data), option=OPTIONS)
    assert relay.puts == puts
    assert relay.bytes_uploaded == len(data)
    assert await installed(s1, "snap") == data
    assert await installed(s2, "snap") == data
    await relay.close()


async def test_an_altered_staged_object_is_refused_and_never_installed() -> None:
    data = payload(100_000, seed=5)
    receiver, store = receiver_at("memory://recv")
    stage = StagingStore(STAGE)
    crc = chunk_crc(data)
    ref = StagedChunk(f"{STAGE}/snap/v1-1-0/nonce", chunk_name(0, len(data), crc), len(data), crc)
    assert await stage.put_once(ref.url, data, crc)
    fs = fsspec.filesystem("memory")
    fs.pipe_file(ref.url, data[:-1] + bytes([data[-1] ^ 1]))  # changed behind our back
    meta = SnapshotMeta("snap", size=len(data), checksum=format_checksum(crc))
    with pytest.raises(ChecksumMismatch) as caught:
        await receiver.handle(InstallSnapshotRequest(V1, meta, 0, b"", True, crc, ref))
    assert not caught.value.whole
    assert "staged object" in str(caught.value)
    assert await installed(store, "snap") is None
    assert receiver.receiving == []


@pytest.mark.parametrize("damage", ["alter", "delete"])
async def test_a_damaged_object_is_staged_again_and_the_right_bytes_installed(
    damage: str,
) -> None:
    data = payload(300_000, seed=6)
    (r1, _), (r2, s2) = receiver_at("memory://a"), receiver_at("memory://b")
    relay = RelayNetwork(LoopbackNetwork(r1), STAGE, keep_for=60)
    snap = snapshot(data, checksum=True)
    await Chunked.send_snapshot(relay, V1, snap, option=OPTIONS)
    fs = fsspec.filesystem("memory")
    victim = next(p for p in staged_files() if "/chunks/" in p)
    if damage == "alter":
        altered = b"\0" * len(fs.cat_file(victim))  # (the chunk and its block map)
        fs.pipe_file(victim, altered)
    else:
        fs.rm_file(victim)
    await Chunked.send_snapshot(relay.to(LoopbackNetwork(r2)), V1, snap, option=OPTIONS)
    assert await installed(s2, "snap") == data
    assert relay.bytes_uploaded == len(data) + OPTIONS.chunk_size, "only that chunk again"
    if damage == "alter":
        assert fs.cat_file(victim) == altered, "never overwritten"
    await relay.close()
    assert staged_files() == []


async def manifest_written(req: InstallSnapshotRequest) -> str:
    """The manifest of the final chunk's area, once the relay wrote it (it does while the
    receiver fetches that chunk)."""
    assert req.staged is not None
    url = f"{req.staged.area}/{MANIFEST_NAME}"
    for _ in range(1000):
        if fsspec.filesystem("memory").exists(url):
            return url
        await asyncio.sleep(0.005)
    raise AssertionError(f"no manifest at {url}")


async def test_no_manifest_no_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fstransport.relay_receive.MANIFEST_WAIT", 0.2)
    data = payload(200_000, seed=7)
    receiver, store = receiver_at("memory://recv")
    fs = fsspec.filesystem("memory")

    async def drop_manifest(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if req.done:
            fs.rm_file(await manifest_written(req))
        return await deliver_to(receiver)(req)

    relay = RelayNetwork(MockNetwork(drop_manifest), STAGE)
    with pytest.raises(RemoteError) as caught:
        await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert isinstance(caught.value.source, StorageError)
    assert "manifest" in str(caught.value.source)
    assert await installed(store, "snap") is None
    await relay.close()
    assert staged_files() == []


async def test_a_manifest_of_another_vote_is_refused() -> None:
    data = payload(100_000, seed=8)
    receiver, store = receiver_at("memory://recv")
    fs = fsspec.filesystem("memory")

    async def forge(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if req.done:
            url = await manifest_written(req)
            manifest = json.loads(fs.cat_file(url))
            fs.pipe_file(url, json.dumps({**manifest, "vote": [0, 9, False]}).encode())
        return await deliver_to(receiver)(req)

    relay = RelayNetwork(MockNetwork(forge), STAGE)
    with pytest.raises(RemoteError, match="vote"):
        await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") is None
    await relay.close()


async def test_two_senders_with_different_votes_never_share_an_object() -> None:
    old, new = payload(150_000, seed=9), payload(150_000, seed=10)
    (r1, s1), (r2, s2) = receiver_at("memory://a"), receiver_at("memory://b")
    relay1 = RelayNetwork(LoopbackNetwork(r1), STAGE, keep_for=60)
    relay2 = RelayNetwork(LoopbackNetwork(r2), STAGE, keep_for=60)
    await Chunked.send_snapshot(relay1, V1, snapshot(old), option=OPTIONS)
    first = set(staged_files())
    await Chunked.send_snapshot(relay2, V2, snapshot(new), option=OPTIONS)
    second = set(staged_files()) - first
    assert len(second) == len(first), "the second sender wrote objects of its own"
    assert all("/v1-1-0/" in p for p in first)
    assert all("/v2-2-0/" in p for p in second)
    fs = fsspec.filesystem("memory")
    for path in first:  # the first sender's objects are as it wrote them
        if "/chunks/" in path:
            offset, length, crc = path.rsplit("/", 1)[1].split("-")[:3]
            body = fs.cat_file(path)[: int(length, 16)]  # (its block map follows)
            assert body == old[int(offset, 16) : int(offset, 16) + int(length, 16)]
            assert chunk_crc(body) == int(crc, 16)
    assert await installed(s1, "snap") == old
    assert await installed(s2, "snap") == new
    await relay1.close()
    await relay2.close()
    assert staged_files() == []


async def test_the_same_snapshot_staged_by_two_senders_uses_two_areas() -> None:
    data = payload(100_000, seed=11)
    (r1, s1), (r2, s2) = receiver_at("memory://a"), receiver_at("memory://b")
    relay1 = RelayNetwork(LoopbackNetwork(r1), STAGE, keep_for=60)
    relay2 = RelayNetwork(LoopbackNetwork(r2), STAGE, keep_for=60)
    await Chunked.send_snapshot(relay1, V1, snapshot(data), option=OPTIONS)
    await Chunked.send_snapshot(relay2, V1, snapshot(data), option=OPTIONS)
    areas = {p.split("/chunks/")[0] for p in staged_files() if "/chunks/" in p}
    assert len(areas) == 2
    assert await installed(s1, "snap") == data
    assert await installed(s2, "snap") == data
    await relay1.close()
    await relay2.close()


async def test_a_receiver_without_relay_options_gets_the_bytes() -> None:
    data = payload(200_000, seed=12)
    store = FsspecSnapshotStore("memory://recv")
    receiver = Receiver(store)
    relay = RelayNetwork(LoopbackNetwork(receiver), STAGE)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    # staged before it found out: the chunks handed over while the first reference was out
    window = window_options(relay, OPTIONS).max_in_flight
    assert relay.bytes_uploaded <= (window - 1) * OPTIONS.chunk_size
    assert relay.bytes_uploaded < len(data), "the final chunk was not staged"
    assert staged_files() == [], "what was staged in vain goes once the receiver has it all"
    await relay.close()


async def test_a_reference_outside_the_allowed_prefixes_is_refused() -> None:
    store = FsspecSnapshotStore("memory://recv")
    receiver = Receiver(store, relay_options={}, relay_prefixes=["memory://allowed"])
    ref = StagedChunk("memory://elsewhere/snap/v1-1-0/n", chunk_name(0, 3, 7), 3, 7)
    meta = SnapshotMeta("snap", size=3)
    with pytest.raises(InvalidRequest, match="prefix"):
        await receiver.handle(InstallSnapshotRequest(V1, meta, 0, b"", True, 7, ref))
    bad = replace(ref, name="../../etc/passwd")
    with pytest.raises(InvalidRequest, match="name"):
        await receiver.handle(InstallSnapshotRequest(V1, meta, 0, b"", True, 7, bad))


async def test_kept_objects_expire_after_their_ttl() -> None:
    data = payload(100_000, seed=13)
    receiver, store = receiver_at("memory://recv")
    relay = RelayNetwork(LoopbackNetwork(receiver), STAGE, keep_for=600)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    kept = staged_files()
    assert kept
    assert await relay.expire() == 0
    assert staged_files() == kept
    assert await relay.expire(now=time.time() + 601) == 1
    assert staged_files() == []
    assert await installed(store, "snap") == data
    await relay.close()


async def test_cleanup_keeps_live_manifests_and_removes_the_rest() -> None:
    data = payload(100_000, seed=14)
    now = time.time()
    stage = StagingStore(STAGE)
    crc = chunk_crc(data)
    areas: dict[str, dict[str, Any] | None] = {
        "live": {"expires": now + 86400, "created": now - 7200},
        "expired": {"expires": now - 1, "created": now - 7200},
        "unacknowledged": {"expires": None, "created": now - 7200},
        "fresh": {"expires": None, "created": now},
        "abandoned": None,
    }
    for name, manifest in areas.items():
        area = f"{STAGE}/{name}/v1-1-0/n"
        await stage.put_once(f"{area}/chunks/{chunk_name(0, len(data), crc)}", data, crc)
        if manifest is not None:
            await stage.write_json(f"{area}/{MANIFEST_NAME}", manifest)
    removed = await cleanup_staging(STAGE, 3600, now=now + 10, dry_run=True)
    assert len(staged_files()) == 9, "a dry run removes nothing"
    assert sorted(r.split("/stage/")[1].split("/")[0] for r in removed) == [
        "expired",
        "unacknowledged",
    ]
    # the manifest-less area was written just now: only later is it abandoned
    removed = await cleanup_staging(STAGE, 3600, now=now + 7200)
    assert sorted(r.split("/stage/")[1].split("/")[0] for r in removed) == [
        "abandoned",
        "expired",
        "fresh",
        "unacknowledged",
    ]
    assert all("/live/" in p for p in staged_files())
    assert len(staged_files()) == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_relayed_transfers_survive_a_faulty_network(seed: int) -> None:
    from fstransport import FaultyNetwork, RetryPolicy

    data = payload(500_000, seed=seed)
    receiver, store = receiver_at("memory://recv")
    faulty = FaultyNetwork(
        LoopbackNetwork(receiver), seed=seed, drop=0.15, duplicate=0.15, reorder=0.3, timeout=0.1
    )
    relay = RelayNetwork(faulty, STAGE)
    options = replace(
        OPTIONS,
        hard_ttl=0.5,
        install_timeout=2.0,
        retry=RetryPolicy(max_attempts=40, initial_backoff=0.001, max_backoff=0.01),
    )
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=options)
    stats = faulty.stats
    assert stats.dropped_requests + stats.dropped_answers + stats.timeouts > 0
    assert await installed(store, "snap") == data
    assert relay.bytes_uploaded == len(data), "a chunk sent again is not uploaded again"
    assert staged_files() == []
    await relay.close()


async def test_a_sender_stopped_mid_stage_installs_nothing_and_the_next_send_reuses() -> None:
    from fstransport import ReplicationClosed

    data = payload(640_000, seed=15)
    receiver, store = receiver_at("memory://recv")
    stop = asyncio.Event()

    def stop_at_the_third(req: InstallSnapshotRequest) -> None:
        if recording.calls >= 3:
            stop.set()  # (the same network carries the second send below)

    recording = MockNetwork(before(stop_at_the_third, deliver_to(receiver, interleave=False)))
    relay = RelayNetwork(recording, STAGE)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(
            relay, V1, snapshot(data), stop.wait(), replace(OPTIONS, max_in_flight=1)
        )
    assert await installed(store, "snap") is None
    staged = staged_files()
    assert staged, "the chunks staged so far stay"
    assert not any(p.endswith(MANIFEST_NAME) for p in staged), "but nothing is committed"
    uploaded = relay.bytes_uploaded
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    assert relay.bytes_uploaded == len(data), f"the {uploaded} bytes staged are not uploaded again"
    assert staged_files() == []
    await relay.close()


async def test_a_new_sender_after_one_died_mid_stage_starts_the_receiver_over() -> None:
    """The receiver holds bytes fetched from the dead sender's area, which has no manifest
    and never will: instead of refusing the snapshot forever, it starts over from 0."""
    from fstransport import ReplicationClosed

    data = payload(640_000, seed=16)
    receiver, store = receiver_at("memory://recv")
    stop = asyncio.Event()

    def stop_at_the_third(req: InstallSnapshotRequest) -> None:
        if recording.calls >= 3:
            stop.set()

    recording = MockNetwork(before(stop_at_the_third, deliver_to(receiver, interleave=False)))
    dead = RelayNetwork(recording, STAGE)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(
            dead, V1, snapshot(data), stop.wait(), replace(OPTIONS, max_in_flight=1)
        )
    fresh = RelayNetwork(LoopbackNetwork(receiver), STAGE)  # another process: its own area
    await Chunked.send_snapshot(fresh, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    await fresh.close()
    await dead.close()
    assert staged_files() == []
    await receiver.close()


async def test_a_large_object_is_fetched_with_several_ranged_gets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fstransport.storage import staging

    monkeypatch.setattr(staging, "FETCH_PART", 10_000)
    data = payload(95_000, seed=16)
    crc = chunk_crc(data)
    stage = StagingStore(STAGE)
    ref = StagedChunk(f"{STAGE}/snap/v1-1-0/n", chunk_name(0, len(data), crc), len(data), crc)
    await stage.put_once(ref.url, data, crc)
    ranges: list[tuple[int, int]] = []
    fs = fsspec.filesystem("memory")
    cat_file = fs.cat_file

    def counting(path: str, start: int | None = None, end: int | None = None) -> bytes:
        ranges.append((start or 0, end or -1))
        return bytes(cat_file(path, start=start, end=end))

    monkeypatch.setattr(fs, "cat_file", counting)
    assert bytes(await stage.fetch(ref)) == data
    assert sorted(ranges) == [(s, min(s + 10_000, len(data))) for s in range(0, len(data), 10_000)]
    fs.pipe_file(ref.url, data[:50_000])  # cut short behind our back
    with pytest.raises(ChecksumMismatch, match="short"):
        await stage.fetch(ref)


async def test_the_stores_cleanup_leaves_staged_objects_alone() -> None:
    data = payload(100_000, seed=17)
    receiver = Receiver(FsspecSnapshotStore("memory://stage/recv"), relay_options={})
    relay = RelayNetwork(LoopbackNetwork(receiver), STAGE, keep_for=600)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    staged = [p for p in staged_files() if "/recv/" not in p]
    assert len(staged) == 3  # two chunks and the manifest
    store = FsspecSnapshotStore(STAGE)
    assert await store.cleanup(0) == []
    assert await cleanup_staging(STAGE, 0) == [], "a live manifest keeps its area"
    assert [p for p in staged_files() if "/recv/" not in p] == staged
    await relay.close()


async def test_concurrent_sends_to_three_receivers_upload_each_chunk_once() -> None:
    data = payload(700_000, seed=18)
    pairs = [receiver_at(f"memory://recv{i}") for i in range(3)]
    relay = RelayNetwork(LoopbackNetwork(pairs[0][0]), STAGE)  # no keep_for
    nets = [relay] + [relay.to(LoopbackNetwork(r)) for r, _ in pairs[1:]]
    await asyncio.gather(
        *(Chunked.send_snapshot(net, V1, snapshot(data), option=OPTIONS) for net in nets)
    )
    for _, store in pairs:
        assert await installed(store, "snap") == data
    assert relay.bytes_uploaded == len(data)
    assert relay.puts == -(-len(data) // OPTIONS.chunk_size) + 1
    assert staged_files() == [], "removed once the last receiver acknowledged"
    await relay.close()


async def test_an_empty_snapshot_through_the_relay() -> None:
    receiver, store = receiver_at("memory://recv")
    relay = RelayNetwork(LoopbackNetwork(receiver), STAGE)
    await Chunked.send_snapshot(relay, V1, snapshot(b""), option=OPTIONS)
    assert await installed(store, "snap") == b""
    assert staged_files() == []
    await relay.close()


class TestRelayConformance(NetworkSuite):
    """The network conformance suite, through a relay on memory:// (the suite's receivers are
    given relay options: they fetch the staged chunks)."""

    @pytest.fixture
    def connect(self) -> Connect:
        @contextlib.asynccontextmanager
        async def connect(receiver: Receiver) -> AsyncIterator[Network]:
            receiver.relay_options = {}
            relay = RelayNetwork(LoopbackNetwork(receiver), "memory://suite-stage")
            try:
                yield relay
            finally:
                await relay.close()
                await receiver.close()
            assert not fsspec.filesystem("memory").find("/suite-stage")

        return connect


async def test_a_local_folder_as_the_staging_area(tmp_path: Path) -> None:
    data = payload(300_000, seed=19)
    stage = tmp_path / "stage"
    receiver, store = receiver_at(str(tmp_path / "recv"))
    recording = MockNetwork(deliver_to(receiver, interleave=False))
    relay = RelayNetwork(recording, str(stage))
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    assert recording.requests[0].staged is not None
    assert recording.requests[0].staged.area.startswith(str(stage))
    assert list(stage.iterdir()) == [], "no file and no empty folder left"
    await relay.close()


async def test_a_receiver_restarted_mid_transfer_resumes_from_what_it_holds() -> None:
    from fstransport import ReplicationClosed

    data = payload(640_000, seed=21)
    store = FsspecSnapshotStore("memory://recv")
    first = Receiver(store, relay_options={})
    stop = asyncio.Event()
    recording = MockNetwork(stop_after(5, deliver_to(first, interleave=False), stop))
    relay = RelayNetwork(recording, STAGE)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(
            relay, V1, snapshot(data, checksum=True), stop.wait(), replace(OPTIONS, max_in_flight=1)
        )
    store = FsspecSnapshotStore("memory://recv")  # a new process: its partial data stays
    second = Receiver(store, relay_options={})
    recording.handler = deliver_to(second, interleave=False)
    recording.requests.clear()
    await Chunked.send_snapshot(relay, V1, snapshot(data, checksum=True), option=OPTIONS)
    assert await installed(store, "snap") == data
    fetched = [r for r in recording.requests if r.staged is not None]
    chunks = -(-len(data) // OPTIONS.chunk_size)
    assert len(fetched) < chunks, "the chunks the first receiver wrote are not fetched again"
    assert relay.bytes_uploaded == len(data)
    assert staged_files() == []
    await relay.close()


async def test_a_receiver_that_cannot_reach_the_bucket_gets_the_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fstransport import RetryPolicy

    async def unreachable(self: StagingStore, ref: StagedChunk) -> bytearray:
        raise StorageError(ref.url, "fetch", ConnectionError("no route to the bucket"))

    monkeypatch.setattr(StagingStore, "fetch", unreachable)
    data = payload(300_000, seed=22)
    receiver, store = receiver_at("memory://recv")
    relay = RelayNetwork(LoopbackNetwork(receiver), STAGE)
    options = replace(OPTIONS, retry=RetryPolicy(initial_backoff=0.001, max_backoff=0.01))
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=options)
    assert await installed(store, "snap") == data
    assert relay.bytes_uploaded < len(data), "it stopped staging once it fell back"
    await relay.close()
    assert staged_files() == []
