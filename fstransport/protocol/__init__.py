"""Sans-I/O protocol bookkeeping: the sender's window and the receiver's rules.

Nothing in this package touches a file, a socket or a clock, so all of it is tested directly.
"""

from fstransport.protocol.ranges import ChunkLedger, ChunkRecord, RangeSet
from fstransport.protocol.receiver import (
    ReceiverLimits,
    StreamDecision,
    StreamState,
    check_snapshot_id,
    decide_stream,
    validate_request,
)
from fstransport.protocol.sender import ChunkPlan, SendStats, SendWindow

__all__ = [
    "ChunkLedger",
    "ChunkPlan",
    "ChunkRecord",
    "RangeSet",
    "ReceiverLimits",
    "SendStats",
    "SendWindow",
    "StreamDecision",
    "StreamState",
    "check_snapshot_id",
    "decide_stream",
    "validate_request",
]
