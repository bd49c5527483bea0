"""The specification (spec/SPEC.md, spec/manifest.schema.json) agrees with the library.

SPEC.md carries machine-checked tables between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers: the error codes, the ONNX operator allowlist,
the ONNX version ranges and the size caps. These tests parse them and compare
them with ``errors.CODES``, ``onnx_profile.ALLOWED_OPS`` and ``constants``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from asa_format import constants as C
from asa_format.bundle import mix_vectors
from asa_format.errors import CODES
from asa_format.format.jsonio import dumps_canonical
from asa_format.format.manifest import manifest_schema
from asa_format.gating import gates
from asa_format.graphs.profile import ALLOWED_OPS
from asa_format.storage.writer import bundle_files
from asa_format.testing import make_test_contents

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "SPEC.md"
SPEC_SCHEMA = ROOT / "spec" / "manifest.schema.json"
PACKAGE_SCHEMA = ROOT / "asa_format" / "schema" / "manifest.schema.json"

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_BACKTICKED = re.compile(r"`([^`]*)`")


@pytest.fixture(scope="module")
def spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def marked_rows(text: str, name: str) -> list[list[str]]:
    """Body rows of the markdown table between the ``name`` markers, as stripped cells.

    The header row, the separator row and group rows (empty first cell) are dropped.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, (
        f"SPEC.md needs exactly one {name} table"
    )
    block = text[text.index(begin) + len(begin) : text.index(end)]
    lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
    assert all(line.startswith("|") and line.endswith("|") for line in lines), (
        f"{name}: not a table"
    )
    rows = [[cell.strip() for cell in _CELL_SPLIT.split(line[1:-1])] for line in lines]
    assert len(rows) >= 3 and set("".join(rows[1])) <= set("-: "), (
        f"{name}: header/separator missing"
    )
    return [row for row in rows[2:] if row[0]]


def single_backticked(cell: str) -> str:
    found = _BACKTICKED.findall(cell)
    assert len(found) == 1, f"expected one `name` in cell {cell!r}"
    return found[0]


# (a) error codes ------------------------------------------------------------------


def test_error_code_table_lists_exactly_the_library_codes(spec_text: str) -> None:
    rows = marked_rows(spec_text, "error-codes")
    codes = [single_backticked(row[0]) for row in rows]
    assert len(codes) == len(set(codes)), "a code appears twice in the spec table"
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", c) for c in codes)
    missing = sorted(set(CODES) - set(codes))
    extra = sorted(set(codes) - set(CODES))
    assert not missing, f"codes in errors.CODES but not in SPEC.md: {missing}"
    assert not extra, f"codes in SPEC.md but not in errors.CODES: {extra}"


def test_error_code_meanings_mirror_the_library(spec_text: str) -> None:
    rows = marked_rows(spec_text, "error-codes")
    meanings = {single_backticked(row[0]): row[1].replace("\\|", "|") for row in rows}
    differ = {
        code: (meanings[code], CODES[code]) for code in CODES if meanings.get(code) != CODES[code]
    }
    assert not differ, f"spec meaning differs from errors.CODES: {differ}"


def test_every_error_code_used_in_the_spec_text_exists(spec_text: str) -> None:
    # every backticked UPPER_SNAKE token that looks like a code must be a known
    # code or a constant of constants.py
    constants = {name for name in dir(C) if name.isupper()}
    tokens = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", spec_text))
    unknown = sorted(
        t
        for t in tokens
        if t not in CODES and t not in constants and not t.startswith(("ORT_", "O_"))
    )
    assert not unknown, f"SPEC.md names codes that errors.CODES lacks: {unknown}"


# (b) JSON Schema ---------------------------------------------------------------------


def test_spec_schema_is_byte_identical_to_the_package_copy() -> None:
    assert SPEC_SCHEMA.read_bytes() == PACKAGE_SCHEMA.read_bytes()


def test_spec_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SPEC_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == manifest_schema()


def test_spec_schema_accepts_a_written_manifest_and_rejects_an_unknown_member() -> None:
    _, files = bundle_files(make_test_contents(missing_probes=("search",)))
    doc = json.loads(files[C.MANIFEST_FILE])
    validator = jsonschema.Draft202012Validator(json.loads(SPEC_SCHEMA.read_text(encoding="utf-8")))
    assert list(validator.iter_errors(doc)) == []
    doc["steering"]["unknown_member"] = 1
    assert [e.validator for e in validator.iter_errors(doc)] == ["additionalProperties"]


