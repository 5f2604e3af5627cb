"""RelayNetwork through a real S3 server (moto over HTTP, or FSTRANSPORT_TEST_S3_ENDPOINT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fstransport import (
    ChecksumMismatch,
    Chunked,
    FsspecSnapshotStore,
    InstallSnapshotRequest,
    LoopbackNetwork,
    Receiver,
    RelayNetwork,
    SnapshotMeta,
    StagedChunk,
    TransferOptions,
    Vote,
    cleanup_staging,
)
from fstransport.checksum import chunk_crc, format_checksum
from fstransport.storage.staging import StagingStore, chunk_name
from tests.conftest import payload
from tests.test_relay import installed, snapshot

V1 = Vote(1, 1)
V2 = Vote(2, 2)
OPTIONS = TransferOptions(chunk_size=1 << 20, max_in_flight=3)


def keys(client: Any, bucket: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix="stage/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def no_uploads(client: Any, bucket: str) -> bool:
    return not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_one_receiver_through_s3(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, tmp_path: Path
) -> None:
    data = payload(3_500_000, seed=20)
    store = FsspecSnapshotStore(str(tmp_path / "recv"))
    receiver = Receiver(store, relay_options=s3_storage_options)
    relay = RelayNetwork(LoopbackNetwork(receiver), f"s3://{s3_bucket}/stage", **s3_storage_options)
    snap = snapshot(data)
    await Chunked.send_snapshot(relay, V1, snap, option=OPTIONS)
    assert await installed(store, "snap") == data
    assert snap.data.bytes_read == len(data)  # type: ignore[attr-defined]
    assert relay.bytes_uploaded == len(data)
    assert relay.puts == 4 + 1  # four chunks (1 MiB) and the manifest, one PUT each
    assert keys(s3_client, s3_bucket) == [], "nothing stays staged after success"
    assert no_uploads(s3_client, s3_bucket)
    await receiver.close()
    await relay.close()


async def test_an_empty_snapshot_through_s3(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, tmp_path: Path
) -> None:
    """One 0-byte object staged: the receiver takes it by reference, with no GET (Ceph RGW
    refuses a GET of an empty range; the receiver used to fall back to the bytes)."""
    store = FsspecSnapshotStore(str(tmp_path / "recv"))
    receiver = Receiver(store, relay_options=s3_storage_options)
    recording: list[InstallSnapshotRequest] = []

    class Recorded(LoopbackNetwork):
        async def install_snapshot(self, req: Any, option: Any) -> Any:
            recording.append(req)
            return await super().install_snapshot(req, option)

    relay = RelayNetwork(Recorded(receiver), f"s3://{s3_bucket}/stage", **s3_storage_options)
    await Chunked.send_snapshot(relay, V1, snapshot(b""), option=OPTIONS)
    assert await installed(store, "snap") == b""
    assert [r.staged is not None for r in recording] == [True], "one reference, no fallback"
    assert keys(s3_client, s3_bucket) == []
    await receiver.close()
    await relay.close()


async def test_three_receivers_through_s3_upload_once(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, tmp_path: Path
) -> None:
    data = payload(2_500_000, seed=21)
    snap = snapshot(data, checksum=True)
    receivers = [
        Receiver(FsspecSnapshotStore(str(tmp_path / f"r{i}")), relay_options=s3_storage_options)
        for i in range(3)
    ]
    relay = RelayNetwork(
        LoopbackNetwork(receivers[0]),
        f"s3://{s3_bucket}/stage",
        keep_for=3600,
        **s3_storage_options,
    )
    for i, receiver in enumerate(receivers):
        net = relay if i == 0 else relay.to(LoopbackNetwork(receiver))
        await Chunked.send_snapshot(net, V1, snap, option=OPTIONS)
        assert await installed(receiver.store, "snap") == data  # type: ignore[arg-type]
        if i == 0:
            staged = keys(s3_client, s3_bucket)
    assert snap.data.bytes_read == len(data), "the source is read once"  # type: ignore[attr-defined]
    assert relay.bytes_uploaded == len(data)
    assert relay.puts == 3 + 1
    assert keys(s3_client, s3_bucket) == staged, "later receivers reuse the staged objects"
    chunk_key = next(k for k in staged if "/chunks/" in k)
    head = s3_client.head_object(Bucket=s3_bucket, Key=chunk_key)
    assert head["Metadata"]["fstransport-crc32c"] == chunk_key.rsplit("/", 1)[1].split("-")[2]
    await relay.close()
    assert keys(s3_client, s3_bucket) == []
    assert no_uploads(s3_client, s3_bucket)
    for receiver in receivers:
        await receiver.close()


async def test_objects_carry_their_crc32c(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(70_000, seed=22)
    crc = chunk_crc(data)
    stage = StagingStore(f"s3://{s3_bucket}/stage", s3_storage_options)
    url = f"s3://{s3_bucket}/stage/snap/v1-1-0/n/chunks/{chunk_name(0, len(data), crc)}"
    assert await stage.put_once(url, data, crc)
    key = url.split(f"{s3_bucket}/", 1)[1]
    head = s3_client.head_object(Bucket=s3_bucket, Key=key)
    assert head["Metadata"]["fstransport-crc32c"] == f"{crc:08x}"
    assert f"-{crc:08x}" in key
    await stage.close()


async def test_a_conditional_put_never_replaces_an_object(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    stage = StagingStore(f"s3://{s3_bucket}/stage", s3_storage_options)
    url = f"s3://{s3_bucket}/stage/snap/v1-1-0/n/chunks/{chunk_name(0, 5, 1)}"
    assert await stage.put_once(url, b"first", 1)
    assert not await stage.put_once(url, b"other", 2), "the second writer is told, not obeyed"
    body = s3_client.get_object(Bucket=s3_bucket, Key=url.split(f"{s3_bucket}/", 1)[1])["Body"]
    assert body.read() == b"first"
    assert stage.puts == 1
    await stage.close()


async def test_an_object_altered_in_the_bucket_is_refused(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, tmp_path: Path
) -> None:
    data = payload(200_000, seed=23)
    crc = chunk_crc(data)
    area = f"s3://{s3_bucket}/stage/snap/v1-1-0/n"
    ref = StagedChunk(area, chunk_name(0, len(data), crc), len(data), crc)
    s3_client.put_object(
        Bucket=s3_bucket, Key=ref.url.split(f"{s3_bucket}/", 1)[1], Body=data[:-7] + b"altered"
    )
    store = FsspecSnapshotStore(str(tmp_path / "recv"))
    receiver = Receiver(store, relay_options=s3_storage_options)
    meta = SnapshotMeta("snap", size=len(data), checksum=format_checksum(crc))
    with pytest.raises(ChecksumMismatch):
        await receiver.handle(InstallSnapshotRequest(V1, meta, 0, b"", True, crc, ref))
    assert await installed(store, "snap") is None
    await receiver.close()


async def test_two_senders_with_different_votes_on_s3(
    s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any, tmp_path: Path
) -> None:
    old, new = payload(1_500_000, seed=24), payload(1_500_000, seed=25)
    stage = f"s3://{s3_bucket}/stage"
    r1 = Receiver(FsspecSnapshotStore(str(tmp_path / "a")), relay_options=s3_storage_options)
    r2 = Receiver(FsspecSnapshotStore(str(tmp_path / "b")), relay_options=s3_storage_options)
    relay1 = RelayNetwork(LoopbackNetwork(r1), stage, keep_for=60, **s3_storage_options)
    relay2 = RelayNetwork(LoopbackNetwork(r2), stage, keep_for=60, **s3_storage_options)
    await Chunked.send_snapshot(relay1, V1, snapshot(old), option=OPTIONS)
    first = keys(s3_client, s3_bucket)
    await Chunked.send_snapshot(relay2, V2, snapshot(new), option=OPTIONS)
    assert set(first) <= set(keys(s3_client, s3_bucket))
    assert len(keys(s3_client, s3_bucket)) == 2 * len(first)
    for key in first:
        if "/chunks/" in key:
            offset, length = (int(x, 16) for x in key.rsplit("/", 1)[1].split("-")[:2])
            got = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
            assert got[:length] == old[offset : offset + length]  # (its block map follows)
    assert await installed(r1.store, "snap") == old  # type: ignore[arg-type]
    assert await installed(r2.store, "snap") == new  # type: ignore[arg-type]
    assert await cleanup_staging(stage, 3600, **s3_storage_options) == [], "both are live"
    await relay1.close()
    await relay2.close()
    assert keys(s3_client, s3_bucket) == []
    for receiver in (r1, r2):
        await receiver.close()


async def test_a_staged_object_is_fetched_by_ranges_from_s3(
    s3_bucket: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fstransport.storage import staging

    monkeypatch.setattr(staging, "FETCH_PART", 256 << 10)
    data = payload(1_100_000, seed=26)
    crc = chunk_crc(data)
    stage = StagingStore(f"s3://{s3_bucket}/stage", s3_storage_options)
    ref = StagedChunk(
        f"s3://{s3_bucket}/stage/snap/v1-1-0/n", chunk_name(0, len(data), crc), len(data), crc
    )
    assert await stage.put_once(ref.url, data, crc)
    fs = await stage.fs()
    ranges: list[tuple[int, int]] = []
    cat_file = fs._cat_file

    async def counting(path: str, start: int, end: int) -> bytes:
        ranges.append((start, end))
        return bytes(await cat_file(path, start=start, end=end))

    monkeypatch.setattr(fs, "_cat_file", counting)
    assert bytes(await stage.fetch(ref)) == data
    assert sorted(ranges) == [
        (s, min(s + (256 << 10), len(data))) for s in range(0, len(data), 256 << 10)
    ]
    await stage.close()
