"""MockNetwork's combinators: after, before, stop_after (the misbehaving peers the tests build)."""

from __future__ import annotations

import asyncio

import pytest

from fstransport import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    SnapshotMeta,
    TransferOptions,
    Unreachable,
    Vote,
)
from fstransport.testing.mock import MockNetwork, after, answer, before, fail, stop_after

VOTE = Vote(1, 1)
OPTIONS = TransferOptions()


def request(offset: int, data: bytes = b"abc") -> InstallSnapshotRequest:
    return InstallSnapshotRequest(VOTE, SnapshotMeta("snap"), offset, data, done=False)


async def test_after_switches_handlers_after_n_requests() -> None:
    net = MockNetwork(after(2, answer, fail(Unreachable("gone"))))
    for offset in (0, 3):
        assert await net.install_snapshot(request(offset), OPTIONS) == InstallSnapshotResponse(VOTE)
    for offset in (6, 9):
        with pytest.raises(Unreachable):
            await net.install_snapshot(request(offset), OPTIONS)
    assert net.offsets == [0, 3, 6, 9]
    assert [type(e) for e in net.errors] == [Unreachable, Unreachable]


async def test_before_looks_first_and_may_refuse() -> None:
    looked: list[int] = []

    def look(req: InstallSnapshotRequest) -> None:
        looked.append(req.offset)
        if req.offset == 3:
            raise Unreachable("refused by the look")

    net = MockNetwork(before(look, answer))
    await net.install_snapshot(request(0), OPTIONS)
    with pytest.raises(Unreachable, match="look"):
        await net.install_snapshot(request(3), OPTIONS)
    assert looked == [0, 3]


async def test_stop_after_sets_the_event_and_then_never_answers() -> None:
    stopped = asyncio.Event()
    net = MockNetwork(stop_after(2, answer, stopped))
    await net.install_snapshot(request(0), OPTIONS)
    assert not stopped.is_set()
    await net.install_snapshot(request(3), OPTIONS)
    assert stopped.is_set()
    hung = asyncio.ensure_future(net.install_snapshot(request(6), OPTIONS))
    await asyncio.sleep(0.01)
    assert not hung.done(), "a stopped peer answers nothing"
    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung
    assert net.data_bytes == 9  # three requests of three bytes arrived
