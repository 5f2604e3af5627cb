"""Directory snapshots through a real ``fstransport serve`` process (HTTP on 127.0.0.1): the
server accepts ``kind: tree``, verifies, unpacks and installs it like the in-process receiver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import fsspec
import pytest

from fstransport import RemoteError, TransferOptions, UnsupportedEntry
from fstransport.http.client import HttpNetwork
from fstransport.options import KiB
from fstransport.testing import S3TestServer
from fstransport.transfer import ship
from tests.test_directories import TREE_DIRS, local_tree, make_tree, object_tree, thousand_files
from tests.test_http_e2e import SHIP_TIMEOUT, TOKEN, StartServer, serve

__all__ = ["serve"]  # the fixture, used by name below


async def test_tree_to_a_local_server_process(serve: StartServer, tmp_path: Path) -> None:
    root = tmp_path / "received"
    root.mkdir()
    server = serve(str(root), "--token", TOKEN)
    src = tmp_path / "src"
    files = make_tree(src)
    files.update({f"many/{k}": v for k, v in thousand_files(src / "many").items()})
    options = TransferOptions(chunk_size=64 * KiB, max_in_flight=4)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        report = await asyncio.wait_for(
            ship(str(src), "snap", network=net, options=options), SHIP_TIMEOUT
        )
        dirs, got = local_tree(root / "snap")
        assert got == files
        assert dirs >= TREE_DIRS
        assert report.files == len(files)

        # a second version replaces the first whole
        (src / "top.bin").unlink()
        del files["top.bin"]
        await asyncio.wait_for(ship(str(src), "snap", network=net, options=options), SHIP_TIMEOUT)
    assert local_tree(root / "snap")[1] == files
    assert sorted(p.name for p in root.iterdir()) in (["snap"], [".fstransport", "snap"])
    assert not [p for p in (root / ".fstransport").rglob("*") if p.is_file()]


async def test_hostile_tree_to_a_server_process_is_a_400(
    serve: StartServer, tmp_path: Path
) -> None:
    from fstransport import InvalidRequest
    from tests.test_directories import HOSTILE, send_packed_via

    root = tmp_path / "received"
    root.mkdir()
    server = serve(str(root), "--token", TOKEN)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        with pytest.raises(RemoteError) as caught:
            await asyncio.wait_for(send_packed_via(net, HOSTILE["dotdot"]), SHIP_TIMEOUT)
    assert isinstance(caught.value.source, InvalidRequest)
    assert not (tmp_path / "escape.txt").exists()
    assert not (root / "snap").exists()
    assert "Traceback" not in server.stderr()


async def test_refused_source_sends_nothing_to_the_server(
    serve: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    root.mkdir()
    server = serve(str(root), "--token", TOKEN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "link").symlink_to("/etc/passwd")
    async with HttpNetwork(server.url, token=TOKEN) as net:
        with pytest.raises(UnsupportedEntry):
            await ship(str(src), "snap", network=net)
    assert list(root.iterdir()) == []


@pytest.mark.s3
async def test_tree_to_an_s3_server_process(
    serve: StartServer,
    tmp_path: Path,
    s3_server: S3TestServer,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
) -> None:
    server = serve(
        f"s3://{s3_bucket}/received",
        "--endpoint-url",
        s3_server.endpoint_url,
        "--token",
        TOKEN,
        env=s3_server.env,
    )
    src = tmp_path / "src"
    files = make_tree(src)
    async with HttpNetwork(server.url, token=TOKEN) as net:
        await asyncio.wait_for(ship(str(src), "snap", network=net), SHIP_TIMEOUT)
    fs = fsspec.filesystem("s3", **s3_storage_options)
    dirs, got, _ = object_tree(fs, f"{s3_bucket}/received/snap")
    assert (dirs, got) == (TREE_DIRS, files)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert all(k.startswith("received/snap/") for k in keys), keys
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
