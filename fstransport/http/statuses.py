"""The one table of HTTP statuses and error types, used by the server and the client alike.

An error answer is JSON: ``{"error": <type name>, "message": ..., "retryable": bool, ...fields}``.
`ERRORS` holds one `ErrorRule` per error type of `fstransport.errors`: its status, the fields that
travel with it, how they are written (`encode_error`, the server) and how the error is built
again from them (`rebuild_error`, the client).  Every type and its fields survive the trip; a
`StorageError` names the snapshot instead of the server's path, and its cause stays on the
server (only its reason and errno name travel).  A bare answer with no error name of ours (a
proxy's 401, 413 or 503) still means what its status says (`ErrorRule.bare`).

`decode_error` is what `HttpNetwork` raises: the receiver's error inside `RemoteError` (a
`BodyStalled` 408 and an internal 500 too, which the sender's verdict retries), a
`PayloadTooLarge` as it is (the sender shrinks its chunks), and a `NetworkError` for an answer
that names no error of ours (a proxy's 502).
"""

from __future__ import annotations

import errno as errno_module
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

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
from fstransport.http.wire import decode_vote, encode_vote
from fstransport.messages import SnapshotSegmentId, Vote

__all__ = [
    "ERRORS",
    "MAX_ERROR_DEPTH",
    "ErrorRule",
    "decode_error",
    "encode_error",
    "rebuild_error",
    "rule_for",
]

MAX_ERROR_DEPTH = 4
"""How deeply errors may nest in an answer (`RemoteError.source`, `RetryExhausted.last_error`)."""

Fields = dict[str, Any]


class _Malformed(ValueError):
    """An answer names an error of ours but lacks a field it cannot be built without."""


class _Writer:
    """What encoding needs besides the error: the snapshot's id and the strings to hide."""

    def __init__(self, snapshot_id: str | None, secrets: tuple[str, ...], depth: int) -> None:
        self.snapshot_id = snapshot_id
        self.secrets = secrets
        self.depth = depth

    def hide(self, text: str) -> str:
        for secret in self.secrets:
            if secret and secret != "/":
                text = text.replace(secret, "ROOT")
        return text

    def nested(self, exc: BaseException | None) -> Fields | None:
        if exc is None or self.depth >= MAX_ERROR_DEPTH:
            return None
        if isinstance(exc, FstransportError):
            return _body(exc, _Writer(self.snapshot_id, self.secrets, self.depth + 1))
        return {"error": type(exc).__name__, "message": self.hide(str(exc))}


class _Reader:
    """The fields of an answer, read leniently (a wrong type counts as absent)."""

    def __init__(self, fields: Fields, snapshot_id: str, depth: int) -> None:
        self.fields = fields
        self.snapshot_id = snapshot_id
        self.depth = depth
        self.message = self.text("message")

    def text(self, name: str, default: str = "") -> str:
        value = self.fields.get(name)
        return value if isinstance(value, str) else default

    def number(self, name: str) -> int | None:
        value = self.fields.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def need_int(self, name: str) -> int:
        value = self.number(name)
        if value is None or value < 0:
            raise _Malformed(name)
        return value

    def vote(self, name: str) -> Vote:
        try:
            return decode_vote(self.text(name))
        except InvalidRequest:
            raise _Malformed(name) from None

    def nested(self, name: str) -> BaseException | None:
        value = self.fields.get(name)
        if not isinstance(value, dict) or self.depth >= MAX_ERROR_DEPTH:
            return None
        inner = _Reader(value, self.snapshot_id, self.depth + 1)
        rule = _BY_NAME.get(inner.text("error"))
        if rule is None:
            return NetworkError(f"{inner.text('error', 'error')}: {inner.message}")
        return rule.build(rule.kind, inner)


Encode = Callable[[Any, _Writer], Fields]
Build = Callable[[Any, _Reader], FstransportError]


def _nothing(exc: Any, out: _Writer) -> Fields:
    return {}


def _plain(kind: Any, got: _Reader) -> FstransportError:
    error: FstransportError = kind(got.message)
    return error


def _with_field(kind: Any, got: _Reader) -> FstransportError:
    field = got.fields.get("field")
    error: FstransportError = kind(got.message, field=field if isinstance(field, str) else None)
    return error


def _mismatch_out(exc: SnapshotMismatch, out: _Writer) -> Fields:
    return {
        "expect": exc.expect.offset,
        "got": exc.got.offset,
        "expect_id": exc.expect.id,
        "got_id": exc.got.id,
    }


