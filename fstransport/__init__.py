"""fstransport: ship large snapshots in verified chunks between fsspec locations.

The protocol is openraft 0.9's chunked snapshot transport (``InstallSnapshotRequest{vote, meta,
offset, data, done}``) with bounded retries, a window of chunks in flight, CRC32C checksums and
atomic installs.  Start with `ship` for a one-call copy, or `Chunked.send_snapshot` and
`Receiver` with a `Network` adapter of your own.
"""

from importlib.metadata import PackageNotFoundError, version

from fstransport.errors import (
    ChecksumMismatch,
    ConfigurationError,
    FstransportError,
    HigherVote,
    InvalidRequest,
    NetworkError,
    PayloadTooLarge,
    RemoteError,
    ReplicationClosed,
    RetryExhausted,
    RPCError,
    SnapshotMismatch,
    SourceChanged,
    StorageError,
    Timeout,
    TooManyTransfers,
    Unauthorized,
    Unreachable,
    UntrustedPeer,
)
from fstransport.messages import (
    ChunkData,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LogId,
    Pieces,
    Snapshot,
    SnapshotMeta,
    SnapshotResponse,
    SnapshotSegmentId,
    Vote,
    contiguous,
)
from fstransport.network import FaultStats, FaultyNetwork, HttpNetwork, LoopbackNetwork, Network
from fstransport.options import KiB, MiB, RetryPolicy, TransferOptions
from fstransport.protocol.receiver import ReceiverLimits
from fstransport.receiver import Receiver
from fstransport.sender import Chunked, SendResult, send_source
from fstransport.storage import FsspecSnapshotStore, SnapshotStore, open_source, source_for_file
from fstransport.transfer import TransferReport, ship

try:
    __version__ = version("fstransport")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ChecksumMismatch",
    "ChunkData",
    "Chunked",
    "ConfigurationError",
    "FaultStats",
    "FaultyNetwork",
    "FsspecSnapshotStore",
    "FstransportError",
    "HigherVote",
    "HttpNetwork",
    "InstallSnapshotRequest",
    "InstallSnapshotResponse",
    "InvalidRequest",
    "KiB",
    "LogId",
    "LoopbackNetwork",
    "MiB",
    "Network",
    "NetworkError",
    "PayloadTooLarge",
    "Pieces",
    "RPCError",
    "Receiver",
    "ReceiverLimits",
    "RemoteError",
    "ReplicationClosed",
    "RetryExhausted",
    "RetryPolicy",
    "SendResult",
    "Snapshot",
    "SnapshotMeta",
    "SnapshotMismatch",
    "SnapshotResponse",
    "SnapshotSegmentId",
    "SnapshotStore",
    "SourceChanged",
    "StorageError",
    "Timeout",
    "TooManyTransfers",
    "TransferOptions",
    "TransferReport",
    "Unauthorized",
    "Unreachable",
    "UntrustedPeer",
    "Vote",
    "__version__",
    "contiguous",
    "open_source",
    "send_source",
    "ship",
    "source_for_file",
]
