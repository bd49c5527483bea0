"""The fast path's one-row lane in C (``asa_format.graphs._lane``), when it is built.

:meth:`FastPlan.decide_one <asa_format.graphs.fastpath.FastPlan.decide_one>` decides a
lone row, which is what every batch-1 prompt meets inside a forward hook. There the
model's own work has just evicted the caches, and each NumPy call or line of Python
costs microseconds: the extension does the same steps (the scaler's float32/float64
operations, one dot product per unique head column and the row's sum of squares, the
router and the routed probe from plain floats, every margin of the error bound) in one
call. It is optional: a build without a C compiler, or ``ASA_NATIVE_LANE=0`` in the
environment, leaves the Python lane, which decides the same rows the same way.

A lane is made only for a plan it can express, and used only after it has scaled the
plan's check rows, finite and not, bit for bit as NumPy does and decided them as the
Python lane does (the same rows declined, the same domains and gates, probabilities
within 1e-9: the two differ only in the summation order of the dot products, which the
error bound covers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from asa_format.gating import gate_of

__all__ = ["ENV_SWITCH", "compile_lane", "native_available"]

ENV_SWITCH = "ASA_NATIVE_LANE"  # "0": never use the C lane

_OPS = {"subtract": 1, "divide": 2, "add": 3, "multiply": 4}
_POSTS = {"softmax": 0, "sigmoid_norm": 1, "sigmoid_pair": 2}
_CHECK_TAUS = (0.5, 0.6, 0.9)
_PROBABILITY_AGREEMENT = 1e-9


def _load(environ: Mapping[str, str]) -> Any:
    if environ.get(ENV_SWITCH, "").strip() == "0":
        return None
    try:
        from asa_format.graphs import _lane
    except ImportError:  # built without a C compiler
        return None
    return _lane


_LANE_MODULE: Any = _load(os.environ)


def native_available() -> bool:
    """Whether the C lane is built and enabled in this process."""
    return _LANE_MODULE is not None


def _spec(plan: Any) -> tuple[Any, ...] | None:
    """The plan as the extension's constructor arguments, or None if it cannot express it."""
    h = int(plan.hidden_size)
    steps: list[tuple[int, int, np.ndarray | None]] = []
    for ufunc, arg, wide in plan.scaler._row_ops:
        if ufunc is None:
            steps.append((0, int(wide), None))
            continue
        op = _OPS.get(getattr(ufunc, "__name__", ""))
        dtype = np.dtype(np.float64 if wide else np.float32)
        if op is None or arg.dtype != dtype or arg.size not in (1, h):
            return None
        row = np.ascontiguousarray(np.broadcast_to(arg.reshape(-1), (h,)), dtype=dtype)
        steps.append((op, int(wide), row))
    router_post = _POSTS.get(plan.router.post)
    if router_post is None:
        return None
    router = (
        router_post,
        int(bool(plan._router_sum_check)),
        float(plan._router_slope),
        float(plan._router_offset),
        list(plan._router_terms),
    )
    probes: list[tuple[Any, ...] | None] = []
    for i, probe in enumerate(plan.probes):
        if probe is None:
            probes.append(None)
            continue
        post = _POSTS.get(probe.post)
        if post is None:
            return None
        probes.append(
            (
                post,
                int(bool(plan._probe_sum_check[i])),
                float(plan._row_probe_slope[i]),
                float(plan._row_probe_offset[i]),
                list(plan._probe_terms[i]),
            )
        )
    weights = np.ascontiguousarray(plan._unique_t, dtype=np.float64)  # [U, H]
    return h, steps, weights, router, probes


def _agree(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a[0] != b[0] or a[2] != b[2] or (a[1] is None) != (b[1] is None):
        return False
    return a[1] is None or abs(a[1] - b[1]) <= _PROBABILITY_AGREEMENT


def _same_scaled(got: bytes | None, scaler: Any, row: np.ndarray) -> bool:
    """The lane's scaled row is the NumPy scaler's bit for bit (NaN where it has NaN)."""
    if got is None:
        return False
    with np.errstate(all="ignore"):
        want = np.asarray(scaler.run(row[None]), dtype=np.float32)[0]
    have = np.frombuffer(got, dtype=np.float32)
    nan = np.isnan(want)
    return bool(
        have.shape == want.shape
        and np.array_equal(nan, np.isnan(have))
        and np.array_equal(have.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    )


def compile_lane(
    plan: Any,
    reference: Callable[[np.ndarray, float], Any],
    rows: Iterable[np.ndarray],
) -> Any | None:
    """The C lane for ``plan``, or None: not built, disabled, a plan it cannot express, or
    a check row it decides otherwise than ``reference`` (the Python lane).

    The lane's ``decide(row, tau)`` returns what ``FastPlan.decide_one`` returns, and
    ``decide_gated(row, tau, no_probe)`` what ``FastPlan.decide_gated`` returns; both give
    ``NotImplemented`` for a row that is not C-contiguous float32 of the hidden size."""
    module = _LANE_MODULE
    if module is None:
        return None
    spec = _spec(plan)
    if spec is None:
        return None
    try:
        lane = module.Lane(*spec)
    except (ValueError, TypeError, RuntimeError, MemoryError, OverflowError):
        return None
    for row in rows:
        if not _same_scaled(lane.scaled(row), plan.scaler, row):
            return None
        for tau in _CHECK_TAUS:
            want = reference(row, tau)
            if not _agree(lane.decide(row, tau), want):
                return None
            for no_probe in (0.25, tau):
                gated = lane.decide_gated(row, tau, no_probe)
                if want is None:
                    if gated is not None:
                        return None
                    continue
                pv = no_probe if want[1] is None else want[1]
                if gated is None or (gated[0], gated[2]) != (want[0], gate_of(pv, tau)):
                    return None
                if abs(gated[1] - pv) > _PROBABILITY_AGREEMENT:
                    return None
    return lane
