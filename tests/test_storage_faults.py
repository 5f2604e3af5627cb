"""A flaky bucket: transient S3 failures are retried per policy, or surface as StorageError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fstransport import RetryPolicy, StorageError, TransferOptions, ship
from fstransport.options import MiB
from fstransport.storage.faults import flaky_s3
from tests.conftest import payload

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, max_attempts=12)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_flaky_bucket_both_directions_exact_bytes(
    seed: int, tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    data = payload(18 * MiB + 7, seed=seed)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    options = TransferOptions(chunk_size=2 * MiB, max_in_flight=4, retry=FAST)
    url = f"s3://{s3_bucket}/flaky.bin"
    with flaky_s3(0.25, seed=seed) as faults:
        await ship(str(src), url, options=options, target_options=s3_storage_options)
        back = tmp_path / "back.bin"
        await ship(url, str(back), options=options, source_options=s3_storage_options)
    assert faults.total > 0, "the test must actually inject faults"
    assert s3_client.get_object(Bucket=s3_bucket, Key="flaky.bin")["Body"].read() == data
    assert back.read_bytes() == data
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


async def test_a_bucket_that_keeps_failing_surfaces_as_storage_error(
    tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any], s3_client: Any
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="obj", Body=b"x" * 1000)
    options = TransferOptions(
        retry=RetryPolicy(initial_backoff=0.001, max_backoff=0.002, max_attempts=3)
    )
    with (
        flaky_s3(1.0, operations=frozenset({"get_object"})) as faults,
        pytest.raises(StorageError) as info,
    ):
        await ship(
            f"s3://{s3_bucket}/obj",
            str(tmp_path / "x"),
            options=options,
            source_options=s3_storage_options,
        )
    assert info.value.verb == "read"
    assert info.value.subject == f"s3://{s3_bucket}/obj"
    assert faults.injected["get_object"] >= 3
    assert not (tmp_path / "x").exists()
