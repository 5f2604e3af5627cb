"""The one table of HTTP statuses and error types (`fstransport.http.statuses.ERRORS`).

Every error type in `fstransport.errors` has a rule of its own, and an error of every type
crosses the wire (encoded as the server answers, through JSON, rebuilt as the client does)
with its type, its message and every field.  A new error type, or a new field on one, that is
left out of the table fails here.
"""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

import fstransport.errors as errors_module
from fstransport.errors import (
    BodyStalled,
    ChecksumMismatch,
    ConfigurationError,
    FstransportError,
    HigherVote,
    InvalidRequest,
    NetworkError,
    PayloadTooLarge,
    RemoteError,
    ReplicationClosed,
    RetryExhausted,
    RPCError,
    SnapshotMismatch,
    SourceChanged,
    StorageError,
    Timeout,
    TooManyTransfers,
    Unauthorized,
    Unreachable,
    UnsupportedEntry,
    UntrustedPeer,
)
from fstransport.http.statuses import (
    ERRORS,
    MAX_ERROR_DEPTH,
    decode_error,
    encode_error,
    rebuild_error,
    rule_for,
)
from fstransport.messages import SnapshotSegmentId, Vote

SNAPSHOT = "s.bin"

EXAMPLES: dict[type[FstransportError], FstransportError] = {
    FstransportError: FstransportError("internal error (KeyError)"),
    RPCError: RPCError("the request could not be delivered"),
    Timeout: Timeout("no answer from http://peer:8000"),
    Unreachable: Unreachable("cannot reach http://peer:8000: connection refused"),
    UntrustedPeer: UntrustedPeer("the TLS certificate of https://peer cannot be verified"),
    PayloadTooLarge: PayloadTooLarge("chunk of 9 bytes exceeds 8", limit=8),
    NetworkError: NetworkError("connection reset by peer"),
    RemoteError: RemoteError(
        ChecksumMismatch("chunk [0, 8) of 's.bin'", "0000abcd", "0000abce"),
        target="http://relay:8000",
    ),
    SnapshotMismatch: SnapshotMismatch(
        SnapshotSegmentId(SNAPSHOT, 8 << 20), SnapshotSegmentId(SNAPSHOT, 16 << 20)
    ),
    HigherVote: HigherVote(Vote(7, 2, True), Vote(5, 1, False)),
    ReplicationClosed: ReplicationClosed("the node shuts down"),
    StorageError: StorageError(SNAPSHOT, "write", OSError(errno.ENOSPC, "No space left on device")),
    SourceChanged: SourceChanged(
        SNAPSHOT, "read", OSError(errno.EIO, "ETag changed"), reason="ETag changed"
    ),
    InvalidRequest: InvalidRequest("offset must be an unsigned integer", field="offset"),
    TooManyTransfers: TooManyTransfers("already receiving 16 snapshots", field="snapshot_id"),
    Unauthorized: Unauthorized("missing or wrong bearer token"),
    BodyStalled: BodyStalled("no body bytes for 60 s", field="data"),
    ChecksumMismatch: ChecksumMismatch(
        "snapshot 's.bin'", "crc32c:00000001", "crc32c:00000002", whole=True
    ),
    RetryExhausted: RetryExhausted(5, Timeout("no answer from http://peer:8000")),
    ConfigurationError: ConfigurationError("chunk_size must be positive"),
    UnsupportedEntry: UnsupportedEntry("a/link", "a symbolic link"),
}

STAYS_ON_THE_SERVER = {"cause"}
"""Attributes that do not travel: a `StorageError`'s cause (its reason and errno name do)."""


def error_types() -> list[type[FstransportError]]:
    found = [
        value
        for value in vars(errors_module).values()
        if isinstance(value, type) and issubclass(value, FstransportError)
    ]
    return sorted(found, key=lambda kind: kind.__name__)


