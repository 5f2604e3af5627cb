"""Translate backend errors (OSError, fsspec, botocore, ...) into `StorageError` at the edge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from fstransport.errors import FstransportError, StorageError
from fstransport.options import RetryPolicy

T = TypeVar("T")
log = logging.getLogger("fstransport.storage")


@contextmanager
def storage_errors(subject: str, verb: str) -> Iterator[None]:
    """Re-raise any backend exception inside the block as ``StorageError(subject, verb, exc)``.

    Our own errors pass through unchanged; cancellation (a ``BaseException``) is never caught.
    """
    try:
        yield
    except FstransportError:
        raise
    except Exception as exc:
        raise StorageError(subject, verb, exc) from exc


async def retrying(
    operation: Callable[[], Awaitable[T]], subject: str, verb: str, policy: RetryPolicy
) -> T:
    """Run `operation`, trying again after transient backend failures (5xx, SlowDown,
    connection resets, ...) with `policy`'s backoff; then ``StorageError(subject, verb, ...)``.

    Failures that cannot get better (missing, forbidden, malformed) are raised at once.
    `operation` is called anew for each attempt, so it must rebuild request bodies.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except FstransportError:
            raise
        except Exception as exc:
            attempt += 1
            error = StorageError(subject, verb, exc)
            if not error.retryable or attempt >= policy.max_attempts:
                raise error from exc
            log.warning("%s (attempt %d of %d); trying again", error, attempt, policy.max_attempts)
            await asyncio.sleep(policy.backoff(attempt))
