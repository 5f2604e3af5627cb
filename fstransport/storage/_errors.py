"""Translate backend errors (OSError, fsspec, botocore, ...) into `StorageError` at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fstransport.errors import FstransportError, StorageError


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
