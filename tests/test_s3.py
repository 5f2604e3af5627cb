"""S3 as source and target, on a real moto server over HTTP, checked with boto3."""

from __future__ import annotations

import asyncio
import io
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
    Receiver,
    RemoteError,
    ReplicationClosed,
    Snapshot,
    SnapshotMeta,
    SnapshotMismatch,
    SnapshotSegmentId,
    StorageError,
    TransferOptions,
    Vote,
    ship,
)
from fstransport.checksum import chunk_crc
from fstransport.options import MiB
from fstransport.storage.backends.s3 import S3StreamSource, crc32c_header
from fstransport.storage.backends.s3.multipart import MultipartSink
from fstransport.storage.source import open_source
from fstransport.testing import S3Flavor
from fstransport.testing.mock import MockNetwork, deliver_to
from tests.conftest import payload
from tests.helpers import keys, object_bytes, uploads

PART = 5 * MiB


def record_sinks(store: FsspecSnapshotStore) -> list[MultipartSink]:
    """The multipart sinks `store` begins from now on, in order."""
    sinks: list[MultipartSink] = []
    original_begin = store.begin

    async def recording_begin(meta: SnapshotMeta) -> Any:
        sink = await original_begin(meta)
        assert isinstance(sink, MultipartSink)
        sinks.append(sink)
        return sink

    store.begin = recording_begin  # type: ignore[method-assign]
    return sinks


