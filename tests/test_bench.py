"""`fstransport bench`: the sweep, its checks, its report, JSON and plot, and the command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fstransport.bench import (
    BenchCell,
    BenchError,
    BenchPlan,
    BenchResult,
    plot_result,
    run_bench,
    write_json,
)
from fstransport.bench.sweep import _check
from fstransport.errors import ConfigurationError
from fstransport.testing import S3TestServer
from fstransport.transfer import TransferReport

KiB = 1024
MiB = 1024 * KiB
EXE = shutil.which("fstransport", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "tape"}, "source must be one of"),
        ({"target": "cloud"}, "target must be one of"),
        ({"size": 0}, "size must be > 0"),
        ({"chunk_sizes": ()}, "at least one chunk size"),
        ({"windows": ()}, "at least one chunk size and one window"),
        ({"chunk_sizes": (0,)}, "chunk_size must be >= 1"),
        ({"windows": (0,)}, "max_in_flight"),
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"latency": -0.01}, "latency must be >= 0"),
        ({"latency": float("nan")}, "latency must be >= 0"),
        ({"bandwidth": 0.0}, "bandwidth must be > 0"),
        ({"target": "s3", "endpoint_url": "http://127.0.0.1:1"}, "needs a bucket"),
        ({"bucket": "b"}, "apply to an s3 source or target"),
    ],
)
def test_plan_refuses_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BenchPlan(**kwargs)


def test_cells_keep_one_single_chunk_setting() -> None:
    plan = BenchPlan(size=4 * MiB, chunk_sizes=(64 * KiB, 4 * MiB, 8 * MiB), windows=(4, 1))
    assert plan.cells() == [(64 * KiB, 1), (64 * KiB, 4), (4 * MiB, 1)]


def test_default_sizes_and_link_bound() -> None:
    assert BenchPlan().snapshot_size == 64 * MiB
    plan = BenchPlan(latency=0.01, bandwidth=125e6)
    assert plan.snapshot_size == 32 * MiB
    assert plan.bound_seconds() == pytest.approx(32 * MiB / 125e6 + 0.01)
    assert BenchPlan(latency=0.01).bound_seconds() is None


def test_a_wrong_copy_does_not_count() -> None:
    report = TransferReport("a", "b", 10, 10, 1, 0, 0, 0, 0.1, "crc32c:00000000")
    _check(report, 10, "crc32c:00000000")
    with pytest.raises(BenchError, match="came out wrong"):
        _check(report, 10, "crc32c:12345678")
    with pytest.raises(BenchError, match="came out wrong"):
        _check(report, 11, "crc32c:00000000")


def _result(throughputs: dict[tuple[int, int], float]) -> BenchResult:
    cells = []
    for (chunk, window), rate in throughputs.items():
        cells.append(BenchCell(chunk, window, 64 * MiB, seconds=[64 * MiB / rate]))
    return BenchResult(BenchPlan(), cells, 1.0, {})


def test_best_and_lightest_setting() -> None:
    result = _result({(1 * MiB, 1): 100 * MiB, (1 * MiB, 8): 950 * MiB, (8 * MiB, 4): 1000 * MiB})
    assert (result.best().chunk_size, result.best().window) == (8 * MiB, 4)
    light = result.lightest()  # 8 MiB in flight at 95 % of the best, against 32 MiB
    assert (light.chunk_size, light.window) == (1 * MiB, 8)
    table = result.table()
    assert "best: --chunk-size 8MiB --window 4 (1,000.0 MiB/s)" in table
    assert "lightest within 10% of it: --chunk-size 1MiB --window 8" in table


async def test_sweep_memory_to_memory() -> None:
    plan = BenchPlan(size=1 * MiB, chunk_sizes=(64 * KiB, 256 * KiB), windows=(1, 4), rounds=2)
    seen: list[tuple[int, int]] = []
    result = await run_bench(plan, lambda done, total, cell, s: seen.append((done, total)))
    assert seen == [(n, 8) for n in range(1, 9)]
    assert [(c.chunk_size, c.window) for c in result.cells] == plan.cells()
    for cell in result.cells:
        assert len(cell.seconds) == 2
        assert all(s > 0 for s in cell.seconds)
        assert cell.chunks_per_second == pytest.approx(
            (MiB // cell.chunk_size) / cell.median_seconds
        )
    assert result.best().throughput == max(c.throughput for c in result.cells)
    document = json.loads(json.dumps(result.to_dict()))
    assert len(document["cells"]) == 4
    assert document["plan"]["snapshot_size"] == MiB
    if sys.platform == "linux":
        # the copy itself lands in memory://, so every copy adds at least its size
        assert all(c.memory is not None and c.memory >= MiB for c in result.cells)


async def test_sweep_local_files_leaves_nothing(tmp_path: Path) -> None:
    plan = BenchPlan(
        source="file",
        target="file",
        size=300 * KiB,
        chunk_sizes=(64 * KiB, 1 * MiB),
        windows=(2,),
        directory=str(tmp_path),
    )
    result = await run_bench(plan)
    assert [(c.chunk_size, c.window) for c in result.cells] == [(64 * KiB, 2), (1 * MiB, 1)]
    assert any("one chunk" in note for note in result.notes)
    assert os.listdir(tmp_path) == []


async def test_simulated_link_cannot_beat_its_bandwidth_delay_limit() -> None:
    plan = BenchPlan(
        size=512 * KiB,
        chunk_sizes=(64 * KiB, 128 * KiB),
        windows=(1, 8),
        latency=0.02,
        bandwidth=8 * MiB,  # 512 KiB take 62.5 ms on the wire
    )
    bound = plan.bound_seconds()
    assert bound is not None
    result = await run_bench(plan)
    for cell in result.cells:
        assert cell.median_seconds >= bound * 0.98
    serial = next(c for c in result.cells if (c.chunk_size, c.window) == (64 * KiB, 1))
    # window 1 pays a full round trip per chunk: 8 chunks, 8 x 20 ms at least (lower bounds only:
    # how much faster pipelining is, is for benchmarks/bench_link.py to show, not a test)
    assert serial.median_seconds >= 8 * 0.02
    assert "bandwidth-delay limit" in result.table()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3TestServer) -> None:
    """The S3 server's credentials in the environment, where a user's would be (boto reads them)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("s3_env")
