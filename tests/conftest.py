"""Shared test setup: markers by dependency, and builders several test files use.

Markers (registered in pyproject.toml):

* ``runtime``: the test needs more than the core install: torch/transformers
  (the ``runtime`` extra), or one of the finer markers below, which imply it.
  ``python -m pytest -m "not runtime"`` runs on a core install.
* ``convert``: needs scikit-learn and skl2onnx (the ``convert`` extra).
* ``interop``: runs a reference implementation from the ``test`` extra
  (``safetensors``, OpenSSF ``model_signing``, ``steering_vectors``) or needs
  the ``interop`` / ``hub`` extras (``gguf``, ``huggingface_hub``).
* ``typecheck``: runs mypy (``test`` extra).

A module's markers are its ``pytestmark`` plus those its top-level imports
imply (torch, transformers, tiny_models or asa_format.runtime: ``runtime``;
sklearn or skl2onnx: ``convert``; gguf, huggingface_hub or steering_vectors:
``interop``). A module whose markers the ``-m`` expression deselects is not
imported at all, so a core install never sees its imports.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "spec" / "conformance"

# spec/conformance/make_cases.py is imported as a module: `import make_cases`
if str(CONFORMANCE) not in sys.path:
    sys.path.insert(0, str(CONFORMANCE))

IMPORT_MARKS = {
    "torch": "runtime",
    "transformers": "runtime",
    "tiny_models": "runtime",
    "sklearn": "convert",
    "skl2onnx": "convert",
    # the interop and hub extras and the test extra's steering libraries
    "gguf": "interop",
    "huggingface_hub": "interop",
    "steering_vectors": "interop",
}
IMPLIES_RUNTIME = frozenset({"convert", "interop", "typecheck"})


@cache
def module_marks(path: Path) -> frozenset[str]:
    """Markers of a test module: its ``pytestmark`` and those its top-level imports imply."""
    marks: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            marks.update(
                sub.attr
                for sub in ast.walk(node.value)
                if isinstance(sub, ast.Attribute)
                and isinstance(sub.value, ast.Attribute)
                and sub.value.attr == "mark"
            )
            continue
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if top in IMPORT_MARKS:
                marks.add(IMPORT_MARKS[top])
            elif n in ("asa_format.runtime", "asa_format.cli.run") or n.startswith(
                "asa_format.runtime."
            ):
                marks.add("runtime")  # the runtime package (and asa run) imports torch
    if marks & IMPLIES_RUNTIME:
        marks.add("runtime")
    return frozenset(marks)


def _deselected(marks: frozenset[str], expression: str) -> bool:
    from _pytest.mark.expression import Expression

    return not Expression.compile(expression).evaluate(lambda name, **_: name in marks)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    expression = config.getoption("markexpr", "")
    if not expression or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    marks = module_marks(collection_path)
    if marks and _deselected(marks, expression):
        return True  # deselected as a whole: do not import it
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = set(module_marks(Path(str(item.path))))
        marks.update(m.name for m in item.iter_markers())
        if marks & IMPLIES_RUNTIME:
            marks.add("runtime")
        for name in sorted(marks & (IMPLIES_RUNTIME | {"runtime"})):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)


# --------------------------------------------------------------------------- builders


def write_key_pair(
    directory: Path, name: str, curve: ec.EllipticCurve | None = None
) -> tuple[Path, Path]:
    """Write ``<name>.pem`` (PKCS#8, unencrypted) and ``<name>.pub`` (SPKI); return both paths."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Key pairs by name, as (private PEM path, public PEM path): P-256 unless named p384."""
    directory = tmp_path_factory.mktemp("keys")
    return {
        "alice": write_key_pair(directory, "alice"),
        "mallory": write_key_pair(directory, "mallory"),
        "publisher": write_key_pair(directory, "publisher"),
        "p384": write_key_pair(directory, "p384", ec.SECP384R1()),
    }
