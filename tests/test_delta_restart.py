"""A receiver restarted mid-delta (docs/delta.md, "A receiver restarted mid-delta";
`fstransport.protocol.delta_restart`): the sender runs the delta exchange again, and only what
the receiver's partial data and the new recipe do not hold is sent.  The rules alone (sans
I/O), then in-process transfers whose receiver is dropped and rebuilt over the same folder
(its requests in flight killed), a straggler sent under the first recipe meeting the second,
and a base whose assembly failed (still sent in full).  Over a real ``fstransport serve``
killed with SIGKILL: test_delta_restart_http.py."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fstransport import TransferOptions
from fstransport.errors import InvalidRequest, NetworkError, RemoteError, SnapshotMismatch
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    SnapshotMeta,
    SnapshotSegmentId,
    Vote,
)
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB
from fstransport.protocol.delta import build_map
from fstransport.protocol.delta_pack import SentRanges
from fstransport.protocol.delta_restart import (
    MAX_EXCHANGES,
    ExchangeRule,
    FailedBases,
    begin_exchange,
    check_sent,
    offer_lost,
    start_over,
)
from fstransport.protocol.delta_session import ReceiverDelta
from fstransport.protocol.receiver import StreamState
from fstransport.protocol.sender import Failure, Verdict
from fstransport.receiver import Receiver
from fstransport.sender import SendResult, send_source
from fstransport.storage.source import BufferSource
from fstransport.storage.store import FsspecSnapshotStore
from tests.helpers import object_bytes, uploads
from tests.test_delta_ship import _done, edited

SIZE = 4096 * KiB
PAGES = SIZE // 4096 // 100  # 1% of the 4 KiB pages
OPTIONS = TransferOptions(chunk_size=16 * KiB, delta="blocks", max_in_flight=4)

# -- the rules alone ----------------------------------------------------------------------------


def _rewind(offset: int = 12288) -> Verdict:
    return Verdict(Failure.REWIND, SnapshotMismatch(_at(offset), _at(0)), offset)


def _at(offset: int) -> SnapshotSegmentId:
    return SnapshotSegmentId("snap", offset)


def test_the_exchange_runs_again_only_after_an_accepted_one() -> None:
    rule = ExchangeRule()
    rewind = _rewind()
    assert rule.verdict(rewind) is rewind, "no exchange yet: the rewind is as it was"
    rule.rewound(True)
    assert not rule.due
    rule.ended(accepted=False)  # no offer, or nothing to reuse: a full transfer
    assert rule.verdict(_rewind()).expect_offset == 12288
    rule.rewound(True)
    assert not rule.due
    rule.ended(accepted=True)
    assert rule.verdict(_rewind()).expect_offset == 0, "back to 0: the new answer tells all"
    retry = Verdict(Failure.RETRY, NetworkError("lost"))
    assert rule.verdict(retry) is retry
    rule.rewound(False)  # a stale answer's mismatch: the window did not rewind
    assert not rule.due
    rule.rewound(True)
    assert rule.due
    rule.ended(accepted=True)
    assert not rule.due


def test_the_exchanges_of_one_send_are_bounded() -> None:
    rule = ExchangeRule()
    for _ in range(MAX_EXCHANGES - 1):
        rule.ended(accepted=True)
        rule.rewound(True)
        assert rule.due
    rule.ended(accepted=True)
    assert rule.ran == MAX_EXCHANGES
    assert rule.verdict(_rewind()).expect_offset == 12288, "out of exchanges: a plain rewind"
    rule.rewound(True)
    assert not rule.due


def _stream(*, sends: list[tuple[int, int]] | None, from_store: bool = False) -> StreamState:
    state = StreamState(SnapshotMeta("snap", size=SIZE), from_store=from_store)
    if sends is not None:
        base_map = build_map("blocks", bytes(SIZE), key=bytes(16))
        state.delta = ReceiverDelta("snap", SIZE, base_map, sent=SentRanges(sends))
    state.exchanges = 1
    return state


def _extents(*pairs: tuple[int, int]) -> InstallSnapshotRequest:
    data = bytes(sum(n for _, n in pairs))
    meta = SnapshotMeta("snap", size=SIZE)
    req = InstallSnapshotRequest(Vote(1, 0), meta, pairs[0][0], data, False, None)
    return replace(req, extents=pairs)


@pytest.mark.parametrize("from_store", [False, True])
@pytest.mark.parametrize("exchanges", [1, 2])
def test_extents_meeting_a_recipe(from_store: bool, exchanges: int) -> None:
    state = _stream(sends=[(4096, 8192), (40960, 45056)], from_store=from_store)
    state.exchanges = exchanges
    check_sent(state, _extents((4096, 4096), (40960, 100)))  # inside: written
    outside = _extents((4096, 4096), (8192, 4096))  # the second range is copied
    if from_store or exchanges > 1:  # maybe sent under an earlier recipe: refused, kept
        with pytest.raises(SnapshotMismatch) as caught:
            check_sent(state, outside)
        assert (caught.value.expect.offset, caught.value.got.offset) == (0, 4096)
    else:  # one exchange, its own data: only a broken sender sends it
        with pytest.raises(InvalidRequest):
            check_sent(state, outside)


@pytest.mark.parametrize("from_store", [False, True])
def test_extents_without_a_recipe_are_a_rewind_to_0(from_store: bool) -> None:
    with pytest.raises(SnapshotMismatch) as caught:
        check_sent(_stream(sends=None, from_store=from_store), _extents((4096, 4096)))
    assert caught.value.expect.offset == 0


def test_a_recipe_without_its_offer_is_a_rewind_the_sender_reads_as_a_lost_offer() -> None:
    lost = start_over(_stream(sends=None), _extents((4096, 4096)))
    assert (lost.expect.offset, lost.got.offset) == (0, 4096)
    assert offer_lost(lost)
    assert offer_lost(RemoteError(lost, "receiver"))
    assert not offer_lost(SnapshotMismatch(_at(4096), _at(0))), "a gap, not a lost offer"
    assert not offer_lost(RemoteError(InvalidRequest("bad recipe", field="recipe")))


def test_a_new_exchange_forgets_the_copied_ranges_and_counts() -> None:
    state = _stream(sends=[(4096, 8192)])
    assert state.delta is not None
    state.delta.copied = ((0, 4096, 7),)
    state.delta._copied_set = frozenset(state.delta.copied)
    state.ledger.add(0, 4096, 7)  # copied
    state.ledger.add(4096, 4096, 9)  # written
    begin_exchange(state)
    assert state.delta is None
    assert [(r.offset, r.length) for r in state.ledger.records()] == [(4096, 4096)]
    assert state.exchanges == 2
    begin_exchange(state)  # (no recipe: nothing to forget)
    assert state.exchanges == 3


def test_failed_bases_are_noted_only_for_a_failed_assembly() -> None:
    failed = FailedBases(keep=2)
    state = _stream(sends=[(4096, 8192)])
    mismatch = SnapshotMismatch(_at(0), _at(SIZE - 1))
    failed.note(state, mismatch, dropped=True)
    assert failed.of("snap") == frozenset(), "no recipe accepted: not the base's doing"
    assert state.delta is not None
    state.delta.recipe = object()  # type: ignore[assignment]
    failed.note(state, mismatch, dropped=False)  # a gap: the stream stays
    failed.note(state, NetworkError("x"), dropped=True)
    assert failed.of("snap") == frozenset()
    failed.note(state, mismatch, dropped=True)
    assert failed.of("snap") == {"snap"}
    failed.finished("snap")
    assert failed.of("snap") == frozenset()
    for name in ("a", "b", "c"):
        other = _stream(sends=[(4096, 8192)])
        other.meta = replace(other.meta, snapshot_id=name)
        assert other.delta is not None
        other.delta.recipe = object()  # type: ignore[assignment]
        failed.note(other, mismatch, dropped=True)
    assert failed.of("a") == frozenset(), "the oldest forgotten"
    assert failed.of("c") == {"snap"}


# -- a receiver dropped and rebuilt mid-delta ---------------------------------------------------


class Restarting:
    """A loopback to a receiver over `root` that restarts when `when(request)` says so (up to
    `times`): its requests in flight are killed (the sender sees a network error), its store
    closed (partial data and journal stay, as a process gone), and a new receiver over the
    same folder takes the requests from then on."""

    carries_delta = True

    def __init__(
        self,
        root: str,
        when: Callable[[InstallSnapshotRequest], bool],
        times: int = 1,
        **options: Any,
    ) -> None:
        self.root, self.when, self.left, self.options = root, when, times, options
        self.store = FsspecSnapshotStore(root, **options)
        self.receiver = Receiver(self.store)
        self.flying: set[asyncio.Future[InstallSnapshotResponse]] = set()
        self.killed: set[asyncio.Future[InstallSnapshotResponse]] = set()
        self.requests: list[InstallSnapshotRequest] = []
        self.restarts = 0

    async def restart(self) -> None:
        self.killed |= self.flying
        for task in self.flying:
            task.cancel()
        await asyncio.gather(*self.flying, return_exceptions=True)
        await self.store.close()
        self.store = FsspecSnapshotStore(self.root, **self.options)
        self.receiver = Receiver(self.store)
        self.restarts += 1

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        self.requests.append(req)
        if self.left and self.when(req):
            self.left -= 1
            await self.restart()
        task = asyncio.ensure_future(LoopbackNetwork(self.receiver).install_snapshot(req, option))
        self.flying.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if task in self.killed:
                raise NetworkError("the receiver's process died") from None
            raise
        finally:
            self.flying.discard(task)

    async def installed(self, snapshot_id: str = "snap.bin") -> None:
        """Once the current receiver's install of `snapshot_id` (if any) ended."""
        await self.receiver._io.installing.get(snapshot_id, _done())


