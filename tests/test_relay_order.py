"""What a receiver sees of a relayed send whose window hands chunks over early
(`fstransport.protocol.send_order`): chunks past 0 are staged while the first reference is out,
the final chunk is staged and committed while others are fetched, and the receiver still gets
the reference at 0 first and the final one alone, last; cancelled, nothing is installed."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from fstransport import (
    Chunked,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RelayNetwork,
    ReplicationClosed,
    SnapshotMismatch,
    TransferOptions,
    Vote,
)
from fstransport.storage.staging import MANIFEST_NAME
from fstransport.testing.mock import MockNetwork, deliver_to
from tests.conftest import payload
from tests.helpers import staged_files
from tests.test_relay import installed, receiver_at, snapshot

STAGE = "memory://stage"
V1 = Vote(1, 1)
CHUNK = 64 << 10
OPTIONS = TransferOptions(chunk_size=CHUNK, max_in_flight=2)


def staged_chunks() -> list[str]:
    return [p for p in staged_files() if "/chunks/" in p]


async def until(condition: object, what: str) -> None:
    for _ in range(2000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


async def test_chunks_past_0_are_staged_while_the_first_reference_is_out() -> None:
    data = payload(8 * CHUNK, seed=51)
    receiver, store = receiver_at("memory://recv")
    answered_first = asyncio.Event()
    staged_while_first_out: list[int] = []

    async def slow_first(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if req.offset == 0:
            await until(lambda: len(staged_chunks()) >= 4, "four chunks staged")
            staged_while_first_out.append(len(staged_chunks()))
            response = await deliver_to(receiver)(req)
            answered_first.set()
            return response
        assert answered_first.is_set(), "no reference past 0 before the first one's answer"
        return await deliver_to(receiver)(req)

    recording = MockNetwork(slow_first)
    relay = RelayNetwork(recording, STAGE)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    assert staged_while_first_out[0] == 4, "the window plus stage_ahead, from the start"
    assert [r.offset for r in recording.requests] == [i * CHUNK for i in range(8)]
    assert relay.bytes_uploaded == len(data)
    await relay.close()


async def test_a_sender_cancelled_with_the_final_chunk_staged_installs_nothing() -> None:
    """A middle chunk's fetch hangs; the final chunk is staged and the manifest written, but its
    reference never goes; the sender is cancelled: nothing installed.  The next send through the
    same relay uploads nothing and installs the exact bytes."""
    data = payload(6 * CHUNK + 1000, seed=52)
    receiver, store = receiver_at("memory://recv")
    hang = asyncio.Event()
    stop = asyncio.Event()

    async def hangs_at_the_fifth(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        assert not req.done, "the final reference never goes while a chunk is out"
        if req.offset == 5 * CHUNK:
            hang.set()
            await asyncio.Event().wait()  # (until cancelled)
        return await deliver_to(receiver)(req)

    recording = MockNetwork(hangs_at_the_fifth)
    relay = RelayNetwork(recording, STAGE)
    sending = asyncio.ensure_future(
        Chunked.send_snapshot(relay, V1, snapshot(data), stop.wait(), OPTIONS)
    )
    await until(hang.is_set, "the fifth chunk's fetch hangs")
    await until(lambda: any(p.endswith(MANIFEST_NAME) for p in staged_files()), "a manifest")
    await asyncio.sleep(0.05)
    stop.set()
    with pytest.raises(ReplicationClosed):
        await sending
    assert not any(r.done for r in recording.requests)
    assert await installed(store, "snap") is None
    uploaded = relay.bytes_uploaded
    assert uploaded == len(data), "every chunk, the final one too, was staged"
    recording.handler = deliver_to(receiver)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    assert relay.bytes_uploaded == uploaded, "nothing uploaded again"
    assert staged_files() == []
    await relay.close()


async def test_a_receiver_answers_a_final_chunk_that_comes_early_and_installs_nothing() -> None:
    """The receiver's rule the relay's order keeps intact: a final chunk before the chunks in
    front of it is answered with the first gap (nothing installed); once they are there, the
    final chunk again installs the snapshot."""
    data = payload(4 * CHUNK, seed=53)
    receiver, store = receiver_at("memory://recv")
    requests: list[InstallSnapshotRequest] = []

    async def keep(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        requests.append(req)
        return InstallSnapshotResponse(V1)

    relay = RelayNetwork(MockNetwork(keep), STAGE, keep_for=600)  # (kept for the test)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)  # (references only)
    first, second, third, final = requests
    assert final.done
    assert final.staged is not None
    await receiver.handle(first)
    with pytest.raises(SnapshotMismatch) as caught:
        await receiver.handle(final)
    assert caught.value.expect.offset == CHUNK
    assert await installed(store, "snap") is None
    await receiver.handle(third)
    with pytest.raises(SnapshotMismatch) as caught:
        await receiver.handle(replace(final))
    assert caught.value.expect.offset == CHUNK
    await receiver.handle(second)
    await receiver.handle(final)
    assert await installed(store, "snap") == data
    await relay.close()


async def test_a_resumed_receiver_is_not_sent_what_it_holds() -> None:
    """Chunks handed over before the first answer said what the receiver holds are answered by
    the relay itself: none of their references reaches the receiver."""
    data = payload(12 * CHUNK, seed=54)
    first, store = receiver_at("memory://recv")
    seen: list[int] = []

    async def dies_after_five(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        seen.append(req.offset)
        if len(seen) > 5:
            await asyncio.Event().wait()
        return await deliver_to(first, interleave=False)(req)

    recording = MockNetwork(dies_after_five)
    relay = RelayNetwork(recording, STAGE)
    options = replace(OPTIONS, max_in_flight=1, hard_ttl=0.2)
    options = replace(options, retry=replace(options.retry, max_attempts=1))
    with pytest.raises(Exception):  # noqa: B017,PT011 (the receiver hangs: any give-up)
        await Chunked.send_snapshot(relay, V1, snapshot(data, checksum=True), option=options)
    held_end = 5 * CHUNK
    second, store = receiver_at("memory://recv")  # a new process: the partial data stays
    recording.handler = deliver_to(second, interleave=False)
    recording.requests.clear()
    wide = replace(OPTIONS, max_in_flight=4)  # (7 chunks handed over before the answer)
    await Chunked.send_snapshot(relay, V1, snapshot(data, checksum=True), option=wide)
    assert await installed(store, "snap") == data
    offsets = [r.offset for r in recording.requests]
    assert offsets[0] == 0
    assert not [o for o in offsets[1:] if o < held_end], f"held chunks were sent: {offsets}"
    assert relay.bytes_uploaded == len(data)
    await relay.close()


async def test_the_receiver_reads_the_manifest_while_it_fetches_the_final_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fstransport.messages import StagedChunk
    from fstransport.storage.staging import StagingStore

    data = payload(3 * CHUNK + 7, seed=55)
    receiver, store = receiver_at("memory://recv")
    fetch, read_json = StagingStore.fetch, StagingStore.read_json
    events: list[str] = []

    async def slow_fetch(self: StagingStore, ref: StagedChunk) -> object:
        final = ref.name.startswith("%016x" % (3 * CHUNK))
        events.append("fetch final" if final else "fetch")
        body = await fetch(self, ref)
        if final:
            await asyncio.sleep(0.05)
            events.append("fetched final")
        return body

    async def reads(self: StagingStore, url: str) -> object:
        events.append("manifest")
        return await read_json(self, url)

    monkeypatch.setattr(StagingStore, "fetch", slow_fetch)
    monkeypatch.setattr(StagingStore, "read_json", reads)
    relay = RelayNetwork(MockNetwork(deliver_to(receiver)), STAGE)
    await Chunked.send_snapshot(relay, V1, snapshot(data), option=OPTIONS)
    assert await installed(store, "snap") == data
    assert events.count("manifest") == 1, events
    assert events.index("fetch final") < events.index("manifest") < events.index("fetched final")
    await relay.close()
