"""The ASA fitting protocol on extracted hidden states (scikit-learn only).

The reference pipeline (Liquid-ASA's ``ASA_LFM25_Pipeline.ipynb``), step by
step, written so that the same hidden states give the same estimators:

1. layer: per decoder block, ``StandardScaler`` on train, a
   ``LogisticRegression(max_iter=1000, C=1.0, solver="lbfgs")`` probe of the
   label on train, ROC AUC on valid; L* = the deepest block whose AUC is
   within 0.005 of the best;
2. vectors from cal at L*: ``global`` = mean(label 1) - mean(label 0), and per
   domain the same within the domain, each ``v / (||v|| + 1e-8)``;
3. at L*: a ``StandardScaler`` on train; the router
   ``LogisticRegression(max_iter=2000, C=1.0, solver="lbfgs")`` of the domain
   index; per domain a probe ``LogisticRegression(max_iter=1000, C=1.0,
   solver="lbfgs")`` on that domain's train rows;
4. tau: of 0.50, 0.55, 0.60, 0.65, 0.70 the first with the best F1 on valid of
   "gate = +1" against the label (router by argmax, the domain's probe).

Every fit runs with one BLAS thread (``threadpoolctl``): the thread count
can change the last bits of a multi-threaded reduction, and the output must
be the same bytes on every run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ASA_PARAMETERS",
    "LAYER_MARGIN",
    "TAU_GRID",
    "AsaFit",
    "choose_layer",
    "fit_estimators",
    "gate_metrics",
    "layer_sweep",
    "one_blas_thread",
    "steering_vectors",
    "tau_sweep",
]

LAYER_MARGIN = 0.005
TAU_GRID = (0.50, 0.55, 0.60, 0.65, 0.70)
NORM_EPS = 1e-8
ASA_PARAMETERS = {
    "layer_margin": LAYER_MARGIN,
    "scaler": "StandardScaler()",
    "probe": "LogisticRegression(max_iter=1000, C=1.0, solver='lbfgs')",
    "router": "LogisticRegression(max_iter=2000, C=1.0, solver='lbfgs')",
    "tau_grid": list(TAU_GRID),
    "vectors": "mean(label 1) - mean(label 0) on cal, v / (||v|| + 1e-8)",
    "blas_threads": 1,
}


@contextmanager
def one_blas_thread() -> Iterator[list[str]]:
    """One BLAS/OpenMP thread for the scikit-learn fits; yields the convergence warnings."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    caught: list[str] = []
    with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ConvergenceWarning)
        yield caught
    caught.extend(
        str(w.message).splitlines()[0] for w in seen if issubclass(w.category, ConvergenceWarning)
    )


def _probe() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000, C=1.0, solver="lbfgs")


def layer_sweep(
    train: np.ndarray, train_y: np.ndarray, valid: np.ndarray, valid_y: np.ndarray
) -> list[float]:
    """ROC AUC on valid of a per-block probe fitted on train (``train``: [blocks, rows, H])."""
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    aucs = []
    for block in range(train.shape[0]):
        scaler = StandardScaler()
        x_train = scaler.fit_transform(train[block])
        x_valid = scaler.transform(valid[block])
        probe = _probe().fit(x_train, train_y)
        aucs.append(float(roc_auc_score(valid_y, probe.predict_proba(x_valid)[:, 1])))
    return aucs


def choose_layer(aucs: Sequence[float], margin: float = LAYER_MARGIN) -> int:
    """The deepest block whose AUC is within ``margin`` of the best."""
    best = max(aucs)
    return max(i for i, a in enumerate(aucs) if a >= best - margin)


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / (np.linalg.norm(v) + NORM_EPS))


def steering_vectors(
    cal: np.ndarray, cal_y: np.ndarray, cal_domain: np.ndarray, domains: Sequence[str]
) -> dict[str, np.ndarray]:
    """``global`` and per-domain mean differences on cal at one block (``cal``: [rows, H])."""
    tool = cal_y == 1
    out = {"global": _unit(cal[tool].mean(0) - cal[~tool].mean(0))}
    for d in domains:
        in_d = cal_domain == d
        out[d] = _unit(cal[in_d & tool].mean(0) - cal[in_d & ~tool].mean(0))
    return out


