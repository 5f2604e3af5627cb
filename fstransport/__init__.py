"""fstransport: ship large snapshots in verified chunks between fsspec locations.

The protocol is openraft 0.9's chunked snapshot transport (``InstallSnapshotRequest{vote, meta,
offset, data, done}``) with bounded retries, a window of chunks in flight, CRC32C checksums and
atomic installs.  Start with `ship` for a one-call copy, or `Chunked.send_snapshot` and
`Receiver` with a `Network` adapter of your own.
"""

from typing import TYPE_CHECKING

from fstransport._lazy import lazy_exports
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
    UnsupportedEntry,
    UntrustedPeer,
)
from fstransport.messages import (
    ChunkData,
    DeltaOffer,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LogId,
    Pieces,
    Snapshot,
    SnapshotMeta,
    SnapshotResponse,
    SnapshotSegmentId,
    StagedChunk,
    Vote,
    contiguous,
)
from fstransport.network.base import Network
from fstransport.options import KiB, MiB, RetryPolicy, TransferOptions

# Everything else is imported on first use (``fstransport.X`` or ``from fstransport import X``),
# so that ``import fstransport`` loads no aiohttp, fsspec or botocore: see `fstransport._lazy`.
_LAZY = {
    "Chunked": "fstransport.sender",
    "FaultStats": "fstransport.network.faults",
    "FaultyNetwork": "fstransport.network.faults",
    "FsspecSnapshotStore": "fstransport.storage.store",
    "HttpNetwork": "fstransport.http.client",
    "LoopbackNetwork": "fstransport.network.loopback",
    "Receiver": "fstransport.receiver",
    "RelayNetwork": "fstransport.network.relay",
    "ReceiverLimits": "fstransport.protocol.receiver",
    "SendResult": "fstransport.sender",
    "SnapshotStore": "fstransport.storage.base",
    "TransferReport": "fstransport.transfer",
    "__version__": "fstransport._version",
    "cleanup_staging": "fstransport.storage.staging",
    "open_source": "fstransport.storage.source",
    "send_source": "fstransport.sender",
    "ship": "fstransport.transfer",
    "source_for_file": "fstransport.storage.source",
}

if TYPE_CHECKING:
    from fstransport._version import __version__
    from fstransport.http.client import HttpNetwork
    from fstransport.network.faults import FaultStats, FaultyNetwork
    from fstransport.network.loopback import LoopbackNetwork
    from fstransport.network.relay import RelayNetwork
    from fstransport.protocol.receiver import ReceiverLimits
    from fstransport.receiver import Receiver
    from fstransport.sender import Chunked, SendResult, send_source
    from fstransport.storage.base import SnapshotStore
    from fstransport.storage.source import open_source, source_for_file
    from fstransport.storage.staging import cleanup_staging
    from fstransport.storage.store import FsspecSnapshotStore
    from fstransport.transfer import TransferReport, ship
else:
    __getattr__, __dir__ = lazy_exports(globals(), _LAZY)

__all__ = [
    "ChecksumMismatch",
    "ChunkData",
    "Chunked",
    "ConfigurationError",
    "DeltaOffer",
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
    "RelayNetwork",
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
    "StagedChunk",
    "StorageError",
    "Timeout",
    "TooManyTransfers",
    "TransferOptions",
    "TransferReport",
    "Unauthorized",
    "Unreachable",
    "UnsupportedEntry",
    "UntrustedPeer",
    "Vote",
    "__version__",
    "cleanup_staging",
    "contiguous",
    "open_source",
    "send_source",
    "ship",
    "source_for_file",
]
