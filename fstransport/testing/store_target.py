"""The pieces of the store conformance suite (`fstransport.testing.store_suite`): the
`Target` a backend binds, the `InspectableStore` it carries, and the helpers the tests share."""

from __future__ import annotations

import hashlib
import io
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import IO, Protocol

from fstransport.checksum import chunk_crc, format_checksum
from fstransport.messages import (
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    Snapshot,
    SnapshotMeta,
    Vote,
)
from fstransport.network.loopback import LoopbackNetwork
from fstransport.options import KiB, MiB, TransferOptions
from fstransport.receiver import Receiver
from fstransport.sender import Chunked
from fstransport.storage.base import SnapshotStore
from fstransport.testing.mock import MockNetwork, deliver_to

__all__ = ["MULTI", "PART", "SMALL", "InspectableStore", "Target"]


class InspectableStore(SnapshotStore, Protocol):
    """A `SnapshotStore` that can also say what is installed, and be closed."""

    async def exists(self, snapshot_id: str) -> bool: ...

    async def list(self) -> list[str]: ...

    async def open(self, snapshot_id: str) -> IO[bytes]: ...

    async def close(self) -> None: ...


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


PART = 5 * MiB
"""The S3 part size of the ``s3-multipart`` target (and s3fs's block size for ``s3-sequential``)."""
MULTI = 2 * PART + 12_345
"""A multi-part snapshot: two whole parts and a short tail."""
SMALL = 5 * KiB + 3
"""A few KiB."""
ID = "snap"
VOTE = Vote(1, 0)


# -- targets -------------------------------------------------------------------------------------


class Target(ABC):
    """A store under test, and an independent way to see what is visible at its root."""

    name: str
    store: InspectableStore
    needs_size = False
    """The target refuses snapshots whose size is not announced (S3 multipart uploads)."""
    visible_when_finished = False
    """The target cannot rename, so finishing a snapshot makes it visible (S3 multipart)."""
    s3 = False

    @abstractmethod
    def files(self) -> list[str]:
        """Every file (object) under the store's root, relative to it, hidden partials included."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The bytes of file `name` under the store's root, read without the store."""

    def uploads(self) -> list[str]:
        """Incomplete multipart uploads under the root, as ``"key upload-id"`` (S3 only)."""
        return []

    def installed(self) -> list[str]:
        """The files under the root that are not the store's own partials."""
        return [f for f in self.files() if not f.startswith(".fstransport/")]

    def assert_exactly(self, expected: dict[str, bytes]) -> None:
        """Exactly `expected` is at the root: no other file, no partial data, no open upload."""
        assert self.files() == sorted(expected)
        for name, data in expected.items():
            assert_same_bytes(self.read(name), data)
        assert self.uploads() == []


# -- helpers -------------------------------------------------------------------------------------


def fingerprint(data: bytes) -> tuple[int, str]:
    """Length and digest: compared instead of megabytes, so a failure prints something short."""
    return len(data), hashlib.sha256(data).hexdigest()[:16]


def assert_same_bytes(actual: bytes, expected: bytes) -> None:
    assert fingerprint(actual) == fingerprint(expected)


def cut(size: int, chunk: int, start: int = 0) -> list[tuple[int, int]]:
    """``(offset, length)`` of the chunks of `chunk` bytes covering ``[start, size)``."""
    if size == start:
        return [(start, 0)]
    return [(o, min(chunk, size - o)) for o in range(start, size, chunk)]


def request(
    data: bytes,
    offset: int,
    length: int,
    *,
    done: bool = False,
    snapshot_id: str = ID,
    size: int | None = -1,
    checksum: str | None = None,
    crc: int | None = None,
) -> InstallSnapshotRequest:
    """The chunk ``data[offset:offset + length]`` of snapshot `snapshot_id`, as a sender cuts it.

    `size` defaults to ``len(data)``; `crc` to the chunk's CRC32C.
    """
    piece = data[offset : offset + length]
    meta = SnapshotMeta(snapshot_id, size=len(data) if size == -1 else size, checksum=checksum)
    return InstallSnapshotRequest(
        VOTE, meta, offset, piece, done, chunk_crc(piece) if crc is None else crc
    )


