"""``fstransport cleanup`` through the installed command: what it removes or would, what it
kept for being younger than --older-than, and a ROOT that does not exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fstransport.testing import S3TestServer
from tests.test_cli import assert_one_error_line, run


def leftover(root: Path) -> Path:
    partial = root / ".fstransport" / "partial" / "x.bin"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half")
    return partial


def test_fresh_leftovers_are_kept_and_counted(tmp_path: Path) -> None:
    partial = leftover(tmp_path)
    result = run("cleanup", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "0 abandoned partial transfer item(s) removed" in result.stdout
    assert "1 kept, younger than --older-than 1d" in result.stdout
    assert partial.exists()


def test_dry_run_lists_and_keeps(tmp_path: Path) -> None:
    partial = leftover(tmp_path)
    result = run("cleanup", str(tmp_path), "--older-than", "0", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would remove file://{partial}" in result.stdout
    assert "(dry run: nothing removed)" in result.stdout
    assert partial.exists()
    report = json.loads(run("cleanup", str(tmp_path), "--older-than", "0", "--json").stdout)
    assert report["removed"] == [f"file://{partial}"]
    assert report["kept"] == 0
    assert not partial.exists()


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    result = run("cleanup", str(tmp_path / "typo"))
    assert result.returncode == 1
    assert_one_error_line(result, f"ROOT {tmp_path}/typo does not exist")


def test_s3_dry_run_lists_an_abandoned_upload_and_keeps_it(
    s3_server: S3TestServer, s3_bucket: str, s3_client: Any
) -> None:
    upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="snaps/x.bin")["UploadId"]
    args = (
        "cleanup",
        f"s3://{s3_bucket}/snaps",
        "--older-than",
        "0",
        "--endpoint-url",
        s3_server.endpoint_url,
    )
    dry = run(*args, "--dry-run", env=s3_server.env)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove s3://{s3_bucket}/snaps/x.bin (upload {upload})" in dry.stdout
    assert len(s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])) == 1
    real = run(*args, env=s3_server.env)
    assert real.returncode == 0, real.stderr
    assert f"removed s3://{s3_bucket}/snaps/x.bin (upload {upload})" in real.stdout
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
