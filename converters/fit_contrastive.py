"""Fitting ``always`` and ``condition`` interventions from contrastive data.

Directions are read at each decoder block's output, at the last prompt
position (as repeng and steering-vectors read them):

* ``mean_diff``: ``mean(positive) - mean(negative)``, magnitude kept (it is
  added as ``coefficient x direction``);
* ``pca_center``: repeng's method: each pair is centred on its midpoint, the
  first principal component of the centred states is the direction (unit
  length), signed so that positives project above their negatives in most
  pairs. The PCA uses the full SVD (repeng's default may pick a randomized
  solver, whose result varies between runs; the full SVD gives the same
  bytes every time).

A ``condition`` gate (CAST) is fitted on the train split and its threshold
chosen on the valid split: at each candidate condition block the condition
vector is the unit mean difference of the rows' aggregated hidden states
(``mean`` over the prompt positions, or the ``last`` one); the similarity of a
row is the cosine of its aggregated state with that vector (the format's
condition rule, section 14.4 of the specification); the block, comparator
and threshold are those with the best F1 on valid of "fires" against the
label, the threshold being a midpoint between two neighbouring valid
similarities. Of equal F1 the earliest block, ``greater_than`` before
``less_than`` and the lowest threshold win.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "METHODS",
    "ConditionFit",
    "condition_similarities",
    "fit_condition",
    "mean_diff",
    "pca_center",
]

METHODS = ("mean_diff", "pca_center")


def mean_diff(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """``mean(positive) - mean(negative)`` (rows x H each), float32."""
    diff = positive.astype(np.float64).mean(0) - negative.astype(np.float64).mean(0)
    return np.asarray(diff, dtype=np.float32)


def pca_center(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """repeng's ``pca_center`` for paired rows (``positive[i]`` pairs with ``negative[i]``)."""
    from sklearn.decomposition import PCA

    pos = positive.astype(np.float64)
    neg = negative.astype(np.float64)
    center = (pos + neg) / 2
    train = np.empty((2 * len(pos), pos.shape[1]), dtype=np.float64)
    train[0::2] = pos - center
    train[1::2] = neg - center
    direction = PCA(n_components=1, whiten=False, svd_solver="full").fit(train).components_[0]
    direction = direction.astype(np.float32)
    proj_pos = pos @ direction.astype(np.float64)
    proj_neg = neg @ direction.astype(np.float64)
    if np.mean(proj_pos < proj_neg) > np.mean(proj_pos > proj_neg):
        direction = -direction
    return np.asarray(direction, dtype=np.float32)


def directions(
    last: np.ndarray,
    positive_rows: Sequence[int],
    negative_rows: Sequence[int],
    blocks: Sequence[int],
    method: str,
) -> dict[int, np.ndarray]:
    """One direction per block from ``last`` ([blocks, rows, H])."""
    pos = np.asarray(positive_rows)
    neg = np.asarray(negative_rows)
    fit = mean_diff if method == "mean_diff" else pca_center
    return {int(b): fit(last[b][pos], last[b][neg]) for b in blocks}


def condition_similarities(states: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``states`` with ``vector`` in float64 (0 for a zero row)."""
    h = states.astype(np.float64)
    c = vector.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", h, h)) * float(np.sqrt(np.dot(c, c)))
    dots = h @ c
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


def _f1_rows(sim: np.ndarray, y: np.ndarray, comparator: str) -> list[tuple[float, float]]:
    """(threshold, F1) for every midpoint threshold between distinct similarities."""
    from asa_format.converters.fit_protocol import gate_metrics

    values = np.unique(sim)
    cuts = [float(values[0]) - 1e-6]
    cuts += [float((a + b) / 2) for a, b in itertools.pairwise(values)]
    cuts += [float(values[-1]) + 1e-6]
    out = []
    for t in cuts:
        t = min(1.0, max(-1.0, t))
        fires = sim > t if comparator == "greater_than" else sim < t
        out.append((t, gate_metrics(y, fires.astype(int))["f1"]))
    return out


@dataclass
class ConditionFit:
    block: int
    comparator: str
    threshold: float
    aggregate: str
    vector: np.ndarray  # float32, unit
    block_rows: list[dict[str, Any]] = field(default_factory=list)  # best per block on valid
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] | None = None


def fit_condition(
    train: np.ndarray,
    train_y: np.ndarray,
    valid: np.ndarray,
    valid_y: np.ndarray,
    *,
    aggregate: str,
    blocks: Sequence[int],
    test: np.ndarray | None = None,
    test_y: np.ndarray | None = None,
) -> ConditionFit:
    """Choose a condition block, comparator and threshold (``train`` etc.: [blocks, rows, H])."""
    from asa_format.converters.fit_protocol import gate_metrics

    best: tuple[float, int, int, float] | None = None  # (-f1, block, comparator index, threshold)
    vectors: dict[int, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    comparators = ("greater_than", "less_than")
    for b in blocks:
        diff = train[b][train_y == 1].mean(0) - train[b][train_y == 0].mean(0)
        norm = float(np.linalg.norm(diff))
        vec = (diff / norm if norm > 0 else diff).astype(np.float32)
        vectors[b] = vec
        sim = condition_similarities(valid[b], vec)
        block_best: tuple[float, int, float] | None = None
        for ci, comparator in enumerate(comparators):
            for t, f1 in _f1_rows(sim, valid_y, comparator):
                key = (-f1, ci, t)
                if block_best is None or key < block_best:
                    block_best = key
        assert block_best is not None
        rows.append(
            {
                "block": int(b),
                "comparator": comparators[block_best[1]],
                "threshold": block_best[2],
                "valid_f1": -block_best[0],
            }
        )
        candidate = (block_best[0], int(b), block_best[1], block_best[2])
        if best is None or candidate < best:
            best = candidate
    assert best is not None
    _, block, ci, threshold = best
    comparator = comparators[ci]

    def fires(states: np.ndarray) -> np.ndarray:
        sim = condition_similarities(states[block], vectors[block])
        return (sim > threshold if comparator == "greater_than" else sim < threshold).astype(int)

    fit = ConditionFit(
        block=block,
        comparator=comparator,
        threshold=threshold,
        aggregate=aggregate,
        vector=vectors[block],
        block_rows=rows,
        valid=gate_metrics(valid_y, fires(valid)),
    )
    if test is not None and test_y is not None and len(test_y):
        fit.test = gate_metrics(test_y, fires(test))
    return fit
