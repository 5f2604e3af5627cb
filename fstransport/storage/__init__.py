"""The fsspec edge: sources that read snapshots by range, sinks and stores that write them.

The interfaces (`SnapshotStore`, `SnapshotSink`, `ChunkSource`) live in
`fstransport.storage.base`, which imports no fsspec; `FsspecSnapshotStore` (`store`) keeps the
paths, bookkeeping and listings and leaves the rest to the backend of its filesystem
(`fstransport.storage.backends`: memory, local, S3, generic fsspec).  The implementations are
imported from their modules when first used.
"""

from typing import TYPE_CHECKING

from fstransport._lazy import lazy_exports
from fstransport.storage.base import ChunkSource, SnapshotSink, SnapshotStore

if TYPE_CHECKING:
    from fstransport.storage.backends.files import SeekableFileSink
    from fstransport.storage.backends.local.sink import PwriteSink
    from fstransport.storage.backends.memory import MemorySink
    from fstransport.storage.source import (
        AsyncFsSource,
        BufferSource,
        FileObjectSource,
        PreadSource,
        open_source,
        source_for_file,
    )
    from fstransport.storage.store import FsspecSnapshotStore
else:
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {
            "AsyncFsSource": "fstransport.storage.source",
            "BufferSource": "fstransport.storage.source",
            "FileObjectSource": "fstransport.storage.source",
            "FsspecSnapshotStore": "fstransport.storage.store",
            "MemorySink": "fstransport.storage.backends.memory",
            "PreadSource": "fstransport.storage.source",
            "PwriteSink": "fstransport.storage.backends.local.sink",
            "SeekableFileSink": "fstransport.storage.backends.files",
            "open_source": "fstransport.storage.source",
            "source_for_file": "fstransport.storage.source",
        },
    )

__all__ = [
    "AsyncFsSource",
    "BufferSource",
    "ChunkSource",
    "FileObjectSource",
    "FsspecSnapshotStore",
    "MemorySink",
    "PreadSource",
    "PwriteSink",
    "SeekableFileSink",
    "SnapshotSink",
    "SnapshotStore",
    "open_source",
    "source_for_file",
]