async def test_sweep_into_a_given_bucket(s3_bucket: str, s3_client: Any, s3_endpoint: str) -> None:
    plan = BenchPlan(
        source="s3",
        target="s3",
        size=6 * MiB,
        chunk_sizes=(1 * MiB,),
        windows=(4,),
        bucket=s3_bucket,
        endpoint_url=s3_endpoint,
    )
    result = await run_bench(plan)
    assert result.cells[0].seconds
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.usefixtures("s3_env")
async def test_a_cancelled_sweep_leaves_nothing_in_the_bucket(
    s3_bucket: str, s3_client: Any, s3_endpoint: str
) -> None:
    plan = BenchPlan(
        target="s3",
        size=24 * MiB,
        chunk_sizes=(1 * MiB,),
        windows=(4,),
        bandwidth=8 * MiB,  # 3 s per copy: cancelled in the middle of the first
        bucket=s3_bucket,
        endpoint_url=s3_endpoint,
    )
    uploads_seen: list[int] = []

    async def cancel_once_an_upload_runs(task: asyncio.Task[Any]) -> None:
        while not uploads_seen or uploads_seen[-1] == 0:
            await asyncio.sleep(0.1)
            listing = await asyncio.to_thread(s3_client.list_multipart_uploads, Bucket=s3_bucket)
            uploads_seen.append(len(listing.get("Uploads", [])))
        task.cancel()

    task = asyncio.ensure_future(run_bench(plan))
    await asyncio.wait_for(cancel_once_an_upload_runs(task), 30)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_plot_and_json(tmp_path: Path) -> None:
    result = _result({(1 * MiB, 1): 100 * MiB, (8 * MiB, 1): 300 * MiB, (8 * MiB, 4): 500 * MiB})
    plot_result(result, str(tmp_path / "out.png"))
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_json(result, str(tmp_path / "out.json"))
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["best"] == {"chunk_size": 8 * MiB, "window": 4}


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigurationError, match=r"fstransport\[plot\]"):
        plot_result(_result({(MiB, 1): MiB}), str(tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert EXE is not None, "the fstransport command is not installed: pip install -e ."
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120, check=False)


def test_command_writes_table_json_and_plot(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run(
        "bench",
        "--source", "local",
        "--target", "s3",
        "--size", "2MiB",
        "--chunk-sizes", "256KiB,1MiB",
        "--windows", "1,4",
        "--dir", str(tmp_path),
        "--json", str(out_json),
        "--plot", str(out_png),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "file -> s3, 2.0 MiB snapshot" in result.stdout
    assert "| 256.0 KiB | 4 |" in result.stdout
    assert "best: --chunk-size " in result.stdout
    document = json.loads(out_json.read_text())
    assert {(c["chunk_size"], c["window"]) for c in document["cells"]} == {
        (256 * KiB, 1), (256 * KiB, 4), (MiB, 1), (MiB, 4)
    }  # fmt: skip
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.png"]


def test_command_json_to_stdout() -> None:
    result = run("bench", "--size", "256KiB", "--chunk-sizes", "64KiB", "--windows", "2", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["cells"][0]["window"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bandwidth", "fast"], "not a bandwidth: 'fast'"),
        (["--chunk-sizes", "64KiB,,1MiB"], "not a comma-separated list"),
        (["--windows", "0"], "must be at least 1"),
        (["--source", "tape"], "invalid choice: 'tape'"),
    ],
)
def test_command_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = run("bench", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "/nonexistent-folder/x.png"], "cannot write --plot"),
        (["--json", "/nonexistent-folder/x.json"], "cannot write --json"),
        (["--dir", "/nonexistent-folder"], "is not an existing folder"),
    ],
)
def test_command_refuses_unusable_paths_before_measuring(args: list[str], message: str) -> None:
    result = run("bench", "--size", "64KiB", "--chunk-sizes", "64KiB", "--windows", "1", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]
    assert result.stdout == ""


def test_command_user_error_is_one_line() -> None:
    result = run("bench", "--target", "s3", "--endpoint-url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fstransport: error: an S3 endpoint URL needs a bucket (--bucket) to write in"
    ]
