"""Small helpers for asyncio tasks that every layer uses."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["retrieve_exception"]


def retrieve_exception(task: asyncio.Future[Any]) -> None:
    """A done-callback for a task whose failure is seen elsewhere (or by nobody, because its
    awaiter was cancelled): mark the exception retrieved, so that asyncio does not log it as
    never retrieved."""
    if not task.cancelled():
        task.exception()
