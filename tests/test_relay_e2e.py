"""Fan-out and the relay end to end: real ``fstransport serve`` processes on 127.0.0.1, the
``fstransport ship`` command in a process of its own (several DSTs, repeated --via, --relay,
--relay-keep-for), ``fstransport cleanup --staging``, and an S3 staging bucket (moto or
FSTRANSPORT_TEST_S3_ENDPOINT) fetched by a server given --relay-endpoint-url."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from fstransport import TransferOptions, ship
from fstransport.http.client import HttpNetwork
from fstransport.testing import S3TestServer
from tests.conftest import payload
from tests.test_http_e2e import EXE, SHIP_TIMEOUT, StartServer, clean_environ, run_cli, serve

__all__ = ["serve"]  # the fixture, used by name below

OPTIONS = TransferOptions(chunk_size=256 << 10, max_in_flight=3)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def shipped(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def test_cli_ships_to_two_servers_through_a_relay_and_leaves_nothing(
    serve: StartServer, tmp_path: Path
) -> None:
    data = payload(2_000_000, seed=51)
    (tmp_path / "snap.bin").write_bytes(data)
    stage = tmp_path / "stage"
    stage.mkdir()
    roots = [tmp_path / "r1", tmp_path / "r2"]
    servers = [serve(str(r), "--no-auth", "--relay-prefix", str(stage)) for r in roots]
    result = run_cli(
        "ship",
        str(tmp_path / "snap.bin"),
        "snap.bin",
        "--via",
        servers[0].url,
        "--via",
        servers[1].url,
        "--relay",
        str(stage),
        "--chunk-size",
        "256KiB",
        "--json",
    )
    report = shipped(result)
    for root in roots:
        assert (root / "snap.bin").read_bytes() == data
    assert report["bytes_read"] == len(data), "the source is read once"
    assert report["bytes_uploaded"] == len(data), "uploaded once for two servers"
    assert [t["target"] for t in report["targets"]] == ["snap.bin", "snap.bin"]
    assert files(stage) == [], "nothing stays staged after success"


async def test_cli_ships_to_two_servers_directly_reading_the_source_once(
    serve: StartServer, tmp_path: Path
) -> None:
    data = payload(1_500_000, seed=52)
    (tmp_path / "snap.bin").write_bytes(data)
    roots = [tmp_path / "r1", tmp_path / "r2"]
    servers = [serve(str(r), "--no-auth") for r in roots]
    report = shipped(
        run_cli(
            "ship",
            str(tmp_path / "snap.bin"),
            "a.bin",
            "b.bin",
            "--via",
            servers[0].url,
            "--via",
            servers[1].url,
            "--json",
        )
    )
    assert (roots[0] / "a.bin").read_bytes() == data
    assert (roots[1] / "b.bin").read_bytes() == data
    assert report["bytes_read"] == len(data)
    assert report["bytes_uploaded"] == 0


async def test_a_receiver_joining_later_in_another_process_uploads_nothing(
    serve: StartServer, tmp_path: Path
) -> None:
    data = payload(1_200_000, seed=53)
    (tmp_path / "snap.bin").write_bytes(data)
    stage = tmp_path / "stage"
    stage.mkdir()
    first, later = (
        serve(str(tmp_path / r), "--no-auth", "--relay-prefix", str(stage)) for r in ("r1", "r2")
    )
    common = ("--relay", str(stage), "--relay-keep-for", "10m", "--chunk-size", "256KiB", "--json")
    one = shipped(
        run_cli("ship", str(tmp_path / "snap.bin"), "snap.bin", "--via", first.url, *common)
    )
    assert one["bytes_uploaded"] == len(data)
    kept = files(stage)
    assert any(k.endswith("manifest.json") for k in kept)
    two = shipped(
        run_cli("ship", str(tmp_path / "snap.bin"), "snap.bin", "--via", later.url, *common)
    )
    assert two["bytes_uploaded"] == 0, "the later process reuses what is staged"
    assert (tmp_path / "r2" / "snap.bin").read_bytes() == data
    # a live manifest is never cleaned up, however old its objects are
    live = run_cli("cleanup", "--staging", str(stage), "--older-than", "0", "--json")
    assert live.returncode == 0, live.stderr
    assert json.loads(live.stdout)["removed"] == []
    assert files(stage) == kept


def test_a_sender_killed_mid_stage_installs_nothing_and_the_next_ship_succeeds(
    serve: StartServer, tmp_path: Path
) -> None:
    data = payload(3_000_000, seed=54)
    (tmp_path / "snap.bin").write_bytes(data)
    stage = tmp_path / "stage"
    stage.mkdir()
    root = tmp_path / "r1"
    server = serve(str(root), "--no-auth", "--relay-prefix", str(stage))
    assert EXE is not None
    argv = [
        EXE,
        "ship",
        str(tmp_path / "snap.bin"),
        "snap.bin",
        "--via",
        server.url,
        "--relay",
        str(stage),
        "--chunk-size",
        "64KiB",
        "--quiet",
    ]
    slow = subprocess.Popen([*argv, "--bwlimit", "512KiB"], env=clean_environ())
    try:
        deadline = time.monotonic() + SHIP_TIMEOUT
        while len(files(stage)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        slow.kill()
    finally:
        slow.wait(timeout=30)
    assert len(files(stage)) >= 3, "the sender staged chunks before it was killed"
    assert not any(f.endswith("manifest.json") for f in files(stage)), "killed before commit"
    assert not (root / "snap.bin").exists(), "nothing installed without a manifest"
    again = subprocess.run(argv, env=clean_environ(), timeout=SHIP_TIMEOUT, check=False)
    assert again.returncode == 0
    assert (root / "snap.bin").read_bytes() == data
    cleaned = run_cli("cleanup", "--staging", str(stage), "--older-than", "0")
    assert cleaned.returncode == 0, cleaned.stderr
    assert files(stage) == [], "the killed sender's area is removed by cleanup --staging"


async def test_servers_fetch_from_an_s3_relay(
    serve: StartServer,
    tmp_path: Path,
    s3_server: S3TestServer,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_client: Any,
) -> None:
    data = payload(3_000_000, seed=55)
    (tmp_path / "snap.bin").write_bytes(data)
    stage = f"s3://{s3_bucket}/stage"
    args = ("--no-auth", "--relay-endpoint-url", s3_server.endpoint_url, "--relay-prefix", stage)
    servers = [serve(str(tmp_path / f"r{i}"), *args, env=s3_server.env) for i in range(3)]
    nets = [HttpNetwork(s.url) for s in servers]
    try:
        report = await ship(
            str(tmp_path / "snap.bin"),
            ["snap.bin"] * 3,
            network=nets,
            options=OPTIONS,
            relay=stage,
            relay_options=s3_storage_options,
        )
    finally:
        for net in nets:
            await net.close()
    for i in range(3):
        assert (tmp_path / f"r{i}" / "snap.bin").read_bytes() == data
    assert report.bytes_uploaded == len(data)
    assert report.bytes_read == len(data)
    listing = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="stage/")
    assert listing.get("Contents", []) == [], "no staged object left"
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
