"""The package layout: converters/ and runtime/ exist once, as asa_format.converters/.runtime."""

from __future__ import annotations

import re
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


def _readme_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Repository layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def _readme_paths() -> set[str]:
    return set(_readme_rows())


def test_the_readme_layout_table_lists_each_path_once() -> None:
    rows = _readme_rows()
    assert sorted({r for r in rows if rows.count(r) > 1}) == []


def test_the_readme_layout_table_matches_the_tree() -> None:
    listed = _readme_paths()
    modules = {
        f"{folder}/{p.relative_to(ROOT / folder).as_posix()}"
        for folder in ("asa_format", "converters", "runtime")
        for p in (ROOT / folder).rglob("*.py")
        if (p.parent.name not in ("converters", "runtime") or folder != "asa_format")
        and p.name != "__init__.py"  # a package's folder row describes it
    }
    folders = {
        "asa_format/",
        "asa_format/signing/",
        "asa_format/schema/",
        "asa_format/format/",
        "asa_format/graphs/",
        "asa_format/storage/",
        "asa_format/cli/",
        "asa_format/interop/",
        "converters/",
        "runtime/",
        "spec/",
        "spec/conformance/",
        "tests/",
        "tests/fixtures/",
        "benchmarks/",
    }
    missing = sorted((modules | folders) - listed)
    assert not missing, f"README.md's layout table does not list: {missing}"
    stale = sorted(p for p in listed if not (ROOT / p.rstrip("/")).exists())
    assert not stale, f"README.md's layout table lists paths that do not exist: {stale}"
