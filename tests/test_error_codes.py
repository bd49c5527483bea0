"""Error codes: one typed list, one category rule, applied at every raise site."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import pytest

from asa_format import errors
from asa_format.errors import CODES, ERROR_CLASSES, AsaError, ErrorCode

ROOT = Path(__file__).resolve().parents[1]
# asa_format/converters and asa_format/runtime are links to the top-level folders
SOURCES = sorted(
    [
        p
        for p in (ROOT / "asa_format").rglob("*.py")
        if p.parent.name not in ("converters", "runtime")
    ]
    + list((ROOT / "converters").rglob("*.py"))
    + list((ROOT / "runtime").rglob("*.py"))
)
CLASSES: dict[str, type[AsaError]] = {cls.__name__: cls for cls in ERROR_CLASSES}


def _raise_sites() -> list[tuple[str, int, str, str | None]]:
    """(file, line, class name, literal code or None) of every error-class call."""
    sites: list[tuple[str, int, str, str | None]] = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id not in CLASSES:
                continue
            code: str | None = None
            dynamic = False
            for kw in node.keywords:
                if kw.arg == "code":
                    if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        code = kw.value.value
                    else:
                        dynamic = True
            if not dynamic:
                sites.append((str(path.relative_to(ROOT)), node.lineno, node.func.id, code))
    return sites


def test_the_literal_type_and_the_summaries_list_the_same_codes() -> None:
    assert list(get_args(ErrorCode)) == list(CODES)
    assert all(errors.is_error_code(c) for c in CODES)
    assert not errors.is_error_code("NOT_A_CODE")


def test_every_code_has_a_category_class() -> None:
    covered = set().union(*(cls.codes for cls in ERROR_CLASSES))
    assert covered == set(CODES)


def test_no_class_defaults_to_a_code_it_does_not_always_mean() -> None:
    for cls in ERROR_CLASSES:
        if cls.default_code is not None:
            assert cls.default_code in cls.codes, cls.__name__
    assert errors.BundleError.default_code is None


def test_every_raise_site_uses_a_code_of_its_class() -> None:
    sites = _raise_sites()
    assert len(sites) > 50  # the scan sees the tree
    wrong = []
    for file, line, name, code in sites:
        cls = CLASSES[name]
        if code is None:
            if cls.default_code is None:
                wrong.append(f"{file}:{line}: {name}(...) without a code")
        elif code not in cls.codes | {"IO_ERROR"}:
            wrong.append(
                f"{file}:{line}: {name}(code={code!r}) (the class carries {sorted(cls.codes)})"
            )
    assert not wrong, "\n".join(wrong)


@pytest.mark.typecheck
def test_mypy_flags_a_misspelt_code_through_an_absolute_import(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from asa_format.converters.safe_pickle import safe_load_pickle
            from asa_format.errors import BundleError

            safe_load_pickle(b"", filename=3)
            BundleError("x", code="MANIFEST_SCHEMAA")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert 'Argument "filename" to "safe_load_pickle" has incompatible type "int"' in out, out
    assert "MANIFEST_SCHEMAA" in out, out
