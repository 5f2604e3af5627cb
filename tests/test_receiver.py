"""The receiver over real stores: validation before writing, votes, streams, atomic installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fstransport import (
    ChecksumMismatch,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InvalidRequest,
    Receiver,
    ReceiverLimits,
    SnapshotMeta,
    SnapshotMismatch,
    StorageError,
    TooManyTransfers,
    Vote,
)
from fstransport.checksum import chunk_crc, format_checksum
from tests.conftest import payload

V1 = Vote(1, 1)


def req(
    snapshot_id: str = "snap",
    offset: int = 0,
    data: bytes = b"",
    done: bool = False,
    *,
    size: int | None = None,
    vote: Vote = V1,
    crc: int | None = None,
    checksum: str | None = None,
) -> InstallSnapshotRequest:
    meta = SnapshotMeta(snapshot_id, size=size, checksum=checksum)
    return InstallSnapshotRequest(vote, meta, offset, data, done, crc)


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FsspecSnapshotStore:
    if request.param == "memory":
        return FsspecSnapshotStore("memory://recv")
    return FsspecSnapshotStore(str(tmp_path / "recv"))


def files(store: FsspecSnapshotStore) -> list[str]:
    """Every file under the store's root, hidden partials included, relative to the root."""
    if not store.fs.exists(store.root):
        return []
    return sorted(p[len(store.root) + 1 :] for p in store.fs.find(store.root))


async def test_chunks_in_any_order_then_done_installs(store: FsspecSnapshotStore) -> None:
    data = payload(30)
    receiver = Receiver(store)
    await receiver.handle(req(data=data[:10], size=30))
    await receiver.handle(req(offset=20, data=data[20:29], size=30))
    await receiver.handle(req(offset=10, data=data[10:20], size=30))
    assert not await store.exists("snap")
    assert files(store) == [".fstransport/journal/snap", ".fstransport/partial/snap"]
    await receiver.handle(req(offset=29, data=data[29:], done=True, size=30))
    assert files(store) == ["snap"]
    with await store.open("snap") as f:
        assert f.read() == data
    assert receiver.receiving == []


async def test_receive_returns_the_finished_snapshot_without_installing(
    store: FsspecSnapshotStore,
) -> None:
    receiver = Receiver(store)
    assert await receiver.receive(req(data=b"ab", size=4)) is None
    snapshot = await receiver.receive(req(offset=2, data=b"cd", done=True, size=4))
    assert snapshot is not None
    assert snapshot.meta.snapshot_id == "snap"
    assert snapshot.meta.checksum == format_checksum(chunk_crc(b"abcd"))
    assert snapshot.data.read() == b"abcd"
    assert not await store.exists("snap")
    await store.install(snapshot)
    assert await store.exists("snap")


