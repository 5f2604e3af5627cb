"""Sans-I/O protocol rules: the sender's window and its verdicts, the receiver's rules.

`ReceiverState` (`receiver_state`) holds a receiver's rules and answers actions that
`fstransport.receiver.Receiver` executes; `SendWindow` plans a sender's chunks and judges
failures (`SendWindow.verdict`).

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
from fstransport.protocol.receiver_state import ReceiverState
from fstransport.protocol.sender import ChunkPlan, Failure, SendStats, SendWindow, Verdict

__all__ = [
    "ChunkLedger",
    "ChunkPlan",
    "ChunkRecord",
    "Failure",
    "RangeSet",
    "ReceiverLimits",
    "ReceiverState",
    "SendStats",
    "SendWindow",
    "StreamDecision",
    "StreamState",
    "Verdict",
    "check_snapshot_id",
    "decide_stream",
    "validate_request",
]
