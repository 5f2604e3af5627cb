"""RelayNetwork stages ahead of its references: uploads run beyond the window, references go
in order, at most ``max_in_flight`` at once, and only to objects complete in the bucket."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import fsspec
import pytest

from fstransport import (
    Chunked,
    ConfigurationError,
    FaultyNetwork,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LoopbackNetwork,
    RelayNetwork,
    ReplicationClosed,
    TransferOptions,
    Vote,
)
from fstransport.checksum import chunk_crc
from fstransport.network.base import window_options
from fstransport.network.relay_gate import ReferenceGate
from fstransport.storage.staging import MANIFEST_NAME
from fstransport.testing.mock import MockNetwork, deliver_to
from tests.conftest import payload
from tests.helpers import staged_files
from tests.test_relay import installed, receiver_at, snapshot

STAGE = "memory://stage"
V1 = Vote(1, 1)
OPTIONS = TransferOptions(chunk_size=64 << 10, max_in_flight=2)
CHUNKS = 12
DATA_SIZE = CHUNKS * OPTIONS.chunk_size


def staged_chunks() -> list[str]:
    return [p for p in staged_files() if "/chunks/" in p]


async def staged_at_least(count: int) -> None:
    for _ in range(1000):
        if len(staged_chunks()) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{len(staged_chunks())} chunks staged, not {count}")


def check_complete(req: InstallSnapshotRequest) -> None:
    """The object a reference names is in the bucket, whole, with the reference's CRC32C."""
    ref = req.staged
    assert ref is not None
    fs = fsspec.filesystem("memory")
    body = fs.cat_file(f"{ref.area}/chunks/{ref.name}".removeprefix("memory://"))
    assert len(body) >= ref.length  # (a block map may follow the chunk's bytes)
    assert chunk_crc(body[: ref.length]) == ref.crc32c


def test_the_window_is_wider_only_for_a_relay_that_stages_ahead() -> None:
    inner = LoopbackNetwork(receiver_at("memory://recv")[0])
    assert window_options(inner, OPTIONS) is OPTIONS
    assert window_options(RelayNetwork(inner, STAGE), OPTIONS).max_in_flight == 4
    assert window_options(RelayNetwork(inner, STAGE, stage_ahead=5), OPTIONS).max_in_flight == 7
    assert window_options(RelayNetwork(inner, STAGE, stage_ahead=0), OPTIONS) is OPTIONS
    relay = RelayNetwork(inner, STAGE, stage_ahead=3)
    assert window_options(relay.to(inner), OPTIONS).max_in_flight == 5, "siblings share it"
    # a wrapper does not forward it: its own window stays as the options say
    assert window_options(FaultyNetwork(relay, seed=1), OPTIONS) is OPTIONS
    bad: Any
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigurationError):
            RelayNetwork(inner, STAGE, stage_ahead=bad)


async def test_references_keep_their_order_and_their_limit_whichever_stages_first() -> None:
    gate = ReferenceGate()
    sent: list[int] = []

    async def one(ticket: int, staging: float) -> None:
        try:
            await asyncio.sleep(staging)  # later tickets finish staging first
            await gate.turn(ticket, 2)
            sent.append(ticket)
            assert gate.sent <= 2
            await asyncio.sleep(0.01)
        finally:
            gate.leave(ticket)

    tickets = [gate.enter("snap", 1 + t, False) for t in range(6)]
    failed = gate.enter("snap", 7, False)  # fails while staging: gives its place up without a turn
    last = gate.enter("snap", 8, False)
    tasks = [asyncio.ensure_future(one(t, 0.03 - 0.005 * t)) for t in tickets]
    tasks.append(asyncio.ensure_future(one(last, 0.0)))
    await asyncio.sleep(0.001)
    assert sent == [], "nobody goes before the oldest is staged"
    waiting = asyncio.ensure_future(gate.turn(failed, 2))
    await asyncio.sleep(0)
    waiting.cancel()
    gate.leave(failed)
    await asyncio.gather(*tasks)
    assert sent == [*tickets, last]
    assert gate.sent == 0


