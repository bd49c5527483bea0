"""The package layout: converters/ and runtime/ exist once, as asa_format.converters/.runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("name", ["runtime", "converters"])
def test_the_top_level_folder_does_not_import_under_its_own_name(name: str) -> None:
    result = _run(f"import {name}", ROOT)  # the repository root is on sys.path here
    assert result.returncode == 1
    assert "ImportError" in result.stderr
    assert f"import asa_format.{name}" in result.stderr


@pytest.mark.parametrize("name", ["runtime", "converters"])
def test_the_package_is_installed_as_asa_format_submodule(name: str, tmp_path: Path) -> None:
    code = (
        "import importlib.util\n"
        f"spec = importlib.util.find_spec('asa_format.{name}')\n"
        "print(spec.name, spec.origin)\n"
        "try:\n"
        f"    import {name}\n"
        "except ImportError:\n"
        "    print('refused')\n"
        "else:\n"
        "    print('imported')\n"
    )
    result = _run(code, tmp_path)  # elsewhere: only the installed (or PYTHONPATH) package
    assert result.returncode == 0, result.stderr
    spec_name, origin, outcome = result.stdout.split()
    assert spec_name == f"asa_format.{name}"
    assert Path(origin).parent == ROOT / "asa_format" / name or "site-packages" in origin
    assert outcome == "refused"
    assert (ROOT / "asa_format" / name).is_symlink()
    assert (ROOT / "asa_format" / name).resolve() == (ROOT / name).resolve()
