"""The decision vectors of every valid conformance case, on both evaluators.

``spec/conformance/valid/<case>/decisions.json`` (written by make_cases.py from
an independent reference of spec section 4) lists hidden rows, among them
rows near ``tau``, near ``1 - tau`` and at or near router ties, with the
expected domain, probability, gate and mixed steering vector. Each row is
checked in one batch and alone (the one-row path), with onnxruntime and with
the NumPy fast path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asa_format import load_bundle

CORPUS = Path(__file__).resolve().parents[1] / "spec" / "conformance" / "valid"
# format 1.1: only a bundle with an asa intervention has decisions
VALID = sorted(p.name for p in CORPUS.iterdir() if (p / "decisions.json").is_file())


def _vectors(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((CORPUS / name / "decisions.json").read_text("utf-8"))
    return doc


def test_every_valid_case_carries_threshold_and_tie_rows() -> None:
    assert VALID
    kinds: set[str] = set()
    for name in VALID:
        rows = _vectors(name)["rows"]
        assert len(rows) >= 8, name
        kinds.update(r["kind"] for r in rows)
        assert {r["kind"] for r in rows} >= {"random", "router_tie", "near_router_tie"}, name
    assert kinds >= {"near_tau", "near_one_minus_tau"}
    gates = {r["gate"] for name in VALID for r in _vectors(name)["rows"]}
    assert gates == {-1, 0, 1}


@pytest.mark.parametrize("backend", ["onnxruntime", "fastpath"])
@pytest.mark.parametrize("name", VALID)
def test_decision_vectors(name: str, backend: str) -> None:
    doc = _vectors(name)
    tol_p, tol_v = doc["tolerance"]["probability"], doc["tolerance"]["vector"]
    rows = doc["rows"]
    bundle = load_bundle(CORPUS / name / "bundle", fast=backend == "fastpath", asa_only=True)
    assert bundle.decision_backend == ("numpy" if backend == "fastpath" else "onnxruntime")
    hidden = np.array([r["hidden"] for r in rows], dtype=np.float32)
    assert [[float(v) for v in row] for row in hidden] == [r["hidden"] for r in rows]
    batch = bundle.decide(hidden)
    for i, row in enumerate(rows):
        where = f"{name} row {i} ({row['kind']}: {row['description']})"
        for decision in (batch[i], bundle.decide(hidden[i : i + 1])[0]):
            assert decision.domain_index == row["domain_index"], where
            assert decision.domain == row["domain"], where
            assert abs(decision.probability - row["probability"]) <= tol_p, where
            assert decision.gate == row["gate"], where
        vector = bundle.steering_vector(row["domain"])
        assert np.max(np.abs(vector.astype(np.float64) - np.array(row["vector"]))) <= tol_v, where


CONDITION_CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "conditions.json").is_file())


def test_condition_gates_have_decision_vectors_per_case() -> None:
    """Every valid case with a condition intervention carries its condition decisions."""
    with_conditions = []
    for case in CORPUS.iterdir():
        manifest = json.loads((case / "bundle" / "manifest.json").read_bytes())
        if any(e["gate"]["kind"] == "condition" for e in manifest.get("interventions", [])):
            with_conditions.append(case.name)
    assert with_conditions and sorted(with_conditions) == CONDITION_CASES


@pytest.mark.parametrize("name", CONDITION_CASES)
def test_condition_decision_vectors(name: str) -> None:
    """The runtime's condition rule (the one the hooks call) on each case's rows (spec 14.4)."""
    from asa_format.runtime.program import Program, RowOutcomes, condition_outcome

    doc = json.loads((CORPUS / name / "conditions.json").read_text("utf-8"))
    tol = doc["tolerance"]["similarity"]
    program = Program(load_bundle(CORPUS / name / "bundle"))
    seen = set()
    for iv, spec in doc["interventions"].items():
        assert program.conditions[iv].blocks == tuple(spec["blocks"])
        for row in spec["rows"]:
            outcomes = RowOutcomes()
            result = None
            for block, hidden in zip(spec["blocks"], row["hidden"], strict=True):
                read = next(r for r in program.reads[block] if r.intervention == iv)
                result = condition_outcome(outcomes, read, np.array(hidden, dtype=np.float64))
            where = f"{name} {iv} {row['kind']}: {row['description']}"
            got = outcomes.similarities[iv]
            assert np.allclose(got, row["similarities"], rtol=0, atol=tol), where
            assert result is row["fires"] and outcomes.fires[iv] is row["fires"], where
            seen.add(row["fires"])
    assert seen == {True, False}
