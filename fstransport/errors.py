"""Every error fstransport raises, in one tree.

::

    FstransportError
    ├── RPCError                  a chunk could not be delivered (the network adapter's errors)
    │   ├── Timeout               no answer within the deadline (hard_ttl / install_timeout)
    │   ├── Unreachable           the peer cannot be reached at all (connection refused, no route)
    │   │   └── UntrustedPeer     its TLS certificate cannot be verified (never retried)
    │   ├── PayloadTooLarge       the peer or a proxy refused the chunk's size
    │   ├── NetworkError          anything else that went wrong on the wire
    │   └── RemoteError           the receiver answered with one of its own errors (``source``)
    ├── SnapshotMismatch          the receiver wants the data from another offset (``expect``)
    ├── HigherVote                the receiver has seen a higher vote than the sender's
    ├── ReplicationClosed         the transfer was cancelled by the caller
    ├── StorageError              reading or writing snapshot data failed (subject, verb, cause)
    │   └── SourceChanged         the source object changed while it was read (never retried)
    ├── InvalidRequest            a request broke a rule (bad offset, size, id, ...); never written
    │   ├── TooManyTransfers      the receiver already runs its maximum number of transfers
    │   ├── Unauthorized          the receiver refused the sender's credentials
    │   └── BodyStalled           a request's body stopped or trickled (the server answers 408)
    ├── ChecksumMismatch          data does not match its CRC32C (a chunk or the whole snapshot)
    ├── RetryExhausted            the retry budget ran out; ``last_error`` says why
    └── ConfigurationError        bad options or arguments from the caller (also a ``ValueError``)
        └── UnsupportedEntry      a source directory holds a symlink, device or unsafe name

Errors that cross the network keep their type: the receiver raises ``SnapshotMismatch``,
``InvalidRequest``, ``ChecksumMismatch`` or ``StorageError``; a network adapter hands them to the
sender wrapped in ``RemoteError(source=...)``.  Backend errors (``OSError``, fsspec, botocore,
aiohttp) are translated at the edge with ``raise ... from exc`` so the original stays in
``__cause__``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fstransport.messages import SnapshotSegmentId, Vote

__all__ = [
    "BodyStalled",
    "ChecksumMismatch",
    "ConfigurationError",
    "FstransportError",
    "HigherVote",
    "InvalidRequest",
    "NetworkError",
    "PayloadTooLarge",
    "RPCError",
    "RemoteError",
    "ReplicationClosed",
    "RetryExhausted",
    "SnapshotMismatch",
    "SourceChanged",
    "StorageError",
    "Timeout",
    "TooManyTransfers",
    "Unauthorized",
    "Unreachable",
    "UntrustedPeer",
]


class FstransportError(Exception):
    """Base of every error raised by fstransport."""


class RPCError(FstransportError):
    """A request could not be delivered or answered; raised by `Network` adapters."""


class Timeout(RPCError):
    """No answer arrived within the deadline."""


class Unreachable(RPCError):
    """The peer cannot be reached (connection refused, unknown host, server gone)."""


class UntrustedPeer(Unreachable):
    """The peer's TLS certificate cannot be verified against the trusted CAs.  Trying again
    cannot make it trusted, so the sender gives up at once (give the CA that signed it)."""


class PayloadTooLarge(RPCError):
    """The peer refused the request because of its size; the sender shrinks the chunk."""

    def __init__(self, message: str = "payload too large", *, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        """The largest chunk the peer accepts, when it said so."""


class NetworkError(RPCError):
    """Any other failure on the wire (connection reset, malformed answer, ...)."""


class RemoteError(RPCError):
    """The receiver answered with an error of its own, carried in `source`."""

    def __init__(self, source: BaseException, target: object = None) -> None:
        where = f" from {target!r}" if target is not None else ""
        super().__init__(f"remote error{where}: {type(source).__name__}: {source}")
        self.source = source
        self.target = target


class SnapshotMismatch(FstransportError):
    """The receiver expected the chunk at `expect`, but got one at `got`.

    The sender continues from ``expect.offset``.
    """

    def __init__(self, expect: SnapshotSegmentId, got: SnapshotSegmentId) -> None:
        super().__init__(
            f"snapshot mismatch: expected {expect.id!r} at offset {expect.offset}, "
            f"got {got.id!r} at offset {got.offset}"
        )
        self.expect = expect
        self.got = got


class HigherVote(FstransportError):
    """The receiver holds a vote higher than the sender's; the transfer stopped."""

    def __init__(self, higher: Vote, mine: Vote) -> None:
        super().__init__(f"receiver has a higher vote {higher} than ours {mine}")
        self.higher = higher
        self.mine = mine


