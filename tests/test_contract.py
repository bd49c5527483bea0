"""validate <=> load <=> decide, property-based over generated graphs (spec section 4.9).

Hypothesis generates bundles (router and probe forms the fast path proves
equal to onnxruntime, forms it does not, weights from 1e-3 to 1e6, equal
biases for exact ties, probes at tau) and finite float32 rows. For each
bundle that validates: it loads, decides every row without an exception,
and each row gets the same domain and gate alone, inside the batch, and
from onnxruntime alone and in a batch.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_targets import check_contract, contract_rows
from hostile_graphs import probe_pair, router_softmax, save_with, sigmoid_norm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from asa_format.testing import scaler_graph

CONTRACT = settings(
    max_examples=40,
    deadline=timedelta(seconds=30),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scales = st.sampled_from([1e-3, 1.0, 30.0, 1e3, 1e6])
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def bundles(draw: Any) -> dict[str, Any]:
    hidden = draw(st.sampled_from([2, 3, 8]))
    n_domains = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((hidden, n_domains)) * draw(scales)
    tie = draw(st.booleans())
    b = np.zeros(n_domains) if tie else rng.standard_normal(n_domains) * draw(scales)
    if tie:
        w[:, 1] = w[:, 0]  # domains 0 and 1 tie exactly on every row
    form = draw(st.sampled_from(["softmax", "sigmoid_norm"] if n_domains == 2 else ["softmax"]))
    router = router_softmax(w, b) if form == "softmax" else sigmoid_norm(w, b)
    names = [f"d{i}" for i in range(n_domains)]
    probes = {}
    for name in names:
        kind = draw(st.sampled_from(["pair", "norm", "exp", "none", "at_tau"]))
        pw = rng.standard_normal(hidden) * draw(scales)
        if kind == "pair":
            probes[name] = probe_pair(pw, float(rng.standard_normal()))
        elif kind == "norm":
            probes[name] = sigmoid_norm(np.stack([-pw, pw], axis=1), np.zeros(2))
        elif kind == "exp":
            probes[name] = probe_pair(pw, float(rng.standard_normal()), exp_trick=True)
        elif kind == "at_tau":
            probes[name] = probe_pair(np.zeros(hidden), float(np.log(0.6 / 0.4)))
    missing = [n for n in names if n not in probes]
    mean = rng.standard_normal(hidden) * draw(st.sampled_from([0.0, 1.0, 1e3]))
    scale = np.abs(rng.standard_normal(hidden)) * draw(st.sampled_from([1e-3, 1.0, 1e3])) + 1e-6
    return {
        "hidden": hidden, "domains": names, "router": router, "probes": probes, "missing": missing,
        "scaler": scaler_graph(mean, scale), "seed": seed,
    }  # fmt: skip


@CONTRACT
@given(spec=bundles(), extra=st.lists(st.lists(finite32, min_size=8, max_size=8), max_size=6))
def test_validate_load_decide_agree(spec: dict[str, Any], extra: list[list[float]]) -> None:
    hidden = spec["hidden"]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_with(
            Path(tmp) / "b", hidden=hidden, domains=spec["domains"], router=spec["router"], probes=spec["probes"],
            scaler=spec["scaler"], missing_probes=spec["missing"], tau=0.6,
        )  # fmt: skip
        rows = contract_rows(hidden, np.random.default_rng(spec["seed"]))
        if extra:
            rows = np.concatenate([rows, np.asarray(extra, dtype=np.float32)[:, :hidden]])
        outcome = check_contract(path, rows)
        assert outcome == "ok", outcome  # every generated graph is in the profile


@CONTRACT
@given(rows=arrays(np.float32, st.tuples(st.integers(1, 9), st.just(8)), elements=finite32))
def test_any_finite_rows_decide_like_each_row_alone(rows: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    router = router_softmax(rng.standard_normal((8, 3)), np.zeros(3))
    probes = {
        "a": probe_pair(rng.standard_normal(8), 0.0),
        "b": probe_pair(rng.standard_normal(8) * 1e3, 0.0, exp_trick=True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = save_with(
            Path(tmp) / "b",
            hidden=8,
            domains=["a", "b", "c"],
            router=router,
            probes=probes,
            missing_probes=["c"],
        )
        assert check_contract(path, rows) == "ok"