def test_schema_bounds_agree_with_constants() -> None:
    schema = manifest_schema()
    props = schema["properties"]
    assert props["model"]["properties"]["hidden_size"]["maximum"] == C.MAX_HIDDEN_SIZE
    assert props["domains"]["maxItems"] == C.MAX_DOMAINS
    assert props["files"]["maxProperties"] == C.MAX_FILES
    assert props["format"]["const"] == C.FORMAT_NAME
    assert props["layer"]["properties"]["tensor"]["const"] == C.LAYER_TENSOR_BLOCK_OUTPUT
    assert tuple(props["steering"]["properties"]["policy"]["enum"]) == C.POLICIES
    file_pattern = re.compile(schema["$defs"]["file_name"]["pattern"])
    for name in (
        C.VECTORS_FILE,
        C.SCALER_FILE,
        C.ROUTER_FILE,
        C.PROBE_FILE_TEMPLATE.format(index=3),
    ):
        assert file_pattern.fullmatch(name)
    for name in (C.MANIFEST_FILE, C.SIGNATURE_FILE, "probe_01.onnx", "../scaler.onnx"):
        assert not file_pattern.fullmatch(name)


def _member_paths(schema: dict[str, Any], prefix: str) -> list[str]:
    """Member paths of the manifest in the spec's notation (``domains[i].name``)."""
    out: list[str] = []
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        out.append(path)
        out.extend(_member_paths(sub, path))
        if sub.get("type") == "array" and isinstance(sub.get("items"), dict):
            out.extend(_member_paths(sub["items"], f"{path}[i]"))
        if isinstance(sub.get("additionalProperties"), dict):
            out.extend(_member_paths(sub["additionalProperties"], f"{path}.<name>"))
    return out


def test_every_schema_member_is_defined_in_a_spec_table(spec_text: str) -> None:
    paths = _member_paths(manifest_schema(), "")
    assert "domains[i].probe" in paths and "files.<name>.sha256" in paths
    table_cells = {
        single_backticked(line.split("|")[1])
        for line in spec_text.splitlines()
        if line.startswith("| `") and line.split("|")[1].count("`") == 2
    }
    missing = sorted(p for p in paths if p not in table_cells)
    assert not missing, f"manifest members without a row in a SPEC.md table: {missing}"


def test_spec_names_the_library_constants(spec_text: str) -> None:
    names = [
        C.FORMAT_NAME,
        C.FORMAT_VERSION,
        C.MANIFEST_FILE,
        C.VECTORS_FILE,
        C.SCALER_FILE,
        C.ROUTER_FILE,
        C.SIGNATURE_FILE,
        C.GLOBAL_VECTOR,
        C.SCALER_INPUT,
        C.SCALER_OUTPUT,
        C.CLASSIFIER_INPUT,
        C.CLASSIFIER_LABEL,
        C.CLASSIFIER_PROBABILITIES,
        C.LAYER_TENSOR_BLOCK_OUTPUT,
        *C.POLICIES,
    ]
    absent = [n for n in names if f"`{n}`" not in spec_text and f'`"{n}"`' not in spec_text]
    assert not absent, f"SPEC.md does not name: {absent}"
    assert f"**Version {C.FORMAT_VERSION}**" in spec_text


# (c) ONNX operator allowlist -----------------------------------------------------------


def test_onnx_operator_allowlist_table_equals_the_library(spec_text: str) -> None:
    rows = marked_rows(spec_text, "onnx-ops")
    table: dict[str, frozenset[str]] = {}
    for row in rows:
        domain = single_backticked(row[0])
        key = "" if domain == "ai.onnx" else domain
        assert key not in table, f"domain {domain} listed twice"
        ops = _BACKTICKED.findall(row[2])
        assert len(ops) == len(set(ops)), f"an operator of {domain} is listed twice"
        assert int(row[1]) == len(ops), f"count column of {domain} is wrong"
        table[key] = frozenset(ops)
    assert table == ALLOWED_OPS