def _nth_with_extents(n: int) -> Callable[[InstallSnapshotRequest], bool]:
    seen = 0

    def when(req: InstallSnapshotRequest) -> bool:
        nonlocal seen
        seen += 1 if req.extents else 0
        return bool(req.extents) and seen == n

    return when


def _final(req: InstallSnapshotRequest) -> bool:
    return req.done


async def _restarted(
    root: str,
    when: Callable[[InstallSnapshotRequest], bool],
    seed: int,
    times: int = 1,
    **options: Any,
) -> tuple[Restarting, SendResult, bytes]:
    """Ship a base, then a 1%-changed version through a receiver that restarts `when`."""
    rng = random.Random(seed)
    base = rng.randbytes(SIZE)
    new = edited(base, PAGES, seed=seed + 1)
    net = Restarting(root, when, times=0, **options)
    meta = SnapshotMeta("snap.bin")
    first = await send_source(net, Vote(1, 0), meta, BufferSource(base, "b"), None, OPTIONS)
    assert first.completed
    await net.installed()
    net.requests.clear()
    net.left = times  # (restarts in the second send only)
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "n"), None, OPTIONS)
    await net.installed()
    return net, result, new


def _wire(result: SendResult) -> int:
    """Bytes that crossed to the receiver: chunk data, the maps offered and the recipes."""
    return result.stats.bytes_sent + result.stats.delta_bytes


