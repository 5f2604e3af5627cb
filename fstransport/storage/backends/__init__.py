"""Storage backends: one per kind of filesystem, chosen once, by capability.

`backend_class` asks each backend of `BACKENDS` in turn whether it can serve a filesystem
(``serves``); the first that can is used — as s3transfer picks its download writer.  The
generic `FsspecBackend`, last, serves every filesystem.  A backend owns how its filesystem is
written (sinks and journals), installed, resumed, discarded and cleaned up, and how a source
on it is opened; `FsspecSnapshotStore` keeps the paths, the bookkeeping and the listings.

- `backends.memory`: ``memory://`` (in place, on the event loop);
- `backends.local`: local folders (``os.pwrite``, a journal, ``os.replace``);
- `backends.s3`: S3 (multipart uploads with a resumable state, ranged reads, copies);
- `backends.fsspec`: anything else fsspec opens (seekable or sequential file objects).
"""

from __future__ import annotations

from typing import Any

from fstransport.storage.backends.fsspec import FsspecBackend
from fstransport.storage.backends.local import LocalBackend
from fstransport.storage.backends.memory import MemoryBackend
from fstransport.storage.backends.s3 import S3Backend

__all__ = [
    "BACKENDS",
    "FsspecBackend",
    "LocalBackend",
    "MemoryBackend",
    "S3Backend",
    "backend_class",
]

BACKENDS: tuple[type[FsspecBackend], ...] = (S3Backend, MemoryBackend, LocalBackend, FsspecBackend)
"""The resolver chain, most specific first; the generic backend last."""


def backend_class(fs: Any) -> type[FsspecBackend]:
    """The first backend of `BACKENDS` that serves `fs` (a filesystem or its class)."""
    return next(backend for backend in BACKENDS if backend.serves(fs))