def same(a: object, b: object) -> bool:
    if isinstance(a, BaseException) and isinstance(b, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


def test_every_error_type_has_a_rule_of_its_own_and_an_example() -> None:
    kinds = error_types()
    assert len(kinds) >= 20  # the probe above finds the tree
    ruled = [rule.kind for rule in ERRORS]
    assert [k.__name__ for k in kinds if k not in ruled] == [], "unmapped error types"
    assert len(ruled) == len(set(ruled)), "one rule per type"
    assert sorted(EXAMPLES, key=lambda k: k.__name__) == kinds, "an example per type"


@pytest.mark.parametrize("kind", error_types(), ids=lambda kind: kind.__name__)
def test_the_rule_keeps_every_attribute_of_the_error(kind: type[FstransportError]) -> None:
    exc = EXAMPLES[kind]
    attributes = {name for name in vars(exc) if not name.startswith("_")}
    assert attributes - STAYS_ON_THE_SERVER <= set(rule_for(exc).fields)


@pytest.mark.parametrize("kind", error_types(), ids=lambda kind: kind.__name__)
def test_every_error_type_round_trips_with_its_fields(kind: type[FstransportError]) -> None:
    exc = EXAMPLES[kind]
    rule = rule_for(exc)
    assert rule.kind is kind
    status, body = encode_error(exc, SNAPSHOT)
    assert status == rule.status
    assert body["error"] == kind.__name__
    assert isinstance(body["retryable"], bool)
    got = rebuild_error(status, json.loads(json.dumps(body)), SNAPSHOT)
    assert type(got) is kind
    assert str(got) == body["message"]
    if not isinstance(exc, StorageError):  # (its message names its reason, not the cause's type)
        assert body["message"] == str(exc)
    for name in rule.fields:
        assert same(getattr(got, name), getattr(exc, name)), name
    if isinstance(exc, StorageError):
        assert isinstance(got, StorageError)
        assert got.retryable == exc.retryable
        assert isinstance(got.cause, OSError)
        assert isinstance(exc.cause, OSError)
        assert got.cause.errno == exc.cause.errno


@pytest.mark.parametrize("kind", error_types(), ids=lambda kind: kind.__name__)
def test_what_the_client_raises_for_each_type(kind: type[FstransportError]) -> None:
    """`HttpNetwork` raises the receiver's error inside `RemoteError`, fields and all (a stalled
    body and an internal error too: the sender's verdict retries them); `PayloadTooLarge` bare
    (the sender shrinks)."""
    exc = EXAMPLES[kind]
    status, body = encode_error(exc, SNAPSHOT)
    raised = decode_error(status, json.loads(json.dumps(body)), SNAPSHOT, "http://peer")
    if kind is PayloadTooLarge:
        assert isinstance(raised, PayloadTooLarge)
        assert raised.limit == 8
        return
    assert isinstance(raised, RemoteError)
    assert raised.target == "http://peer"
    assert type(raised.source) is kind
    if isinstance(raised.source, BodyStalled):
        assert raised.source.field == "data"
    assert str(raised.source) == body["message"]


def test_401_is_unauthorized_from_our_server_and_from_a_proxy() -> None:
    ours = decode_error(*encode_error(Unauthorized("wrong token")), SNAPSHOT, "http://peer")
    bare = decode_error(401, None, SNAPSHOT, "http://peer")
    for raised in (ours, bare):
        assert isinstance(raised, RemoteError)
        assert type(raised.source) is Unauthorized


def test_a_name_under_the_wrong_status_is_not_believed() -> None:
    """A body naming `HigherVote` on a 400 is the 400's error; naming an error with no rule
    for its status is a retried `NetworkError`."""
    got = rebuild_error(400, {"error": "HigherVote", "message": "m"}, SNAPSHOT)
    assert type(got) is InvalidRequest
    raised = decode_error(418, {"error": "InvalidRequest", "message": "m"}, SNAPSHOT, "x")
    assert isinstance(raised, RemoteError)
    assert type(raised.source) is NetworkError


def test_a_mismatch_without_offsets_is_a_malformed_answer() -> None:
    for body in ({"error": "SnapshotMismatch"}, {"expect": -1, "got": 0}, {"expect": True}):
        raised = decode_error(409, body, SNAPSHOT, "http://peer")
        assert type(raised) is NetworkError
        assert "malformed" in str(raised)
    raised = decode_error(409, {"error": "HigherVote", "higher": "1,2"}, SNAPSHOT, "x")
    assert type(raised) is NetworkError


def test_nested_errors_stop_at_the_depth_limit() -> None:
    """A hostile answer nesting errors deeply is cut at `MAX_ERROR_DEPTH`, and so is an
    error of ours nested deeper than that on the way out."""
    body: dict[str, Any] = {"error": "NetworkError", "message": "bottom"}
    for _ in range(200):
        body = {"error": "RemoteError", "message": "m", "source": body, "target": "t"}
    got: BaseException | None = rebuild_error(502, body, SNAPSHOT)
    depth = 0
    while isinstance(got, RemoteError):
        got, depth = got.source, depth + 1
    assert depth <= MAX_ERROR_DEPTH + 1
    assert isinstance(got, NetworkError)

    deep: FstransportError = NetworkError("bottom")
    for _ in range(20):
        deep = RemoteError(deep, target="t")
    text = json.dumps(encode_error(deep)[1])
    assert text.count('"RemoteError"') <= MAX_ERROR_DEPTH + 1


def test_a_server_path_in_a_nested_error_is_hidden() -> None:
    root = "/srv/secret"
    exc = RetryExhausted(3, StorageError(f"{root}/s.bin", "write", RuntimeError(f"in {root}")))
    _, body = encode_error(exc, SNAPSHOT, hide=(root,))
    assert root not in json.dumps(body)
    got = rebuild_error(500, body, SNAPSHOT)
    assert isinstance(got, RetryExhausted)
    assert isinstance(got.last_error, StorageError)
    assert got.last_error.subject == SNAPSHOT
