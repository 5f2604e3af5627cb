"""One storage suite for every target of `FsspecSnapshotStore`.

In the style of fsspec's ``fsspec/tests/abstract``: the tests are written once, against a
`Target`, and the parametrized `target` fixture binds them to each backend:

- ``memory``: ``memory://`` with its default sink (written in place);
- ``memory-sequential``: ``memory://`` forced through the sequential sink and its reorder buffer;
- ``local``: a folder under ``tmp_path`` (``os.pwrite`` sink, ``os.replace`` install);
- ``s3-multipart``: S3 on the moto server with the default multipart sink, 5 MiB parts;
- ``s3-sequential``: S3 with ``sink="sequential"``; s3fs's own block size is set to 5 MiB so that
  its write file starts a multipart upload of the partial object in the multi-part cases.

A target carries the store under test and an independent view of what is visible at the store's
root: boto3 for S3, the memory filesystem's dictionary for ``memory://``, pathlib for local
folders.  "Multi-part" cases are sized in units of `PART` (the S3 part size), so that on S3 they
span two parts and a short tail; on the other targets they are simply a few MiB.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import (
    ChecksumMismatch,
    Chunked,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    InvalidRequest,
    LoopbackNetwork,
    Pieces,
    Receiver,
    RemoteError,
    Snapshot,
    SnapshotMeta,
    SnapshotMismatch,
    StorageError,
    TransferOptions,
    Vote,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.options import KiB, MiB
from tests.conftest import payload

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
    store: FsspecSnapshotStore
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


class MemoryTarget(Target):
    def __init__(self, name: str, store: FsspecSnapshotStore) -> None:
        self.name = name
        self.store = store
        self.fs = fsspec.filesystem("memory")
        self.root = "/suite"

    def files(self) -> list[str]:
        prefix = self.root + "/"
        return sorted(p[len(prefix) :] for p in self.fs.store if p.startswith(prefix))

    def read(self, name: str) -> bytes:
        return bytes(self.fs.store[f"{self.root}/{name}"].getvalue())


class LocalTarget(Target):
    def __init__(self, name: str, store: FsspecSnapshotStore, root: Path) -> None:
        self.name = name
        self.store = store
        self.root = root

    def files(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class S3Target(Target):
    s3 = True

    def __init__(
        self, name: str, store: FsspecSnapshotStore, client: Any, bucket: str, prefix: str
    ) -> None:
        self.name = name
        self.store = store
        self.client = client
        self.bucket = bucket
        self.prefix = prefix + "/"
        self.needs_size = store.sink_kind != "sequential"
        self.visible_when_finished = self.needs_size

    def files(self) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys.extend(o["Key"][len(self.prefix) :] for o in page.get("Contents", []))
        return sorted(keys)

    def read(self, name: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)[
            "Body"
        ].read()
        return body

    def uploads(self) -> list[str]:
        found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return sorted(f"{u['Key']} {u['UploadId']}" for u in found.get("Uploads", []))


BACKENDS = ["memory", "memory-sequential", "local", "s3-multipart", "s3-sequential"]


@pytest.fixture(
    params=[pytest.param(b, marks=pytest.mark.s3) if b.startswith("s3") else b for b in BACKENDS]
)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """Each backend in turn: a fresh, empty store and the independent view of its root."""
    backend: str = request.param
    made: Target
    if backend == "memory":
        made = MemoryTarget(backend, FsspecSnapshotStore("memory://suite"))
    elif backend == "memory-sequential":
        made = MemoryTarget(backend, FsspecSnapshotStore("memory://suite", sink="sequential"))
    elif backend == "local":
        root = tmp_path / "store"
        made = LocalTarget(backend, FsspecSnapshotStore(str(root)), root)
    else:
        bucket: str = request.getfixturevalue("s3_bucket")
        options: dict[str, Any] = request.getfixturevalue("s3_storage_options")
        client: Any = request.getfixturevalue("s3_client")
        url = f"s3://{bucket}/suite"
        if backend == "s3-multipart":
            store = FsspecSnapshotStore(url, part_size=PART, **options)
        else:
            store = FsspecSnapshotStore(url, sink="sequential", default_block_size=PART, **options)
        made = S3Target(backend, store, client, bucket, "suite")
    try:
        yield made
    finally:
        await made.store.close()


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
    store: FsspecSnapshotStore,
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


async def read_installed(store: FsspecSnapshotStore, snapshot_id: str = ID) -> bytes:
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


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize(("size", "chunk_size"), ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
async def test_round_trip(target: Target, size: int, chunk_size: int, window: int) -> None:
    data = payload(size, seed=size + chunk_size)
    await send(target.store, data, chunk_size=chunk_size, window=window)
    target.assert_exactly({ID: data})
    assert await target.store.exists(ID)
    assert await target.store.list() == [ID]
    assert_same_bytes(await read_installed(target.store), data)


async def test_chunks_in_pieces_round_trip(target: Target) -> None:
    """Chunks whose data is `Pieces` (as the receiver server collects a body) land byte-equal:
    written as they are where the sink takes pieces, joined where it does not."""
    data = payload(MULTI, seed=41)
    receiver = Receiver(target.store)
    chunks = cut(MULTI, 2 * MiB + 1)
    for i, (offset, length) in enumerate(chunks):
        whole = request(data, offset, length, done=i == len(chunks) - 1)
        # an empty piece and a 1-byte one too
        cuts = sorted(min(length, c) for c in (0, 1, 1, 70_001, length // 2, length))
        parts = [data[offset + a : offset + b] for a, b in itertools.pairwise(cuts)]
        await receiver.handle(replace(whole, data=Pieces(parts)))
    target.assert_exactly({ID: data})
    assert_same_bytes(await read_installed(target.store), data)


OUT_OF_ORDER = {"few KiB": (SMALL, 700), "multi-part": (MULTI, MiB + 4097)}


@pytest.mark.parametrize(("size", "chunk_size"), OUT_OF_ORDER.values(), ids=OUT_OF_ORDER.keys())
async def test_chunks_out_of_order_then_done(target: Target, size: int, chunk_size: int) -> None:
    data = payload(size, seed=7)
    chunks = cut(size, chunk_size)
    first, middle, last = chunks[0], chunks[1:-1], chunks[-1]
    random.Random(size).shuffle(middle)
    assert middle != sorted(middle)
    receiver = Receiver(target.store)
    await send_chunks(receiver, data, [first, *middle])  # a new stream must open at offset 0
    await send_chunks(receiver, data, [last], final=True)
    target.assert_exactly({ID: data})
    assert receiver.receiving == []
    assert_same_bytes(await read_installed(target.store), data)


@pytest.mark.parametrize(("size", "chunk_size"), OUT_OF_ORDER.values(), ids=OUT_OF_ORDER.keys())
async def test_nothing_visible_before_the_final_chunk(
    target: Target, size: int, chunk_size: int
) -> None:
    data = payload(size, seed=8)
    chunks = cut(size, chunk_size)
    receiver = Receiver(target.store)
    for chunk in chunks[:-1]:
        await send_chunks(receiver, data, [chunk])
        await assert_not_installed(target)
    await send_chunks(receiver, data, chunks[-1:], final=True)
    target.assert_exactly({ID: data})
    assert await target.store.exists(ID)
    assert await target.store.list() == [ID]
    assert_same_bytes(await read_installed(target.store), data)


@pytest.mark.parametrize("size", [SMALL, MULTI], ids=["few KiB", "multi-part"])
@pytest.mark.parametrize("then", ["install", "abort"])
async def test_a_finished_snapshot_is_invisible_until_installed(
    target: Target, size: int, then: str
) -> None:
    """`SnapshotStore.finish` returns a snapshot "readable, not yet installed", and `abort`
    discards "finished-but-not-installed data"; `Receiver.receive` stops there.  A target that
    cannot rename (S3) makes the snapshot visible when it finishes instead, as documented."""
    data = payload(size, seed=19)
    chunks = cut(size, MiB if size > PART else 1000)
    receiver = Receiver(target.store)
    for offset, length in chunks[:-1]:
        assert await receiver.receive(request(data, offset, length)) is None
    offset, length = chunks[-1]
    snapshot = await receiver.receive(request(data, offset, length, done=True))
    assert snapshot is not None
    assert_same_bytes(bytes(snapshot.data.read()), data)
    if target.visible_when_finished:
        target.assert_exactly({ID: data})
        assert target.uploads() == []
        await (target.store.install(snapshot) if then == "install" else target.store.abort(ID))
        target.assert_exactly({ID: data})  # S3 cannot take a completed upload back
        return
    await assert_not_installed(target)
    if then == "install":
        await target.store.install(snapshot)
        target.assert_exactly({ID: data})
    else:
        snapshot.data.close()
        await target.store.abort(ID)
        target.assert_exactly({})
        assert not await target.store.exists(ID)


# -- refusals ------------------------------------------------------------------------------------

SIZES = {"few KiB": SMALL, "multi-part": MULTI}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_wrong_whole_checksum_leaves_nothing(target: Target, size: int) -> None:
    data = payload(size, seed=9)
    receiver = Receiver(target.store)
    with pytest.raises(RemoteError) as info:
        await send(target.store, data, checksum=wrong_checksum(data), receiver=receiver)
    assert isinstance(info.value.source, ChecksumMismatch)
    assert info.value.source.whole
    target.assert_exactly({})
    assert receiver.receiving == []
    assert not await target.store.exists(ID)
    assert await target.store.list() == []


async def test_data_beyond_the_final_chunk_is_refused_and_discarded(target: Target) -> None:
    """Without an announced size, a done chunk ending before data already written is refused
    when the snapshot is completed; the receiver then drops everything it held."""
    data = payload(3000, seed=10)
    receiver = Receiver(target.store)
    first = request(data, 0, 1000, size=None)
    if target.needs_size:  # an S3 multipart upload needs the size up front: refused at once
        with pytest.raises(StorageError):
            await receiver.handle(first)
    else:
        await receiver.handle(first)
        for offset in (1000, 2000):
            await receiver.handle(request(data, offset, 1000, size=None))
        with pytest.raises(InvalidRequest):
            await receiver.handle(request(data, 1000, 1000, size=None, done=True))
    target.assert_exactly({})
    assert receiver.receiving == []
    assert not await target.store.exists(ID)


def invalid_final_chunk(data: bytes, chunks: Sequence[tuple[int, int]]) -> InstallSnapshotRequest:
    """The final chunk one byte short: ``done`` but not ending at the announced size."""
    offset, length = chunks[-1]
    return request(data, offset, length - 1, done=True)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_invalid_final_chunk_ends_the_transfer_and_leaves_nothing(
    target: Target, size: int
) -> None:
    data = payload(size, seed=11)
    chunks = cut(size, MiB if size > PART else 1000)
    receiver = Receiver(target.store)
    await send_chunks(receiver, data, chunks[:-1])
    if target.s3 and size > PART:
        assert len(target.uploads()) == 1  # there is an upload to clean up
    with pytest.raises(InvalidRequest):
        await receiver.handle(invalid_final_chunk(data, chunks))
    target.assert_exactly({})  # no partial data, no upload
    assert receiver.receiving == []
    assert not await target.store.exists(ID)
    await send(target.store, data, receiver=receiver)  # the sender starts over: it installs
    target.assert_exactly({ID: data})


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_corrupt_final_chunk_changes_nothing_and_is_sent_again(
    target: Target, size: int
) -> None:
    data = payload(size, seed=11)
    chunks = cut(size, MiB if size > PART else 1000)
    receiver = Receiver(target.store)
    await send_chunks(receiver, data, chunks[:-1])
    before = (target.files(), target.uploads())
    offset, length = chunks[-1]
    corrupt = request(data, offset, length, done=True, crc=chunk_crc(data[offset:]) ^ 1)
    with pytest.raises(ChecksumMismatch):
        await receiver.handle(corrupt)
    assert (target.files(), target.uploads()) == before  # refused before writing: nothing moved
    await assert_not_installed(target)
    assert receiver.receiving == [ID]
    await send_chunks(receiver, data, chunks[-1:], final=True)
    target.assert_exactly({ID: data})


VERSIONS = {"small over multi-part": (MULTI, SMALL), "multi-part over small": (SMALL, MULTI)}


@pytest.mark.parametrize("failure", ["wrong whole checksum", "invalid final chunk"])
@pytest.mark.parametrize(("old_size", "new_size"), VERSIONS.values(), ids=VERSIONS.keys())
async def test_failed_newer_version_keeps_the_installed_one(
    target: Target, old_size: int, new_size: int, failure: str
) -> None:
    old, new = payload(old_size, seed=1), payload(new_size, seed=2)
    await send(target.store, old)
    if failure == "wrong whole checksum":
        with pytest.raises(RemoteError) as info:
            await send(target.store, new, checksum=wrong_checksum(new))
        assert isinstance(info.value.source, ChecksumMismatch)
    else:
        receiver = Receiver(target.store)
        chunks = cut(new_size, MiB if new_size > PART else 1000)
        await send_chunks(receiver, new, chunks[:-1])
        with pytest.raises(InvalidRequest):
            await receiver.handle(invalid_final_chunk(new, chunks))
    target.assert_exactly({ID: old})
    assert await target.store.list() == [ID]
    assert_same_bytes(await read_installed(target.store), old)


# -- abort ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("installed", [False, True], ids=["nothing installed", "v1 installed"])
async def test_abort_removes_partial_data_and_keeps_the_installed_snapshot(
    target: Target, installed: bool
) -> None:
    old, new = payload(SMALL, seed=3), payload(MULTI, seed=4)
    if installed:
        await send(target.store, old)
    receiver = Receiver(target.store)
    await send_chunks(receiver, new, cut(2 * PART + MiB, MiB))  # two whole parts and more
    assert len(target.uploads()) == (1 if target.s3 else 0)  # S3: a multipart upload is open
    await target.store.abort(ID)
    expected = {ID: old} if installed else {}
    target.assert_exactly(expected)
    assert await target.store.exists(ID) == installed
    assert await target.store.list() == sorted(expected)
    if installed:
        assert_same_bytes(await read_installed(target.store), old)
    await send(target.store, new)  # the store takes the snapshot again afterwards
    target.assert_exactly({ID: new})


# -- superseding and replacing -------------------------------------------------------------------


async def test_another_snapshot_under_the_same_id_restarts_from_zero(target: Target) -> None:
    old, new = payload(MULTI, seed=5), payload(PART + 5, seed=6)  # a different size
    receiver = Receiver(target.store)
    await send_chunks(receiver, old, cut(2 * PART + MiB, MiB))
    old_uploads = set(target.uploads())
    with pytest.raises(SnapshotMismatch) as info:  # it cannot continue mid-way
        await receiver.handle(request(new, MiB, MiB))
    assert info.value.expect.offset == 0
    chunks = cut(len(new), MiB)
    await send_chunks(receiver, new, chunks[:1])
    assert not old_uploads & set(target.uploads()), "the old upload was aborted"
    await assert_not_installed(target)
    await send_chunks(receiver, new, chunks[1:], final=True)
    target.assert_exactly({ID: new})
    assert_same_bytes(await read_installed(target.store), new)


REPLACEMENTS = {"smaller": SMALL, "same size": PART + 100, "larger": MULTI}


@pytest.mark.parametrize("new_size", REPLACEMENTS.values(), ids=REPLACEMENTS.keys())
async def test_replacing_an_installed_snapshot(target: Target, new_size: int) -> None:
    old, new = payload(PART + 100, seed=12), payload(new_size, seed=13)
    await send(target.store, old)
    assert await target.store.list() == [ID]
    assert_same_bytes(await read_installed(target.store), old)
    await send(target.store, new)
    target.assert_exactly({ID: new})
    assert await target.store.exists(ID)
    assert await target.store.list() == [ID]
    assert_same_bytes(await read_installed(target.store), new)


# -- reading installed snapshots ----------------------------------------------------------------


async def test_list_and_open_show_only_installed_snapshots(target: Target) -> None:
    a, b, c = payload(10, seed=14), payload(SMALL, seed=15), payload(3000, seed=16)
    store = target.store
    assert await store.list() == []
    await send(store, a, snapshot_id="a")
    assert await store.list() == ["a"]
    receiver = Receiver(store)
    await send_chunks(receiver, c, cut(len(c), 1000)[:-1], snapshot_id="c")  # c: partial
    await send(store, b, snapshot_id="b")
    assert await store.list() == ["a", "b"]
    assert target.installed() == ["a", "b"]
    assert not await store.exists("c")
    with pytest.raises(StorageError) as info:
        await store.open("c")
    assert isinstance(info.value.cause, FileNotFoundError)
    assert_same_bytes(await read_installed(store, "a"), a)
    assert_same_bytes(await read_installed(store, "b"), b)
    await send_chunks(receiver, c, cut(len(c), 1000)[-1:], final=True, snapshot_id="c")
    assert await store.list() == ["a", "b", "c"]
    assert await store.exists("c")
    assert_same_bytes(await read_installed(store, "c"), c)
    target.assert_exactly({"a": a, "b": b, "c": c})


# -- gaps ----------------------------------------------------------------------------------------

GAPS = {"few KiB": (SMALL, 700, 3), "multi-part, gap in part 2": (MULTI, MiB, 6)}


@pytest.mark.parametrize(("size", "chunk_size", "missing"), GAPS.values(), ids=GAPS.keys())
async def test_gap_at_done_asks_for_the_missing_bytes(
    target: Target, size: int, chunk_size: int, missing: int
) -> None:
    data = payload(size, seed=17)
    chunks = cut(size, chunk_size)
    gap = chunks[missing][0]
    receiver = Receiver(target.store)
    await send_chunks(receiver, data, chunks[:missing] + chunks[missing + 1 : -1])
    with pytest.raises(SnapshotMismatch) as info:
        await send_chunks(receiver, data, chunks[-1:], final=True)
    resume = info.value.expect.offset
    assert resume <= gap
    assert info.value.expect.id == ID
    await assert_not_installed(target)
    assert receiver.receiving == [ID]
    await send_chunks(receiver, data, cut(size, chunk_size, start=resume), final=True)
    target.assert_exactly({ID: data})
    assert_same_bytes(await read_installed(target.store), data)


class SwallowOnce:
    """Acknowledges the chunk at `offset` once without delivering it: a receiver-side loss."""

    def __init__(self, receiver: Receiver, offset: int) -> None:
        self.inner = LoopbackNetwork(receiver)
        self.offset = offset
        self.swallowed = False
        self.rewound_to: list[int] = []

    async def install_snapshot(
        self, req: InstallSnapshotRequest, option: TransferOptions
    ) -> InstallSnapshotResponse:
        if req.offset == self.offset and not self.swallowed:
            self.swallowed = True
            return InstallSnapshotResponse(req.vote)
        try:
            return await self.inner.install_snapshot(req, option)
        except RemoteError as exc:
            if isinstance(exc.source, SnapshotMismatch):
                self.rewound_to.append(exc.source.expect.offset)
            raise


async def test_sender_fills_a_gap_found_at_done(target: Target) -> None:
    data = payload(MULTI, seed=18)
    gap = PART + 2 * MiB
    net = SwallowOnce(Receiver(target.store), gap)
    snapshot = Snapshot(SnapshotMeta(ID), io.BytesIO(data))
    options = TransferOptions(chunk_size=MiB, max_in_flight=4)
    await Chunked.send_snapshot(net, VOTE, snapshot, None, options)
    assert net.swallowed
    assert len(net.rewound_to) == 1
    assert net.rewound_to[0] <= gap
    target.assert_exactly({ID: data})
    assert_same_bytes(await read_installed(target.store), data)
