"""Hostile graphs: bounded work before any work, and validate <=> load <=> decide.

Each graph is valid ONNX in the role's interface and uses only allowlisted
operators; the static shape walk and cost bounds (spec section 6.7) must
refuse it with a coded error before any onnxruntime session exists, or the
bundle must decide every row the same way alone, in a batch and in
onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hostile_graphs import checked, classifier_model, probe_pair, router_softmax, save_with
from onnx import helper

from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import BundleError
from asa_format.graphs.profile import check_onnx
from asa_format.validate import validate_bundle

H, D = 8, 2


def _static(data: bytes, hidden: int = H, classes: int = D, file: str = C.ROUTER_FILE) -> list[str]:
    _, problems = check_onnx(data, file=file, hidden_size=hidden, n_classes=classes)
    return [p.code for p in problems]


def _w(h: int = H, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((h, d)), np.zeros(d)


def test_concat_with_2200_inputs_is_refused_statically() -> None:
    w, b = _w()
    extra = [
        helper.make_node("Concat", [C.CLASSIFIER_INPUT] * 2200, ["wide"], axis=1),
        helper.make_node("ReduceSum", ["wide", "ax"], ["r"], keepdims=1),
        helper.make_node("Add", ["s", "r"], ["s2"]),
    ]
    data = checked(router_softmax(w, b, extra, {"ax": np.array([1])}, scores="s2"))
    assert _static(data) == ["ONNX_COST"]  # before onnxruntime sees it (the old peak: 2.5 GB)


def test_concat_doubling_chain_is_refused_by_the_row_memory_bound() -> None:
    w, b = _w()
    extra, cur = [], C.CLASSIFIER_INPUT
    for i in range(24):  # width H * 2**24 per row
        extra.append(helper.make_node("Concat", [cur, cur], [f"c{i}"], axis=1))
        cur = f"c{i}"
    extra += [
        helper.make_node("ReduceSum", [cur, "ax"], ["r"], keepdims=1),
        helper.make_node("Add", ["s", "r"], ["s2"]),
    ]
    data = checked(router_softmax(w, b, extra, {"ax": np.array([1])}, scores="s2"))
    assert _static(data) == ["ONNX_COST"]


def test_250_chained_square_products_are_refused_by_the_work_bound(tmp_path: Path) -> None:
    h = 512
    w, b = _w(h)
    extra, cur = [], C.CLASSIFIER_INPUT
    for i in range(250):
        extra.append(helper.make_node("MatMul", [cur, "sq"], [f"m{i}"]))
        cur = f"m{i}"
    extra += [
        helper.make_node("MatMul", [cur, "W"], ["xw2"]),
        helper.make_node("Add", ["xw2", "b"], ["s2"]),
    ]
    data = checked(router_softmax(w, b, extra, {"sq": np.eye(h)}, scores="s2"))
    path = save_with(tmp_path / "b", hidden=h, router=data)
    assert [p.code for p in validate_bundle(path).problems] == [
        "ONNX_COST"
    ]  # no session, no evaluation


def test_outer_product_broadcast_is_refused_by_the_row_memory_bound() -> None:
    h = 2048
    w, b = _w(h)
    extra = [
        helper.make_node("Unsqueeze", [C.CLASSIFIER_INPUT, "a2"], ["col"]),  # [N, H, 1]
        helper.make_node("Unsqueeze", [C.CLASSIFIER_INPUT, "a1"], ["row"]),  # [N, 1, H]
        helper.make_node("Mul", ["col", "row"], ["outer"]),  # [N, H, H]
        helper.make_node("ReduceSum", ["outer", "a12"], ["r"], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["r", "a1"], ["r1"]),
        helper.make_node("Add", ["s", "r1"], ["s2"]),
    ]
    inits = {"a1": np.array([1]), "a2": np.array([2]), "a12": np.array([1, 2])}
    assert _static(checked(router_softmax(w, b, extra, inits, scores="s2")), hidden=h) == [
        "ONNX_COST"
    ]


def test_weights_larger_than_hidden_size_and_classes_allow_are_refused() -> None:
    h = 512
    rng = np.random.default_rng(1)
    big = rng.standard_normal((h, 4096))
    extra = [
        helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "big"], ["wide"]),
        helper.make_node("ReduceSum", ["wide", "ax"], ["r"], keepdims=1),
        helper.make_node("Add", ["s", "r"], ["s2"]),
    ]
    w, b = _w(h)
    data = checked(router_softmax(w, b, extra, {"big": big, "ax": np.array([1])}, scores="s2"))
    assert _static(data, hidden=h) == ["ONNX_COST"]


@pytest.mark.parametrize("shape", [(2, D), (3, D), (1, D)])
def test_constant_output_of_a_fixed_shape_is_refused_statically(
    shape: tuple[int, int], tmp_path: Path
) -> None:
    """A constant passes the [2, H] smoke run when its shape is [2, D], then fails on one row."""
    probs = np.full(shape, 1.0 / D)
    nodes = [
        helper.make_node(
            "Constant",
            [],
            [C.CLASSIFIER_PROBABILITIES],
            value=helper.make_tensor("c", 11, shape, probs.ravel()),
        ),
        helper.make_node(
            "ArgMax", [C.CLASSIFIER_PROBABILITIES], [C.CLASSIFIER_LABEL], axis=1, keepdims=0
        ),
    ]
    data = checked(classifier_model(nodes, {}, H, D))
    path = save_with(tmp_path / "b", router=data)
    report = validate_bundle(path)
    assert [p.code for p in report.problems] == ["ONNX_IO"]
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    assert info.value.code == "ONNX_IO"


def test_gathered_constant_output_is_refused_statically() -> None:
    nodes = [
        helper.make_node("Gather", ["table", "idx"], [C.CLASSIFIER_PROBABILITIES], axis=0),
        helper.make_node(
            "ArgMax", [C.CLASSIFIER_PROBABILITIES], [C.CLASSIFIER_LABEL], axis=1, keepdims=0
        ),
    ]
    data = checked(
        classifier_model(nodes, {"table": np.full((4, D), 0.5), "idx": np.array([0, 1])}, H, D)
    )
    assert _static(data) == ["ONNX_IO"]


def test_label_of_the_wrong_shape_is_refused_statically() -> None:
    w, b = _w()
    nodes = [
        helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["s"]),
        helper.make_node("Softmax", ["s"], [C.CLASSIFIER_PROBABILITIES], axis=1),
        helper.make_node(
            "ArgMax", ["s"], [C.CLASSIFIER_LABEL], axis=1, keepdims=1
        ),  # [N, 1], declared [N]
    ]
    assert _static(checked(classifier_model(nodes, {"W": w, "b": b}, H, D))) == ["ONNX_IO"]


def test_reshape_to_a_computed_shape_is_refused_as_unbounded() -> None:
    w, b = _w()
    extra = [
        helper.make_node("Shape", ["s"], ["shp"]),
        helper.make_node("Reshape", ["s", "shp"], ["s2"]),
    ]
    assert _static(checked(router_softmax(w, b, extra, scores="s2"))) == ["ONNX_SHAPE"]


def test_probe_output_from_a_batch_mixing_reshape_is_refused() -> None:
    """[N, 2] -> [2, N] -> [N, 2] mixes rows: shapes check out at N = 2 only."""
    w = np.random.default_rng(2).standard_normal((H, 2))
    nodes = [
        helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "W"], ["xw"]),
        helper.make_node("Transpose", ["xw"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "shape"], ["mixed"]),
        helper.make_node("Softmax", ["mixed"], [C.CLASSIFIER_PROBABILITIES], axis=1),
        helper.make_node(
            "ArgMax", [C.CLASSIFIER_PROBABILITIES], [C.CLASSIFIER_LABEL], axis=1, keepdims=0
        ),
    ]
    data = checked(classifier_model(nodes, {"W": w, "shape": np.array([-1, 2])}, H, 2))
    assert _static(data, classes=2, file="probe_0.onnx") == ["ONNX_SHAPE"]


def test_exported_graphs_pass_the_static_walk() -> None:
    """What skl2onnx and the reference builders produce stays valid (also the conformance corpus)."""
    from asa_format.testing import make_test_contents

    contents = make_test_contents(hidden_size=H, domains=("a", "b", "c"))
    assert _static(contents.router, classes=3) == []
    assert _static(contents.scaler, file=C.SCALER_FILE) == []
    for data in contents.probes.values():
        assert _static(data, classes=2, file="probe_0.onnx") == []


def test_exp_overflow_window_gives_one_decision_alone_and_in_a_batch(tmp_path: Path) -> None:
    """exp(709.5) is finite; a one-row evaluator that overflows at 709 turns exp(s) * 0 into NaN
    (gate 0 alone, gate +1 in a batch)."""
    from asa_format.testing import scaler_graph

    e0 = np.eye(H, 1).ravel()
    probe = probe_pair(e0, 0.0, exp_trick=True, shift=-700.0)  # p = sigmoid(x0 - 700 + exp(x0) * 0)
    path = save_with(
        tmp_path / "b",
        scaler=scaler_graph(np.zeros(H), np.ones(H)),
        probes={"a": probe, "b": probe},
        route_to="a",
    )
    bundle, reference = load_bundle(path), load_bundle(path, fast=False)
    row = np.zeros(H, dtype=np.float32)
    row[0] = 709.5
    rows = np.stack([row, np.zeros(H, dtype=np.float32), row])
    alone, batch, ort = bundle.decide(row)[0], bundle.decide(rows), reference.decide(row)[0]
    assert (
        (alone.domain, alone.gate)
        == (batch[0].domain, batch[0].gate)
        == (ort.domain, ort.gate)
        == ("a", 1)
    )
    assert alone.probability == pytest.approx(batch[0].probability, abs=1e-12)


def test_near_tie_rows_decide_the_same_alone_and_in_a_batch(tmp_path: Path) -> None:
    """Exact router ties and probabilities exactly at tau are decided by onnxruntime on the row alone."""
    from asa_format.testing import scaler_graph

    w = np.zeros((H, 2))
    w[0] = [1.0, 1.0 + 2**-40]  # scores differ in the last bits only
    probe_a = probe_pair(np.zeros(H), float(np.log(0.6 / 0.4)))  # p = tau exactly (up to rounding)
    path = save_with(
        tmp_path / "b", scaler=scaler_graph(np.zeros(H), np.ones(H)), router=router_softmax(w, np.zeros(2)),
        probes={"a": probe_a, "b": probe_a}, tau=0.6,
    )  # fmt: skip
    bundle, reference = load_bundle(path), load_bundle(path, fast=False)
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((64, H)).astype(np.float32)
    rows[::3, 0] = 0.0
    batch = bundle.decide(rows)
    ort = reference.decide(rows)
    for i in range(rows.shape[0]):
        for got in (bundle.decide(rows[i])[0], reference.decide(rows[i])[0], ort[i]):
            assert (got.domain_index, got.gate) == (batch[i].domain_index, batch[i].gate), i


def test_probabilities_that_read_other_rows_are_refused() -> None:
    """s + sum over the batch: the shape is [N, D], but a row's decision depends on its batch."""
    w, b = _w()
    extra = [
        helper.make_node("ReduceSum", ["s", "ax0"], ["colsum"], keepdims=1),  # [1, D]: sums rows
        helper.make_node("Add", ["s", "colsum"], ["s2"]),
    ]
    assert _static(checked(router_softmax(w, b, extra, {"ax0": np.array([0])}, scores="s2"))) == [
        "ONNX_SHAPE"
    ]


def test_clip_with_vector_bounds_is_refused_statically() -> None:
    """onnxruntime accepts the session and fails on every evaluation (bounds must be scalars)."""
    w, b = _w()
    extra = [helper.make_node("Clip", ["s", "lo"], ["s2"])]
    assert _static(checked(router_softmax(w, b, extra, {"lo": np.zeros(2)}, scores="s2"))) == [
        "ONNX_SHAPE"
    ]