@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("at", ["extents", "final"])
async def test_a_receiver_restarted_mid_delta_costs_about_the_delta_again(
    kind: str, at: str, tmp_path: Path
) -> None:
    """Restarted at the second request with extents, or just as the final chunk comes (all
    sent ranges written: the new receiver holds a gap wherever the recipe copied)."""
    root = str(tmp_path / "r") if kind == "local" else f"memory://restart-{uuid.uuid4().hex}"
    when = _nth_with_extents(2) if at == "extents" else _final
    net, result, new = await _restarted(root, when, seed=50)
    assert net.restarts == 1
    assert result.completed
    with await net.store.open("snap.bin") as fh:
        assert fh.read() == new, "the right bytes"
    assert result.stats.rewinds >= 1
    exchanges = [r for r in net.requests if r.delta is not None and r.recipe is None]
    assert len(exchanges) == 2, "the exchange ran again after the restart"
    assert result.stats.bytes_reused > 0.9 * SIZE
    assert _wire(result) < 0.1 * SIZE, f"{_wire(result)} bytes for a 1% delta"


async def test_a_receiver_restarted_between_its_offer_and_the_recipe(tmp_path: Path) -> None:
    """The recipe meets a receiver that never offered: it answers a rewind to 0 (not a refusal),
    the sender asks for the offer again with the same key and sends the recipe it planned."""
    net, result, new = await _restarted(
        str(tmp_path / "r"), lambda req: req.recipe is not None, seed=57
    )
    assert net.restarts == 1
    assert result.completed
    assert (tmp_path / "r" / "snap.bin").read_bytes() == new
    offers = [r for r in net.requests if r.delta is not None and r.recipe is None]
    recipes = [r for r in net.requests if r.recipe is not None]
    assert len(offers) == 2
    assert offers[0].delta_key == offers[1].delta_key
    assert len(recipes) == 2
    assert recipes[0].recipe == recipes[1].recipe, "planned once"
    assert result.stats.bytes_reused > 0.9 * SIZE
    assert _wire(result) < 0.1 * SIZE


