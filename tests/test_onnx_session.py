"""The static graph checks without onnx or onnxruntime give the verdicts the two packages give.

The reference is the previous implementation: ``onnx``'s parser and checker
(``check_onnx(..., engine="onnx")``) and an onnxruntime session evaluated once
on ``[2, H]`` rows (``validate_bundle(deep=True)``). The checks used by
``asa validate`` parse with ``onnx_wire``, check with ``onnx_check`` and
predict the session (``onnx_profile.session_problems``). Compared: every
conformance case (valid and invalid, whole bundles), every graph the hostile
graph tests build, and mutated graphs (tests/fuzz_mutators.py); and the table
of operators (``asa_format.graphs.ops``) against a fresh measurement.
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
from asa_format.format.manifest import parse_manifest
from asa_format.graphs.profile import check_onnx, session_problems
from asa_format.storage import reader
from asa_format.storage.reader import ReadResult, _create_sessions
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
    """asa_format/graphs/ops.py equals a fresh measurement (run tests/make_onnx_ops.py if not)."""
    text = make_onnx_ops.render(make_onnx_ops.generate())
    assert (ROOT / "asa_format" / "graphs" / "ops.py").read_text(encoding="utf-8") == text


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


@pytest.mark.parametrize(
    ("imports", "node_domain"),
    [
        ([("ai.onnx", 13)], "ai.onnx"),
        ([("ai.onnx", 13)], ""),
        ([("", 13)], "ai.onnx"),
        ([("", 13), ("ai.onnx", 13)], "ai.onnx"),
        ([("", 12)], ""),
    ],
)
def test_default_domain_spellings(imports: list[tuple[str, int]], node_domain: str) -> None:
    """'' and 'ai.onnx' name the same opset import but not the same operator registry entry."""
    from onnx import helper

    from asa_format.testing import make_test_contents

    model = onnx.load_from_string(make_test_contents(hidden_size=8).scaler)
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.append(helper.make_opsetid(domain, version))
    for node in model.graph.node:
        node.domain = node_domain
    data = model.SerializeToString()
    assert _new_graph(data, C.SCALER_FILE, 8, 2) == _old_graph(data, C.SCALER_FILE, 8, 2, 2)


def _probe_model() -> Any:
    import numpy as np

    from asa_format.testing import linear_probe_graph

    return onnx.load_from_string(linear_probe_graph(np.linspace(-1.0, 1.0, 8), 0.25))


def _edits() -> list[tuple[str, Any]]:
    """Edits of a valid probe graph that reach the checker and the session: attributes,
    node arity, names, value infos, tensors of every element type and storage."""
    from onnx import AttributeProto, TensorProto, helper

    def node(m: Any, op: str) -> Any:
        return next(n for n in m.graph.node if n.op_type == op)

    def init(m: Any, name: str) -> Any:
        return next(t for t in m.graph.initializer if t.name == name)

    out: list[tuple[str, Any]] = []

    def edit(name: str) -> Any:
        def register(fn: Any) -> Any:
            out.append((name, fn))
            return fn

        return register

    @edit("attr-without-type")
    def _(m: Any) -> None:
        node(m, "Concat").attribute[0].ClearField("type")

    @edit("attr-type-mismatch")
    def _(m: Any) -> None:
        node(m, "Concat").attribute[0].type = AttributeProto.FLOAT

    @edit("attr-two-values")
    def _(m: Any) -> None:
        node(m, "Concat").attribute[0].f = 1.0

    @edit("attr-duplicate")
    def _(m: Any) -> None:
        n = node(m, "Concat")
        n.attribute.append(helper.make_attribute("axis", 1))

    @edit("attr-unknown")
    def _(m: Any) -> None:
        node(m, "Concat").attribute.append(helper.make_attribute("bogus", 1))

    @edit("attr-internal")
    def _(m: Any) -> None:
        node(m, "Concat").attribute.append(helper.make_attribute("__note", 1))

    @edit("attr-required-missing")
    def _(m: Any) -> None:
        del node(m, "Concat").attribute[:]

    @edit("attr-empty-name")
    def _(m: Any) -> None:
        node(m, "Concat").attribute[0].name = ""

    @edit("tensor-attr-without-t")
    def _(m: Any) -> None:
        n = m.graph.node.add()
        n.CopyFrom(helper.make_node("Constant", [], ["unused"]))
        n.attribute.append(AttributeProto(name="value", type=AttributeProto.TENSOR))

    @edit("node-empty-required-input")
    def _(m: Any) -> None:
        node(m, "Sub").input[0] = ""

    @edit("node-extra-input")
    def _(m: Any) -> None:
        node(m, "Sigmoid").input.append("score")

    @edit("node-no-io")
    def _(m: Any) -> None:
        n = m.graph.node.add()
        n.op_type = "Identity"

    @edit("graph-name-empty")
    def _(m: Any) -> None:
        m.graph.name = ""

    @edit("metadata-duplicate")
    def _(m: Any) -> None:
        for _ in range(2):
            p = m.metadata_props.add()
            p.key, p.value = "k", "v"

    @edit("ssa-output-twice")
    def _(m: Any) -> None:
        node(m, "Sub").output[0] = "p"

    @edit("not-sorted")
    def _(m: Any) -> None:
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(nodes[::-1])

    @edit("initializer-input-untyped")
    def _(m: Any) -> None:
        m.graph.input.add().name = "one"

    @edit("initializer-input-typed")
    def _(m: Any) -> None:
        m.graph.input.append(helper.make_tensor_value_info("one", TensorProto.DOUBLE, [1]))

    @edit("initializer-input-other-type")
    def _(m: Any) -> None:
        m.graph.input.append(helper.make_tensor_value_info("one", TensorProto.FLOAT, [1]))

    @edit("initializer-unnamed")
    def _(m: Any) -> None:
        m.graph.initializer.add().CopyFrom(TensorProto(data_type=1, dims=[1], float_data=[1.0]))

    @edit("initializer-duplicate")
    def _(m: Any) -> None:
        m.graph.initializer.append(init(m, "one"))

    @edit("value-info-other-type")
    def _(m: Any) -> None:
        m.graph.value_info.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1]))

    @edit("value-info-same-type")
    def _(m: Any) -> None:
        m.graph.value_info.append(helper.make_tensor_value_info("p", TensorProto.DOUBLE, ["N", 1]))

    @edit("segment")
    def _(m: Any) -> None:
        init(m, "one").segment.begin = 0

    for data_type in range(-1, 30):
        for storage in (
            "raw-short",
            "raw-junk",
            "raw",
            "raw-long",
            "typed",
            "typed-long",
            "two-fields",
        ):

            def retype(m: Any, data_type: int = data_type, storage: str = storage) -> None:
                t = init(m, "one")
                t.ClearField("double_data")
                t.ClearField("raw_data")
                t.data_type = data_type
                t.dims[:] = [1]
                raw = {
                    "raw-short": bytes(1),
                    "raw-junk": b"\\x0",
                    "raw": bytes(8),
                    "raw-long": bytes(16),
                }
                if storage in raw:
                    t.raw_data = raw[storage]  # junk: 3 bytes 0x5c 0x78 0x30, padding bits set
                elif storage.startswith("typed"):
                    n = 2 if storage == "typed-long" else 1
                    t.float_data.extend([1.0] * n)
                    t.int32_data.extend([1] * n) if data_type not in (1, 14) else None
                else:
                    t.float_data.append(1.0)
                    t.raw_data = bytes(4)

            out.append((f"type-{data_type}-{storage}", retype))
    return out


@pytest.mark.parametrize(("name", "fn"), _edits(), ids=[n for n, _ in _edits()])
def test_checker_and_session_edits(name: str, fn: Any) -> None:
    model = _probe_model()
    fn(model)
    try:
        data = model.SerializeToString()
    except Exception:
        pytest.skip("protobuf refuses to serialise this edit")
    assert _new_graph(data, "probe_0.onnx", 8, 2) == _old_graph(data, "probe_0.onnx", 8, 2, 2)


def _ml_cases() -> dict[str, bytes]:
    """ai.onnx.ml classifiers with the attributes their onnxruntime kernels check."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    h = 8
    label = helper.make_node(
        "ArgMax", [C.CLASSIFIER_PROBABILITIES], [C.CLASSIFIER_LABEL], axis=1, keepdims=0
    )
    to_double = helper.make_node("Cast", ["z"], [C.CLASSIFIER_PROBABILITIES], to=11)
    cut = [numpy_helper.from_array(np.array([v]), k) for k, v in (("s", 0), ("e", 2), ("a", 1))]

    def probe(nodes: list[Any], inits: list[Any]) -> bytes:
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info(C.CLASSIFIER_INPUT, TensorProto.DOUBLE, ["N", h])],
            [
                helper.make_tensor_value_info(C.CLASSIFIER_LABEL, TensorProto.INT64, ["N"]),
                helper.make_tensor_value_info(
                    C.CLASSIFIER_PROBABILITIES, TensorProto.DOUBLE, ["N", 2]
                ),
            ],
            inits,
        )
        imports = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
        model = helper.make_model(graph, opset_imports=imports)
        model.ir_version = 8
        return bytes(model.SerializeToString())

    def linear(**kw: Any) -> bytes:
        attrs = {
            "coefficients": [0.1] * (2 * h),
            "intercepts": [0.0, 0.0],
            "classlabels_ints": [0, 1],
            **kw,
        }
        node = helper.make_node(
            "LinearClassifier", [C.CLASSIFIER_INPUT], ["l", "z"], domain="ai.onnx.ml", **attrs
        )
        return probe([node, to_double, label], [])

    def sliced(op: str, **kw: Any) -> bytes:
        nodes = [
            helper.make_node(op, [C.CLASSIFIER_INPUT], ["n"], domain="ai.onnx.ml", **kw),
            helper.make_node("Slice", ["n", "s", "e", "a"], ["z"]),
            to_double,
            label,
        ]
        return probe(nodes, cut)

    def tree(**kw: Any) -> bytes:
        attrs = {
            "nodes_treeids": [0, 0, 0],
            "nodes_nodeids": [0, 1, 2],
            "nodes_featureids": [0, 0, 0],
            "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF"],
            "nodes_values": [0.0, 0.0, 0.0],
            "nodes_truenodeids": [1, 0, 0],
            "nodes_falsenodeids": [2, 0, 0],
            "class_treeids": [0, 0],
            "class_nodeids": [1, 2],
            "class_ids": [0, 1],
            "class_weights": [1.0, 1.0],
            "classlabels_int64s": [0, 1],
            **kw,
        }
        node = helper.make_node(
            "TreeEnsembleClassifier", [C.CLASSIFIER_INPUT], ["l", "z"], domain="ai.onnx.ml", **attrs
        )
        return probe([node, to_double, label], [])

    return {
        "linear": linear(),
        "linear-bad-transform": linear(post_transform="BOGUS"),
        "linear-logistic": linear(post_transform="LOGISTIC"),
        "linear-one-intercept": linear(intercepts=[0.0], coefficients=[0.1] * h),
        "linear-three-intercepts": linear(intercepts=[0.0] * 3, coefficients=[0.1] * (3 * h)),
        "normalizer": sliced("Normalizer", norm="L1"),
        "normalizer-bad-norm": sliced("Normalizer", norm="BOGUS"),
        "scaler": sliced("Scaler", scale=[1.0] * h, offset=[0.0] * h),
        "scaler-one-value": sliced("Scaler", scale=[2.0], offset=[1.0]),
        "scaler-lengths-differ": sliced("Scaler", scale=[1.0, 2.0, 3.0], offset=[0.0]),
        "tree": tree(),
        "tree-bad-mode": tree(nodes_modes=["BOGUS", "LEAF", "LEAF"]),
        "tree-lengths-differ": tree(nodes_treeids=[0, 0]),
        "tree-self-loop": tree(nodes_truenodeids=[0, 0, 0]),
        "tree-missing-node": tree(nodes_falsenodeids=[7, 0, 0]),
        "tree-class-id-too-big": tree(class_ids=[0, 5]),
        "tree-bad-transform": tree(post_transform="BOGUS"),
        "tree-repeated-id": tree(nodes_nodeids=[0, 1, 1]),
        "tree-weight-on-missing-node": tree(class_nodeids=[1, 9]),
        "tree-three-base-values": tree(base_values=[0.0, 0.0, 0.0]),
        "tree-cycle": tree(
            nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"],
            nodes_truenodeids=[1, 0, 0],
            nodes_falsenodeids=[2, 2, 0],
        ),
    }  # fmt: skip


ML_CASES = _ml_cases()


@pytest.mark.parametrize("name", sorted(ML_CASES))
def test_ml_kernel_attributes(name: str) -> None:
    data = ML_CASES[name]
    assert _new_graph(data, "probe_0.onnx", 8, 2) == _old_graph(data, "probe_0.onnx", 8, 2, 2)