def _mismatch_in(kind: Any, got: _Reader) -> FstransportError:
    expect = SnapshotSegmentId(got.text("expect_id", got.snapshot_id), got.need_int("expect"))
    return SnapshotMismatch(
        expect, SnapshotSegmentId(got.text("got_id", got.snapshot_id), got.need_int("got"))
    )


def _storage_out(exc: StorageError, out: _Writer) -> Fields:
    cause = exc.cause
    code = cause.errno if isinstance(cause, OSError) else None
    reason = out.hide(exc.reason) or "storage failure"
    subject = out.snapshot_id if out.snapshot_id is not None else "the snapshot"
    return {
        "subject": subject,
        "verb": exc.verb,
        "reason": reason,
        "errno": errno_module.errorcode.get(code) if isinstance(code, int) else None,
        "message": f"cannot {exc.verb} {subject}: {reason}",
    }


def _storage_in(kind: Any, got: _Reader) -> FstransportError:
    reason = got.text("reason", got.message)
    code = getattr(errno_module, got.text("errno"), None)
    retryable = got.fields.get("retryable")
    error: FstransportError = kind(
        got.text("subject", got.snapshot_id),
        got.text("verb", "store"),
        OSError(code, reason) if isinstance(code, int) else None,
        reason=reason,
        retryable=retryable if isinstance(retryable, bool) else True,
    )
    return error


def _remote_out(exc: RemoteError, out: _Writer) -> Fields:
    target = exc.target
    return {
        "source": out.nested(exc.source),
        "target": None if target is None else out.hide(str(target)),
    }


def _remote_in(kind: Any, got: _Reader) -> FstransportError:
    source = got.nested("source") or NetworkError(got.message)
    return RemoteError(source, target=got.text("target") or None)


def _exhausted_out(exc: RetryExhausted, out: _Writer) -> Fields:
    return {"attempts": exc.attempts, "last_error": out.nested(exc.last_error)}


def _exhausted_in(kind: Any, got: _Reader) -> FstransportError:
    return RetryExhausted(got.number("attempts") or 0, got.nested("last_error"))


@dataclass(frozen=True)
class ErrorRule:
    """How one error type crosses the wire: its HTTP status, the attributes that travel with
    it (`fields`), how they are written (`encode`) and how the error is built again (`build`,
    given the type and the answer).  `bare`: an answer with this status and no error name of
    ours (a proxy's) is taken as this type."""

    kind: type[FstransportError]
    status: int
    fields: tuple[str, ...] = ()
    encode: Encode = _nothing
    build: Build = _plain
    bare: bool = False


ERRORS: tuple[ErrorRule, ...] = (
    ErrorRule(SnapshotMismatch, 409, ("expect", "got"), _mismatch_out, _mismatch_in, bare=True),
    ErrorRule(
        HigherVote,
        409,
        ("higher", "mine"),
        lambda exc, out: {"higher": encode_vote(exc.higher), "mine": encode_vote(exc.mine)},
        lambda kind, got: HigherVote(got.vote("higher"), got.vote("mine")),
    ),
    ErrorRule(
        PayloadTooLarge,
        413,
        ("limit",),
        lambda exc, out: {"limit": exc.limit},
        lambda kind, got: PayloadTooLarge(
            got.message or "payload too large", limit=got.number("limit")
        ),
        bare=True,
    ),
    ErrorRule(Unauthorized, 401, ("field",), lambda e, o: {"field": e.field}, _with_field, True),
    ErrorRule(
        TooManyTransfers, 503, ("field",), lambda e, o: {"field": e.field}, _with_field, True
    ),
    ErrorRule(BodyStalled, 408, ("field",), lambda e, o: {"field": e.field}, _with_field, True),
    ErrorRule(InvalidRequest, 400, ("field",), lambda e, o: {"field": e.field}, _with_field, True),
    ErrorRule(
        ChecksumMismatch,
        422,
        ("what", "expected", "actual", "whole"),
        lambda exc, out: {
            "what": exc.what,
            "expected": exc.expected,
            "actual": exc.actual,
            "whole": exc.whole,
        },
        lambda kind, got: ChecksumMismatch(
            got.text("what", got.message),
            got.text("expected", "?"),
            got.text("actual", "?"),
            whole=got.fields.get("whole") is True,
        ),
        bare=True,
    ),
    ErrorRule(SourceChanged, 500, ("subject", "verb", "reason"), _storage_out, _storage_in),
    ErrorRule(StorageError, 500, ("subject", "verb", "reason"), _storage_out, _storage_in),
    ErrorRule(
        UnsupportedEntry,
        500,
        ("path", "reason"),
        lambda exc, out: {"path": out.hide(exc.path), "reason": exc.reason},
        lambda kind, got: UnsupportedEntry(got.text("path", "?"), got.text("reason", got.message)),
    ),
    ErrorRule(ConfigurationError, 500),
    ErrorRule(
        ReplicationClosed,
        500,
        ("reason",),
        lambda exc, out: {"reason": exc.reason},
        lambda kind, got: ReplicationClosed(got.text("reason", got.message) or "cancelled"),
    ),
    ErrorRule(RetryExhausted, 500, ("attempts", "last_error"), _exhausted_out, _exhausted_in),
    ErrorRule(Timeout, 504),
    ErrorRule(UntrustedPeer, 502),
    ErrorRule(Unreachable, 502),
    ErrorRule(NetworkError, 502),
    ErrorRule(RemoteError, 502, ("source", "target"), _remote_out, _remote_in),
    ErrorRule(RPCError, 502),
    ErrorRule(FstransportError, 500),
)
"""Every error type of `fstransport.errors`, most specific first.  A server answers an error
with the first rule whose `kind` it is; a client builds the rule's type again when the answer
names it and has its status, else takes the status's `bare` rule, if any."""

