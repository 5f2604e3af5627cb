"""The rest of the command line: ``bench --plot`` formats, the moto server's usage text,
``python -m fstransport.cli``, and which modules the command line imports before a command runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import assert_one_error_line, run

HEAVY = ("aiohttp", "fsspec", "s3fs", "botocore", "aiobotocore", "matplotlib", "moto")


@pytest.mark.parametrize(("name", "magic"), [("out.svg", b"<?xml"), ("out.pdf", b"%PDF")])
def test_bench_plot_writes_the_format_its_extension_names(
    tmp_path: Path, name: str, magic: bytes
) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: fstransport[plot]")
    plot = tmp_path / name
    args = ("--size", "128KiB", "--chunk-sizes", "64KiB", "--windows", "1", "--plot", str(plot))
    result = run("bench", *args)
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes().startswith(magic)


def test_bench_plot_with_an_unknown_extension_is_a_usage_error(tmp_path: Path) -> None:
    result = run("bench", "--plot", str(tmp_path / "out.gif"))
    assert result.returncode == 2
    assert_one_error_line(result, "argument --plot: cannot tell the plot's format")


def test_moto_server_says_how_to_use_it() -> None:
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "fstransport.moto_server"],
        input="",  # closed stdin: the server stops at once
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    host, port = proc.stdout.split()
    endpoint = f"http://{host}:{port}"
    assert f"moto S3 server on {endpoint}" in proc.stderr
    assert "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing" in proc.stderr
    assert f"fstransport ship FILE s3://demo/ --endpoint-url {endpoint}" in proc.stderr


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fstransport.cli", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout.startswith("fstransport ")


def test_the_command_line_imports_no_heavy_module_before_a_command_runs() -> None:
    """Building the parser (all that --help and --version need) adds none of the heavy modules
    to what ``import fstransport`` itself loads."""
    code = (
        "import sys, fstransport; before = set(sys.modules);"
        "from fstransport.cli.main import build_parser; build_parser();"
        f"print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_errors_name_what_the_user_gave_without_errno_or_internal_paths() -> None:
    from fstransport.cli.errors import describe
    from fstransport.errors import StorageError

    cause = FileNotFoundError(2, "No such file or directory")
    internal = StorageError("/data/.fstransport/partial/x.bin", "open", cause)
    assert describe(internal, target="/data/x.bin") == (
        "cannot open /data/x.bin: No such file or directory"
    )
    gone = StorageError("s3://b/k", "open", FileNotFoundError("bucket 'b' does not exist"))
    assert describe(gone, endpoint="http://127.0.0.1:9000") == (
        "cannot open s3://b/k: bucket 'b' does not exist at http://127.0.0.1:9000; "
        "is --endpoint-url right?"
    )


def test_serve_help_shows_the_real_defaults() -> None:
    """--help names the server's defaults from constants of its own (importing the server or
    the protocol for them would slow every --help); they must stay the real ones."""
    from fstransport.cli import serve
    from fstransport.http.incoming import IDLE_TIMEOUT, MAX_BUFFERED
    from fstransport.protocol.receiver import DEFAULT_MAX_SNAPSHOT_SIZE, ReceiverLimits
    from fstransport.units import format_size

    assert f"{IDLE_TIMEOUT:g}s" == serve.IDLE_TIMEOUT_HELP
    assert format_size(MAX_BUFFERED) == serve.MAX_BUFFERED_HELP
    assert format_size(DEFAULT_MAX_SNAPSHOT_SIZE) == serve.MAX_SNAPSHOT_SIZE_HELP
    assert ReceiverLimits().max_snapshot_size == DEFAULT_MAX_SNAPSHOT_SIZE


def test_serve_passes_no_prefill_to_its_store(tmp_path: Path) -> None:
    from fstransport.cli.main import build_parser
    from fstransport.cli.serve import store_settings
    from fstransport.storage.store import FsspecSnapshotStore

    default = store_settings(build_parser().parse_args(["serve", str(tmp_path)]))
    off = store_settings(build_parser().parse_args(["serve", "--no-prefill", str(tmp_path)]))
    assert default["prefill"] is True
    assert off["prefill"] is False
    assert FsspecSnapshotStore(str(tmp_path), **off).prefill is False


def test_the_version_is_the_installed_distributions() -> None:
    """`fstransport._version` is the one place the version is written; the installed metadata
    (which pyproject.toml builds from it) must agree."""
    from importlib.metadata import version

    import fstransport

    assert fstransport.__version__ == version("fstransport")