async def send_chunks(
    receiver: Receiver,
    data: bytes,
    chunks: Sequence[tuple[int, int]],
    *,
    final: bool = False,
    snapshot_id: str = ID,
) -> None:
    """Hand `chunks` of `data` to `receiver` in the given order; with `final`, the last is done."""
    for i, (offset, length) in enumerate(chunks):
        done = final and i == len(chunks) - 1
        await receiver.handle(request(data, offset, length, done=done, snapshot_id=snapshot_id))


async def send(
    store: InspectableStore,
    data: bytes,
    *,
    snapshot_id: str = ID,
    chunk_size: int = MiB,
    window: int = 4,
    checksum: str | None = None,
    receiver: Receiver | None = None,
) -> None:
    """Ship `data` into `store` as `snapshot_id` with `Chunked.send_snapshot` over loopback."""
    net = LoopbackNetwork(receiver or Receiver(store))
    snapshot = Snapshot(SnapshotMeta(snapshot_id, checksum=checksum), io.BytesIO(data))
    options = TransferOptions(chunk_size=chunk_size, max_in_flight=window)
    response = await Chunked.send_snapshot(net, VOTE, snapshot, None, options)
    assert response.vote == VOTE


async def read_installed(store: InspectableStore, snapshot_id: str = ID) -> bytes:
    with await store.open(snapshot_id) as f:
        return bytes(f.read())


async def assert_not_installed(target: Target, snapshot_id: str = ID) -> None:
    assert snapshot_id not in target.files()
    assert not await target.store.exists(snapshot_id)
    assert snapshot_id not in await target.store.list()


def wrong_checksum(data: bytes) -> str:
    return format_checksum(chunk_crc(data) ^ 0x5A5A5A5A)


# -- round trips ---------------------------------------------------------------------------------

ROUND_TRIPS = {
    "empty": (0, 64 * KiB),
    "one byte": (1, 64 * KiB),
    "few KiB in one chunk": (3 * KiB + 5, 64 * KiB),
    "few KiB in chunks not dividing it": (SMALL, 1000),
    "multi-part, chunk below part": (MULTI, MiB),
    "multi-part, chunk above part": (MULTI, 7 * MiB),
    "multi-part, chunk not dividing part": (MULTI, 3 * MiB + 1001),
}


OUT_OF_ORDER = {"few KiB": (SMALL, 700), "multi-part": (MULTI, MiB + 4097)}


# -- refusals ------------------------------------------------------------------------------------

SIZES = {"few KiB": SMALL, "multi-part": MULTI}


def invalid_final_chunk(data: bytes, chunks: Sequence[tuple[int, int]]) -> InstallSnapshotRequest:
    """The final chunk one byte short: ``done`` but not ending at the announced size."""
    offset, length = chunks[-1]
    return request(data, offset, length - 1, done=True)


VERSIONS = {"small over multi-part": (MULTI, SMALL), "multi-part over small": (SMALL, MULTI)}


REPLACEMENTS = {"smaller": SMALL, "same size": PART + 100, "larger": MULTI}


# -- gaps ----------------------------------------------------------------------------------------

GAPS = {"few KiB": (SMALL, 700, 3), "multi-part, gap in part 2": (MULTI, MiB, 6)}


def swallow_once(receiver: Receiver, offset: int) -> MockNetwork:
    """Acknowledges the chunk at `offset` once without delivering it (a receiver-side loss) and
    delivers everything else; the receiver's refusals are the network's `errors`."""
    deliver = deliver_to(receiver, interleave=False)
    swallowed = False

    async def handler(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        nonlocal swallowed
        if req.offset == offset and not swallowed:
            swallowed = True
            return InstallSnapshotResponse(req.vote)
        return await deliver(req)

    return MockNetwork(handler)
