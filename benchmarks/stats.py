"""Summaries of repeated measurements: median and spread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["summarize"]


def summarize(values: Sequence[float], unit: str) -> dict[str, Any]:
    """Median, p10/p90, quartiles, min/max and count of ``values`` (in ``unit``)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"unit": unit, "n": 0}
    p10, q1, med, q3, p90 = (float(v) for v in np.percentile(arr, [10, 25, 50, 75, 90]))
    return {
        "unit": unit,
        "n": int(arr.size),
        "median": med,
        "p10": p10,
        "p90": p90,
        "q1": q1,
        "q3": q3,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }
