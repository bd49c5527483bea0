"""The built-in schema evaluator agrees with the jsonschema reference implementation."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asa_format.format.manifest import manifest_schema
from asa_format.format.schema import SchemaError, check_schema, iter_violations
from asa_format.storage.writer import bundle_files
from asa_format.testing import make_test_contents

SPEC = Path(__file__).resolve().parents[1] / "spec"


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """``pattern`` as JSON Schema means it (ECMA-262): jsonschema uses ``re.search``, whose ``$``
    also matches before a final newline. Every pattern of the manifest schema is anchored
    ``^X$``, and for those ECMA-262 ``search`` is exactly ``re.fullmatch(X)``."""
    if not isinstance(instance, str):
        return
    assert pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$")
    if re.fullmatch(pattern[1:-1], instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


REFERENCE = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)(manifest_schema())


def _ours(doc: Any) -> set[tuple[str, ...]]:
    return {tuple(map(str, v.path)) for v in iter_violations(doc, manifest_schema())}


def _theirs(doc: Any) -> set[tuple[str, ...]]:
    return {tuple(map(str, e.absolute_path)) for e in REFERENCE.iter_errors(doc)}


def _agree(doc: Any) -> None:
    ours, theirs = _ours(doc), _theirs(doc)
    assert bool(ours) == bool(theirs), (doc, ours, theirs)
    assert ours == theirs


def _valid_manifest() -> dict[str, Any]:
    manifest, _ = bundle_files(make_test_contents(missing_probes=("code",)))
    return manifest.to_dict()


def _conformance_manifests() -> list[Path]:
    return sorted(SPEC.glob("conformance/*/*/**/manifest.json"))


def test_schema_uses_only_supported_keywords() -> None:
    check_schema(manifest_schema())
    with pytest.raises(SchemaError):
        check_schema({"type": "object", "patternProperties": {}})
    with pytest.raises(SchemaError):
        check_schema({"$ref": "https://example.org/other.json"})


def test_agrees_on_conformance_manifests() -> None:
    paths = _conformance_manifests()
    assert paths, "conformance cases are missing"
    checked = 0
    for path in paths:
        try:
            doc = json.loads(path.read_bytes())
        except ValueError:
            continue  # not JSON at all: never reaches the schema
        _agree(doc)
        checked += 1
    assert checked >= 10


EDITS = st.sampled_from(
    ["delete", "string", "negative", "float", "null", "list", "extra", "bool", "huge", "empty"]
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_agrees_on_mutated_manifests(data: st.DataObject) -> None:
    doc = copy.deepcopy(_valid_manifest())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        edit = data.draw(EDITS)
        replacement: Any = {
            "string": "x",
            "negative": -1,
            "float": 2.5,
            "null": None,
            "list": [],
            "bool": True,
            "huge": 10**12,
            "empty": "",
            "extra": None,
            "delete": None,
        }[edit]
        if edit == "delete" and isinstance(parent, dict):
            del parent[key]
        elif edit == "extra" and isinstance(parent, dict):
            parent["unexpected_member"] = 1
        else:
            parent[key] = replacement
    _agree(doc)


def test_valid_manifest_has_no_violations() -> None:
    assert _ours(_valid_manifest()) == set() == _theirs(_valid_manifest())