def test_onnx_version_ranges_table_equals_the_library(spec_text: str) -> None:
    rows = marked_rows(spec_text, "onnx-ranges")
    ranges: dict[str, tuple[int, int]] = {}
    ir: tuple[int, int] | None = None
    for row in rows:
        low, high = int(row[1]), int(row[2])
        if row[0].startswith("IR version"):
            ir = (low, high)
        else:
            domain = _BACKTICKED.findall(row[0])[0]
            ranges["" if domain == "ai.onnx" else domain] = (low, high)
    assert ir == (C.ONNX_IR_VERSION_MIN, C.ONNX_IR_VERSION_MAX)
    assert ranges == C.ONNX_OPSET_RANGES


# (d) size caps -------------------------------------------------------------------------


def test_size_caps_table_equals_constants(spec_text: str) -> None:
    rows = marked_rows(spec_text, "size-caps")
    caps = {single_backticked(row[0]): int(row[1]) for row in rows}
    expected = {name: getattr(C, name) for name in dir(C) if name.startswith("MAX_")}
    assert caps == expected
    for row in rows:  # the error column names real codes
        assert all(code in CODES for code in _BACKTICKED.findall(row[4])), row


def test_numeric_constants_table_equals_constants(spec_text: str) -> None:
    rows = marked_rows(spec_text, "numeric-constants")
    values = {single_backticked(row[0]): float(row[1]) for row in rows}
    assert values == {"NORM_EPS": C.NORM_EPS, "UNIT_NORM_TOLERANCE": C.UNIT_NORM_TOLERANCE}


# the spec's definitions, reimplemented from its text, agree with the library ------------------


def test_canonical_manifest_bytes_follow_the_spec() -> None:
    _, files = bundle_files(make_test_contents(alpha=4, tau=0.5, beta=0.25))
    doc = json.loads(files[C.MANIFEST_FILE])
    spec_bytes = (
        json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode("utf-8")
    assert files[C.MANIFEST_FILE] == spec_bytes == dumps_canonical(doc)
    assert b'"alpha": 4.0' in spec_bytes  # steering numbers are written as floats
    assert set(doc["files"]) == set(files) - {C.MANIFEST_FILE}


def test_gate_rule_of_section_4_5() -> None:
    p = np.array([0.5, 0.7, 0.3, 0.6, 0.4, np.nan, 1.0, 0.0])
    assert gates(p, 0.5).tolist() == [1, 1, -1, 1, -1, 0, 1, -1]
    assert gates(p, 0.7).tolist() == [0, 1, -1, 0, 0, 0, 1, -1]


def test_steering_vector_rule_of_section_4_6() -> None:
    rng = np.random.default_rng(5)
    for beta in (0.0, 0.3, 0.5, 1.0):
        d = rng.standard_normal(64).astype(np.float32)
        g = rng.standard_normal(64).astype(np.float32)
        d /= np.float32(np.linalg.norm(d))
        g /= np.float32(np.linalg.norm(g))
        a, b = np.float32(1.0 - beta), np.float32(beta)
        u = np.empty(64, dtype=np.float32)
        for i in range(64):  # elementwise float32: products rounded, then the sum
            u[i] = np.float32(np.float32(a * d[i]) + np.float32(b * g[i]))
        s = sum(float(x) * float(x) for x in u)
        n = np.float32(np.sqrt(s))
        denom = np.float32(n + np.float32(1e-8))
        expected = np.array([np.float32(x / denom) for x in u], dtype=np.float32)
        got = mix_vectors(d, g, beta)
        assert got.dtype == np.float32
        assert np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))) <= 1e-6


def test_onnx_profile_version_is_stated() -> None:
    text = SPEC.read_text(encoding="utf-8")
    assert (
        f"`ONNX_PROFILE_VERSION`\n(`MAJOR.MINOR`, currently **{C.ONNX_PROFILE_VERSION}**)" in text
    )
    assert f"ONNX profile {C.ONNX_PROFILE_VERSION}" in text  # the change log names it


def test_every_section_reference_names_an_existing_section() -> None:
    text = SPEC.read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)[ .]", text, flags=re.M))
    refs: set[str] = set()
    for match in re.finditer(
        r"\bsections? ((?:\d+(?:\.\d+)*)(?:(?:, | and | to )\d+(?:\.\d+)*)*)", text
    ):
        refs.update(re.findall(r"\d+(?:\.\d+)*", match.group(1)))
    refs.update(re.findall(r"\((\d+\.\d+(?:\.\d+)?)\)", text))
    missing = sorted(r for r in refs if r not in headings)
    assert not missing, f"SPEC.md refers to sections that do not exist: {missing}"
