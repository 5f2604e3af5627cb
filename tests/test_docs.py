"""The Python examples in docs/ run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fstransport.testing import S3TestServer
from fstransport.testing.s3_server import ENDPOINT_ENV

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _examples() -> list[tuple[str, str]]:
    found = []
    for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        for number, code in enumerate(BLOCK.findall(page.read_text()), start=1):
            found.append((f"{page.name}#{number}", code))
    return found


@pytest.mark.parametrize(("where", "code"), _examples(), ids=[w for w, _ in _examples()])
def test_example_runs(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write relative paths write here
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def test_there_are_examples() -> None:
    assert len(_examples()) >= 3


def test_testing_guide_example_passes_as_a_users_test(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    """docs/testing.md's example, run by pytest as a user would run it, in a fresh directory,
    on this session's S3 server (as a user with ``FSTRANSPORT_TEST_S3_ENDPOINT`` would: the
    plugin's own moto start is what every S3 test here goes through already)."""
    [example] = BLOCK.findall((DOCS / "testing.md").read_text())
    (tmp_path / "test_backup.py").write_text(example)
    env = {**os.environ, **s3_server.env, ENDPOINT_ENV: s3_server.endpoint_url}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_backup.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
