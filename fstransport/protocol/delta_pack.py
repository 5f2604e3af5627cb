"""Many changed ranges in one request, sans I/O (``docs/delta.md``, "Many ranges a request").

After a delta's recipe is accepted, what is left to send is usually thousands of short ranges
(1% of the 4 KiB pages of a file changed at random: single pages).  A request may then carry
several of them: ``InstallSnapshotRequest.extents`` lists ``(offset, length)`` pairs in the
snapshot's own coordinates, `data` is their bytes joined, `offset` the first one's.  Ledger,
held ranges, resume and rewinds stay in the one coordinate space they always had; only the
request is new.

Here: the checks every such request passes before anything is written (`check_extents`, and
`SentRanges.check` against the recipe the receiver accepted), how the sender cuts such a
request from what it still has to send (`take_extents`), and the extent table's wire form for
HTTP (`encode_extents`, `decode_extents`).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from fstransport.errors import InvalidRequest
from fstransport.messages import Buffer, InstallSnapshotRequest

if TYPE_CHECKING:
    from fstransport.protocol.receiver import StreamState

__all__ = [
    "EXTENT_SIZE",
    "MAX_EXTENTS",
    "SentRanges",
    "check_extents",
    "decode_extents",
    "encode_extents",
    "split_extents",
    "take_extents",
    "takes_extents",
]

MAX_EXTENTS = 16384
"""Extents one request may carry (a 256 KiB table on the HTTP wire)."""
EXTENT_SIZE = 16
"""Bytes of one extent in the HTTP wire's table: offset and length, u64 little-endian each."""
_PAIR = struct.Struct("<QQ")
Extents = tuple[tuple[int, int], ...]


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, field="extents")


def _nat(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_extents(req: InstallSnapshotRequest) -> None:
    """`InvalidRequest` (field ``"extents"``) unless `req`'s extents are absent or well formed:
    1 to `MAX_EXTENTS` pairs of integers, each at least one byte, increasing and disjoint,
    the first at `offset` (never 0: the chunk that opens a stream goes alone), all inside the
    snapshot's named size and short of its last byte (the final chunk goes alone too), their
    lengths adding up to the data's; in a request that is nothing else (not final, not a delta
    request, not staged)."""
    extents = req.extents
    if extents is None:
        return
    if not isinstance(extents, tuple) or not 0 < len(extents) <= MAX_EXTENTS:
        raise _bad(f"extents must be a tuple of 1 to {MAX_EXTENTS} pairs")
    if req.done or req.delta is not None or req.staged is not None or req.recipe is not None:
        raise _bad("a request with extents is not final, staged or a delta request")
    size = req.meta.size
    if size is None:
        raise _bad("a request with extents names the snapshot's size")
    reached, total = 1, 0  # (so the first extent starts past 0)
    for pair in extents:
        if not (isinstance(pair, tuple) and len(pair) == 2 and _nat(pair[0]) and _nat(pair[1])):
            raise _bad("an extent is a pair of unsigned integers")
        start, length = pair
        if start < reached or length == 0:
            raise _bad("extents are increasing, disjoint, non-empty, and none starts at 0")
        reached = start + length
        total += length
    if extents[0][0] != req.offset:
        raise _bad("a request's offset is its first extent's")
    if reached >= size:
        raise _bad(f"extents reach {reached}: past the snapshot's last byte but one ({size})")
    if total != len(req.data):
        raise _bad(f"extents add up to {total} bytes, the data holds {len(req.data)}")


class SentRanges:
    """The ranges an accepted recipe sends (``Recipe.sends()``), to check extents against."""

    def __init__(self, sends: Iterable[tuple[int, int]]) -> None:
        pairs = sorted(sends)
        self._starts = [s for s, _ in pairs]
        self._ends = [e for _, e in pairs]

    def check(self, extents: Sequence[tuple[int, int]]) -> None:
        """`InvalidRequest` unless every extent lies inside one sent range."""
        starts, ends = self._starts, self._ends
        for start, length in extents:
            i = bisect_right(starts, start) - 1
            if i < 0 or start + length > ends[i]:
                raise _bad(f"extent [{start}, {start + length}) is not a range the recipe sends")


def takes_extents(stream: StreamState | None, req: InstallSnapshotRequest) -> bool:
    """What the answer to `req` says of extents (`InstallSnapshotResponse.extents`): true for a
    recipe the receiver accepted, so what is left may come several ranges a request."""
    delta = None if stream is None else stream.delta
    return req.recipe is not None and delta is not None and delta.sent is not None


def take_extents(
    pending: Iterable[tuple[int, int]], budget: int, size: int, limit: int = MAX_EXTENTS
) -> Extents:
    """The sender's next request with extents: the lowest pending ranges (increasing, disjoint,
    none at 0), at most `limit` ranges whose bytes and extent table (`EXTENT_SIZE` a range)
    together fit in `budget` (a body over HTTP is both: a receiver's size limit sees both), a
    range longer than what is left of the budget cut to it; the range that ends at `size` is
    never taken (the final chunk goes alone, last)."""
    out: list[tuple[int, int]] = []
    left = budget
    for start, end in pending:
        if end >= size or left <= EXTENT_SIZE or len(out) >= limit:
            break
        if start == 0:
            break  # (the chunk at offset 0 goes alone)
        length = min(end - start, left - EXTENT_SIZE)
        out.append((start, length))
        left -= length + EXTENT_SIZE
    return tuple(out)


def encode_extents(extents: Sequence[tuple[int, int]]) -> bytes:
    """The extent table that precedes the data in an HTTP request's body."""
    return b"".join(_PAIR.pack(start, length) for start, length in extents)


def decode_extents(raw: bytes, count: int) -> Extents:
    """`count` extents from the table `raw` (exactly ``count * EXTENT_SIZE`` bytes); the
    receiver checks them further (`check_extents`).  `InvalidRequest` for a bad count."""
    if not 0 < count <= MAX_EXTENTS or len(raw) != count * EXTENT_SIZE:
        raise _bad(f"an extent table holds 1 to {MAX_EXTENTS} entries of {EXTENT_SIZE} bytes")
    return tuple(_PAIR.iter_unpack(raw))


def split_extents(body: Buffer, count: int) -> tuple[Extents, memoryview]:
    """An HTTP body with `count` extents: their table decoded, and the data after it."""
    view = memoryview(body).cast("B")
    if not 0 < count <= MAX_EXTENTS or view.nbytes < count * EXTENT_SIZE:
        raise _bad(f"an extent table holds 1 to {MAX_EXTENTS} entries of {EXTENT_SIZE} bytes")
    table = count * EXTENT_SIZE
    return decode_extents(bytes(view[:table]), count), view[table:]
