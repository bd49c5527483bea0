"""Writer faults: nothing half-written, an existing bundle kept on failure.

Runtime faults and concurrency: tests/test_runtime_faults.py and
tests/test_runtime_threads.py; converter faults: tests/test_convert.py.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from asa_format import save_bundle
from asa_format.errors import AsaError
from asa_format.storage import destination, writer
from asa_format.testing import make_test_contents


@pytest.mark.parametrize(
    ("err", "needle"),
    [
        (errno.ENOSPC, "No space left on device"),
        (errno.EACCES, "Permission denied"),
        (errno.EROFS, "Read-only file system"),
    ],
)
def test_writer_io_errors_leave_nothing(
    err: int, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = writer._write_file
    calls = {"n": 0}

    def failing(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first file made it, the second does not
            raise OSError(err, needle)
        real_write(path, data)

    monkeypatch.setattr(writer, "_write_file", failing)
    with pytest.raises(AsaError) as info:
        save_bundle(make_test_contents(), tmp_path / "out")
    assert info.value.code == "IO_ERROR"
    assert needle in str(info.value) and "nothing was written" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_cannot_create_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(destination.os, "mkdir", refuse)  # the temporary directory
    with pytest.raises(AsaError) as info:
        save_bundle(make_test_contents(), tmp_path / "out")
    assert info.value.code == "IO_ERROR" and "Permission denied" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nor its owner file


def test_replacing_with_force_keeps_old_bundle_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = save_bundle(make_test_contents(seed=1), tmp_path / "b")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_file", full)
    with pytest.raises(AsaError):
        save_bundle(make_test_contents(seed=2), dest, force=True)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
