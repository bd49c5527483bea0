"""scikit-learn >= 1.8 fitted on float32 data computes in float32: the parity line says so.

The legacy estimators are fitted here with the installed scikit-learn on
float32 data and pickled as the pipeline does. The converter must reproduce
their float32 arithmetic and report the true gap between the float64 graphs
and what the pickles compute, not a float64 re-implementation's 1e-15.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")  # the convert extra; this file tests converter arithmetic

import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from asa_format import load_bundle
from asa_format.converters.convert import convert_legacy
from asa_format.converters.legacy import read_legacy_bundle
from asa_format.converters.semantics import estimators_use_float32, legacy_decide

HIDDEN, DOMAINS, TAU = 24, ["search", "math", "chat"], 0.6
FLOAT32_SKLEARN = tuple(int(x) for x in sklearn.__version__.split(".")[:2]) >= (1, 8)


def _legacy_float32(dest: Path) -> dict[str, object]:
    rng = np.random.default_rng(7)
    centers = rng.normal(0, 2, size=(len(DOMAINS), HIDDEN))
    label = rng.integers(0, len(DOMAINS), size=600)
    x = (centers[label] + rng.normal(0, 1.5, size=(600, HIDDEN))).astype(np.float32)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    router = LogisticRegression(max_iter=500).fit(xs, label)
    probes = {}
    for j, name in enumerate(DOMAINS):
        sel = label == j
        tool = (xs[sel, 0] + rng.normal(0, 0.5, sel.sum()) > 0).astype(int)
        probes[name] = LogisticRegression(max_iter=500).fit(xs[sel], tool)
    dest.mkdir()
    for name, obj in (("scaler", scaler), ("router", router), ("probes", probes)):
        (dest / f"{name}.pkl").write_bytes(pickle.dumps(obj, protocol=5))
    vectors = {d: rng.normal(size=HIDDEN).astype(np.float32) for d in [*DOMAINS, "global"]}
    np.savez(
        dest / "steering_vectors.npz",
        **{k: (v / np.linalg.norm(v)).astype(np.float32) for k, v in vectors.items()},
    )
    (dest / "config.json").write_text(
        json.dumps({"L_star": 1, "alpha": 2.0, "tau": TAU, "beta": 0.2, "domains": DOMAINS})
    )
    return {"scaler": scaler, "router": router, "probes": probes}


@pytest.mark.skipif(not FLOAT32_SKLEARN, reason="float32 estimators exist from scikit-learn 1.8")
def test_parity_reports_the_float32_gap(tmp_path: Path) -> None:
    fitted = _legacy_float32(tmp_path / "assets")
    router = fitted["router"]
    assert np.asarray(router.coef_).dtype == np.float32  # type: ignore[attr-defined]
    assets = read_legacy_bundle(tmp_path / "assets")
    assert estimators_use_float32(assets)

    report = convert_legacy(tmp_path / "assets", tmp_path / "bundle", samples=2048)
    parity = report.parity
    assert parity.precision == "float32" and parity.ok
    line = report.text()
    assert "float32 arithmetic" in line and "tolerance 1e-05" in line

    # The reported gap is the real one: the float64 graphs against scikit-learn itself.
    rng = np.random.default_rng(1)
    hidden = rng.normal(0, 3, size=(2048, HIDDEN)).astype(np.float32)
    xs = fitted["scaler"].transform(hidden)  # type: ignore[attr-defined]
    domain, prob, _ = legacy_decide(assets, hidden)
    real = np.array(
        [
            fitted["probes"][DOMAINS[d]].predict_proba(xs[i : i + 1])[0, 1]  # type: ignore[index]
            for i, d in enumerate(domain.tolist())
        ]
    )
    # legacy_decide reproduces scikit-learn's float32 arithmetic (not a float64 re-implementation).
    # (Within two float32 ulps near 1: one row alone and rows in a batch sum in another order.)
    assert np.max(np.abs(prob - real)) <= 2.5e-7
    assert np.median(np.abs(prob - real)) == 0.0
    bundle = load_bundle(tmp_path / "bundle")
    gap = float(np.max(np.abs(bundle.decide(hidden).probability - real)))
    assert gap > 1e-12  # float64 graphs do not match float32 arithmetic bit for bit
    assert parity.max_probability_difference > 1e-12  # and the parity line does not hide it
    assert parity.max_probability_difference <= parity.tolerance
