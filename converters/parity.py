"""Parity of a bundle with a reference decision function (the converters' self-check).

``compare`` evaluates ``bundle.decide`` and a reference on the same hidden
states, sampled around the scaler's mean and scale by
``sample_hidden_states`` (or, block by block, ``sample_chunks``); a bundle
is written only if every domain and gate agree and the probabilities agree
within the tolerance. The comparison runs over row blocks of at most
``PARITY_CHUNK_ELEMENTS`` elements: its memory does not grow with the
number of samples times the hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SAMPLES",
    "FLOAT32_PARITY_TOLERANCE",
    "PARITY_CHUNK_ELEMENTS",
    "PARITY_TOLERANCE",
    "Parity",
    "compare",
    "sample_chunks",
    "sample_hidden_states",
]

PARITY_TOLERANCE = 1e-9  # max |p_bundle - p_legacy| allowed (float64 references)
FLOAT32_PARITY_TOLERANCE = 1e-5  # references that themselves compute in float32
DEFAULT_SAMPLES = 4096
PARITY_CHUNK_ELEMENTS = 1 << 21  # rows x hidden of one parity block (8 MiB of float32)


@dataclass
class Parity:
    """Agreement between a bundle and a reference decision function."""

    samples: int
    domain_agreement: float
    gate_agreement: float
    max_probability_difference: float
    gate_counts: dict[str, int] = field(default_factory=dict)
    tolerance: float = PARITY_TOLERANCE
    precision: str = "float64"  # the arithmetic of the reference (the writing version's)
    near_threshold: int = 0  # rows whose reference p lies within the tolerance of tau or 1-tau
    gate_agreement_elsewhere: float = 1.0  # gate agreement on the other rows

    @property
    def ok(self) -> bool:
        return (
            self.domain_agreement == 1.0
            and self.gate_agreement_elsewhere == 1.0
            and self.max_probability_difference <= self.tolerance
        )

    def line(self) -> str:
        near = (
            f"; {self.near_threshold} rows within {self.tolerance:g} of tau or 1-tau, where "
            f"{self.precision} rounding decides the gate"
            if self.near_threshold
            else ""
        )
        return (
            f"{self.samples} samples against the legacy estimators' own {self.precision} "
            f"arithmetic: domain agreement {self.domain_agreement:.2%}, gate agreement "
            f"{self.gate_agreement:.2%}{near}, max |dp| {self.max_probability_difference:.3g} "
            f"(tolerance {self.tolerance:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "domain_agreement": self.domain_agreement,
            "gate_agreement": self.gate_agreement,
            "max_probability_difference": self.max_probability_difference,
            "gate_counts": dict(self.gate_counts),
            "tolerance": self.tolerance,
            "precision": self.precision,
            "near_threshold": self.near_threshold,
            "ok": self.ok,
        }


def sample_hidden_states(
    mean: np.ndarray | None, scale: np.ndarray | None, hidden: int, n: int, seed: int = 0
) -> np.ndarray:
    """Float32 hidden states around the scaler's mean and scale (deterministic)."""
    rng = np.random.default_rng(seed)
    mu = np.zeros(hidden) if mean is None else mean
    sd = np.ones(hidden) if scale is None else scale
    spread = np.repeat(np.array([0.25, 0.5, 1.0, 2.0, 4.0]), -(-n // 5))[:n, None]
    z = rng.standard_normal((n, hidden), dtype=np.float32) * spread.astype(np.float32)
    return (mu.astype(np.float32) + z * sd.astype(np.float32)).astype(np.float32)


def sample_chunks(
    mean: np.ndarray | None, scale: np.ndarray | None, hidden: int, n: int, seed: int = 0
) -> Iterator[np.ndarray]:
    """:func:`sample_hidden_states` row block by row block (the same rows), each block at most
    ``PARITY_CHUNK_ELEMENTS`` elements: the parity check's memory does not grow with n x hidden."""
    rng = np.random.default_rng(seed)
    mu = (np.zeros(hidden) if mean is None else mean).astype(np.float32)
    sd = (np.ones(hidden) if scale is None else scale).astype(np.float32)
    spread = np.repeat(np.array([0.25, 0.5, 1.0, 2.0, 4.0]), -(-n // 5))[:n, None].astype(
        np.float32
    )
    step = max(1, PARITY_CHUNK_ELEMENTS // max(hidden, 1))
    for start in range(0, n, step):
        rows = min(step, n - start)
        z = rng.standard_normal((rows, hidden), dtype=np.float32) * spread[start : start + rows]
        yield (mu + z * sd).astype(np.float32)


def _chunks(hidden: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    if isinstance(hidden, np.ndarray):
        step = max(1, PARITY_CHUNK_ELEMENTS // max(int(hidden.shape[1]), 1))
        for start in range(0, hidden.shape[0], step):
            yield hidden[start : start + step]
    else:
        yield from hidden


def compare(
    bundle: Any,
    reference: Any,
    hidden: np.ndarray | Iterable[np.ndarray],
    tolerance: float = PARITY_TOLERANCE,
    *,
    tau: float | None = None,
    precision: str = "float64",
) -> Parity:
    """Compare ``bundle.decide`` with ``reference(rows) -> (index, prob, gate)``, block by block.

    ``hidden`` is an array ``[N, H]`` or an iterable of such blocks (``sample_chunks``).
    With ``tau``, rows whose reference probability lies within ``tolerance`` of
    ``tau`` or ``1 - tau`` are counted apart: there the reference's own rounding
    decides the gate, and a gate difference is reported but not a failure.
    """
    n = same_domain = same_gate = near_rows = elsewhere_rows = same_elsewhere = 0
    max_dp = 0.0
    counts = {"-1": 0, "0": 0, "1": 0}
    for rows in _chunks(hidden):
        got = bundle.decide(rows)
        index, prob, gate = reference(rows)
        gate_arr = np.asarray(gate)
        ref_p = np.asarray(prob, dtype=np.float64)
        for g in (-1, 0, 1):
            counts[str(g)] += int((gate_arr == g).sum())
        n += int(rows.shape[0])
        same_domain += int(np.sum(got.domain_index == np.asarray(index)))
        agree = got.gate == gate_arr
        same_gate += int(np.sum(agree))
        near = np.zeros(ref_p.shape, dtype=bool)
        if tau is not None:
            near = (np.abs(ref_p - tau) <= tolerance) | (np.abs(ref_p - (1.0 - tau)) <= tolerance)
        near_rows += int(near.sum())
        elsewhere_rows += int((~near).sum())
        same_elsewhere += int(np.sum(agree[~near]))
        dp = np.abs(got.probability - ref_p)
        if dp.size:
            max_dp = max(max_dp, float(np.max(dp))) if not np.isnan(dp).any() else math.inf
    return Parity(
        samples=n,
        domain_agreement=same_domain / n if n else 1.0,
        gate_agreement=same_gate / n if n else 1.0,
        max_probability_difference=max_dp,
        gate_counts=counts,
        tolerance=tolerance,
        precision=precision,
        near_threshold=near_rows,
        gate_agreement_elsewhere=same_elsewhere / elsewhere_rows if elsewhere_rows else 1.0,
    )