async def test_uploads_run_ahead_and_references_name_only_complete_objects() -> None:
    data = payload(DATA_SIZE, seed=31)
    receiver, store = receiver_at("memory://recv")
    ahead: list[int] = []

    async def slow_receiver(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        check_complete(req)
        ahead.append(len(staged_chunks()) - len(recording.requests))  # staged, not referenced
        await asyncio.sleep(0.02)  # the receiver's fetch takes a while: staging goes on
        return await deliver_to(receiver)(req)

    recording = MockNetwork(slow_receiver)
    relay = RelayNetwork(recording, STAGE)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    offsets = [req.offset for req in recording.requests]
    assert offsets == sorted(offsets), "in order"
    assert len(offsets) == CHUNKS, "each once"
    assert recording.max_in_flight <= OPTIONS.max_in_flight, "the receiver's window is kept"
    assert max(ahead) >= 1, f"uploads ran ahead of the references: {ahead}"
    assert max(ahead) <= OPTIONS.max_in_flight, f"and no further than stage_ahead: {ahead}"
    assert relay.bytes_uploaded == len(data)
    assert staged_files() == []
    await relay.close()


async def test_staging_ahead_is_bounded_while_the_receiver_does_not_answer() -> None:
    data = payload(DATA_SIZE, seed=32)
    receiver, store = receiver_at("memory://recv")
    release = asyncio.Event()

    async def stuck(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if req.offset > 0:
            await release.wait()
        return await deliver_to(receiver)(req)

    relay = RelayNetwork(MockNetwork(stuck), STAGE)
    send = asyncio.ensure_future(Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS))
    await staged_at_least(1 + 2 * OPTIONS.max_in_flight)
    await asyncio.sleep(0.2)  # and no more come
    # offset 0 answered, then the window (2 references out) and 2 more staged ahead
    assert len(staged_chunks()) == 1 + 2 * OPTIONS.max_in_flight
    release.set()
    await send
    assert await installed(store, "snap") == data
    await relay.close()


async def test_a_sender_stopped_with_chunks_staged_ahead_installs_nothing_then_reuses() -> None:
    data = payload(DATA_SIZE, seed=33)
    receiver, store = receiver_at("memory://recv")
    stop = asyncio.Event()

    async def stop_once_staged_ahead(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        check_complete(req)
        if req.offset >= 2 * OPTIONS.chunk_size and not stop.is_set():
            await staged_at_least(1 + 2 * OPTIONS.max_in_flight)
            stop.set()  # the sender stops with chunks staged that no reference named yet
            await asyncio.Event().wait()
        return await deliver_to(receiver)(req)

    recording = MockNetwork(stop_once_staged_ahead)
    relay = RelayNetwork(recording, STAGE)
    with pytest.raises(ReplicationClosed):
        await Chunked.send_snapshot(relay, V1, snapshot(data), stop.wait(), OPTIONS)
    assert await installed(store, "snap") is None
    assert not any(p.endswith(MANIFEST_NAME) for p in staged_files()), "nothing committed"
    referenced = {req.staged.name for req in recording.requests if req.staged is not None}
    assert len(staged_chunks()) > len(referenced), "chunks were staged beyond the references"
    uploaded = relay.bytes_uploaded
    assert uploaded < len(data)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    assert relay.bytes_uploaded == len(data), f"the {uploaded} bytes staged are not sent again"
    assert staged_files() == []
    await relay.close()


async def test_the_manifest_is_written_while_the_last_chunks_are_fetched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once every chunk is staged the manifest goes, while the receiver still fetches chunks;
    the final reference goes last, alone, and finds its manifest there (no wait for it)."""
    from fstransport.storage.staging import StagingStore

    data = payload(DATA_SIZE, seed=34)
    receiver, store = receiver_at("memory://recv")
    write_json = StagingStore.write_json
    events: list[str] = []

    async def slow_write(self: StagingStore, url: str, document: dict[str, Any]) -> bool:
        events.append("manifest")
        await asyncio.sleep(0.05)  # a slow PUT
        return await write_json(self, url, document)

    async def fetching(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        assert req.staged is not None
        check_complete(req)
        if req.done:
            url = f"{req.staged.area}/{MANIFEST_NAME}".removeprefix("memory://")
            assert fsspec.filesystem("memory").exists(url), "the manifest is there already"
            assert recording.in_flight == 1, "the final reference goes alone"
            events.append("final")
        else:
            await asyncio.sleep(0.03)  # the receiver's GET
        response = await deliver_to(receiver)(req)
        events.append(f"answered {req.offset}")
        return response

    recording = MockNetwork(fetching)
    monkeypatch.setattr(StagingStore, "write_json", slow_write)
    relay = RelayNetwork(recording, STAGE)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    last_chunk = f"answered {(CHUNKS - 2) * OPTIONS.chunk_size}"
    assert events.index("manifest") < events.index(last_chunk) < events.index("final"), events
    assert events.count("manifest") == 1
    assert staged_files() == []
    await relay.close()


async def test_a_failed_upload_ahead_does_not_hold_up_the_references_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The oldest chunk's PUT fails (a 503, say) while later ones are staged: the later
    references go, the failed chunk is sent again, and the exact bytes are installed."""
    from fstransport import StorageError
    from fstransport.storage.staging import StagingStore

    data = payload(DATA_SIZE, seed=35)
    receiver, store = receiver_at("memory://recv")
    put_once = StagingStore.put_once
    failed: list[str] = []

    async def flaky(self: StagingStore, url: str, body: object, crc: int, *more: bytes) -> bool:
        if "/chunks/0000000000020000-" in url and not failed:
            failed.append(url)
            await asyncio.sleep(0.05)  # the chunks behind it are staged meanwhile
            raise StorageError(url, "stage", OSError("503 Slow Down"), retryable=True)
        return await put_once(self, url, body, crc, *more)  # type: ignore[arg-type]

    monkeypatch.setattr(StagingStore, "put_once", flaky)

    async def checked(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        check_complete(req)
        return await deliver_to(receiver)(req)

    recording = MockNetwork(checked)
    relay = RelayNetwork(recording, STAGE)
    options = replace(OPTIONS, retry=replace(OPTIONS.retry, initial_backoff=0.01))
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=options)
    assert failed, "the PUT failed once"
    assert await installed(store, "snap") == data
    offsets = [req.offset for req in recording.requests]
    assert offsets.index(2 * OPTIONS.chunk_size) > offsets.index(3 * OPTIONS.chunk_size)
    assert recording.max_in_flight <= OPTIONS.max_in_flight
    assert staged_files() == []
    await relay.close()
