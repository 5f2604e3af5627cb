"""`open_fd`: a moment without free descriptors is waited out; every other error is not."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fstransport.storage import _files
from fstransport.storage._files import open_fd


def test_a_brief_shortage_of_descriptors_is_waited_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    failures = [errno.EMFILE, errno.ENFILE, errno.EMFILE]
    slept: list[float] = []

    def short_of_descriptors(path: str, flags: int, mode: int = 0o777) -> int:
        if failures:
            raise OSError(failures.pop(0), os.strerror(errno.EMFILE))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", short_of_descriptors)
    monkeypatch.setattr("fstransport.storage._files.time.sleep", slept.append)
    fd = open_fd(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    assert (tmp_path / "f").exists()
    assert slept == [_files.WAIT * 1, _files.WAIT * 2, _files.WAIT * 3]


def test_a_lasting_shortage_ends_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    def never(path: str, flags: int, mode: int = 0o777) -> int:
        nonlocal calls
        calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "open", never)
    monkeypatch.setattr("fstransport.storage._files.time.sleep", lambda seconds: None)
    with pytest.raises(OSError, match="Too many open files") as caught:
        open_fd("/nowhere", os.O_RDONLY)
    assert caught.value.errno == errno.EMFILE
    assert calls == _files.ATTEMPTS


def test_other_errors_are_not_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_wait(seconds: float) -> None:
        pytest.fail("waited")

    monkeypatch.setattr("fstransport.storage._files.time.sleep", no_wait)
    with pytest.raises(FileNotFoundError):
        open_fd(str(tmp_path / "missing" / "f"), os.O_RDONLY)