_BY_NAME = {rule.kind.__name__: rule for rule in ERRORS}
_BARE = {rule.status: rule for rule in ERRORS if rule.bare}


def rule_for(exc: FstransportError) -> ErrorRule:
    """The rule `exc` is answered by: its own type's, else its nearest ancestor's."""
    return next(rule for rule in ERRORS if isinstance(exc, rule.kind))


def _retryable(exc: FstransportError) -> bool:
    """Whether a sender gets anywhere by sending the same chunk again."""
    if isinstance(exc, (TooManyTransfers, BodyStalled, SnapshotMismatch)):
        return True
    if isinstance(exc, ChecksumMismatch):
        return not exc.whole
    if isinstance(exc, StorageError):
        return exc.retryable
    return not isinstance(exc, (InvalidRequest, PayloadTooLarge))


def _body(exc: FstransportError, out: _Writer) -> Fields:
    rule = rule_for(exc)
    body: Fields = {"error": rule.kind.__name__, "retryable": _retryable(exc)}
    body.update(rule.encode(exc, out))
    body.setdefault("message", out.hide(str(exc)))
    return body


def encode_error(
    exc: FstransportError, snapshot_id: str | None = None, *, hide: Iterable[str] = ()
) -> tuple[int, Fields]:
    """The status and JSON body that answer `exc` (raised for a request for `snapshot_id`).

    A `StorageError` names the snapshot, not the server's path, and keeps only its reason
    (``"No space left on device"``) and errno name; every string in `hide` (the store's root)
    is replaced by ``ROOT`` wherever it still shows."""
    return rule_for(exc).status, _body(exc, _Writer(snapshot_id, tuple(hide), 0))


def rebuild_error(status: int, body: object, snapshot_id: str) -> FstransportError | None:
    """The error an answer with `status` and JSON `body` stands for, with its type and fields
    (None when neither the name nor the status is one of ours).  `ValueError` when the answer
    names an error but lacks a field it cannot be built without."""
    fields: Fields = body if isinstance(body, dict) else {}
    got = _Reader(fields, snapshot_id, 0)
    rule = _BY_NAME.get(got.text("error"))
    if rule is None or rule.status != status:
        rule = _BARE.get(status)
    if rule is None:
        return None
    return rule.build(rule.kind, got)


def decode_error(
    status: int, body: object, snapshot_id: str, where: str
) -> RemoteError | PayloadTooLarge | NetworkError:
    """The error a client raises for an answer with `status` and JSON `body` (anything else
    counts as an empty body) to a request for `snapshot_id` sent to `where`: the receiver's own
    error as ``RemoteError(source)`` with its type and fields (a stalled body, 408, and an
    internal error, 500, too: the sender's verdict retries them), `PayloadTooLarge` as it is
    (the sender shrinks its chunks), `NetworkError` for a malformed answer.  Any other status
    with no error of ours comes as ``RemoteError(NetworkError)``, retried."""
    try:
        error = rebuild_error(status, body, snapshot_id)
    except _Malformed as exc:
        shown = repr(body)[:200]
        return NetworkError(f"malformed answer from {where} (no valid {exc}): {shown}")
    if isinstance(error, PayloadTooLarge):
        return error
    if error is None:
        message = body.get("message") if isinstance(body, dict) else None
        text = message if isinstance(message, str) and message else f"HTTP {status}"
        return RemoteError(NetworkError(f"HTTP {status} from {where}: {text}"), target=where)
    return RemoteError(error, target=where)
