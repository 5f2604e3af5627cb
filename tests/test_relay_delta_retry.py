"""A relayed receiver's base lookup that failed for a passing reason is not kept as "no base"
(docs/relay.md, "Delta and the relay"; `fstransport.delta.lookups`): a later chunk of the same
snapshot looks again, and the chunks after it are filled from the base.  A definite answer (no
base held) is kept; a lookup that keeps failing is tried a bounded number of times.  Real parts:
local folders, a real relay staging folder, the receiver behind a loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fstransport import Chunked, FsspecSnapshotStore, Receiver
from fstransport.delta import cache
from fstransport.delta.lookups import MAX_ATTEMPTS, Found, Lookups
from fstransport.errors import StorageError
from fstransport.messages import Vote
from fstransport.network.loopback import LoopbackNetwork
from fstransport.network.relay import RelayNetwork
from tests.test_relay import installed, snapshot
from tests.test_relay_delta import (
    CHUNK,
    OPTIONS,
    PAGE,
    SIZE,
    TRAILER,
    Tap,
    _finished,
    fetched_for,
    versions,
)

CHUNKS = SIZE // CHUNK
LATER = 2  # changed pages past the first chunk (`CHANGED`: pages 3, 100 and 200)


class FailsFirst:
    """A callable that raises `error` on its first `times` calls, then calls `inner`."""

    def __init__(self, inner: Any, error: Exception, times: int = 1) -> None:
        self.inner, self.error, self.times, self.calls = inner, error, times, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return self.inner(*args, **kwargs)


class FailsFirstAsync(FailsFirst):
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return await self.inner(*args, **kwargs)


async def _relay_onto_base(tmp_path: Path, seed: int) -> tuple[FsspecSnapshotStore, bytes]:
    """A local store holding a base under "snap", and the new version to relay onto it."""
    base, new = versions(seed)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    await store.install(await _finished(store, "snap", base))
    return store, new


async def _send(store: FsspecSnapshotStore, new: bytes, stage: Path) -> tuple[Tap, RelayNetwork]:
    receiver = Receiver(store, relay_options={})
    tap = Tap(LoopbackNetwork(receiver))
    relay = RelayNetwork(tap, str(stage), block_maps=True)
    try:
        await Chunked.send_snapshot(relay, Vote(1, 1), snapshot(new), option=OPTIONS)
    finally:
        await relay.close()
        await receiver.close()
    return tap, relay


def _reused(tap: Tap) -> list[int]:
    return [tap.answers[at].reused for at in range(0, SIZE, CHUNK)]


async def test_a_base_lookup_that_failed_once_is_tried_again(tmp_path: Path) -> None:
    store, new = await _relay_onto_base(tmp_path, 40)
    flaky = FailsFirstAsync(store.exists, StorageError("snap", "stat", OSError("flaky bucket")))
    store.exists = flaky  # type: ignore[method-assign]
    tap, relay = await _send(store, new, tmp_path / "stage")
    assert flaky.calls >= 2, "the failed lookup was made again"
    assert await installed(store, "snap") == new
    reused = _reused(tap)
    assert reused[0] == 0, "the chunk whose lookup failed was fetched whole"
    assert all(r > 0 for r in reused[1:]), "every later chunk took its base's blocks"
    assert sum(reused) == SIZE - CHUNK - LATER * PAGE
    # the first chunk whole (its map never read), then the maps and changed pages of the rest
    assert relay.own_bytes_fetched == CHUNK + fetched_for(LATER) - TRAILER


async def test_a_base_map_that_failed_once_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, new = await _relay_onto_base(tmp_path, 41)
    flaky = FailsFirst(cache.kept_map, OSError("read error on the base"))
    monkeypatch.setattr(cache, "kept_map", flaky)  # (LocalDelta.map_base reads it at each call)
    tap, relay = await _send(store, new, tmp_path / "stage")
    assert flaky.calls == 2, "mapped again once, then kept"
    assert await installed(store, "snap") == new
    reused = _reused(tap)
    assert reused[0] == 0
    assert sum(reused) == SIZE - CHUNK - LATER * PAGE
    # the first chunk's map was read before its base failed to map: it counts as fetched
    assert relay.own_bytes_fetched == CHUNK + fetched_for(LATER)


async def test_a_base_that_keeps_failing_is_tried_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, new = await _relay_onto_base(tmp_path, 42)
    broken = FailsFirst(cache.kept_map, OSError("the base's disk is failing"), times=10**6)
    monkeypatch.setattr(cache, "kept_map", broken)
    tap, _ = await _send(store, new, tmp_path / "stage")
    assert await installed(store, "snap") == new, "every chunk fetched whole, right bytes"
    assert _reused(tap) == [0] * CHUNKS
    assert broken.calls == MAX_ATTEMPTS


async def test_no_base_is_a_definite_answer_and_kept(tmp_path: Path) -> None:
    _, new = versions(43)
    store = FsspecSnapshotStore(str(tmp_path / "r"))
    counted = FailsFirstAsync(store.exists, OSError("never raised"), times=0)
    store.exists = counted  # type: ignore[method-assign]
    tap, relay = await _send(store, new, tmp_path / "stage")
    assert counted.calls == 1, "looked up once: no base is not a failure"
    assert _reused(tap) == [0] * CHUNKS
    assert relay.own_bytes_fetched == SIZE
    assert await installed(store, "snap") == new


# -- Lookups alone ------------------------------------------------------------------------------


async def test_lookups_keep_definite_answers_and_retry_passing_failures() -> None:
    lookups: Lookups[str, int] = Lookups(keep=4, attempts=3)
    answers = [Found(None, definite=False), Found(7)]
    calls: list[str] = []

    async def look() -> Found[int]:
        calls.append("x")
        return answers.pop(0)

    assert await lookups.get("a", look) is None  # a passing failure: not kept
    assert await lookups.get("a", look) == 7
    assert await lookups.get("a", look) == 7
    assert len(calls) == 2
    assert lookups.attempts_of("a") == 2


async def test_a_lookup_that_raises_is_a_passing_failure_bounded_in_attempts() -> None:
    lookups: Lookups[str, int] = Lookups(keep=4, attempts=3)
    calls = 0

    async def look() -> Found[int]:
        nonlocal calls
        calls += 1
        raise StorageError("base", "read", OSError("down"))

    for _ in range(10):
        assert await lookups.get("a", look) is None
    assert calls == 3


async def test_one_lookup_at_a_time_and_waiters_share_it() -> None:
    lookups: Lookups[str, int] = Lookups(keep=4)
    gate = asyncio.Event()
    calls = 0

    async def look() -> Found[int]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Found(None, definite=False) if calls == 1 else Found(5)

    waiting = [asyncio.ensure_future(lookups.get("k", look)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [None] * 5, "all waited on the one attempt"
    assert calls == 1
    assert await lookups.get("k", look) == 5
    assert calls == 2


async def test_lookups_forget_the_oldest_and_what_drop_matches() -> None:
    lookups: Lookups[tuple[str, int], int] = Lookups(keep=2)

    async def one() -> Found[int]:
        return Found(1)

    for n in range(3):
        await lookups.get(("s", n), one)
    assert lookups.attempts_of(("s", 0)) == 0, "the oldest went"
    assert lookups.attempts_of(("s", 2)) == 1
    lookups.drop(lambda key: key[1] == 2)
    assert lookups.attempts_of(("s", 2)) == 0
    assert lookups.attempts_of(("s", 1)) == 1
