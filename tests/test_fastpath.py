"""The NumPy fast path (asa_format.graphs.fastpath) against onnxruntime, graph form by graph form.

Every bundle here is decided three ways: ``load_bundle(p)`` (the fast path, which
must be the backend in use), ``load_bundle(p, fast=False)`` (onnxruntime, the
reference) and each row alone. Domains and gates must be identical, probabilities
within 1e-12; rows near a boundary are decided by onnxruntime on the row alone.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile_graphs import classifier_model, router_softmax, sigmoid_norm
from onnx import TensorProto, helper, numpy_helper

from asa_format import constants as C
from asa_format import load_bundle, save_bundle
from asa_format.errors import DecisionError
from asa_format.graphs.fastpath import _unique_columns, transposed_product
from asa_format.testing import linear_probe_graph, make_test_contents, scaler_graph

H = 24


def _cast_chain_scaler(mean: np.ndarray, scale: np.ndarray) -> bytes:
    """The published bundles' chain: float32 casts around Sub, then Div in float64 and back."""
    nodes = [
        helper.make_node("Cast", [C.SCALER_INPUT], ["c0"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["c0", "mean"], ["c1"]),
        helper.make_node("Cast", ["c1"], ["c2"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["c2"], ["d0"], to=TensorProto.DOUBLE),
        helper.make_node("Div", ["d0", "scale"], ["d1"]),
        helper.make_node("Cast", ["d1"], ["c3"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["c3"], [C.SCALER_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "scaler",
        [helper.make_tensor_value_info(C.SCALER_INPUT, TensorProto.FLOAT, ["N", H])],
        [helper.make_tensor_value_info(C.SCALER_OUTPUT, TensorProto.FLOAT, ["N", H])],
        [
            numpy_helper.from_array(mean.astype(np.float32).reshape(1, -1), "mean"),
            numpy_helper.from_array(scale.astype(np.float64).reshape(1, -1), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString(deterministic=True))


def _router_sigmoid_norm(w: np.ndarray, b: np.ndarray) -> bytes:
    return sigmoid_norm(w, b)  # two domains, the skl2onnx binary form


def _router_sigmoid_pair(w: np.ndarray, b: float) -> bytes:
    return linear_probe_graph(w, b)  # two domains from one column: [1 - sigmoid, sigmoid]


def _softmax_probe(w: np.ndarray, b: np.ndarray) -> bytes:
    return router_softmax(w, b)  # [H, 2] softmax: a probe in the multinomial form


def _bundle(tmp_path: Path, name: str, **graphs: Any) -> tuple[Any, Any]:
    rng = np.random.default_rng(len(name))
    domains = graphs.pop("domains", ("a", "b", "c"))
    contents = make_test_contents(
        hidden_size=H,
        domains=domains,
        tau=graphs.pop("tau", 0.6),
        missing_probes=graphs.pop("missing", ()),
        no_probe_probability=graphs.pop("no_probe", 0.5),
        probe_scale=4.0,
        seed=len(name),
    )
    probes = dict(contents.probes)
    probes.update(graphs.pop("probes", {}))
    changes: dict[str, Any] = {"probes": probes}
    if "router" in graphs:
        changes["router"] = graphs.pop("router")
    if graphs.pop("cast_scaler", False):
        changes["scaler"] = _cast_chain_scaler(rng.standard_normal(H) * 0.2, 0.5 + rng.random(H))
    assert not graphs
    path = save_bundle(dataclasses.replace(contents, **changes), tmp_path / name)
    fast, slow = load_bundle(path), load_bundle(path, fast=False)
    assert fast.decision_backend == "numpy", f"{name}: the fast path was not proven on load"
    return fast, slow


def _rows(n: int, seed: int, scale: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, H)) * rng.uniform(0.1, scale, size=(n, 1))).astype(np.float32)


def _agree(fast: Any, slow: Any, rows: np.ndarray) -> None:
    a, b = fast.decide(rows), slow.decide(rows)
    np.testing.assert_array_equal(a.domain_index, b.domain_index)
    np.testing.assert_array_equal(a.gate, b.gate)
    np.testing.assert_allclose(a.probability, b.probability, rtol=0, atol=1e-12)
    for i in range(0, rows.shape[0], max(1, rows.shape[0] // 16)):
        one = fast.decide(rows[i])[0]
        assert (one.domain_index, one.gate) == (int(b.domain_index[i]), int(b.gate[i])), i
        assert one.probability == pytest.approx(float(b.probability[i]), abs=1e-12, nan_ok=True)


def _w(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 3.0 / np.sqrt(H)


def _neg_pair(seed: int, bias: float) -> bytes:
    """The skl2onnx binary probe: columns [-w, w], biases [-b, b] (one product, negated)."""
    w = _w((H,), seed)
    return sigmoid_norm(np.stack([-w, w], axis=1), np.array([-bias, bias]))


FORMS: dict[str, dict[str, Any]] = {
    "default": {},
    "cast_chain_scaler": {"cast_scaler": True},
    "sigmoid_norm_probes": {"probes": {d: _neg_pair(i, 0.3 * i) for i, d in enumerate("abc")}},
    "sigmoid_norm_free_columns": {"probes": {"b": sigmoid_norm(_w((H, 2), 7), np.array([0.2, -0.1]))}},
    "softmax_probe": {"probes": {"c": _softmax_probe(_w((H, 2), 8), np.array([0.1, -0.3]))}},
    "missing_probe": {"missing": ("b",), "no_probe": 0.75},
    "router_sigmoid_norm": {"domains": ("a", "b"), "router": _router_sigmoid_norm(_w((H, 2), 9), np.array([0.0, 0.2]))},
    "router_sigmoid_pair": {"domains": ("a", "b"), "router": _router_sigmoid_pair(_w((H,), 10), 0.1)},
    "tau_half": {"tau": 0.5, "missing": ("c",), "no_probe": 0.5},
    "six_domains": {"domains": ("a", "b", "c", "d", "e", "f"), "missing": ("d",)},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FORMS))
def test_fast_path_equals_onnxruntime(name: str, tmp_path: Path) -> None:
    fast, slow = _bundle(tmp_path, name, **dict(FORMS[name]))
    for n, seed in ((1, 1), (2, 2), (17, 3), (64, 4), (300, 5)):
        _agree(fast, slow, _rows(n, seed))
    # the gates of the chosen inputs span both signs (the comparison is not vacuous)
    assert len(set(slow.decide(_rows(300, 5)).gate.tolist())) >= 2


def test_negated_and_repeated_columns_are_multiplied_once() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    fused = np.stack([a, b, -a, b, -b, np.zeros(16), a], axis=1)
    unique, source, sign = _unique_columns(fused)
    assert unique.shape == (16, 3)
    np.testing.assert_array_equal(unique[:, source] * sign, fused)  # bit for bit
    assert sign.tolist() == [1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 64, 257])
def test_transposed_product_in_blocks(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2048))
    w = rng.standard_normal((8, 2048))
    got = transposed_product(x, w)
    assert got.shape == (8, n)
    np.testing.assert_allclose(got, w @ x.T, rtol=1e-13, atol=1e-12)


def test_non_finite_rows_raise_and_overflowing_rows_are_decided_alone(tmp_path: Path) -> None:
    fast, slow = _bundle(tmp_path, "inf", **dict(FORMS["sigmoid_norm_probes"]))
    rows = _rows(40, 6)
    for bad in (np.nan, np.inf, -np.inf):
        broken = rows.copy()
        broken[13, 5] = bad
        for batch in (broken, broken[13:14]):
            with pytest.raises(DecisionError) as info:
                fast.decide(batch)
            assert info.value.code == "DECISION_INPUT"
    huge = rows.copy()
    huge[7] = 3.0e38  # finite input whose scores leave the overflow window
    _agree(fast, slow, huge)


def test_rows_exactly_on_a_threshold_go_to_onnxruntime(tmp_path: Path) -> None:
    """A probe whose score is 0 on every row: p = 0.5 = tau, the gate boundary itself."""
    contents = make_test_contents(hidden_size=H, domains=("a", "b"), tau=0.5, seed=3)
    zero = linear_probe_graph(np.zeros(H), 0.0)
    contents = dataclasses.replace(contents, probes={"a": zero, "b": zero})
    path = save_bundle(contents, tmp_path / "b")
    fast, slow = load_bundle(path), load_bundle(path, fast=False)
    assert fast.decision_backend == "numpy"
    rows = _rows(32, 7)
    got = fast._plan.evaluate(rows, 0.5, 0.5)
    assert got.near.all(), "p = tau lies on the boundary: every row is near"
    _agree(fast, slow, rows)
    assert set(fast.decide(rows).gate.tolist()) == {1}


def test_scaler_with_identity_casts_is_bit_identical(tmp_path: Path) -> None:
    fast, slow = _bundle(tmp_path, "casts", cast_scaler=True)
    rows = _rows(33, 8, scale=50.0)
    ref = slow._sessions[C.SCALER_FILE].run([C.SCALER_OUTPUT], {C.SCALER_INPUT: rows})[0]
    np.testing.assert_array_equal(fast._plan.scale(rows), ref)
    kinds = [k for k, _ in fast._plan.scaler.steps]
    assert kinds.count("cast") >= 3
    assert sum(u is None for u, _ in fast._plan.scaler._ops) == 2  # to float64 and back only


def test_scaler_graph_with_plain_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    contents = make_test_contents(hidden_size=H, seed=9)
    contents = dataclasses.replace(
        contents, scaler=scaler_graph(rng.standard_normal(H), 1e-30 + rng.random(H))
    )
    path = save_bundle(contents, tmp_path / "b")
    fast, slow = load_bundle(path), load_bundle(path, fast=False)
    assert fast.decision_backend == "numpy"
    _agree(fast, slow, _rows(64, 10, scale=1e3))


def test_classifier_model_helper_builds_probes() -> None:
    """The probe builders used above are valid in the probe role (guards the parametrisation)."""
    from asa_format.graphs.profile import check_onnx

    for data in (_neg_pair(1, 0.2), _softmax_probe(_w((H, 2), 2), np.zeros(2))):
        _, problems = check_onnx(data, file="probe_0.onnx", hidden_size=H, n_classes=2)
        assert problems == []
    nodes = [helper.make_node("Identity", [C.CLASSIFIER_INPUT], ["unused"])]
    assert classifier_model(nodes, {}, H, 2)  # the generic builder stays importable


def test_sigmoid_norm_with_a_small_sum_is_decided_by_onnxruntime(tmp_path: Path) -> None:
    """Both scores near -50: onnxruntime's sigmoid returns 0 for each (absolute accuracy),
    so its probability 0 / 0 is NaN while exact arithmetic gives 1/2; such rows are near."""
    w = _w((H,), 11) * 0.01
    tiny = sigmoid_norm(np.stack([w, w], axis=1), np.array([-50.0, -50.0]))
    fast, slow = _bundle(tmp_path, "tiny", probes={"a": tiny, "b": tiny, "c": tiny})
    rows = _rows(64, 12)
    assert fast._plan.evaluate(rows, 0.6, 0.5).near.all()
    ref = slow.decide(rows)
    assert np.isnan(ref.probability).all() and not ref.gate.any()
    _agree(fast, slow, rows)


def test_onnxruntime_backend_decides_small_sums_alone(tmp_path: Path) -> None:
    """The same rows with fast=False: a batch gives each row its decision alone."""
    w = _w((H,), 13)
    free = sigmoid_norm(np.stack([w, 0.5 * w], axis=1), np.array([-36.0, -37.0]))
    _, slow = _bundle(tmp_path, "free", probes={"a": free, "b": free, "c": free})
    rows = _rows(48, 14, scale=0.5)
    batch = slow.decide(rows)
    for i in range(rows.shape[0]):
        one = slow.decide(rows[i])[0]
        assert (one.domain_index, one.gate) == (int(batch.domain_index[i]), int(batch.gate[i]))
        assert one.probability == pytest.approx(float(batch.probability[i]), abs=1e-12, nan_ok=True)


def test_threads_deciding_one_row_at_a_time_agree(tmp_path: Path) -> None:
    """The one-row path keeps a buffer per thread: concurrent calls give sequential results."""
    import threading

    fast, _ = _bundle(tmp_path, "threads", **dict(FORMS["sigmoid_norm_probes"]))
    rows = _rows(48, 15)
    want = [fast.decide(r)[0] for r in rows]
    got: dict[int, list[Any]] = {}

    def work(k: int) -> None:
        got[k] = [fast.decide(r)[0] for _ in range(20) for r in rows[k::4]]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert got[k] == [w for _ in range(20) for w in want[k::4]]


@pytest.mark.parametrize("form", ["default", "cast_chain_scaler"])
@pytest.mark.parametrize("fast_state", [True, False])
def test_the_one_row_path_is_exact_quiet_and_keeps_the_callers_error_state(
    form: str, fast_state: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decide_one`` (the runtime's one-row lane) scales into preallocated buffers with the
    error state set directly: the scaled row is ``ScalerChain.run``'s bit for bit, a row
    that overflows float32 warns nothing (warnings as errors, and under the caller's own
    ``np.seterr(all="raise")``), and the caller's error state is the same afterwards. With
    ``np.errstate`` instead (NumPy without the context variable), the same."""
    from asa_format.graphs import fastpath

    if not fast_state:
        monkeypatch.setattr(fastpath, "_ERR_VAR", None)
    fast, slow = _bundle(tmp_path, form, **dict(FORMS[form]))
    plan = fast._plan
    rows = _rows(24, 11, scale=50.0)
    rows[3] = 3.0e38  # overflows the scaler's float32 steps
    rows[4, :5] = [np.nan, np.inf, -np.inf, 1e-45, -0.0]
    rows[5] = 1e-42  # subnormal inputs
    buf32, buf64 = np.empty(H, np.float32), np.empty(H, np.float64)
    with np.errstate(all="ignore"):
        for i, row in enumerate(rows):
            want = plan.scaler.run(rows[i : i + 1])[0]
            got = plan.scaler.run_row(row, buf32, buf64)
            assert got.dtype == np.float32 and got.tobytes() == want.tobytes(), i
    raising = {"divide": "raise", "over": "raise", "under": "raise", "invalid": "raise"}
    old = np.seterr(all="raise")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for i, row in enumerate(rows):
                one = plan.decide_one(row, 0.6)
                assert one == plan.decide_one(rows[i : i + 1], 0.6), i
                if i in (3, 4):
                    assert one is None, i  # non-finite: decided by onnxruntime
                assert np.geterr() == raising
    finally:
        np.seterr(**old)
    _agree(fast, slow, rows[np.r_[0:3, 5:24]])
