"""Storage fault injection for tests: make S3 calls fail now and then, deterministically.

``with flaky_s3(failure_rate=0.2, seed=7) as faults:`` makes every ``S3FileSystem._call_s3`` in
this process fail, with the given probability, the way a flaky bucket does — a connection reset
or an HTTP 503 SlowDown — *before* the call reaches the server.  s3fs's own retry loop sits
inside ``_call_s3`` and is bypassed, so what recovers is fstransport's `RetryPolicy`.  The
choices come from ``random.Random(seed)`` in call order; ``faults.injected`` counts them by
operation.  Only the listed `operations` fail (by default the data path: GET, part uploads,
PUT and completion).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fstransport.errors import ConfigurationError

__all__ = ["DATA_OPERATIONS", "StorageFaults", "flaky_s3"]

DATA_OPERATIONS = frozenset(
    {
        "get_object",
        "upload_part",
        "put_object",
        "complete_multipart_upload",
        "create_multipart_upload",
    }
)


class SlowDown(OSError):
    """What s3fs makes of an HTTP 503 SlowDown answer."""


@dataclass
class StorageFaults:
    """What `flaky_s3` injected: failures by S3 operation, and calls seen."""

    injected: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.injected.values())


@contextmanager
def flaky_s3(
    failure_rate: float,
    seed: int = 0,
    operations: frozenset[str] = DATA_OPERATIONS,
) -> Iterator[StorageFaults]:
    """Make S3 calls of `operations` fail with probability `failure_rate` while in the block."""
    if not 0 <= failure_rate <= 1:
        raise ConfigurationError(f"failure_rate must be within [0, 1], got {failure_rate}")
    import s3fs

    rng = random.Random(seed)
    faults = StorageFaults()
    original = s3fs.S3FileSystem._call_s3

    async def _call_s3(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        faults.calls[method] += 1
        if method in operations and rng.random() < failure_rate:
            faults.injected[method] += 1
            if rng.random() < 0.5:
                raise ConnectionResetError(f"injected: connection reset during {method}")
            raise SlowDown(f"injected: 503 SlowDown, please reduce your request rate ({method})")
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = _call_s3
    try:
        yield faults
    finally:
        s3fs.S3FileSystem._call_s3 = original
