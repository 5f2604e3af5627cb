"""``fstransport ship SRC DST [DST ...]``, ``--via`` repeated, ``--relay``: several DSTs in one
process, the report, dry runs, and the flags that do not go together (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fstransport.cli.errors import UsageError
from fstransport.cli.ship_many import pair_targets
from tests.conftest import payload
from tests.test_cli import run


def test_several_dsts_in_one_process_through_a_local_relay(tmp_path: Path) -> None:
    data = payload(900_000, seed=90)
    (tmp_path / "snap.bin").write_bytes(data)
    stage = tmp_path / "stage"
    dsts = [str(tmp_path / "a") + "/", str(tmp_path / "b" / "copy.bin")]
    result = run(
        "ship",
        str(tmp_path / "snap.bin"),
        *dsts,
        "--relay",
        str(stage),
        "--relay-stage-ahead",
        "3",
        "--chunk-size",
        "128KiB",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (tmp_path / "a" / "snap.bin").read_bytes() == data
    assert (tmp_path / "b" / "copy.bin").read_bytes() == data
    assert report["bytes_read"] == len(data)
    assert [t["target"] for t in report["targets"]] == [
        str(tmp_path / "a" / "snap.bin"),
        str(tmp_path / "b" / "copy.bin"),
    ]
    assert not any(p.is_file() for p in stage.rglob("*")), "nothing left staged"


def test_the_text_report_names_every_dst(tmp_path: Path) -> None:
    (tmp_path / "snap.bin").write_bytes(payload(100_000, seed=91))
    result = run(
        "ship", str(tmp_path / "snap.bin"), str(tmp_path / "x") + "/", str(tmp_path / "y") + "/"
    )
    assert result.returncode == 0, result.stderr
    assert f"-> {tmp_path / 'x' / 'snap.bin'}" in result.stdout
    assert f"-> {tmp_path / 'y' / 'snap.bin'}" in result.stdout
    assert "read" in result.stdout


def test_a_dry_run_with_several_dsts_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "snap.bin").write_bytes(b"x" * 1000)
    result = run(
        "ship",
        str(tmp_path / "snap.bin"),
        str(tmp_path / "p") + "/",
        str(tmp_path / "q.bin"),
        "--dry-run",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["targets"] == [str(tmp_path / "p" / "snap.bin"), str(tmp_path / "q.bin")]
    assert not (tmp_path / "q.bin").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["a.bin", "b.bin", "--via", "http://h:1", "--via", "http://h:2", "--via", "http://h:3"],
            "one --via per DST",
        ),
        (["a.bin", "-"], "standard streams"),
        (["a.bin", "--relay-keep-for", "10m"], "--relay-keep-for"),
        (["a.bin", "--relay-stage-ahead", "2"], "--relay-stage-ahead is for --relay"),
        (["a.bin", "--relay-block-maps"], "--relay-block-maps is for --relay"),
        (["a.bin", "--relay", "stage", "--relay-stage-ahead", "-1"], "must be 0 or more"),
        (["a.bin", "--relay", "stage", "--relay-stage-ahead", "x"], "--relay-stage-ahead"),
        (["a.bin", "b.bin", "--ignore-existing"], "--ignore-existing"),
        (["a.bin", "--relay", "s3://"], "names no bucket"),
    ],
)
def test_flags_that_do_not_go_together(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "snap.bin").write_bytes(b"x" * 10)
    result = run("ship", str(tmp_path / "snap.bin"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_pairs_of_dsts_and_servers() -> None:
    assert pair_targets(["a", "b"], []) == [("a", None), ("b", None)]
    assert pair_targets(["a"], ["u", "v"]) == [("a", "u"), ("a", "v")]
    assert pair_targets(["a", "b"], ["u", "v"]) == [("a", "u"), ("b", "v")]
    with pytest.raises(UsageError):
        pair_targets(["a", "b"], ["u", "v", "w"])
    with pytest.raises(UsageError, match="twice"):
        pair_targets(["a"], ["u", "u"])


def test_relay_block_maps_let_a_dst_holding_a_base_fetch_only_what_it_lacks(
    tmp_path: Path,
) -> None:
    base = bytearray(payload(1_000_000, seed=92))
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "snap.bin").write_bytes(base)
    base[200_000:204_096] = bytes(4096)
    (tmp_path / "snap.bin").write_bytes(base)
    args = ["ship", str(tmp_path / "snap.bin"), str(tmp_path / "dst") + "/"]
    relay = ["--relay", str(tmp_path / "stage"), "--chunk-size", "128KiB", "--json"]
    result = run(*args, *relay, "--relay-block-maps")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (tmp_path / "dst" / "snap.bin").read_bytes() == base
    assert report["bytes_fetched"] < 100_000, "one changed page and the maps"
    assert report["bytes_reused"] > 900_000