class ReplicationClosed(FstransportError):
    """The transfer was cancelled by the caller."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class StorageError(FstransportError):
    """Reading or writing snapshot data failed.

    `subject` names what was touched (a path or URL), `verb` what was done to it ("read",
    "write", "open", "seek", "install", ...), `cause` the backend's own exception, which is
    also the ``__cause__``.  `reason` replaces the cause's text in the message and `retryable`
    overrides the verdict drawn from the cause: both are for an error rebuilt from a remote
    receiver's answer, whose cause only exists over there.
    """

    def __init__(
        self,
        subject: str,
        verb: str,
        cause: BaseException | None = None,
        *,
        reason: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        if reason is not None:
            detail = f": {reason}"
        elif cause is not None:
            detail = f": {type(cause).__name__}: {cause}"
        else:
            detail = ""
        super().__init__(f"cannot {verb} {subject}{detail}")
        self.subject = subject
        self.verb = verb
        self.cause = cause
        self._reason = reason
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        """False when trying again cannot help: the thing is missing, forbidden or malformed,
        the disk is full or read-only, a name or a file is too long for the file system."""
        if self._retryable is not None:
            return self._retryable
        cause = self.cause
        if isinstance(cause, _PERMANENT_CAUSES) or s3_error_code(cause) in PERMANENT_S3_CODES:
            return False
        return not (isinstance(cause, OSError) and cause.errno in PERMANENT_ERRNOS)

    @property
    def reason(self) -> str:
        """Why it failed, in words and without paths: the system's text for an `OSError`
        (``"No space left on device"``), else the cause's own message."""
        if self._reason is not None:
            return self._reason
        cause = self.cause
        if cause is None:
            return ""
        if isinstance(cause, OSError) and cause.strerror:
            return str(cause.strerror)
        return f"{type(cause).__name__}: {cause}"


class SourceChanged(StorageError):
    """The source changed while it was read: an S3 object no longer has the ETag it had when
    the transfer began (``If-Match`` failed, or an answer named another ETag).  Bytes of two
    versions must never be joined into one snapshot, so this is never retried; nothing read
    is installed.  Ship it again to copy the new version."""

    @property
    def retryable(self) -> bool:
        return False


def s3_error_code(exc: BaseException | None) -> str | None:
    """The S3 error code behind `exc` (s3fs raises an `OSError` whose ``__cause__`` is
    botocore's ``ClientError``, with the code in ``response["Error"]["Code"]``; a few links of
    the ``__cause__`` chain are looked at), or None."""
    seen = exc
    for _ in range(4):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        if isinstance(code, str):
            return code
        seen = seen.__cause__
    return None


PERMANENT_S3_CODES = frozenset(
    {
        # the request itself is wrong: the same request gets the same answer (s3fs maps these
        # to EINVAL, which it also uses for BadDigest and IncompleteBody: bodies damaged on
        # the way, which a second try can mend, so the errno alone cannot tell)
        "InvalidRequest",
        "InvalidArgument",
        "InvalidBucketName",
        "InvalidStorageClass",
        "MalformedXML",
        "MethodNotAllowed",
        "NotImplemented",
        "KeyTooLongError",
        "MetadataTooLarge",
        "EntityTooLarge",
        "EntityTooSmall",
    }
)
"""S3 error codes that no retry can change (see `StorageError.retryable`)."""

_PERMANENT_CAUSES = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
)

PERMANENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOENT",  # missing (a ROOT deleted under the server, a missing source)
        "EACCES",
        "EPERM",  # forbidden
        "EROFS",  # read-only file system
        "ENOSPC",  # disk full
        "EDQUOT",  # quota exceeded
        "ENAMETOOLONG",  # a name the file system cannot hold
        "EFBIG",  # past the file-size limit (of the file system or RLIMIT_FSIZE)
        "ENOTDIR",
        "EISDIR",
        "ELOOP",
    )
    if hasattr(errno, name)
)
"""`OSError` numbers that trying again a few seconds later cannot change: a `StorageError`
caused by one of them is not retried (freeing a full disk takes a person, not a backoff)."""


class InvalidRequest(FstransportError):
    """A request broke a protocol rule; nothing of it was written.

    `field` names the offending part of the request when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TooManyTransfers(InvalidRequest):
    """The receiver already runs as many transfers as it allows; try again later."""


class Unauthorized(InvalidRequest):
    """The receiver refused the sender's credentials (a missing or wrong token)."""


class BodyStalled(InvalidRequest):
    """A request's body arrived too slowly: nothing for the server's `idle_timeout`, or less
    than the server's minimum body rate on average over it (answered with 408)."""


class ChecksumMismatch(FstransportError):
    """Data does not match its CRC32C: a corrupt chunk, or a whole snapshot that is not the one
    announced.  A corrupt chunk is re-sent; a whole snapshot that fails is never installed."""

    def __init__(self, what: str, expected: str, actual: str, *, whole: bool = False) -> None:
        super().__init__(f"checksum mismatch for {what}: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual
        self.whole = whole
        """True when the whole snapshot failed verification (not worth re-sending a chunk)."""


class RetryExhausted(FstransportError):
    """The retry budget ran out; `last_error` is the failure that ended it."""

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        why = f": {type(last_error).__name__}: {last_error}" if last_error is not None else ""
        super().__init__(f"gave up after {attempts} attempts{why}")
        self.attempts = attempts
        self.last_error = last_error


class ConfigurationError(FstransportError, ValueError):
    """Options or arguments given by the caller are not usable."""


class UnsupportedEntry(ConfigurationError):
    """A source directory holds something a directory snapshot cannot carry: a symbolic link,
    a device, a socket, a FIFO, or a name that is not safe at the target (``..``, control
    characters, ...).  Raised before anything is sent; `path` names the entry, `reason` why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot ship {path}: {reason}")
        self.path = path
        self.reason = reason
