"""The fsspec edge: sources that read snapshots by range, sinks and stores that write them."""

from fstransport.storage.sink import MemorySink, PwriteSink, SeekableFileSink, SnapshotSink
from fstransport.storage.source import (
    AsyncFsSource,
    BufferSource,
    ChunkSource,
    FileObjectSource,
    PreadSource,
    open_source,
    source_for_file,
)
from fstransport.storage.store import FsspecSnapshotStore, SnapshotStore

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