async def test_an_s3_receiver_restarted_mid_delta_spares_the_copied_ranges(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    """Onto S3 the spool of sent ranges does not outlive its receiver: after the restart the
    stream starts empty, the new exchange is offered the base again, and the delta (not the
    snapshot) is sent again; no multipart upload is left."""
    root = f"s3://{s3_bucket}/root"
    net, result, new = await _restarted(root, _nth_with_extents(2), seed=55, **s3_storage_options)
    await net.store.close()
    assert net.restarts == 1
    assert result.completed
    assert object_bytes(s3_client, s3_bucket, "root/snap.bin") == new
    assert result.stats.bytes_reused > 0.9 * SIZE
    assert _wire(result) < 0.1 * SIZE
    assert uploads(s3_client, s3_bucket) == []


async def test_two_restarts_and_a_straggler_in_between(tmp_path: Path) -> None:
    """Two restarts; after the second recipe, requests with extents sent under the first are
    delivered again: one as sent (inside the new recipe's ranges: written, the same bytes),
    one moved onto a range the recipe copies (refused with a rewind, nothing written); the
    stream is never dropped and the snapshot installs with the right bytes."""
    root = str(tmp_path / "r")
    early: list[InstallSnapshotRequest] = []
    outcomes: list[object] = []

    def when(req: InstallSnapshotRequest) -> bool:
        if req.extents and len(early) < 2:
            early.append(req)
            return len(early) == 2
        return req.done

    net = Restarting(root, when, times=0)
    original = net.install_snapshot

    async def with_stragglers(
        req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await original(req, option)
        if req.recipe is not None and net.restarts == 2 and not outcomes:
            straggler = early[0]
            assert straggler.extents is not None
            (at, length), rest = straggler.extents[0], straggler.extents[1:]
            assert at > length  # (moved, it still starts past 0)
            moved = replace(straggler, offset=at - length, extents=((at - length, length), *rest))
            for late in (straggler, moved):
                try:
                    to_receiver = LoopbackNetwork(net.receiver)
                    outcomes.append(await to_receiver.install_snapshot(late, option))
                except RemoteError as exc:
                    outcomes.append(exc.source)
                assert net.receiver.receiving == ["snap.bin"], "the stream stays"
        return answer

    net.install_snapshot = with_stragglers  # type: ignore[method-assign]
    rng = random.Random(60)
    base = rng.randbytes(SIZE)
    new = edited(base, PAGES, seed=61)
    meta = SnapshotMeta("snap.bin")
    await send_source(net, Vote(1, 0), meta, BufferSource(base, "b"), None, OPTIONS)
    await net.installed()
    net.left = 2
    early.clear()
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "n"), None, OPTIONS)
    await net.installed()
    assert net.restarts == 2
    assert result.completed
    with await net.store.open("snap.bin") as fh:
        assert fh.read() == new
    assert len(outcomes) == 2
    assert isinstance(outcomes[0], InstallSnapshotResponse), "inside the new recipe: written"
    assert isinstance(outcomes[1], SnapshotMismatch), "outside: refused, a rewind"
    assert _wire(result) < 0.1 * SIZE


