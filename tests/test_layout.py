"""The package layout: converters/ and runtime/ exist once, as asa_format.converters/.runtime;
docs/layout.md lists every module once."""

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


def _layout_rows() -> list[str]:
    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)


def test_docs_layout_is_what_the_tree_gives() -> None:
    """docs/layout.md is generated: after moving modules, run python docs/make_layout.py --write."""
    result = subprocess.run(
        [sys.executable, "docs/make_layout.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layout_table_lists_every_module_once_and_nothing_else() -> None:
    rows = _layout_rows()
    twice = sorted({p for p in rows if rows.count(p) > 1})
    assert not twice, f"docs/layout.md lists these paths twice: {twice}"
    listed = set(rows)
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
        "converters/",
        "runtime/",
        "spec/",
        "spec/conformance/",
        "tests/",
        "tests/fixtures/",
        "benchmarks/",
        "docs/",
        "examples/",
    }
    missing = sorted((modules | folders) - listed)
    assert not missing, f"docs/layout.md does not list: {missing}"
    stale = sorted(p for p in listed if not (ROOT / p.rstrip("/")).exists())
    assert not stale, f"docs/layout.md lists paths that do not exist: {stale}"
