"""``fstransport cleanup`` through the installed command: what it removes or would, what it
kept for being younger than --older-than, and a ROOT that does not exist."""

from __future__ import annotations

import json
from pathlib import Path

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