async def test_a_base_that_changed_is_still_sent_in_full_after_a_new_exchange(
    tmp_path: Path,
) -> None:
    """The base changes after the recipe: the assembly fails, the stream is dropped (a rewind
    to 0), the sender runs the exchange again and is offered nothing (`FailedBases`): the
    snapshot is sent in full, and the next version finds its base again."""
    root = tmp_path / "r"
    # (no prefill: it copies the base at the offer, before the change, and would be right)
    net = Restarting(str(root), lambda req: False, times=0, prefill=False)
    rng = random.Random(70)
    base = rng.randbytes(SIZE)
    new = edited(base, PAGES, seed=71)
    meta = SnapshotMeta("snap.bin")
    await send_source(net, Vote(1, 0), meta, BufferSource(base, "b"), None, OPTIONS)
    await net.installed()
    original = net.install_snapshot
    held = root / "snap.bin"

    async def scribble_after_recipe(
        req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        answer = await original(req, option)
        if req.recipe is not None:
            held.write_bytes(bytes(b ^ 0xFF for b in base[:8192]) + base[8192:])
        return answer

    net.install_snapshot = scribble_after_recipe  # type: ignore[method-assign]
    net.requests.clear()
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "n"), None, OPTIONS)
    await net.installed()
    assert result.completed
    assert held.read_bytes() == new
    offers = [r for r in net.requests if r.delta is not None and r.recipe is None]
    assert len(offers) == 2, "the exchange ran again after the failed assembly"
    assert result.stats.bytes_reused == 0
    assert net.receiver.rules.failed_bases.of("snap.bin") == frozenset(), "forgotten at install"
    net.install_snapshot = original  # type: ignore[method-assign]
    again = await send_source(net, Vote(1, 0), meta, BufferSource(base, "b"), None, OPTIONS)
    assert again.stats.bytes_reused > 0.9 * SIZE, "the installed snapshot is a base again"


async def test_a_base_that_changed_across_the_restart_is_planned_with_a_fresh_key(
    tmp_path: Path,
) -> None:
    """The exchange after a restart sends the first key again (so that the same base gives the
    same map and the first recipe serves); a base that changed meanwhile offers another map,
    made with a key sent before: it is not planned against, the exchange is asked again with a
    fresh key, and the new recipe is planned against the changed base."""
    root = tmp_path / "r"
    net, result, new = await _changed_at_restart(root)
    offers = [r for r in net.requests if r.delta is not None and r.recipe is None]
    keys = [r.delta_key for r in offers]
    assert len(keys) == 3
    assert keys[0] == keys[1], "the first key again"
    assert keys[2] != keys[0], "a fresh one for another base"
    assert result.completed
    assert (root / "snap.bin").read_bytes() == new
    assert result.stats.bytes_reused > 0.9 * SIZE
    assert _wire(result) < 0.1 * SIZE


async def _changed_at_restart(root: Path) -> tuple[Restarting, SendResult, bytes]:
    rng = random.Random(90)
    base = rng.randbytes(SIZE)
    new = edited(base, PAGES, seed=91)
    net = Restarting(str(root), _nth_with_extents(2), times=0)
    meta = SnapshotMeta("snap.bin")
    await send_source(net, Vote(1, 0), meta, BufferSource(base, "b"), None, OPTIONS)
    await net.installed()
    restart = net.restart

    async def restart_onto_a_changed_base() -> None:
        await restart()
        (root / "snap.bin").write_bytes(edited(base, 3, seed=92))

    net.restart = restart_onto_a_changed_base  # type: ignore[method-assign]
    net.requests.clear()
    net.left = 1
    result = await send_source(net, Vote(1, 0), meta, BufferSource(new, "n"), None, OPTIONS)
    await net.installed()
    return net, result, new
