"""Exact legacy semantics and ONNX export, checked against real-sklearn references.

Every fixture under ``tests/fixtures/legacy/`` was written by a real
scikit-learn/numpy pair (see its ``case.json``) together with
``reference.npz``: the decisions that scikit-learn computed, row by row, the
way the legacy hook does. The tests prove that

* :func:`legacy_decide` (numpy only) reproduces those decisions, and
* the exported ONNX graphs, run by onnxruntime, reproduce :func:`legacy_decide`.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from asa_format.constants import (
    CLASSIFIER_INPUT,
    CLASSIFIER_LABEL,
    CLASSIFIER_PROBABILITIES,
    ONNX_OPSET_RANGES,
    PRODUCER_NAME,
    SCALER_INPUT,
    SCALER_OUTPUT,
)
from asa_format.converters.export import (
    BATCH_DIM,
    EXPORT_OP_TYPES,
    export_fitted_classifier,
    export_fitted_scaler,
    export_probe,
    export_router,
    export_scaler,
    graph_op_types,
)
from asa_format.converters.legacy import read_legacy_bundle
from asa_format.converters.legacy_model import (
    LegacyAssets,
    LegacyLogisticRegression,
    LegacyScaler,
)
from asa_format.converters.semantics import (
    gate_from_probability,
    legacy_decide,
    legacy_steering_vector,
    probe_probability,
    probe_uses_softmax,
    scaler_transform,
    scaler_uses_float32,
)
from asa_format.errors import ConversionError

pytestmark = pytest.mark.convert

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").is_file())
N_SAMPLES = 3000


def _session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@cache
def _assets(case: str) -> LegacyAssets:
    return read_legacy_bundle(FIXTURES / case)


def _case_info(case: str) -> dict:
    return json.loads((FIXTURES / case / "case.json").read_text(encoding="utf-8"))


def _reference(case: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / case / "reference.npz", allow_pickle=False) as ref:
        return {k: ref[k] for k in ref.files}


@cache
def _graphs(case: str) -> tuple[bytes, bytes, dict[str, bytes]]:
    a = _assets(case)
    probes = {name: export_probe(p) for name, p in a.probes.items()}
    return export_scaler(a.scaler), export_router(a.router, a.domains), probes


def _sample_hidden(a: LegacyAssets, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = a.scaler.mean if a.scaler.mean is not None else np.zeros(a.hidden_size)
    scale = a.scaler.scale if a.scaler.scale is not None else np.ones(a.hidden_size)
    z = rng.normal(0.0, 1.5, size=(n, a.hidden_size))
    return (mean + scale * z).astype(np.float32)


def _onnx_decide(case: str, hidden: np.ndarray) -> dict[str, np.ndarray]:
    a = _assets(case)
    scaler_b, router_b, probe_b = _graphs(case)
    x = _session(scaler_b).run([SCALER_OUTPUT], {SCALER_INPUT: hidden})[0]
    x64 = x.astype(np.float64)
    label, rprob = _session(router_b).run(
        [CLASSIFIER_LABEL, CLASSIFIER_PROBABILITIES], {CLASSIFIER_INPUT: x64}
    )
    domain = np.argmax(rprob, axis=1)
    prob = np.full(len(hidden), 0.5)
    probe_labels = np.zeros(len(hidden), dtype=np.int64)
    for j, name in enumerate(a.domains):
        if name not in probe_b:
            continue
        plabel, pprob = _session(probe_b[name]).run(
            [CLASSIFIER_LABEL, CLASSIFIER_PROBABILITIES], {CLASSIFIER_INPUT: x64}
        )
        sel = domain == j
        prob[sel] = pprob[sel, 1]
        probe_labels[sel] = plabel[sel]
        assert np.allclose(pprob.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    return {
        "x": x,
        "label": label,
        "router_prob": rprob,
        "domain": domain,
        "prob": prob,
        "probe_label": probe_labels,
    }


def test_fixture_index_lists_every_case() -> None:
    index = json.loads((FIXTURES / "MANIFEST.json").read_text(encoding="utf-8"))
    assert sorted(c["case"] for c in index["cases"]) == CASES
    protocols = {c["protocol"] for c in index["cases"]}
    assert protocols == {2, 3, 4, 5}
    assert len(CASES) >= 8


# legacy_decide == the real scikit-learn that wrote the fixture ----------------------


@pytest.mark.parametrize("case", CASES)
def test_legacy_decide_matches_real_sklearn(case: str) -> None:
    a = _assets(case)
    info = _case_info(case)
    ref = _reference(case)
    assert a.scaler.sklearn_version == info["sklearn"]
    x = scaler_transform(a.scaler, ref["hidden"])
    # The scaler output is bit-identical to what that sklearn version produced.
    assert np.array_equal(x.view(np.uint32), ref["x"].view(np.uint32))
    domain, prob, gate = legacy_decide(a, ref["hidden"])
    assert domain.dtype == np.int64 and prob.dtype == np.float64 and gate.dtype == np.int8
    assert np.array_equal(domain, ref["domain"])
    assert np.array_equal(gate, ref["gate"])
    # Estimators fitted by sklearn >= 1.8 on float32 data hold float32 parameters and are
    # evaluated in float32, as legacy_decide reproduces (within float32 summation order).
    tol = 1e-12 if info["coef_dtype"] == "float64" else 3e-7
    assert np.max(np.abs(prob - ref["probability"])) < tol


@pytest.mark.parametrize("case", CASES)
def test_other_scaler_arithmetic_is_not_bit_exact(case: str) -> None:
    """The version switch matters: the other variant changes some float32 bits."""
    a = _assets(case)
    ref = _reference(case)
    flipped = dataclasses.replace(
        a.scaler, sklearn_version="1.7.2" if scaler_uses_float32(a.scaler) else "1.8.0"
    )
    assert scaler_uses_float32(flipped) != scaler_uses_float32(a.scaler)
    other = scaler_transform(flipped, ref["hidden"])
    assert not np.array_equal(other.view(np.uint32), ref["x"].view(np.uint32))


def test_multinomial_binary_probe_trap() -> None:
    """sklearn 1.3 multinomial binary probes give sigmoid(2s), not sigmoid(s)."""
    case = "sk13_multinomial_probes_p4"
    a = _assets(case)
    ref = _reference(case)
    assert all(probe_uses_softmax(p) for p in a.probes.values())
    naive = dataclasses.replace(
        a, probes={k: dataclasses.replace(p, multi_class="auto") for k, p in a.probes.items()}
    )
    _, naive_prob, _ = legacy_decide(naive, ref["hidden"])
    _, prob, _ = legacy_decide(a, ref["hidden"])
    assert np.max(np.abs(naive_prob - ref["probability"])) > 1e-2
    assert np.max(np.abs(prob - ref["probability"])) < 1e-12


def test_missing_probe_with_tau_half_gives_plus_one() -> None:
    for case in ("sk17_np2_missing_probe_p5", "sk19_np2_str_missing_probe_p5"):
        a = _assets(case)
        ref = _reference(case)
        missing = [j for j, d in enumerate(a.domains) if d not in a.probes]
        assert missing and a.tau == 0.5
        domain, prob, gate = legacy_decide(a, ref["hidden"])
        rows = np.isin(domain, missing)
        assert rows.any()
        assert np.all(prob[rows] == 0.5) and np.all(gate[rows] == 1)


def test_version_rules() -> None:
    def lr(version: str | None, mc: str | None) -> LegacyLogisticRegression:
        return LegacyLogisticRegression(
            coef=np.zeros((1, 2)),
            intercept=np.zeros(1),
            classes=np.array([0, 1]),
            multi_class=mc,
            solver="lbfgs",
            sklearn_version=version,
        )

    assert probe_uses_softmax(lr("1.3.2", "multinomial"))
    assert probe_uses_softmax(lr("1.7.2", "multinomial"))
    assert not probe_uses_softmax(lr("1.8.0", "multinomial"))
    assert not probe_uses_softmax(lr("1.6.1", "deprecated"))
    assert not probe_uses_softmax(lr("1.3.2", "auto"))
    assert not probe_uses_softmax(lr("1.3.2", "ovr"))

    def sc(version: str | None) -> LegacyScaler:
        return LegacyScaler(
            mean=np.zeros(2), scale=np.ones(2), n_features_in=2, sklearn_version=version
        )

    assert not scaler_uses_float32(sc("1.7.2"))
    assert scaler_uses_float32(sc("1.8.0"))
    assert scaler_uses_float32(sc("1.10.0"))
    assert not scaler_uses_float32(sc(None))
    assert gate_from_probability(np.array([0.5, 0.3, 0.31, 0.7, 0.69]), 0.7).tolist() == [
        0,
        -1,
        0,
        1,
        0,
    ]
    assert gate_from_probability(np.array([0.5]), 0.5).tolist() == [1]


def test_steering_vector_is_unit_mix() -> None:
    a = _assets("sk16_np2_published_p4")
    for d in a.domains:
        v = legacy_steering_vector(a, d)
        assert v.dtype == np.float32
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-6
        mix = (1 - a.beta) * a.vectors[d] + a.beta * a.vectors["global"]
        assert np.allclose(v, mix / np.linalg.norm(mix), atol=1e-6)
    with pytest.raises(ConversionError):
        legacy_steering_vector(a, "no-such-domain")


def test_legacy_decide_rejects_bad_input() -> None:
    a = _assets("sk13_np126_int_p2")
    with pytest.raises(ConversionError) as err:
        legacy_decide(a, np.zeros((3, a.hidden_size + 1), dtype=np.float32))
    assert err.value.code == "INPUT_SHAPE"
    bad = dataclasses.replace(a.router, classes=np.array(["x", "y", "z"]))
    with pytest.raises(ConversionError) as err:
        legacy_decide(dataclasses.replace(a, router=bad), np.zeros((1, a.hidden_size)))
    assert err.value.code == "DOMAIN_MISMATCH"


# ONNX graphs == legacy_decide -------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_onnx_matches_legacy_decide(case: str) -> None:
    a = _assets(case)
    hidden = _sample_hidden(a, N_SAMPLES, seed=len(case))
    hidden = np.concatenate([hidden, _reference(case)["hidden"]])
    domain, prob, gate = legacy_decide(a, hidden)
    got = _onnx_decide(case, hidden)
    assert np.array_equal(
        got["x"].view(np.uint32), scaler_transform(a.scaler, hidden).view(np.uint32)
    )
    assert np.array_equal(got["label"], domain)
    assert np.array_equal(got["domain"], domain)
    assert np.allclose(got["router_prob"].sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # float32 estimators compute in float32; the float64 graphs differ by that rounding.
    float32 = _case_info(case)["coef_dtype"] == "float32"
    assert np.max(np.abs(got["prob"] - prob)) < (1e-5 if float32 else 1e-9)
    same = gate_from_probability(got["prob"], a.tau) == gate
    near = np.minimum(np.abs(prob - a.tau), np.abs(prob - (1 - a.tau))) <= 1e-5
    assert same[~near].all() and (float32 or same.all())
    # Every gate value and every domain occurs, so the comparison is not vacuous.
    assert set(np.unique(domain).tolist()) == set(range(len(a.domains)))
    assert {-1, 1} <= set(np.unique(gate).tolist())


@pytest.mark.parametrize("case", CASES)
def test_export_is_deterministic_and_follows_contract(case: str) -> None:
    a = _assets(case)
    first = _graphs(case)
    _graphs.cache_clear()
    second = _graphs(case)
    assert first[0] == second[0] and first[1] == second[1] and first[2] == second[2]
    h = a.hidden_size
    graphs = [("scaler", first[0]), ("router", first[1])] + [
        ("probe", b) for b in first[2].values()
    ]
    for kind, blob in graphs:
        model = onnx.load_from_string(blob)
        onnx.checker.check_model(model, full_check=True)
        assert model.producer_name == PRODUCER_NAME
        assert not model.functions and not model.metadata_props
        assert graph_op_types(model) <= EXPORT_OP_TYPES
        for imp in model.opset_import:
            lo, hi = ONNX_OPSET_RANGES[imp.domain]
            assert lo <= imp.version <= hi
        for init in model.graph.initializer:
            assert init.data_location != onnx.TensorProto.EXTERNAL
        ins = [
            (
                i.name,
                i.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim],
            )
            for i in model.graph.input
        ]
        outs = [
            (
                o.name,
                o.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim],
            )
            for o in model.graph.output
        ]
        f32, f64, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64
        if kind == "scaler":
            assert ins == [(SCALER_INPUT, f32, [BATCH_DIM, h])]
            assert outs == [(SCALER_OUTPUT, f32, [BATCH_DIM, h])]
        else:
            k = len(a.domains) if kind == "router" else 2
            assert ins == [(CLASSIFIER_INPUT, f64, [BATCH_DIM, h])]
            assert outs == [
                (CLASSIFIER_LABEL, i64, [BATCH_DIM]),
                (CLASSIFIER_PROBABILITIES, f64, [BATCH_DIM, k]),
            ]


@pytest.mark.parametrize("version", ["1.3.2", "1.9.1"])
@pytest.mark.parametrize("with_mean,with_std", [(True, False), (False, True)])
def test_scaler_export_partial_flags(version: str, with_mean: bool, with_std: bool) -> None:
    rng = np.random.default_rng(7)
    h = 16
    scaler = LegacyScaler(
        mean=rng.normal(0, 5, h) if with_mean else None,
        scale=np.exp(rng.uniform(-1, 3, h)) if with_std else None,
        n_features_in=h,
        with_mean=with_mean,
        with_std=with_std,
        sklearn_version=version,
    )
    hidden = rng.normal(0, 10, size=(500, h)).astype(np.float32)
    got = _session(export_scaler(scaler)).run(None, {SCALER_INPUT: hidden})[0]
    assert np.array_equal(got.view(np.uint32), scaler_transform(scaler, hidden).view(np.uint32))


def test_export_rejects_bad_estimators() -> None:
    a = _assets("sk13_np126_int_p2")
    with pytest.raises(ConversionError) as err:
        export_router(a.router, [*a.domains, "extra"])
    assert err.value.code == "DOMAIN_MISMATCH"
    probe = next(iter(a.probes.values()))
    with pytest.raises(ConversionError) as err:
        export_probe(dataclasses.replace(probe, classes=np.array([1, 2])))
    assert err.value.code == "LEGACY_CONTENT"
    nan_coef = probe.coef.copy()
    nan_coef[0, 0] = np.nan
    with pytest.raises(ConversionError) as err:
        export_probe(dataclasses.replace(probe, coef=nan_coef))
    assert err.value.code == "LEGACY_CONTENT"
    with pytest.raises(ConversionError) as err:
        export_scaler(dataclasses.replace(a.scaler, scale=a.scaler.scale[:-1]))
    assert err.value.code == "LEGACY_CONTENT"


# In-memory estimators -----------------------------------------------------------------


def _fit_data(n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, size=(n_classes, 12))
    y = rng.integers(0, n_classes, 600)
    return centers[y] + rng.normal(0, 1.0, size=(600, 12)), y


def test_export_fitted_estimators() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _fit_data(3, seed=1)
    x32 = (x * 3 + 1).astype(np.float32)
    scaler = StandardScaler().fit(x32)
    got = _session(export_fitted_scaler(scaler)).run(None, {SCALER_INPUT: x32})[0]
    assert np.array_equal(got.view(np.uint32), scaler.transform(x32).view(np.uint32))

    names = np.array(["zeta", "alpha", "mid"])
    router = LogisticRegression(max_iter=500).fit(x, names[y])
    order = ["mid", "zeta", "alpha"]  # neither sorted nor the fitting order
    label, prob = _session(export_fitted_classifier(router, order)).run(None, {CLASSIFIER_INPUT: x})
    expected = router.predict_proba(x)[:, [list(router.classes_).index(c) for c in order]]
    assert np.max(np.abs(prob - expected)) < 1e-12
    assert [order[i] for i in label] == router.predict(x).tolist()

    yb = (y == 1).astype(np.int64)
    probe = LogisticRegression(max_iter=500).fit(x, yb)
    label, prob = _session(export_fitted_classifier(probe, [0, 1])).run(None, {CLASSIFIER_INPUT: x})
    assert np.max(np.abs(prob - probe.predict_proba(x))) < 1e-12
    assert np.array_equal(label, probe.predict(x))
    legacy = LegacyLogisticRegression(
        coef=probe.coef_, intercept=probe.intercept_, classes=probe.classes_
    )
    assert np.max(np.abs(probe_probability(legacy, x) - probe.predict_proba(x)[:, 1])) < 1e-12

    with pytest.raises(ConversionError) as err:
        export_fitted_classifier(router, ["mid", "zeta"])
    assert err.value.code == "DOMAIN_MISMATCH"


def test_export_fitted_generic_classifier() -> None:
    from sklearn.tree import DecisionTreeClassifier

    x, y = _fit_data(3, seed=2)
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)
    order = [2, 0, 1]
    blob = export_fitted_classifier(tree, order)
    assert blob == export_fitted_classifier(tree, order)
    label, prob = _session(blob).run(None, {CLASSIFIER_INPUT: x})
    expected = tree.predict_proba(x)[:, order]
    assert np.max(np.abs(prob - expected)) < 1e-6
    assert np.array_equal(label, np.argmax(prob, axis=1))
