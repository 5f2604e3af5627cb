"""Helpers for fsspec filesystems opened with ``asynchronous=True`` on the running loop."""

from __future__ import annotations

import contextlib
from typing import Any


async def close_async_filesystem(fs: Any) -> None:
    """Close the network session an ``asynchronous=True`` fsspec filesystem opened, if any."""
    for attribute in ("_s3", "_session"):  # s3fs keeps its client in _s3, HTTP its session
        session = getattr(fs, attribute, None)
        if session is not None and callable(getattr(session, "close", None)):
            setattr(fs, attribute, None)
            with contextlib.suppress(Exception):
                await session.close()
