"""How the command line reports errors: usage errors (exit 2) and one-line failures (exit 1).

A failure is one line that names what the user gave (SRC, DST, ROOT), never the store's
internal paths (``.fstransport/partial/...``), and no ``[Errno N]`` prefixes.
"""

from __future__ import annotations

import re

from fstransport.errors import FstransportError, StorageError

__all__ = ["EXIT_CODES", "UsageError", "describe", "reason"]

EXIT_CODES = """\
exit codes:
  0    done (or nothing to do: --dry-run, --ignore-existing)
  1    the command failed (transfer, storage, network or server error)
  2    the command line is wrong (unknown flag, bad size, flags that do not go together,
       an empty token, serve without a token or --no-auth, an unusable ROOT for serve)
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM); cleaned up as after Ctrl-C
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class UsageError(Exception):
    """The command line itself is wrong: printed with the command's usage, exit code 2."""


_ERRNO = re.compile(r"\[Errno -?\d+\]\s*")
_INTERNAL = re.compile(r"\S*/\.fstransport/(?:partial|journal)/(\S+?)(?:\.journal)?(?=[\s:'\"]|$)")


def reason(exc: BaseException) -> str:
    """What went wrong, in words: 'No such file or directory', not '[Errno 2] ...: /x'."""
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    text = str(exc) or type(exc).__name__
    return _ERRNO.sub("", text)


_UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "gaierror",
    "ConnectionRefusedError",
    "TimeoutError",
}


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _hint(exc: StorageError, endpoint: str | None) -> str | None:
    """A one-line explanation with a hint, for the failures users meet first on S3."""
    names = {type(e).__name__ for e in _cause_chain(exc)}
    where = endpoint or "the default AWS endpoint"
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return (
            f"no S3 credentials for {exc.subject}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if names & _UNREACHABLE:
        return f"cannot reach S3 at {where} for {exc.subject}; is --endpoint-url right?"
    if "bucket" in reason(exc.cause or exc) and isinstance(exc.cause, FileNotFoundError):
        missing = reason(exc.cause)
        return f"cannot {exc.verb} {exc.subject}: {missing} at {where}; is --endpoint-url right?"
    if isinstance(exc.cause, PermissionError):
        return f"cannot {exc.verb} {exc.subject}: access denied; check the credentials"
    return None


def describe(
    exc: FstransportError, *, target: str | None = None, endpoint: str | None = None
) -> str:
    """The one line to print for `exc`; a store-internal path is shown as `target`."""
    if isinstance(exc, StorageError) and exc.cause is not None:
        subject = exc.subject
        if "/.fstransport/" in subject and target is not None:
            subject = target
        hint = _hint(exc, endpoint) if exc.subject.startswith(("s3://", "s3a://")) else None
        text = hint or f"cannot {exc.verb} {subject}: {reason(exc.cause)}"
    else:
        text = _ERRNO.sub("", str(exc))
    if target is not None:
        text = _INTERNAL.sub(target, text)
    return text
