"""The sinks of every backend, under the name the API guide gives (``fstransport.storage.sink``).

A sink writes a snapshot's chunks at their offsets into a partial file; each backend has its own
(see `fstransport.storage.backends`):

- `MemorySink` (``memory://``): the memory file written in place, on the event loop;
- `PwriteSink` (local files): ``os.pwrite`` (``pwritev`` for `Pieces`) from worker threads;
- `SeekableFileSink` / `SequentialSink` (other fsspec filesystems): a file object, seeking or
  appending in order;
- `MultipartSink` (S3, in `fstransport.storage.backends.s3`): a multipart upload.

The interfaces and write helpers live in `fstransport.storage.base` (no fsspec) and are
importable from here too.
"""

from fstransport.storage.backends.files import (
    FileObjectSink,
    SeekableFileSink,
    SequentialSink,
    discard_file,
)
from fstransport.storage.backends.local.sink import IOV_MAX, PwriteSink
from fstransport.storage.backends.memory import MemorySink
from fstransport.storage.base import (
    CHECK_BLOCK,
    NOTHING_LOST,
    CheckedSink,
    Lost,
    PiecesSink,
    SnapshotSink,
    VerifyingSink,
    aborted,
    is_checked_sink,
    is_pieces_sink,
    is_verifying_sink,
    write_checked,
    write_chunk,
)

__all__ = [
    "CHECK_BLOCK",
    "IOV_MAX",
    "NOTHING_LOST",
    "CheckedSink",
    "FileObjectSink",
    "Lost",
    "MemorySink",
    "PiecesSink",
    "PwriteSink",
    "SeekableFileSink",
    "SequentialSink",
    "SnapshotSink",
    "VerifyingSink",
    "aborted",
    "discard_file",
    "is_checked_sink",
    "is_pieces_sink",
    "is_verifying_sink",
    "write_checked",
    "write_chunk",
]