def fit_estimators(
    train: np.ndarray, train_y: np.ndarray, train_domain: np.ndarray, domains: Sequence[str]
) -> tuple[Any, Any, dict[str, Any]]:
    """(scaler, router, probes) at one block (``train``: [rows, H])."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    index = {d: i for i, d in enumerate(domains)}
    scaler = StandardScaler()
    x = scaler.fit_transform(train)
    router = LogisticRegression(max_iter=2000, C=1.0, solver="lbfgs")
    router.fit(x, np.array([index[d] for d in train_domain]))
    probes: dict[str, Any] = {}
    for d in domains:
        rows = train_domain == d
        if len(np.unique(train_y[rows])) < 2:  # pragma: no cover - refused by check_asa_data
            continue
        probes[d] = _probe().fit(x[rows], train_y[rows])
    return scaler, router, probes


def decide(
    scaler: Any, router: Any, probes: Mapping[str, Any], domains: Sequence[str], hidden: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(domain index, probability of label 1) per row, as the reference evaluates it."""
    x = scaler.transform(hidden)
    index = np.asarray(router.predict(x), dtype=np.int64)
    prob = np.full(len(hidden), np.nan)
    for i, d in enumerate(domains):
        rows = index == i
        if rows.any() and d in probes:
            prob[rows] = probes[d].predict_proba(x[rows])[:, 1]
    return index, prob


def gate_plus(prob: np.ndarray, tau: float) -> np.ndarray:
    """1 where the gate is +1 (``p >= tau``); a domain without a probe predicts 0."""
    return np.where(np.isnan(prob), 0, (prob >= tau).astype(int))


def gate_metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """F1, precision, recall, false-positive rate and accuracy of ``predicted`` (0/1)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    negatives = y == 0
    return {
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "fpr": float((predicted[negatives] == 1).mean()) if negatives.any() else 0.0,
        "accuracy": float(accuracy_score(y, predicted)),
    }


def tau_sweep(
    prob: np.ndarray, y: np.ndarray, grid: Sequence[float] = TAU_GRID
) -> tuple[list[dict[str, float]], float]:
    """The metrics of every tau of ``grid`` on valid, and the first with the best F1."""
    rows = [{"tau": float(t), **gate_metrics(y, gate_plus(prob, t))} for t in grid]
    best = max(rows, key=lambda r: r["f1"])  # max() keeps the first of equal F1
    return rows, float(best["tau"])


@dataclass
class AsaFit:
    """Everything the protocol chose and fitted."""

    domains: list[str]
    aucs: list[float]
    layer: int
    layer_given: bool
    vectors: dict[str, np.ndarray]
    scaler: Any
    router: Any
    probes: dict[str, Any]
    tau_rows: list[dict[str, float]]
    tau: float
    tau_given: bool
    valid_router_accuracy: float
    test_router_accuracy: float
    test: dict[str, float]
    convergence: list[str] = field(default_factory=list)


def run_protocol(
    hidden: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    domain_of: Mapping[str, np.ndarray],
    domains: Sequence[str],
    *,
    layer: int | None = None,
    tau: float | None = None,
) -> AsaFit:
    """Steps 1-4 on ``hidden[split]`` ([blocks, rows, H] float32) with labels and domains."""
    with one_blas_thread() as convergence:
        aucs = layer_sweep(hidden["train"], labels["train"], hidden["valid"], labels["valid"])
        chosen = choose_layer(aucs) if layer is None else int(layer)
        vectors = steering_vectors(hidden["cal"][chosen], labels["cal"], domain_of["cal"], domains)
        scaler, router, probes = fit_estimators(
            hidden["train"][chosen], labels["train"], domain_of["train"], domains
        )
        index_valid, prob_valid = decide(scaler, router, probes, domains, hidden["valid"][chosen])
        rows, best = tau_sweep(prob_valid, labels["valid"])
        tau_value = best if tau is None else float(tau)
        index_test, prob_test = decide(scaler, router, probes, domains, hidden["test"][chosen])
        test = gate_metrics(labels["test"], gate_plus(prob_test, tau_value))
        lookup = {d: i for i, d in enumerate(domains)}
        valid_acc = float(np.mean(index_valid == np.array([lookup[d] for d in domain_of["valid"]])))
        test_acc = float(np.mean(index_test == np.array([lookup[d] for d in domain_of["test"]])))
    return AsaFit(
        domains=list(domains),
        aucs=aucs,
        layer=chosen,
        layer_given=layer is not None,
        vectors=vectors,
        scaler=scaler,
        router=router,
        probes=probes,
        tau_rows=rows,
        tau=tau_value,
        tau_given=tau is not None,
        valid_router_accuracy=valid_acc,
        test_router_accuracy=test_acc,
        test=test,
        convergence=sorted(set(convergence)),
    )