def mismatch_once(receiver: Receiver, after: int, expect: int) -> MockNetwork:
    """Delivers to `receiver`, but answers request number ``after + 1`` with a mismatch that
    sends the sender back to `expect`."""
    deliver = deliver_to(receiver, interleave=False)

    async def handler(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
        if net.calls == after + 1:
            snapshot_id = req.meta.snapshot_id
            raise RemoteError(
                SnapshotMismatch(
                    SnapshotSegmentId(snapshot_id, expect),
                    SnapshotSegmentId(snapshot_id, req.offset),
                )
            )
        return await deliver(req)

    net = MockNetwork(handler)
    return net


async def send_to_s3(
    data: bytes,
    store: FsspecSnapshotStore,
    snapshot_id: str,
    options: TransferOptions,
    network_factory: Any = None,
) -> Any:
    receiver = Receiver(store)
    net = network_factory(receiver) if network_factory else LoopbackNetwork(receiver)
    snapshot = Snapshot(SnapshotMeta(snapshot_id), io.BytesIO(data))
    await Chunked.send_snapshot(net, Vote(1, 0), snapshot, None, options)
    return net


SIZES = {
    "empty": 0,
    "below 5 MiB": 3 * MiB + 7,
    "exactly one part": PART,
    "several parts, short last": 3 * PART + 12_345,
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_memory_to_s3_sizes(
    size: int, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(size, seed=size)
    fsspec.filesystem("memory").pipe_file("/src.bin", data)
    options = TransferOptions(chunk_size=2 * MiB, max_in_flight=4)
    report = await ship(
        "memory://src.bin",
        f"s3://{s3_bucket}/snaps/s.bin",
        options=options,
        target_options=s3_storage_options,
    )
    assert object_bytes(s3_client, s3_bucket, "snaps/s.bin") == data
    assert report.size == size
    assert keys(s3_client, s3_bucket) == ["snaps/s.bin"]
    assert uploads(s3_client, s3_bucket) == []


CHUNKS = {
    "chunk below part": 1 * MiB,
    "chunk above part": 7 * MiB,
    "chunk not dividing part": 3 * MiB + 1001,
}


@pytest.mark.parametrize("chunk_size", CHUNKS.values(), ids=CHUNKS.keys())
@pytest.mark.parametrize("window", [1, 4])
async def test_chunk_sizes_independent_of_part_size(
    chunk_size: int, window: int, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(3 * PART + 999, seed=chunk_size)
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=PART, **s3_storage_options
    ) as store:
        await send_to_s3(
            data, store, "snap", TransferOptions(chunk_size=chunk_size, max_in_flight=window)
        )
        assert await store.exists("snap")
    assert object_bytes(s3_client, s3_bucket, "p/snap") == data
    etag = s3_client.head_object(Bucket=s3_bucket, Key="p/snap")["ETag"]
    assert etag.strip('"').endswith("-4"), "a multipart ETag names its part count"
    assert uploads(s3_client, s3_bucket) == []


async def test_file_to_s3_to_file_and_s3_to_s3(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(2 * 8 * MiB + 4321, seed=3)  # several default-sized parts
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    await ship(str(src), f"s3://{s3_bucket}/a.bin", target_options=s3_storage_options)
    assert object_bytes(s3_client, s3_bucket, "a.bin") == data
    await ship(
        f"s3://{s3_bucket}/a.bin",
        f"s3://{s3_bucket}/copy/b.bin",
        source_options=s3_storage_options,
        target_options=s3_storage_options,
    )
    assert object_bytes(s3_client, s3_bucket, "copy/b.bin") == data
    back = tmp_path / "back.bin"
    report = await ship(
        f"s3://{s3_bucket}/copy/b.bin", str(back), source_options=s3_storage_options
    )
    assert back.read_bytes() == data
    assert report.checksum is not None
    assert uploads(s3_client, s3_bucket) == []


async def test_s3_source_streams_with_one_get(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(3 * MiB, seed=9)
    s3_client.put_object(Bucket=s3_bucket, Key="obj", Body=data)
    source = await open_source(f"s3://{s3_bucket}/obj", **s3_storage_options)
    assert isinstance(source, S3StreamSource)
    try:
        step = 256 * 1024
        pieces = [bytes(await source.read(o, step)) for o in range(0, len(data), step)]
        assert b"".join(pieces) == data
        assert source.gets == 1
        assert bytes(await source.read(1000, 10)) == data[1000:1010]  # a rewind: one more GET
        assert bytes(await source.read(1010, 10)) == data[1010:1020]
        assert source.gets == 2
    finally:
        await source.close()


async def test_mismatch_rewind_reuploads_parts_already_sent(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(4 * PART + 100, seed=5)
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=PART, **s3_storage_options
    ) as store:
        sinks = record_sinks(store)
        chunk = MiB
        rewind_to = PART + 2 * MiB  # in the middle of part 2, after parts 1..3 were sent
        net = await send_to_s3(
            data,
            store,
            "snap",
            TransferOptions(chunk_size=chunk, max_in_flight=1),
            lambda r: mismatch_once(r, after=16, expect=rewind_to),
        )
    assert object_bytes(s3_client, s3_bucket, "p/snap") == data
    # the 17th request was told to go back to the middle of part 2; the receiver then asks for
    # part 2's first byte, so that the whole part is sent (and uploaded) again
    assert net.offsets[16:19] == [16 * MiB, rewind_to, PART]
    assert len(sinks) == 1
    # parts 2 and 3 were uploaded, then re-sent and uploaded again: 5 parts + re-uploads
    assert sinks[0].upload_calls > sinks[0].parts.part_count
    assert uploads(s3_client, s3_bucket) == []


async def test_cancelled_transfer_leaves_no_object_and_abort_clears_uploads(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(4 * PART, seed=11)
    cancel = asyncio.Event()

    def cancel_after_12(receiver: Receiver) -> MockNetwork:
        deliver = deliver_to(receiver, interleave=False)
        answered = 0

        async def handler(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
            nonlocal answered
            answer = await deliver(req)
            answered += 1
            if answered == 12:  # parts 1 and 2 are complete by now
                cancel.set()
            return answer

        return MockNetwork(handler)

    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=PART, **s3_storage_options
    ) as store:
        receiver = Receiver(store)
        snapshot = Snapshot(SnapshotMeta("snap"), io.BytesIO(data))
        options = TransferOptions(chunk_size=MiB, max_in_flight=2)
        with pytest.raises(ReplicationClosed):
            await Chunked.send_snapshot(
                cancel_after_12(receiver), Vote(1, 0), snapshot, cancel.wait(), options
            )
        # let the part uploads started before the cancel land (and be recorded); on a busy
        # machine that takes longer than any fixed sleep
        record = ["p/.fstransport/journal/snap"]
        for _ in range(200):
            if await asyncio.to_thread(keys, s3_client, s3_bucket) == record:
                break
            await asyncio.sleep(0.05)
        assert keys(s3_client, s3_bucket) == record, "no object, a record"
        assert len(uploads(s3_client, s3_bucket)) == 1, "an abandoned upload stays, for resuming"
        await store.abort("snap")
    assert uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == []


async def test_abort_clears_uploads_left_by_an_earlier_process(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="p/snap")
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="p/snap-other")
    async with FsspecSnapshotStore(f"s3://{s3_bucket}/p", **s3_storage_options) as store:
        await store.abort("snap")
    assert [u["Key"] for u in uploads(s3_client, s3_bucket)] == ["p/snap-other"]


async def test_refused_transfer_leaves_neither_object_nor_upload(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(3 * PART, seed=12)
    wrong = "crc32c:00000000"
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=PART, **s3_storage_options
    ) as store:
        receiver = Receiver(store)
        snapshot = Snapshot(SnapshotMeta("snap", checksum=wrong), io.BytesIO(data))
        with pytest.raises(RemoteError) as info:
            await Chunked.send_snapshot(
                LoopbackNetwork(receiver),
                Vote(1, 0),
                snapshot,
                None,
                TransferOptions(chunk_size=MiB),
            )
        assert isinstance(info.value.source, ChecksumMismatch)
        assert info.value.source.whole
    assert keys(s3_client, s3_bucket) == []
    assert uploads(s3_client, s3_bucket) == []


async def test_superseding_snapshot_aborts_the_old_upload(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=PART, **s3_storage_options
    ) as store:
        receiver = Receiver(store)
        old = payload(3 * PART, seed=1)
        new = payload(2 * PART + 5, seed=2)
        vote = Vote(1, 0)
        meta_old = SnapshotMeta("snap", size=len(old))
        for offset in range(0, 2 * PART, MiB):  # part 1 and 2 of the old one: uploaded
            await receiver.handle(
                InstallSnapshotRequest(vote, meta_old, offset, old[offset : offset + MiB], False)
            )
        assert len(uploads(s3_client, s3_bucket)) == 1
        snapshot = Snapshot(SnapshotMeta("snap"), io.BytesIO(new))
        await Chunked.send_snapshot(
            LoopbackNetwork(receiver), vote, snapshot, None, TransferOptions(chunk_size=MiB)
        )
    assert object_bytes(s3_client, s3_bucket, "p/snap") == new
    assert uploads(s3_client, s3_bucket) == []


async def test_s3_errors_surface_as_storage_errors(
    tmp_path: Path, s3_storage_options: dict[str, Any]
) -> None:
    with pytest.raises(StorageError) as info:
        await ship(
            "s3://no-such-bucket/x.bin", str(tmp_path / "x.bin"), source_options=s3_storage_options
        )
    assert info.value.verb == "open"
    src = tmp_path / "src.bin"
    src.write_bytes(b"data")
    with pytest.raises(StorageError):
        await ship(str(src), "s3://no-such-bucket/x.bin", target_options=s3_storage_options)


async def test_sequential_sink_on_s3_with_out_of_order_chunks(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(6 * MiB + 3, seed=21)
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", sink="sequential", **s3_storage_options
    ) as store:
        await send_to_s3(
            data, store, "seq", TransferOptions(chunk_size=512 * 1024, max_in_flight=6)
        )
    assert object_bytes(s3_client, s3_bucket, "p/seq") == data
    assert keys(s3_client, s3_bucket) == ["p/seq"]
    assert uploads(s3_client, s3_bucket) == []


async def test_invalid_request_ends_the_transfer_and_aborts_its_upload(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(3 * PART, seed=13)
    vote = Vote(1, 0)
    meta = SnapshotMeta("snap", size=len(data))
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=PART, **s3_storage_options
    ) as store:
        receiver = Receiver(store)
        for offset in range(0, 2 * PART, MiB):
            chunk = data[offset : offset + MiB]
            await receiver.handle(InstallSnapshotRequest(vote, meta, offset, chunk, False))
        assert len(uploads(s3_client, s3_bucket)) == 1
        beyond = InstallSnapshotRequest(vote, meta, len(data) - 10, b"x" * 20, False)
        with pytest.raises(InvalidRequest):
            await receiver.handle(beyond)
        assert receiver.receiving == []
    assert uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == []


async def test_bucket_gets_the_whole_objects_checksum(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, s3_flavor: S3Flavor
) -> None:
    """The multipart upload asks S3 for a full-object CRC32C, so that a server that has them
    verifies the object too; a server that ignores the request (Ceph RGW 16) is not taken to
    have verified anything, and the object is still the snapshot: our own checks pass."""
    data = payload(2 * PART + 77, seed=31)
    async with FsspecSnapshotStore(
        f"s3://{s3_bucket}/p", part_size=PART, full_object_checksum=True, **s3_storage_options
    ) as store:
        sinks = record_sinks(store)
        await send_to_s3(data, store, "snap", TransferOptions(chunk_size=MiB))
    assert object_bytes(s3_client, s3_bucket, "p/snap") == data
    head = s3_client.head_object(Bucket=s3_bucket, Key="p/snap", ChecksumMode="ENABLED")
    [sink] = sinks
    if s3_flavor.full_object_checksums:  # moto, AWS
        assert sink.full_object
        assert head.get("ChecksumCRC32C") == crc32c_header(chunk_crc(data))
        assert head.get("ChecksumType") == "FULL_OBJECT"
    else:  # Ceph RGW 16 takes ChecksumType=FULL_OBJECT without a word and keeps no checksum
        assert not sink.full_object
        assert head.get("ChecksumCRC32C") is None
        assert head.get("ChecksumType") is None
