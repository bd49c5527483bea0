"""The spec's gate rule: +1 if p >= tau, else -1 if p <= 1 - tau, else 0.

One definition for every decision path (``asa_format.bundle``, the fast path's one-row
lane, the runtime); the C lane (``asa_format/graphs/_lane.c``) is checked against it on load.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gate_of", "gates"]


def gate_of(p: float, tau: float) -> int:
    """The gate rule for one probability: +1 if p >= tau, else -1 if p <= 1 - tau, else 0."""
    return 1 if p >= tau else (-1 if p <= 1.0 - tau else 0)


def gates(probability: np.ndarray, tau: float) -> np.ndarray:
    """:func:`gate_of` for every element (int8)."""
    p = np.asarray(probability, dtype=np.float64)
    if p.shape == (1,):
        return np.array([gate_of(float(p[0]), tau)], dtype=np.int8)
    return np.where(p >= tau, 1, np.where(p <= 1.0 - tau, -1, 0)).astype(np.int8)
