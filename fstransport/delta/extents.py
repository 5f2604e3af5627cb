"""The receiver's side of a request with several ranges (``InstallSnapshotRequest.extents``,
`fstransport.protocol.delta_pack`): checked against the accepted recipe, then each range
written and recorded as a chunk of its own, so the ledger, resume and re-verification see
exactly what one request per range would have left."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fstransport.checksum import chunk_crc, combine
from fstransport.errors import InvalidRequest, StorageError
from fstransport.messages import InstallSnapshotRequest, contiguous
from fstransport.protocol.delta_restart import check_sent
from fstransport.storage.base import NOTHING_LOST, Lost, write_checked

if TYPE_CHECKING:
    from fstransport.receive_streams import Outcome

__all__ = ["write_extents"]


async def write_extents(
    runner: Any, snapshot_id: str, stream: Any, req: InstallSnapshotRequest
) -> Outcome:
    """Write `req`'s extents into `stream` (a `receive_streams` stream whose lock is held).

    Nothing is written unless every extent lies inside a range the stream's accepted recipe
    sends (`check_sent`: `InvalidRequest` drops the stream, as for any broken request of a
    transfer).  A stream with no accepted recipe (a receiver restarted since, or a new exchange
    begun), or a request that may have been sent under an earlier recipe, is answered
    `SnapshotMismatch` expecting offset 0: the sender runs its exchange again.  Each extent's
    CRC32C is computed as it is written; the answer's is them combined (the data's, as checked
    by `validate_request` when the sender gave one)."""
    assert req.extents is not None
    state, sink = stream.state, stream.sink
    try:
        check_sent(state, req)  # (`SnapshotMismatch` passes: the stream stays)
    except InvalidRequest:
        await runner.drop(snapshot_id, stream, locked=True)
        raise
    data = memoryview(contiguous(req.data)).cast("B")
    named = state.meta.checksum is not None
    pieces: list[tuple[int, memoryview]] = []
    crcs: dict[int, int] = {}  # of the extents held already (see `StreamState.holds`)
    at = 0
    for offset, length in req.extents:
        piece = data[at : at + length]
        at += length
        if named and state.ledger.covers(offset, offset + length):
            crcs[offset] = chunk_crc(piece)
        else:
            pieces.append((offset, piece))
    try:
        written = await _write(sink, pieces)
    except StorageError:
        await runner.drop(snapshot_id, stream, locked=True)  # a broken sink cannot go on
        raise
    for (offset, piece), (lost, crc) in zip(pieces, written, strict=True):
        state.record(replace(req, offset=offset, data=piece, extents=None), crc, lost)
        crcs[offset] = crc
    whole = 0
    for offset, length in req.extents:
        whole = combine(whole, crcs[offset], length)
    return None, state.tell(req), whole


async def _write(sink: Any, pieces: list[tuple[int, memoryview]]) -> list[tuple[Lost, int]]:
    """Each piece written with its CRC32C computed as it is: all in one call where the sink
    has ``write_checked_many`` (a local file: one worker thread), else one write each."""
    many = getattr(sink, "write_checked_many", None)
    if many is not None and pieces:
        return [(NOTHING_LOST, crc) for crc in await many(pieces)]
    return [await write_checked(sink, offset, piece) for offset, piece in pieces]