async def test_new_snapshot_must_start_at_zero(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(store)
    with pytest.raises(SnapshotMismatch) as info:
        await receiver.handle(req(offset=5, data=b"x", size=10))
    assert info.value.expect.offset == 0
    assert info.value.got.offset == 5
    assert files(store) == []


async def test_done_with_a_gap_asks_for_the_first_missing_byte(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(store)
    await receiver.handle(req(data=b"0123", size=12))
    await receiver.handle(req(offset=8, data=b"89", size=12))
    with pytest.raises(SnapshotMismatch) as info:
        await receiver.handle(req(offset=10, data=b"ab", done=True, size=12))
    assert info.value.expect.offset == 4
    assert not await store.exists("snap")
    await receiver.handle(req(offset=4, data=b"4567", size=12))
    await receiver.handle(req(offset=8, data=b"89", size=12))
    await receiver.handle(req(offset=10, data=b"ab", done=True, size=12))
    with await store.open("snap") as f:
        assert f.read() == b"0123456789ab"


async def test_another_snapshot_under_the_same_id_supersedes(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(store)
    await receiver.handle(req(data=b"old-", size=8))
    with pytest.raises(SnapshotMismatch):  # a different snapshot cannot continue mid-way
        await receiver.handle(req(offset=4, data=b"new!", size=9))
    await receiver.handle(req(data=b"new-", size=9))
    await receiver.handle(req(offset=4, data=b"data!", size=9, done=True))
    with await store.open("snap") as f:
        assert f.read() == b"new-data!"


async def test_lower_vote_is_refused_with_the_receivers_vote(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(store, vote=Vote(5, 2))
    response = await receiver.handle(req(data=b"abc", size=3, done=True, vote=Vote(4, 9)))
    assert response.vote == Vote(5, 2)
    assert files(store) == []
    response = await receiver.handle(req(data=b"abc", size=3, done=True, vote=Vote(5, 3)))
    assert response.vote == Vote(5, 3)
    assert receiver.vote == Vote(5, 3)
    assert files(store) == ["snap"]


async def test_wrong_whole_checksum_installs_nothing(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(store)
    wrong = format_checksum(chunk_crc(b"abcd") ^ 1)
    await receiver.handle(req(data=b"ab", size=4, checksum=wrong))
    with pytest.raises(ChecksumMismatch) as info:
        await receiver.handle(req(offset=2, data=b"cd", size=4, checksum=wrong, done=True))
    assert info.value.whole
    assert files(store) == []
    assert receiver.receiving == []


def _invalid_requests() -> list[tuple[str, InstallSnapshotRequest, type[Exception], bool]]:
    """(what, request, error, whether it ends the transfer of "snap" in progress).

    A request that breaks a rule while naming the transfer in progress (same id and meta, a
    current vote) ends that transfer: its sender gives up on `InvalidRequest`.  A corrupt chunk
    (`ChecksumMismatch`) is only re-sent, and requests naming another snapshot touch nothing.
    """
    ok = b"0123456789"
    return [
        ("negative offset", req(offset=-1, data=ok, size=20), InvalidRequest, True),
        ("beyond size", req(offset=15, data=ok, size=20), InvalidRequest, True),
        ("done short of size", req(offset=0, data=ok, size=20, done=True), InvalidRequest, True),
        ("bad crc", req(data=ok, size=20, crc=chunk_crc(ok) ^ 0xFF), ChecksumMismatch, False),
        ("stale vote", req(offset=-1, data=ok, size=20, vote=Vote(0, 0)), InvalidRequest, False),
        ("empty id", req("", data=ok, size=20), InvalidRequest, False),
        ("slash in id", req("a/b", data=ok, size=20), InvalidRequest, False),
        ("backslash in id", req("a\\b", data=ok, size=20), InvalidRequest, False),
        ("dotdot id", req("..", data=ok, size=20), InvalidRequest, False),
        ("control char in id", req("a\x00b", data=ok, size=20), InvalidRequest, False),
        ("newline in id", req("a\nb", data=ok, size=20), InvalidRequest, False),
        ("long id", req("x" * 256, data=ok, size=20), InvalidRequest, False),
        ("reserved id", req(".fstransport", data=ok, size=20), InvalidRequest, False),
        ("negative size", req(data=b"", size=-1), InvalidRequest, False),
        ("bad checksum text", req(data=ok, size=20, checksum="md5:abc"), InvalidRequest, True),
    ]


@pytest.mark.parametrize(
    ("what", "bad", "error", "ends_transfer"),
    _invalid_requests(),
    ids=[c[0] for c in _invalid_requests()],
)
async def test_invalid_requests_write_nothing(
    store: FsspecSnapshotStore,
    what: str,
    bad: InstallSnapshotRequest,
    error: type[Exception],
    ends_transfer: bool,
) -> None:
    receiver = Receiver(store, vote=V1)
    # an installed snapshot and one in progress, which the bad request must not disturb
    await receiver.handle(req("kept", data=b"installed", size=9, done=True))
    await receiver.handle(req("snap", data=b"0123456789", size=20))
    before = files(store)
    with pytest.raises(error):
        await receiver.handle(bad)
    assert receiver.vote == V1
    with await store.open("kept") as f:
        assert f.read() == b"installed"
    assert not await store.exists("snap")
    if ends_transfer:
        assert receiver.receiving == []
        assert files(store) == ["kept"], "the ended transfer's partial data is discarded"
        return
    assert files(store) == before
    assert receiver.receiving == ["snap"]
    await receiver.handle(req("snap", offset=10, data=b"abcdefghij", size=20, done=True))
    with await store.open("snap") as f:
        assert f.read() == b"0123456789abcdefghij"


async def test_limits_are_enforced_before_writing(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(
        store, limits=ReceiverLimits(max_snapshot_size=100, max_chunk_size=10, max_transfers=2)
    )
    with pytest.raises(InvalidRequest, match="limit"):
        await receiver.handle(req("a", data=b"x", size=101))
    with pytest.raises(InvalidRequest, match="limit"):
        await receiver.handle(req("a", data=b"x" * 11, size=50))
    await receiver.handle(req("a", data=b"x", size=50))
    await receiver.handle(req("b", data=b"x", size=50))
    with pytest.raises(TooManyTransfers):
        await receiver.handle(req("c", data=b"x", size=50))
    assert receiver.receiving == ["a", "b"]
    assert [f for f in files(store) if "partial" in f] == [
        ".fstransport/partial/a",
        ".fstransport/partial/b",
    ]


async def test_store_abort_removes_partial_but_keeps_installed(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(store)
    await receiver.handle(req(data=b"v1", size=2, done=True))
    await receiver.handle(req(data=b"v", size=3))
    await store.abort("snap")
    assert files(store) == ["snap"]
    with await store.open("snap") as f:
        assert f.read() == b"v1"
    assert await store.list() == ["snap"]


async def test_trusted_crc_is_taken_as_given_only_when_asked(store: FsspecSnapshotStore) -> None:
    """In-process loopback may skip the second CRC pass; everything else still verifies."""
    data = b"0123456789"
    lying = req(data=data, size=10, done=True, crc=chunk_crc(data) ^ 1)
    with pytest.raises(ChecksumMismatch):
        await Receiver(store).handle(lying)
    assert files(store) == []
    await Receiver(store).handle(lying, trust_crc=True)  # taken as given: only for same-process
    with await store.open("snap") as f:
        assert f.read() == data


async def test_store_abort_under_a_receiver_ends_that_transfer_cleanly(
    store: FsspecSnapshotStore,
) -> None:
    """`store.abort` behind the receiver's back: its next chunk fails, the stream is dropped,
    and sending the snapshot again works (use `Receiver.abort` to avoid the failed chunk)."""
    receiver = Receiver(store)
    await receiver.handle(req(data=b"0123", size=8))
    await store.abort("snap")
    with pytest.raises(StorageError, match="aborted"):
        await receiver.handle(req(offset=4, data=b"4567", size=8, done=True))
    assert receiver.receiving == []
    assert files(store) == []
    await receiver.handle(req(data=b"0123", size=8))
    await receiver.handle(req(offset=4, data=b"4567", size=8, done=True))
    with await store.open("snap") as f:
        assert f.read() == b"01234567"


async def test_receiver_abort_discards_the_partial(store: FsspecSnapshotStore) -> None:
    receiver = Receiver(store)
    await receiver.handle(req(data=b"0123", size=8))
    await receiver.abort("snap")
    assert receiver.receiving == []
    assert files(store) == []
