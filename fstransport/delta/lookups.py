"""Answers looked up once and kept, unless the lookup failed for a passing reason (I/O).

A relayed receiver looks up its delta base once per snapshot and maps it once per mode
(`fstransport.delta.relay.RelayBases`).  Keeping every answer would keep a failure too: a
storage error or a read that raised would read as "no base" for every later chunk of the
snapshot, each fetched whole.  `Lookups` keeps only *definite* answers (no base held, block
sizes that differ, a base found and mapped); a lookup that failed for a passing reason is
tried again by the next caller, one attempt at a time, at most `MAX_ATTEMPTS` times per key.
Whoever waited on a failed attempt gets its answer (None: the chunk is fetched whole), never
wrong bytes: what a base gives is checked against the chunk's block map as ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MAX_ATTEMPTS", "Found", "Lookups"]

log = logging.getLogger("fstransport.relay")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

MAX_ATTEMPTS = 3
"""Lookups of one key at most while they fail for a passing reason (then its answer stays)."""


@dataclass(frozen=True)
class Found(Generic[T]):
    """A lookup's answer: `value` (None: nothing), and whether it is `definite` (kept) or came
    from a failure that may pass (looked up again by a later caller)."""

    value: T | None
    definite: bool = True


@dataclass
class _Entry(Generic[T]):
    task: asyncio.Future[Found[T]]
    attempts: int = 1

    def retry_due(self, limit: int) -> bool:
        """Whether the answer came from a passing failure and attempts are left."""
        if not self.task.done() or self.attempts >= limit:
            return False
        return self.task.cancelled() or not self.task.result().definite


async def _guarded(look: Callable[[], Awaitable[Found[T]]]) -> Found[T]:
    """`look()`'s answer; an error it raises is a passing failure (logged)."""
    try:
        return await look()
    except Exception as exc:  # (a backend's own error type, an OSError, a timeout)
        log.info("delta base lookup failed (%s); asked again by a later chunk", exc)
        return Found(None, definite=False)


class Lookups(Generic[K, T]):
    """Answers by key (at most `keep` keys, the oldest forgotten first), each looked up once
    and kept when definite; see the module.  One lookup of a key runs at a time: callers that
    come meanwhile wait for it."""

    def __init__(self, *, keep: int, attempts: int = MAX_ATTEMPTS) -> None:
        self.keep, self.attempts = keep, attempts
        self._entries: dict[K, _Entry[T]] = {}

    async def get(self, key: K, look: Callable[[], Awaitable[Found[T]]]) -> T | None:
        """The answer for `key`: kept, under way, or `look()` started now (the first lookup,
        or another attempt after a passing failure)."""
        entry = self._entries.get(key)
        if entry is None:
            while len(self._entries) >= self.keep:
                del self._entries[next(iter(self._entries))]
            entry = self._entries[key] = _Entry(asyncio.ensure_future(_guarded(look)))
        elif entry.retry_due(self.attempts):
            entry.task = asyncio.ensure_future(_guarded(look))
            entry.attempts += 1
        task = entry.task
        found = await asyncio.shield(task)
        return found.value

    def attempts_of(self, key: K) -> int:
        """How many lookups of `key` were started (0: none, or forgotten)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.attempts

    def drop(self, match: Callable[[K], bool]) -> None:
        """Forget the keys `match` accepts."""
        for key in [k for k in self._entries if match(k)]:
            del self._entries[key]
