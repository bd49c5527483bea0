"""Parity of a bundle with a reference decision function (the converters' self-check).

``compare`` evaluates ``bundle.decide`` and a reference on the same hidden
states, sampled around the scaler's mean and scale by
``sample_hidden_states``; a bundle is written only if every domain and gate
agree and the probabilities agree within the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SAMPLES",
    "FLOAT32_PARITY_TOLERANCE",
    "PARITY_TOLERANCE",
    "Parity",
    "compare",
    "sample_hidden_states",
]

PARITY_TOLERANCE = 1e-9  # max |p_bundle - p_legacy| allowed (float64 references)
FLOAT32_PARITY_TOLERANCE = 1e-5  # references that themselves compute in float32
DEFAULT_SAMPLES = 4096


@dataclass
class Parity:
    """Agreement between a bundle and a reference decision function."""

    samples: int
    domain_agreement: float
    gate_agreement: float
    max_probability_difference: float
    gate_counts: dict[str, int] = field(default_factory=dict)
    tolerance: float = PARITY_TOLERANCE

    @property
    def ok(self) -> bool:
        return (
            self.domain_agreement == 1.0
            and self.gate_agreement == 1.0
            and self.max_probability_difference <= self.tolerance
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "domain_agreement": self.domain_agreement,
            "gate_agreement": self.gate_agreement,
            "max_probability_difference": self.max_probability_difference,
            "gate_counts": dict(self.gate_counts),
            "tolerance": self.tolerance,
            "ok": self.ok,
        }



def sample_hidden_states(mean: np.ndarray | None, scale: np.ndarray | None, hidden: int, n: int, seed: int = 0) -> np.ndarray:
    """Float32 hidden states around the scaler's mean and scale (deterministic)."""
    rng = np.random.default_rng(seed)
    mu = np.zeros(hidden) if mean is None else mean
    sd = np.ones(hidden) if scale is None else scale
    spread = np.repeat(np.array([0.25, 0.5, 1.0, 2.0, 4.0]), -(-n // 5))[:n, None]
    z = rng.standard_normal((n, hidden), dtype=np.float32) * spread.astype(np.float32)
    return (mu.astype(np.float32) + z * sd.astype(np.float32)).astype(np.float32)


def compare(bundle: Any, reference: Any, hidden: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> Parity:
    """Compare ``bundle.decide`` with ``reference(hidden) -> (index, prob, gate)``."""
    got = bundle.decide(hidden)
    index, prob, gate = reference(hidden)
    gate_arr = np.asarray(gate)
    counts = {str(g): int((gate_arr == g).sum()) for g in (-1, 0, 1)}
    return Parity(
        samples=int(hidden.shape[0]),
        domain_agreement=float(np.mean(got.domain_index == np.asarray(index))),
        gate_agreement=float(np.mean(got.gate == gate_arr)),
        max_probability_difference=float(np.max(np.abs(got.probability - np.asarray(prob, dtype=np.float64)))),
        gate_counts=counts,
        tolerance=tolerance,
    )
