"""What a ship() to S3 costs in requests and copies, on a real moto server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiobotocore.client
import pytest

from fstransport import FsspecSnapshotStore, TransferOptions, ship
from fstransport.options import MiB
from fstransport.protocol.parts import PartAssembler
from tests.conftest import payload
from tests.helpers import object_bytes


@pytest.fixture
def s3_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the S3 operations this process's aiobotocore clients make."""
    calls: list[str] = []
    real = aiobotocore.client.AioBaseClient._make_api_call

    async def recording(self: Any, operation: str, params: Any) -> Any:
        calls.append(operation)
        return await real(self, operation, params)

    monkeypatch.setattr(aiobotocore.client.AioBaseClient, "_make_api_call", recording)
    return calls


@pytest.fixture
def assemblers(monkeypatch: pytest.MonkeyPatch) -> list[PartAssembler]:
    """Every `PartAssembler` created while the test runs."""
    made: list[PartAssembler] = []
    real = PartAssembler.__init__

    def recording(self: PartAssembler, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(PartAssembler, "__init__", recording)
    return made


def all_keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


async def test_a_local_file_goes_up_without_copying_parts(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    assemblers: list[PartAssembler],
) -> None:
    data = payload(3 * 8 * MiB + 1234, seed=11)  # default chunks = default parts, short last
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    await ship(str(source), f"s3://{s3_bucket}/snap.bin", target_options=s3_storage_options)
    assert object_bytes(s3_client, s3_bucket, "snap.bin") == data
    (assembler,) = assemblers
    assert assembler.part_count == 4
    assert assembler.copied_parts == 0  # every part was the source's chunk itself
    assert all_keys(s3_client, s3_bucket) == ["snap.bin"]  # the upload state is gone too


async def test_s3_to_s3_goes_without_copying_parts(
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    assemblers: list[PartAssembler],
) -> None:
    """The S3 source's chunks are `HandedOver` buffers: the target's parts are those chunks."""
    data = payload(2 * 8 * MiB + 99, seed=14)
    s3_client.put_object(Bucket=s3_bucket, Key="from.bin", Body=data)
    await ship(
        f"s3://{s3_bucket}/from.bin",
        f"s3://{s3_bucket}/to.bin",
        source_options=s3_storage_options,
        target_options=s3_storage_options,
    )
    assert object_bytes(s3_client, s3_bucket, "to.bin") == data
    (assembler,) = assemblers
    assert assembler.part_count == 3
    assert assembler.copied_parts == 0


async def test_a_small_ship_looks_for_earlier_state_once(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    s3_calls: list[str],
) -> None:
    data = payload(MiB, seed=12)
    source = tmp_path / "small.bin"
    source.write_bytes(data)
    s3_calls.clear()
    await ship(str(source), f"s3://{s3_bucket}/small.bin", target_options=s3_storage_options)
    assert object_bytes(s3_client, s3_bucket, "small.bin") == data
    lookups = [c for c in s3_calls if c in ("HeadObject", "GetObject", "ListObjectsV2")]
    assert len(lookups) == 1, s3_calls  # has_partial, resume and begin share one look
    assert "DeleteObject" not in s3_calls, s3_calls  # no state was written, none is removed
    assert s3_calls.count("PutObject") == 1, s3_calls


async def test_a_later_ship_still_discards_what_an_earlier_one_left(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
) -> None:
    """A state recorded by an earlier (killed) transfer of other data is found, its upload
    aborted, and the new data uploaded; nothing of the earlier one stays."""
    state_key = ".fstransport/journal/snap.bin"
    upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="snap.bin")
    s3_client.put_object(
        Bucket=s3_bucket,
        Key=state_key,
        Body=(
            b'{"identity": "other", "checksum": null, "upload_id": "'
            + upload["UploadId"].encode()
            + b'", "part_size": 8388608, "parts": {}}'
        ),
    )
    data = payload(2 * 8 * MiB, seed=13)
    source = tmp_path / "snap.bin"
    source.write_bytes(data)
    await ship(str(source), f"s3://{s3_bucket}/snap.bin", target_options=s3_storage_options)
    assert object_bytes(s3_client, s3_bucket, "snap.bin") == data
    assert all_keys(s3_client, s3_bucket) == ["snap.bin"]
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


async def test_ship_passes_store_options_to_its_store(
    tmp_path: Path,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
    assemblers: list[PartAssembler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stores: list[FsspecSnapshotStore] = []
    real = FsspecSnapshotStore.__init__

    def recording(self: FsspecSnapshotStore, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        stores.append(self)

    monkeypatch.setattr(FsspecSnapshotStore, "__init__", recording)
    data = payload(2 * 6 * MiB + 5, seed=15)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    await ship(
        str(src),
        f"s3://{s3_bucket}/tuned.bin",
        target_options=s3_storage_options,
        store_options={"part_size": 6 * MiB, "upload_concurrency": 2},
        options=TransferOptions(chunk_size=6 * MiB),
    )
    assert object_bytes(s3_client, s3_bucket, "tuned.bin") == data
    (assembler,) = assemblers
    assert (assembler.part_size, assembler.part_count) == (6 * MiB, 3)
    (store,) = stores
    assert store.upload_concurrency == 2
