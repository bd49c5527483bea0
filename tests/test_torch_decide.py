"""The torch decision (asa_format.runtime.torch_decide) equals onnxruntime and Bundle.decide."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import asa_format
from asa_format import constants as C
from asa_format import load_bundle
from asa_format.bundle import Bundle
from asa_format.errors import DecisionError
from asa_format.gating import gates
from asa_format.graphs.fastpath import fused_product
from asa_format.runtime import torch_decide
from asa_format.runtime.torch_decide import TorchDecider
from asa_format.testing import linear_router_graph, make_test_contents

ROOT = Path(__file__).resolve().parent.parent
# the valid cases with an asa intervention (they carry decisions.json; format 1.1 cases may have none)
VALID = sorted(
    p / "bundle"
    for p in (ROOT / "spec" / "conformance" / "valid").iterdir()
    if (p / "decisions.json").is_file()
)
LEGACY = sorted(p for p in (ROOT / "tests" / "fixtures" / "legacy").iterdir() if p.is_dir())
BATCHES = (1, 8, 64, 256)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from asa_format.converters.convert import convert_legacy

    out = []
    for case in LEGACY:
        dest = tmp_path_factory.mktemp("conv") / case.name
        convert_legacy(case, dest, samples=64)
        out.append(dest)
    return out


def _rows(bundle: Bundle, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, bundle.hidden_size)) * rng.uniform(0.2, 8.0, size=(n, 1))
    ).astype(np.float32)


def _reference(bundle_ort: Bundle, h32: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, index, prob = bundle_ort._decide_ort(h32)
    gate = gates(prob, bundle_ort.manifest.steering.tau)
    gate[np.isnan(scores).any(axis=1)] = 0
    return index, prob, gate


def _assert_equal(path: Path, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> None:
    bundle = load_bundle(path, asa_only=True)  # format 1.1: the asa part of a mixed bundle
    slow = load_bundle(path, fast=False, asa_only=True)
    for host_numpy in (True, False):
        decider = TorchDecider.for_bundle(bundle, host_numpy=host_numpy)
        assert decider is not None, f"{path}: the torch decision was not proven on load"
        _assert_decider(decider, bundle, slow, dtypes)


def _assert_decider(
    decider: TorchDecider, bundle: Bundle, slow: Bundle, dtypes: tuple[torch.dtype, ...]
) -> None:
    for n in BATCHES:
        base = torch.from_numpy(_rows(bundle, n, seed=n))
        for dtype in dtypes:
            rows = base.to(dtype)
            h32 = rows.to(torch.float32).numpy()  # the runtime's cast
            got = decider.decide(rows)
            assert got.domain_index.dtype == torch.int64 and got.probability.dtype == torch.float64
            index, prob, gate = _reference(slow, h32)
            np.testing.assert_array_equal(got.domain_index.numpy(), index)
            np.testing.assert_array_equal(got.gate.numpy(), gate)
            np.testing.assert_allclose(got.probability.numpy(), prob, rtol=0, atol=1e-12)
            records = got.to_numpy_records(bundle.domains)
            ours = bundle.decide(h32)
            assert [(r.domain, r.domain_index, r.gate) for r in records] == [
                (r.domain, r.domain_index, r.gate) for r in ours
            ]
            assert (
                max(abs(a.probability - b.probability) for a, b in zip(records, ours, strict=True))
                <= 1e-12
            )


@pytest.mark.parametrize("path", VALID, ids=[p.parent.name for p in VALID])
def test_conformance_cases(path: Path) -> None:
    _assert_equal(path, (torch.float32, torch.float16, torch.bfloat16))


def test_converted_legacy_fixtures(converted: list[Path]) -> None:
    assert len(converted) == len(LEGACY) >= 5
    for path in converted:
        _assert_equal(path, (torch.float32, torch.bfloat16))


def _bisect_rows(bundle_ort: Bundle, target: float, seed: int) -> Iterator[np.ndarray]:
    """Pairs of float32 rows on either side of ``target``, as close to it as float32 rows allow."""
    rng = np.random.default_rng(seed)
    found = 0
    for _ in range(200):
        a, b = rng.standard_normal((2, bundle_ort.hidden_size)).astype(np.float32) * 3.0
        (ia, ib), (pa, pb) = _reference(bundle_ort, np.stack([a, b]))[:2]
        if ia != ib or (pa - target) * (pb - target) >= 0:
            continue
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            p = _reference(bundle_ort, (a + np.float32(mid) * (b - a))[None].astype(np.float32))[1][
                0
            ]
            if (p - target) * (pa - target) > 0:
                lo = mid
            else:
                hi = mid
        yield (a + np.float32(lo) * (b - a)).astype(np.float32)
        yield (a + np.float32(hi) * (b - a)).astype(np.float32)
        found += 1
        if found >= 4:
            return


def test_rows_near_tau_and_one_minus_tau(tmp_path: Path) -> None:
    contents = make_test_contents(
        hidden_size=24, domains=("a", "b"), probe_scale=6.0, tau=0.7, seed=3
    )
    path = asa_format.save_bundle(contents, tmp_path / "b")
    bundle, slow = load_bundle(path), load_bundle(path, fast=False)
    deciders = [TorchDecider.for_bundle(bundle, host_numpy=h) for h in (True, False)]
    for target in (0.7, 0.3):
        rows = np.stack(list(_bisect_rows(slow, target, seed=int(target * 10))))
        assert len(rows) >= 4
        index, prob, gate = _reference(slow, rows)
        assert np.all(np.abs(prob - target) < 1e-6)
        assert len(set(gate.tolist())) == 2, "rows on both sides of the threshold"
        for decider in deciders:
            assert decider is not None
            got = decider.decide(torch.from_numpy(rows))
            np.testing.assert_array_equal(got.gate.numpy(), gate)
            np.testing.assert_array_equal(got.domain_index.numpy(), index)
            np.testing.assert_allclose(got.probability.numpy(), prob, rtol=0, atol=1e-12)


def test_router_ties_pick_the_first_domain(tmp_path: Path) -> None:
    contents = make_test_contents(
        hidden_size=16, domains=("a", "b", "c", "d"), probe_scale=3.0, seed=4
    )
    rng = np.random.default_rng(9)
    weights = rng.standard_normal((16, 4))
    weights[:, 2] = weights[:, 1]  # domains b and c always tie
    contents.router = linear_router_graph(weights, np.zeros(4))
    path = asa_format.save_bundle(contents, tmp_path / "ties")
    flat = make_test_contents(hidden_size=16, domains=("a", "b", "c"), router_scale=0.0, seed=5)
    flat_path = asa_format.save_bundle(flat, tmp_path / "flat")  # every domain ties on every row
    for p in (path, flat_path):
        _assert_equal(p)
    bundle = load_bundle(path)
    decider = TorchDecider.for_bundle(bundle, host_numpy=False)
    assert decider is not None
    got = decider.decide(torch.from_numpy(_rows(bundle, 256, 1))).domain_index.numpy()
    assert 1 in got and 2 not in got, "ties resolve to the lowest index"
    flat_bundle = load_bundle(flat_path)
    flat_decider = TorchDecider.for_bundle(flat_bundle, host_numpy=False)
    assert flat_decider is not None
    assert not flat_decider.decide(torch.from_numpy(_rows(flat_bundle, 64, 2))).domain_index.any()


def test_unsupported_graph_gives_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import onnx
    from onnx import helper

    contents = make_test_contents(hidden_size=8)
    model = onnx.load_from_string(contents.router)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "p0"
    model.graph.node.append(helper.make_node("Clip", ["p0"], [C.CLASSIFIER_PROBABILITIES]))
    contents.router = model.SerializeToString(deterministic=True)
    bundle = load_bundle(asa_format.save_bundle(contents, tmp_path / "b"))
    with caplog.at_level(logging.DEBUG, logger=torch_decide.__name__):
        assert TorchDecider.for_bundle(bundle) is None
    assert "no checked NumPy plan" in caplog.text


def test_translation_that_differs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = asa_format.save_bundle(
        make_test_contents(hidden_size=16, probe_scale=3.0), tmp_path / "b"
    )
    bundle = load_bundle(path)
    assert TorchDecider.for_bundle(bundle, host_numpy=False) is not None
    # a Sigmoid off by 1e-9: the proof on load must notice and refuse
    monkeypatch.setitem(
        torch_decide._UNARY_OPS, "Sigmoid", lambda x: torch_decide._sigmoid(x) + 1e-9
    )
    with caplog.at_level(logging.DEBUG, logger=torch_decide.__name__):
        assert TorchDecider.for_bundle(bundle, host_numpy=False) is None
    assert "probabilities differ" in caplog.text
    # an operator the translation lacks
    monkeypatch.delitem(torch_decide._BINARY_OPS, "Div")
    with caplog.at_level(logging.DEBUG, logger=torch_decide.__name__):
        assert TorchDecider.for_bundle(bundle, host_numpy=False) is None
    assert "cannot be evaluated in torch" in caplog.text


def test_non_finite_rows_are_not_steered_and_records_refuse(tmp_path: Path) -> None:
    path = asa_format.save_bundle(
        make_test_contents(hidden_size=16, probe_bias=20.0, probe_scale=0.0), tmp_path / "b"
    )
    bundle = load_bundle(path)
    rows = torch.from_numpy(_rows(bundle, 4, 0))
    rows[1, 3] = float("nan")
    rows[2, 0] = float("inf")
    for host_numpy in (True, False):
        built = TorchDecider.for_bundle(bundle, host_numpy=host_numpy)
        assert built is not None
        decider: TorchDecider = built
        got = decider.decide(rows)
        assert got.finite.tolist() == [True, False, False, True]
        assert got.gate.tolist() == [1, 0, 0, 1]
        with pytest.raises(DecisionError) as err:
            got.to_numpy_records(bundle.domains)
        assert err.value.code == "DECISION_INPUT"
        assert len(decider.decide(rows.to(torch.bfloat16))) == 4
    with pytest.raises(DecisionError):
        bundle.decide(rows.numpy())
        with pytest.raises(DecisionError) as shape:
            decider.decide(torch.zeros(2, 15))
        assert shape.value.code == "DECISION_INPUT"
        empty = decider.decide(torch.zeros(0, 16))
        assert len(empty) == 0 and empty.to_numpy_records(bundle.domains) == []


def test_mixed_vectors_and_delta_table(tmp_path: Path) -> None:
    path = asa_format.save_bundle(
        make_test_contents(hidden_size=16, domains=("a", "b", "c"), alpha=3.5), tmp_path / "b"
    )
    bundle = load_bundle(path)
    decider = TorchDecider.for_bundle(bundle)
    assert decider is not None
    v32 = decider.mixed_vectors(torch.float32, "cpu")
    assert v32.shape == (3, 16)
    for d in range(3):
        np.testing.assert_array_equal(v32[d].numpy(), bundle.steering_vector(d))
    v16 = decider.mixed_vectors(torch.bfloat16, torch.device("cpu"))
    assert v16.dtype == torch.bfloat16
    torch.testing.assert_close(
        v16,
        torch.from_numpy(np.stack([bundle.steering_vector(d) for d in range(3)])).to(
            torch.bfloat16
        ),
        rtol=0,
        atol=0,
    )
    table = decider.delta_table(torch.float16, "cpu")
    assert table.shape == (3, 3, 16)
    for d in range(3):
        for g in (-1, 0, 1):
            expect = (np.float32(g * 3.5) * bundle.steering_vector(d)).astype(np.float16)
            np.testing.assert_array_equal(table[d, g + 1].numpy(), expect)


@pytest.mark.parametrize("n", [1, 5, 10, 11, 64, 257])
def test_fused_product_in_blocks(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2048))
    w = rng.standard_normal((2048, 12))
    got = fused_product(x, w)
    assert got.shape == (n, 12) and got.dtype == np.float64
    np.testing.assert_allclose(got, x @ w, rtol=1e-13, atol=1e-12)


def test_sigmoid_norm_probes_with_small_sums(tmp_path: Path) -> None:
    """Probes whose two sigmoids are both tiny for some rows (onnxruntime's sigmoid is exact
    in absolute terms only): those rows are decided by onnxruntime, on every path."""
    import dataclasses

    from hostile_graphs import sigmoid_norm

    h = 24
    rng = np.random.default_rng(21)
    contents = make_test_contents(hidden_size=h, domains=("a", "b"), probe_scale=4.0, seed=6)
    w = rng.standard_normal(h) * 3.0 / np.sqrt(h)
    free = sigmoid_norm(np.stack([w, 0.5 * w], axis=1), np.array([-30.0, -31.0]))
    path = asa_format.save_bundle(
        dataclasses.replace(contents, probes={"a": free, "b": free}), tmp_path / "b"
    )
    bundle = load_bundle(path)
    assert bundle.decision_backend == "numpy"
    slow = load_bundle(path, fast=False)
    rows = (rng.standard_normal((64, h)) * 4.0).astype(np.float32)
    assert bundle._plan.evaluate(rows, bundle.manifest.steering.tau, 0.5).near.any()
    index, prob, gate = _reference(slow, rows)
    assert np.isnan(prob).any() and not np.isnan(prob).all()  # 0 / 0 in onnxruntime
    for host_numpy in (True, False):
        decider = TorchDecider.for_bundle(bundle, host_numpy=host_numpy)
        assert decider is not None
        got = decider.decide(torch.from_numpy(rows))
        np.testing.assert_array_equal(got.domain_index.numpy(), index)
        np.testing.assert_array_equal(got.gate.numpy(), gate)
        np.testing.assert_allclose(got.probability.numpy(), prob, rtol=0, atol=1e-12)
    ours = bundle.decide(rows)
    np.testing.assert_array_equal(ours.gate, gate)
    np.testing.assert_allclose(ours.probability, prob, rtol=0, atol=1e-12)
