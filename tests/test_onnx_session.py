"""The static graph checks without onnx or onnxruntime give the verdicts the two packages give.

The reference is the previous implementation: ``onnx``'s parser and checker
(``check_onnx(..., engine="onnx")``) and an onnxruntime session evaluated once
on ``[2, H]`` rows (``validate_bundle(deep=True)``). The checks used by
``asa validate`` parse with ``onnx_wire``, check with ``onnx_check`` and
predict the session (``onnx_profile.session_problems``). Compared: every
conformance case (valid and invalid, whole bundles), every graph the hostile
graph tests build, and mutated graphs (tests/fuzz_mutators.py); and the table
of operators (``asa_format.onnx_ops``) against a fresh measurement.
"""

from __future__ import annotations

import functools
import inspect
import json
import random
from pathlib import Path
from typing import Any

import make_onnx_ops
import onnx
import pytest
import test_hostile_graphs as hostile

import fuzz_long as fz
from asa_format import constants as C
from asa_format import reader
from asa_format.manifest import parse_manifest
from asa_format.onnx_profile import check_onnx, session_problems
from asa_format.reader import ReadResult, _create_sessions
from asa_format.validate import validate_bundle

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "spec" / "conformance"
CASES = sorted(p.parent for p in CORPUS.glob("*/*/bundle"))


def _codes(problems: list[Any]) -> list[str]:
    return [p.code for p in problems]


def _old_graph(data: bytes, file: str, hidden: int, n_classes: int, n_domains: int) -> list[str]:
    """onnx's parser and checker, then an onnxruntime session and one evaluation."""
    _, problems = check_onnx(
        data, file=file, hidden_size=hidden, n_classes=n_classes, engine="onnx"
    )
    if problems:
        return _codes(problems)
    result = ReadResult(path=Path("."))
    _create_sessions(result, {file: data}, hidden, n_domains, keep=False)
    return _codes(result.problems)


def _new_graph(data: bytes, file: str, hidden: int, n_classes: int) -> list[str]:
    model, problems = check_onnx(data, file=file, hidden_size=hidden, n_classes=n_classes)
    if problems:
        return _codes(problems)
    return _codes(session_problems(model, file=file, hidden_size=hidden, n_classes=n_classes))


def test_operator_table_is_current() -> None:
    """asa_format/onnx_ops.py equals a fresh measurement (run tests/make_onnx_ops.py if not)."""
    text = make_onnx_ops.render(make_onnx_ops.generate())
    assert (ROOT / "asa_format" / "onnx_ops.py").read_text(encoding="utf-8") == text


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_conformance_case_verdict(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = case / "bundle"
    new = validate_bundle(bundle)
    monkeypatch.setattr(reader, "check_onnx", functools.partial(check_onnx, engine="onnx"))
    old = validate_bundle(bundle, deep=True)
    assert _codes(new.problems) == _codes(old.problems)
    expected = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    if "code" in expected:  # the corpus's own expectation, too
        assert expected["code"] in _codes(new.problems)
    else:
        assert new.ok


def test_hostile_graphs_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every graph the hostile-graph tests check or validate, through both implementations."""
    seen: list[tuple[bytes, str, int, int]] = []
    real = check_onnx

    def recording(data: bytes, **kw: Any) -> Any:
        seen.append((data, kw["file"], kw["hidden_size"], kw["n_classes"]))
        return real(data, **kw)

    monkeypatch.setattr(hostile, "check_onnx", recording)
    monkeypatch.setattr(reader, "check_onnx", recording)
    ran = 0
    for name, fn in inspect.getmembers(hostile, inspect.isfunction):
        if not name.startswith("test_"):
            continue
        params = inspect.signature(fn).parameters
        calls = [{}] if "shape" not in params else [{"shape": s} for s in ((2, 2), (3, 2), (1, 2))]
        for kwargs in calls:
            if "tmp_path" in params:
                kwargs["tmp_path"] = tmp_path / f"{name}{len(seen)}"
                kwargs["tmp_path"].mkdir()
            fn(**kwargs)
            ran += 1
    assert ran >= 14 and len(seen) >= 30
    monkeypatch.undo()
    for data, file, hidden, n_classes in seen:
        n_domains = n_classes if file == C.ROUTER_FILE else 2
        assert _new_graph(data, file, hidden, n_classes) == _old_graph(
            data, file, hidden, n_classes, n_domains
        ), file


def test_mutated_graphs_verdicts() -> None:
    """Node kinds, attributes, initializers, inserted and rewired nodes (fuzz_mutators)."""
    from fuzz_mutators import mutate_graph

    seeds = fz.seed_bundles()
    rng = random.Random(20)
    outcomes: dict[str, int] = {}
    for _ in range(400):
        base = rng.choice(sorted(seeds))
        files = seeds[base]
        manifest, _, _ = parse_manifest(files[C.MANIFEST_FILE])
        assert manifest is not None
        hidden, n_domains = manifest.model.hidden_size, len(manifest.domains)
        name = rng.choice(sorted(f for f in files if f.endswith(".onnx")))
        model = onnx.load_from_string(files[name])
        for _ in range(rng.choice([1, 1, 2, 3])):
            try:
                mutate_graph(rng, model, hidden)
            except (ValueError, TypeError, IndexError, KeyError, OverflowError):
                pass
        try:
            data = model.SerializeToString(deterministic=True)
        except Exception:  # the mutator wrote something protobuf cannot serialise
            continue
        n_classes = n_domains if name == C.ROUTER_FILE else 2
        old = _old_graph(data, name, hidden, n_classes, n_domains)
        assert _new_graph(data, name, hidden, n_classes) == old, (base, name)
        key = old[0] if old else "ok"
        outcomes[key] = outcomes.get(key, 0) + 1
    # the comparison reaches every stage: parse and checker, profile, shapes, sessions, success
    assert {"ok", "ONNX_PARSE", "ONNX_SHAPE", "ONNX_SESSION"} <= set(outcomes), outcomes


def test_session_prediction_names_the_node() -> None:
    """A type clash is reported as ONNX_SESSION with the operator and both types."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    h = 4
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "W"], ["xw"]),  # W is float32
            helper.make_node("Softmax", ["xw"], [C.CLASSIFIER_PROBABILITIES], axis=1),
            helper.make_node("ArgMax", [C.CLASSIFIER_PROBABILITIES], [C.CLASSIFIER_LABEL], axis=1, keepdims=0),
        ],
        "g",
        [helper.make_tensor_value_info(C.CLASSIFIER_INPUT, TensorProto.DOUBLE, ["N", h])],
        [
            helper.make_tensor_value_info(C.CLASSIFIER_LABEL, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(C.CLASSIFIER_PROBABILITIES, TensorProto.DOUBLE, ["N", 2]),
        ],
        [numpy_helper.from_array(np.ones((h, 2), np.float32), "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    parsed, problems = check_onnx(data, file="probe_0.onnx", hidden_size=h, n_classes=2)
    assert problems == []
    [problem] = session_problems(parsed, file="probe_0.onnx", hidden_size=h, n_classes=2)
    assert problem.code == "ONNX_SESSION"
    assert "MatMul" in problem.message and "tensor(double)" in problem.message
    assert "tensor(float)" in problem.message
    assert _old_graph(data, "probe_0.onnx", h, 2, 2) == ["ONNX_SESSION"]
