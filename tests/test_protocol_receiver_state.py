"""`ReceiverState`, the receiver's rules without I/O: every action it answers, every transition.

No event loop, no store: the state is driven by hand as `fstransport.receiver` drives it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    InvalidRequest,
    SnapshotMismatch,
    StorageError,
    TooManyTransfers,
)
from fstransport.messages import (
    InstallSnapshotRequest,
    LogId,
    SnapshotMeta,
    SnapshotSegmentId,
    StagedChunk,
    Vote,
)
from fstransport.protocol.ranges import ChunkRecord
from fstransport.protocol.receiver import ReceiverLimits, StreamState
from fstransport.protocol.receiver_state import (
    Acknowledge,
    AwaitInstall,
    Begin,
    Continue,
    Drop,
    Expire,
    ReceiverState,
    Refuse,
    Reject,
    Resume,
)

V1, V2, V3 = Vote(1, 1), Vote(2, 1), Vote(3, 1)
SUM = "crc32c:0badf00d"


def meta(snapshot_id: str = "snap", log: int = 10, **kwargs: Any) -> SnapshotMeta:
    return SnapshotMeta(snapshot_id, last_log_id=LogId(1, log), **kwargs)


def req(
    offset: int = 0,
    data: bytes = b"abcd",
    *,
    done: bool = False,
    vote: Vote = V1,
    snapshot_meta: SnapshotMeta | None = None,
    staged: StagedChunk | None = None,
) -> InstallSnapshotRequest:
    m = meta() if snapshot_meta is None else snapshot_meta
    return InstallSnapshotRequest(vote, m, offset, data, done, None, staged)


def state(max_transfers: int = 2, vote: Vote | None = None, scope: Any = "node") -> ReceiverState:
    return ReceiverState(vote, ReceiverLimits(max_transfers=max_transfers), scope)


# == votes ====================================================================================


def test_an_unknown_vote_scope_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        state(scope="cluster")


def test_node_scope_adopts_higher_votes_and_refuses_lower_ones() -> None:
    rules = state()
    assert rules.vote_for("snap") is None
    assert rules.check_vote(req(vote=V2)) is None
    assert rules.vote == V2
    assert rules.check_vote(req(vote=V2)) is None  # equal: applied, nothing changes
    assert rules.check_vote(req(vote=V1)) == Refuse(V2)
    assert rules.is_stale(req(vote=V1))
    assert not rules.is_stale(req(vote=V3))
    assert rules.check_vote(req(vote=V3, snapshot_meta=meta("other"))) is None
    assert rules.vote_for("snap") == V3, "one vote for the whole node"
    assert rules.votes == {}


def test_snapshot_scope_keeps_one_vote_per_id_above_a_floor() -> None:
    rules = state(vote=V2, scope="snapshot")
    assert rules.check_vote(req(vote=V1)) == Refuse(V2), "the floor refuses lower votes"
    assert rules.check_vote(req(vote=V3, snapshot_meta=meta("a"))) is None
    assert rules.vote_for("a") == V3
    assert rules.vote_for("b") == V2, "a high vote on one id never refuses another"
    assert rules.check_vote(req(vote=V2, snapshot_meta=meta("b"))) is None
    assert rules.check_vote(req(vote=V2, snapshot_meta=meta("a"))) == Refuse(V3)
    rules.vote = Vote(9, 9)  # a floor above an id's own vote wins
    assert rules.vote_for("a") == Vote(9, 9)


def test_the_vote_table_is_bounded_but_keeps_ids_being_received(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("fstransport.protocol.receiver_state.VOTES_MEMORY", 3)
    rules = state(scope="snapshot", max_transfers=10)
    assert rules.check_vote(req(vote=Vote(9, 9), snapshot_meta=meta("pending"))) is None
    rules.opened(meta("pending"), now=0.0)
    for n in range(6):
        assert rules.check_vote(req(vote=Vote(1, n), snapshot_meta=meta(str(n)))) is None
    assert len(rules.votes) == 3
    assert rules.vote_for("pending") == Vote(9, 9)
    assert rules.vote_for("5") == Vote(1, 5)
    assert rules.vote_for("0") is None


def test_a_malformed_request_belongs_to_a_stream_only_with_a_current_vote() -> None:
    rules = state()
    rules.check_vote(req(vote=V2))
    rules.opened(meta(), now=0.0)
    assert rules.stream_of(req(vote=V2)) == "snap"
    assert rules.stream_of(req(vote=V3)) == "snap"
    assert rules.stream_of(req(vote=V1)) is None, "a stale leader cannot end the transfer"
    assert rules.stream_of(req(vote=V2, snapshot_meta=meta(log=11))) is None, "another snapshot"
    assert rules.stream_of(req(vote=V2, snapshot_meta=meta("other"))) is None
    assert rules.stream_of(object()) is None
    assert rules.stream_of(req(vote=(2, 1))) is None  # type: ignore[arg-type]
    bad_meta = InstallSnapshotRequest(V2, 5, 0, b"", False)  # type: ignore[arg-type]
    assert rules.stream_of(bad_meta) is None
    bad_id = InstallSnapshotRequest(V2, SnapshotMeta(7), 0, b"", False)  # type: ignore[arg-type]
    assert rules.stream_of(bad_id) is None
    weird = InstallSnapshotRequest(Vote("x", 1), meta(), 0, b"", False)  # type: ignore[arg-type]
    assert rules.stream_of(weird) is None  # comparing it raises TypeError


# == routing: every transition ================================================================


def test_no_stream_asks_the_store_first_then_begins_at_offset_0() -> None:
    rules = state()
    assert rules.route(req()) == Resume(meta())
    assert rules.route(req(offset=4)) == Resume(meta()), "resuming continues mid-snapshot"
    assert rules.route(req(), resume_tried=True) == Begin(meta())
    with pytest.raises(SnapshotMismatch) as info:
        rules.route(req(offset=4), resume_tried=True)
    assert info.value.expect == SnapshotSegmentId("snap", 0)
    assert info.value.got == SnapshotSegmentId("snap", 4)


def test_a_stream_of_the_same_snapshot_continues_and_rechecks_at_offset_0() -> None:
    rules = state(max_transfers=1)
    rules.opened(meta(), now=0.0)
    assert rules.route(req(offset=4)) == Continue("snap", reverify=False)
    assert rules.route(req(offset=0)) == Continue("snap", reverify=True)
    late = req(offset=4, snapshot_meta=meta(checksum=SUM))  # announces its checksum late
    assert rules.route(late) == Continue("snap", reverify=False), "full, but it is the same"


def test_another_snapshot_under_the_id_drops_the_old_one_only_from_offset_0() -> None:
    rules = state()
    rules.opened(meta(), now=0.0)
    newer = meta(log=11)
    assert rules.route(req(snapshot_meta=newer)) == Drop("snap")
    with pytest.raises(SnapshotMismatch):
        rules.route(req(offset=4, snapshot_meta=newer))


def test_a_full_receiver_expires_idle_transfers_before_it_rejects() -> None:
    rules = state(max_transfers=1)
    rules.opened(meta("busy"), now=0.0)
    assert rules.route(req()) == Expire(), "before resuming: resuming takes a slot too"
    assert rules.route(req(), resume_tried=True) == Expire()
    rejected = rules.route(req(), expired_nothing=True)
    assert isinstance(rejected, Reject)
    assert isinstance(rejected.error, TooManyTransfers)
    assert "limit 1" in str(rejected.error)
    with pytest.raises(SnapshotMismatch):  # nothing to resume mid-snapshot, no slot to begin
        rules.route(req(offset=4), expired_nothing=True)
    rules.closed(rules.streams["busy"])
    assert rules.route(req(), expired_nothing=True) == Resume(meta()), "a slot is free again"


def test_an_install_under_way_is_awaited_before_anything_else() -> None:
    rules = state()
    rules.install_started("snap")
    assert rules.route(req()) == AwaitInstall("snap")
    assert rules.route(req(), resume_tried=True) == AwaitInstall("snap")
    rules.install_ended("snap")
    assert rules.route(req()) == Resume(meta())


@pytest.mark.parametrize(
    ("installed", "request_meta", "done", "acknowledged"),
    [
        (meta(checksum=SUM), meta(checksum=SUM), True, True),
        (meta(checksum=SUM), meta(checksum=SUM), False, False),  # only the final chunk
        (meta(checksum=SUM), meta(), True, False),  # a request naming no checksum
        (meta(checksum=SUM), meta(checksum="crc32c:00000001"), True, False),
        (meta(checksum=SUM), meta(log=11, checksum=SUM), True, False),  # another snapshot
        (meta(), meta(), True, False),  # nothing to compare
    ],
)
def test_a_repeated_final_chunk_of_an_installed_snapshot_is_acknowledged(
    installed: SnapshotMeta, request_meta: SnapshotMeta, done: bool, acknowledged: bool
) -> None:
    rules = state()
    rules.remember_installed(installed)
    action = rules.route(req(offset=4, done=done, snapshot_meta=request_meta))
    if acknowledged:
        assert action == Acknowledge(((0, 8),))
    else:
        assert action == Resume(request_meta)


def test_installed_memory_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fstransport.protocol.receiver_state.INSTALLED_MEMORY", 2)
    rules = state()
    for name in ("a", "b", "a", "c"):  # "a" again: it is the newest now
        rules.remember_installed(meta(name, checksum=SUM))
    assert list(rules.installed) == ["a", "c"]


# == streams ==================================================================================


def test_opened_resumed_and_closed_streams() -> None:
    rules = state()
    stream = rules.opened(meta(), now=5.0)
    assert rules.streams == {"snap": stream}
    assert stream.last_seen == 5.0
    rules.resumed(stream, [ChunkRecord(0, 4, 1), ChunkRecord(8, 4, 2)])
    assert stream.resumed
    assert stream.from_store
    assert stream.ledger.records() == [ChunkRecord(0, 4, 1), ChunkRecord(8, 4, 2)]
    replacement = rules.opened(meta(), now=6.0)
    rules.closed(stream)  # an old stream never takes its successor out of the table
    assert rules.streams == {"snap": replacement}
    rules.closed(replacement)
    assert rules.streams == {}


def test_a_snapshot_named_by_its_checksum_skips_bytes_it_holds() -> None:
    unnamed = StreamState(meta())
    unnamed.record(req(), 1)
    assert not unnamed.holds(req()), "without a checksum the bytes may differ: written again"
    named = StreamState(meta(checksum=SUM))
    named.record(req(), 1)
    assert named.holds(req())
    assert named.holds(req(offset=1, data=b"bc"))
    assert not named.holds(req(offset=2))  # partly held
    assert not named.holds(req(offset=8))


@pytest.mark.parametrize("crc_known", [False, True])
@pytest.mark.parametrize("done", [False, True])
@pytest.mark.parametrize("checksum", [None, SUM])
@pytest.mark.parametrize("sink_concurrent", [False, True])
def test_only_unnamed_chunks_with_unknown_crc_into_concurrent_sinks_skip_the_lock(
    crc_known: bool, done: bool, checksum: str | None, sink_concurrent: bool
) -> None:
    stream = StreamState(meta(checksum=checksum))
    expected = not crc_known and not done and checksum is None and sink_concurrent
    assert stream.concurrent(req(done=done), crc_known, sink_concurrent) is expected


def test_what_is_held_is_told_at_offset_0_and_once_after_a_resume() -> None:
    stream = StreamState(meta())
    stream.record(req(), 1)
    assert stream.tell(req(offset=0)) == ((0, 4),)
    assert stream.tell(req(offset=4)) is None
    stream.resumed = True
    assert stream.tell(req(offset=4)) == ((0, 4),)
    assert not stream.resumed
    assert stream.tell(req(offset=8)) is None


def test_a_record_notes_late_checksums_unverified_bytes_and_staged_objects() -> None:
    stream = StreamState(meta())
    assert not stream.unverified
    ref = StagedChunk("memory://stage/a", "0000000000000000-4", 4, 1)
    stream.record(req(staged=ref, snapshot_meta=meta(checksum=SUM)), 1, lost=[(0, 2)])
    assert stream.unverified
    assert stream.meta.checksum == SUM
    assert stream.staged == {"memory://stage/a": {"0000000000000000-4"}}
    stream.record(req(offset=10), 2, lost=[(0, 4)])
    assert stream.ledger.records() == [ChunkRecord(10, 4, 2)]


def test_held_bytes_are_rechecked_once_per_batch_of_writes() -> None:
    stream = StreamState(meta())
    assert not stream.needs_check(), "nothing written"
    stream.record(req(), 1)
    stream.record(req(offset=4), 2)
    assert stream.needs_check()
    assert not stream.needs_check(), "checked already"
    stream.record(req(offset=8), 3)
    stream.resumed = True
    assert not stream.needs_check(), "a stream from the store was checked as it was reopened"
    records = stream.ledger.records()
    assert stream.checked(records, [records[0], records[2]]) == 1
    assert stream.ledger.records() == [records[0], records[2]]
    assert stream.from_store, "what it holds may be another sender's from now on"


# == finishing ================================================================================


def test_a_gap_keeps_the_stream() -> None:
    stream = StreamState(meta())
    gap = SnapshotMismatch(SnapshotSegmentId("snap", 4), SnapshotSegmentId("snap", 8))
    assert ReceiverState.finish_failed(stream, req(offset=8, done=True), gap) == (False, gap)


def test_a_checksum_mismatch_over_data_from_the_store_turns_into_a_restart() -> None:
    stream = StreamState(meta(), from_store=True)
    wrong = ChecksumMismatch("snapshot 'snap'", SUM, "crc32c:00000000", whole=True)
    drop, error = ReceiverState.finish_failed(stream, req(offset=8, done=True), wrong)
    assert drop
    assert isinstance(error, SnapshotMismatch)
    assert error.expect == SnapshotSegmentId("snap", 0)
    assert error.got == SnapshotSegmentId("snap", 8)


@pytest.mark.parametrize(
    "error",
    [
        ChecksumMismatch("snapshot 'snap'", SUM, "crc32c:00000000", whole=True),
        InvalidRequest("beyond the end", field="done"),
        StorageError("snap", "finish", OSError(28, "full")),
        asyncio.CancelledError(),
    ],
)
def test_any_other_failure_drops_the_stream_and_is_raised_as_it_is(error: BaseException) -> None:
    stream = StreamState(meta())  # (its data came from this sender)
    assert ReceiverState.finish_failed(stream, req(done=True), error) == (True, error)


# == activity and expiry ======================================================================


def test_no_timeout_expires_nothing() -> None:
    rules = state()
    rules.opened(meta(), now=0.0)
    assert rules.idle(1e9, None) == []


def test_a_stream_expires_after_its_timeout_unless_a_request_is_under_way() -> None:
    rules = state()
    stream = rules.opened(meta(), now=0.0)
    other = rules.opened(meta("other"), now=5.0)
    assert rules.idle(9.0, 10.0) == []
    assert rules.idle(10.0, 10.0) == [stream]
    rules.enter("snap")
    rules.enter("snap")
    assert rules.idle(20.0, 10.0) == [other]
    rules.leave("snap", now=20.0)
    assert rules.idle(25.0, 10.0) == [other], "one request still under way"
    rules.leave("snap", now=21.0)
    assert rules.busy == {}
    assert stream.last_seen == 21.0, "a request ending counts as activity"
    assert rules.idle(30.0, 10.0) == [other]
    assert rules.idle(31.0, 10.0) == [stream, other]
    rules.closed(stream)
    assert not rules.expired(stream, 100.0, 10.0), "a stream no longer in the table"


def test_leaving_an_id_without_a_stream_only_counts_down() -> None:
    rules = state()
    rules.enter("ghost")
    rules.leave("ghost", now=3.0)
    assert rules.busy == {}
    assert rules.streams == {}
