"""The decision function evaluated in torch, where the hidden states live.

``TorchDecider.for_bundle(bundle)`` translates the bundle's checked NumPy
plan (``asa_format.graphs.fastpath``: the same element-wise scaler steps, the same
fused matrix product of the linear heads, float64 after the scaler, the
same error bounds) into torch operations on a device, and keeps it only if
it reproduces onnxruntime on the plan's check rows exactly as the NumPy
plan was proven: bit-identical scaler output, identical domains and gates,
probabilities within 1e-12 on the rows off the margins. Otherwise it
returns None and logs why (debug level), and the caller keeps
``Bundle.decide``.

``decide(rows)`` runs on the rows' device with static shapes: every probe
is evaluated on every row and the routed one is gathered. As in
``Bundle.decide`` (spec 4.9), a finite row within the proven error bound of
a decision boundary (top-two router probabilities, ``tau``, ``1 - tau``) or
with a score in the exponential's overflow window is decided by
onnxruntime on the row alone: one boolean is read back per call, and only
such rows are copied to the host. Records (``Decision`` objects) are copied
to the host only when asked for.

Rows on the CPU are already in host memory: there, by default
(``host_numpy=True``), the decider runs the checked NumPy plan itself on the
rows in place (a view, or a block-wise float32 copy for other dtypes), which
is faster than small torch operations that would enter torch's thread pool
while the model uses it. Both evaluations are proven on load the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from asa_format import constants as C
from asa_format.bundle import Decision, DecisionBatch
from asa_format.errors import DecisionError
from asa_format.gating import gate_of, gates
from asa_format.graphs.fastpath import (
    OVERFLOW_WINDOW,
    FastPlan,
    LinearHead,
    ScalerChain,
    check_inputs,
    fused_product,
)

__all__ = ["HostDecisions", "RowDecision", "TorchDecider", "TorchDecisions"]

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-12  # on the check rows off the margins
_FLOAT32 = np.dtype(np.float32)
CPU_BLOCK_ELEMENTS = 16384  # below torch's parallel grain (32768): one thread per operation


class _Unsupported(Exception):
    """A step this translation does not implement."""


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-x))  # the NumPy plan's formula, not torch.sigmoid


def _softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True)


_BINARY_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Sub": torch.sub,
    "Div": torch.div,
    "Add": torch.add,
    "Mul": torch.mul,
}
_UNARY_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Sigmoid": _sigmoid,
    "Softmax": _softmax,
}
# the NumPy ufunc of a ScalerChain step -> its ONNX operator
_UFUNC_OPS = {"subtract": "Sub", "divide": "Div", "add": "Add", "multiply": "Mul"}


def _torch_dtype(dtype: Any) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _cast_step(to: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        return x.to(to)

    return run


def _const_step(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], const: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        return op(x, const)

    return run


class _TorchScaler:
    """The scaler's element-wise steps (``fastpath.ScalerChain``) as torch operations."""

    def __init__(self, chain: ScalerChain, device: torch.device) -> None:
        self.steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for kind, arg in chain.steps:
            if kind == "cast":
                self.steps.append(_cast_step(_torch_dtype(arg)))
                continue
            op = _BINARY_OPS.get(_UFUNC_OPS.get(kind, ""))
            if op is None:
                raise _Unsupported(f"scaler step {kind}")
            self.steps.append(_const_step(op, _tensor(arg, device)))

    def run(self, h32: torch.Tensor) -> torch.Tensor:
        out = h32
        for step in self.steps:
            out = step(out)
        return out


class _TorchHead:
    """A linear head's bias and output function (``fastpath.LinearHead``) in torch."""

    def __init__(self, head: LinearHead, device: torch.device) -> None:
        if head.post not in ("softmax", "sigmoid_norm", "sigmoid_pair"):
            raise _Unsupported(f"head output {head.post}")
        self.head = head
        self.post = head.post
        self.bias = _tensor(head.bias.reshape(1, -1).astype(np.float64), device)
        self.sigmoid = _UNARY_OPS["Sigmoid"]
        self.softmax = _UNARY_OPS["Softmax"]

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        if self.post == "softmax":
            return self.softmax(scores)
        t = self.sigmoid(scores)
        if self.post == "sigmoid_norm":
            return t / t.abs().sum(dim=1, keepdim=True)
        return torch.cat([1.0 - t, t], dim=1)

    def sum_ok(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Rows whose ``sigmoid(s0) + sigmoid(s1)`` is at least 1/2, for a head that needs the
        check (``LinearHead.needs_sum_check``); None when it does not."""
        if not self.head.needs_sum_check:
            return None
        return self.sigmoid(scores).sum(dim=1) >= 0.5

    def margin(self, xnorm: torch.Tensor, hidden_size: int) -> torch.Tensor:
        """Twice the proven error bound of a probability, per row (as ``FastPlan.decide``)."""
        bound: torch.Tensor = self.head.error(xnorm, hidden_size)
        return 2.0 * bound


class _DeviceState:
    """The plan on one device: the scaler, the fused head weight and the heads."""

    def __init__(self, plan: FastPlan, device: torch.device) -> None:
        self.device = device
        self.scaler = _TorchScaler(plan.scaler, device)
        self.router = _TorchHead(plan.router, device)
        self.probes = [None if p is None else _TorchHead(p, device) for p in plan.probes]
        self.fused = _tensor(plan.fused, device)
        self.fused_np = np.array(plan.fused, dtype=np.float64, order="C")
        self.slices = list(plan.slices)
        self.hidden_size = int(plan.hidden_size)

    def scores(self, heads: torch.Tensor, i: int) -> torch.Tensor:
        a, b = self.slices[i]
        head = self.router if i == 0 else self.probes[i - 1]
        assert head is not None
        return heads[:, a:b] + head.bias


@dataclass(frozen=True)
class TorchDecisions:
    """Decisions for ``N`` rows as tensors on the rows' device (nothing copied to the host)."""

    domain_index: torch.Tensor  # int64 [N]
    probability: torch.Tensor  # float64 [N]
    gate: torch.Tensor  # int8 [N], -1 / 0 / +1; 0 for a non-finite row or a NaN router output
    finite: torch.Tensor  # bool [N]: the row's hidden state (so its scaled features) is finite

    def __len__(self) -> int:
        return int(self.domain_index.shape[0])

    def to_batch(self, domains: Sequence[str]) -> DecisionBatch:
        """Copy to the host as the ``DecisionBatch`` ``Bundle.decide`` returns.

        Raises ``DecisionError`` (``DECISION_INPUT``) if a row was not finite,
        as ``Bundle.decide`` does.
        """
        return self.on_host().to_batch(domains)

    def to_numpy_records(self, domains: Sequence[str]) -> list[Decision]:
        """The ``Decision`` of every row (one copy to the host, now)."""
        return list(self.to_batch(domains))

    def on_host(self) -> HostDecisions:
        return HostDecisions(
            self.domain_index.cpu().numpy(),
            self.probability.cpu().numpy(),
            self.gate.cpu().numpy(),
            self.finite.cpu().numpy(),
        )


class RowDecision:
    """One row decided by :meth:`TorchDecider.decide_host_row`: plain values, with the
    :class:`HostDecisions` method the runtime's records use."""

    __slots__ = ("domain_index", "gate", "probability")

    def __init__(self, domain_index: int, probability: float, gate: int) -> None:
        self.domain_index = domain_index
        self.probability = probability
        self.gate = gate

    def __len__(self) -> int:
        return 1

    def to_numpy_records(self, domains: Sequence[str]) -> list[Decision]:
        d = self.domain_index
        return [Decision(domains[d], d, float(self.probability), int(self.gate))]


@dataclass(frozen=True)
class HostDecisions:
    """:class:`TorchDecisions` as NumPy arrays (CPU rows decided by the NumPy plan)."""

    domain_index: np.ndarray  # int64 [N]
    probability: np.ndarray  # float64 [N]
    gate: np.ndarray  # int8 [N]
    finite: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return int(self.domain_index.shape[0])

    def to_batch(self, domains: Sequence[str]) -> DecisionBatch:
        """The ``DecisionBatch`` ``Bundle.decide`` returns; ``DecisionError``
        (``DECISION_INPUT``) if a row was not finite, as ``Bundle.decide`` raises."""
        if not self.finite.all():
            rows = np.flatnonzero(~self.finite).tolist()
            raise DecisionError(
                f"decide() got NaN or Infinity in the hidden states (rows {rows[:8]})",
                code="DECISION_INPUT",
                hint="the model produced non-finite activations; check its dtype and inputs",
            )
        return DecisionBatch(
            tuple(domains),
            self.domain_index.astype(np.int64),
            self.probability.astype(np.float64),
            self.gate.astype(np.int8),
        )

    def to_numpy_records(self, domains: Sequence[str]) -> list[Decision]:
        """The ``Decision`` of every row."""
        return list(self.to_batch(domains))


class TorchDecider:
    """A bundle's decision function in torch, proven equal to onnxruntime on load."""

    def __init__(self, bundle: Any, plan: FastPlan, *, host_numpy: bool = True) -> None:
        self.bundle = bundle
        self.plan = plan
        self.host_numpy = host_numpy  # CPU rows: the NumPy plan on them in place (see _decide_host)
        self.hidden_size = int(bundle.hidden_size)
        self.domains = tuple(bundle.domains)
        steering = bundle.manifest.steering
        self.tau = float(steering.tau)
        self.no_probe = float(steering.no_probe_probability)
        self.alpha = float(steering.alpha)
        self._lock = threading.Lock()
        self._states: dict[torch.device, _DeviceState] = {}
        self._cpu_proven = False  # CPU rows go to the NumPy plan (host_numpy) without lookups
        self._refused: dict[torch.device, str] = {}
        self._vectors: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    # -- construction and proof -------------------------------------------------------
    @classmethod
    def for_bundle(
        cls, bundle: Any, device: torch.device | str | None = None, *, host_numpy: bool = True
    ) -> TorchDecider | None:
        """A decider proven on ``device`` (default CPU), or None (reason logged at debug level).

        ``host_numpy=False`` evaluates CPU rows with the torch operations too (as on
        an accelerator); by default CPU rows, already in host memory, are decided by
        the NumPy plan on them without a copy (faster: no entry into torch's pool).
        """
        plan = getattr(bundle, "_plan", None)
        if not isinstance(plan, FastPlan):
            log.debug(
                "no torch decision for %r: the bundle has no checked NumPy plan (onnxruntime backend)",
                bundle,
            )
            return None
        decider = cls(bundle, plan, host_numpy=host_numpy)
        reason = decider.prepare(torch.device("cpu") if device is None else torch.device(device))
        if reason is not None:
            log.debug("no torch decision for %r: %s", bundle, reason)
            return None
        return decider

    def prepare(self, device: torch.device | str) -> str | None:
        """Build and prove the plan on ``device``; None when usable, else the reason it is not."""
        dev = _canonical(torch.device(device))
        with self._lock:
            if dev in self._states:
                return None
            if dev in self._refused:
                return self._refused[dev]
            try:
                state = _DeviceState(self.plan, dev)
                reason = self._prove(state)
            except (_Unsupported, RuntimeError, TypeError, ValueError) as exc:
                reason = (
                    f"the plan cannot be evaluated in torch on {dev}: {type(exc).__name__}: {exc}"
                )
            if reason is None:
                self._states[dev] = state
                self._cpu_proven = (self.host_numpy and dev.type == "cpu") or self._cpu_proven
            else:
                self._refused[dev] = reason
            return reason

    def _prove(self, state: _DeviceState) -> str | None:
        """Compare with onnxruntime on the NumPy plan's check rows (as ``Bundle._plan_agrees``):
        the scaler bit for bit on every row; domains, gates and probabilities on the rows
        off the margins (the others are decided by onnxruntime, on the row alone)."""
        probe = check_inputs(self.hidden_size)
        sessions = self.bundle._sessions
        ref_scaled = sessions[C.SCALER_FILE].run([C.SCALER_OUTPUT], {C.SCALER_INPUT: probe})[0]
        ref_scores, ref_index, ref_prob = self.bundle._decide_ort(probe)
        ref_gate = gates(ref_prob, self.tau)
        ref_gate[np.isnan(ref_scores).any(axis=1)] = 0
        h = torch.from_numpy(probe).to(state.device)
        scaled = state.scaler.run(h).cpu().numpy()
        if (
            scaled.shape != ref_scaled.shape
            or scaled.dtype != ref_scaled.dtype
            or not np.array_equal(scaled, ref_scaled)
        ):
            return "its scaler output differs from onnxruntime's (not bit-identical)"
        index_t, prob_t, gate_t, _, near_t = self._device_raw(state, h)
        ok = ~near_t.cpu().numpy()
        index, prob, gate = (
            index_t.cpu().numpy()[ok],
            prob_t.cpu().numpy()[ok],
            gate_t.cpu().numpy()[ok],
        )
        ref_index, ref_prob, ref_gate = ref_index[ok], ref_prob[ok], ref_gate[ok]
        if not np.array_equal(index, ref_index):
            return f"it routes {int(np.sum(index != ref_index))} check rows to another domain than onnxruntime"
        if not np.allclose(prob, ref_prob, rtol=0.0, atol=PROBABILITY_TOLERANCE, equal_nan=True):
            return f"its probabilities differ from onnxruntime's by up to {float(np.nanmax(np.abs(prob - ref_prob))):.3g}"
        if not np.array_equal(gate, ref_gate):
            return (
                f"it gates {int(np.sum(gate != ref_gate))} check rows differently from onnxruntime"
            )
        return None

    # -- evaluation -----------------------------------------------------------------------
    def decide(self, rows: torch.Tensor) -> TorchDecisions:
        """Decide every row of ``rows`` ``[N, H]`` (any float dtype) on its device.

        The rows are cast to float32 first (spec 4.1). A non-finite row gets
        gate 0 and ``finite`` False (``to_numpy_records`` then raises, as
        ``Bundle.decide`` does). The device must have been proven: the first
        call on a new device proves it (one synchronisation) and raises
        ``DecisionError`` if the plan does not hold there.
        """
        if (
            self._cpu_proven
            and rows.dtype == torch.float32
            and rows.device.type == "cpu"
            and rows.dim() == 2
            and rows.shape[1] == self.hidden_size
            and rows.is_contiguous()
        ):  # the common case in a CPU hook, checked with few calls into torch
            return self._decide_host(rows)
        h = rows if rows.dim() == 2 else rows.reshape(1, -1) if rows.dim() == 1 else rows
        if h.dim() != 2 or int(h.shape[1]) != self.hidden_size:
            raise DecisionError(
                f"decide() needs a tensor of shape [N, {self.hidden_size}], got {list(rows.shape)}",
                code="DECISION_INPUT",
                hint="pass the hidden states of the bundle's layer at the decision positions, one row per prompt",
            )
        if h.is_complex() or h.dtype == torch.bool:
            raise DecisionError(
                f"decide() needs a real tensor, got dtype {h.dtype}", code="DECISION_INPUT"
            )
        dev = _canonical(h.device)
        state = self._states.get(dev)
        if state is None:
            reason = self.prepare(dev)
            if reason is not None:
                raise DecisionError(
                    f"the torch decision cannot be used on {dev}: {reason}",
                    code="DECISION_FAILED",
                    hint="decide with Bundle.decide on the host for this device",
                )
            state = self._states[dev]
        return self._decide_on(state, h)

    def _decide_on(self, state: _DeviceState, h: torch.Tensor) -> TorchDecisions:
        if self.host_numpy and h.device.type == "cpu":
            return self._decide_host(h)
        index, prob, gate, finite, near = self._device_raw(state, h)
        redo = near & finite
        if bool(redo.any()):  # rows near a boundary: onnxruntime on each row alone (spec 4.9)
            rows_t = torch.nonzero(redo).flatten()
            h32 = h[rows_t].to(torch.float32).cpu().numpy()
            i, p, g = self.bundle._decide_alone(h32, np.arange(h32.shape[0]))
            index = index.index_put((rows_t,), torch.from_numpy(i).to(index.device))
            prob = prob.index_put((rows_t,), torch.from_numpy(p).to(prob.device))
            gate = gate.index_put((rows_t,), torch.from_numpy(g).to(gate.device))
        return TorchDecisions(index, prob, gate, finite)

    def _device_raw(
        self, state: _DeviceState, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(domain index, probability, gate, finite, near)`` from the torch operations alone;
        rows in ``near`` lie within the proven error bound of a boundary (or overflow)."""
        x64, heads = self._features(state, h)
        n = h.shape[0]
        hidden = state.hidden_size
        xnorm = torch.sqrt((x64 * x64).sum(dim=1))
        rs = state.scores(heads, 0)
        scores = state.router.probabilities(rs)
        near = ~torch.isfinite(xnorm) | ~(rs.abs() < OVERFLOW_WINDOW).all(dim=1)
        if scores.shape[1] > 1:
            top2 = torch.topk(scores, 2, dim=1).values
            near = near | ~((top2[:, 0] - top2[:, 1]) > state.router.margin(xnorm, hidden))
        router_ok = state.router.sum_ok(rs)
        if router_ok is not None:
            near = near | ~router_ok
        nan = torch.isnan(scores)
        nan_row = nan.any(dim=1)
        # NumPy's argmax: the first maximum; the first NaN when the row has one
        index = torch.where(nan_row, nan.to(torch.int8).argmax(dim=1), scores.argmax(dim=1)).to(
            torch.int64
        )
        columns, near_columns = [], []
        for d, probe in enumerate(state.probes):
            if probe is None:
                columns.append(
                    torch.full((n,), self.no_probe, dtype=torch.float64, device=h.device)
                )
                near_columns.append(torch.zeros(n, dtype=torch.bool, device=h.device))
                continue
            ps = state.scores(heads, 1 + d)
            p = probe.probabilities(ps)[:, 1].to(torch.float64)
            m = probe.margin(xnorm, hidden)
            columns.append(p)
            near_p = ~(ps.abs() < OVERFLOW_WINDOW).all(dim=1) | ~(
                ((p - self.tau).abs() > m) & ((p - (1.0 - self.tau)).abs() > m)
            )
            sum_ok = probe.sum_ok(ps)
            near_columns.append(near_p if sum_ok is None else near_p | ~sum_ok)
        prob = torch.stack(columns, dim=1).gather(1, index.unsqueeze(1)).squeeze(1)
        near = near | torch.stack(near_columns, dim=1).gather(1, index.unsqueeze(1)).squeeze(1)
        gate = torch.where(prob >= self.tau, 1, torch.where(prob <= 1.0 - self.tau, -1, 0)).to(
            torch.int8
        )
        # A NaN or infinite input makes its scaled row, hence every fused head, non-finite (IEEE
        # products and sums propagate them): checking the [N, W] heads is exact and much cheaper
        # than a pass over [N, H]. (Only an input whose scaling overflows float32 is also flagged.)
        finite = torch.isfinite(heads).all(dim=1)
        gate = torch.where(nan_row | ~finite, torch.zeros_like(gate), gate)
        return index, prob, gate, finite, near

    def _decide_host(self, h: torch.Tensor) -> TorchDecisions:
        """CPU rows: :meth:`decide_host` on a float32 view or block-wise copy, as tensors."""
        got = self._host_arrays(_host_float32(h))
        return TorchDecisions(
            torch.from_numpy(got.domain_index),
            torch.from_numpy(got.probability),
            torch.from_numpy(got.gate),
            torch.from_numpy(got.finite),
        )

    def decide_host(self, h32: np.ndarray) -> HostDecisions | None:
        """Decide float32 C-contiguous rows ``[N, H]`` in host memory with the NumPy plan, as
        :meth:`decide` decides CPU rows; None when this decider does not decide CPU rows that
        way (``host_numpy=False``, or the plan was refused on the CPU): call :meth:`decide`."""
        if not self._cpu_proven:
            if not self.host_numpy or self.prepare(torch.device("cpu")) is not None:
                return None
        if (
            h32.dtype != np.float32
            or h32.ndim != 2
            or h32.shape[1] != self.hidden_size
            or not h32.flags.c_contiguous
        ):
            return None
        return self._host_arrays(h32)

    def decide_host_row(self, hidden: np.ndarray, b: int, p: int) -> tuple[int, float, int] | None:
        """Row ``(b, p)`` of host hidden states ``[B, T, H]`` (float32, any outer strides):
        ``(domain index, probability, gate)`` from the plan's one-row path, as
        :meth:`decide_host` decides it; None when the row needs :meth:`decide_host` (near a
        boundary, non-finite values) or this decider does not decide CPU rows with NumPy."""
        if not self._cpu_proven:
            return None
        return self.plan.decide_gated(hidden, b, p, self.tau, self.no_probe)

    def _host_arrays(self, h32: np.ndarray) -> HostDecisions:
        """The NumPy plan (``FastPlan.evaluate``) on float32 rows; its rows near a boundary
        decided by onnxruntime on the row alone, as ``Bundle.decide``."""
        if h32.shape[0] == 1:  # one row: the plan's plain-float path (fewer, smaller steps)
            one = self.plan.decide_one(h32, self.tau)
            if one is not None:
                d, p, _ = one
                pv = self.no_probe if p is None else p
                return HostDecisions(
                    np.array([d], dtype=np.int64),
                    np.array([pv], dtype=np.float64),
                    np.array([gate_of(pv, self.tau)], dtype=np.int8),
                    np.ones(1, dtype=bool),
                )
        got = self.plan.evaluate(h32, self.tau, self.no_probe)
        index, prob, gate = got.index, got.probability, got.gate
        finite = np.ones(h32.shape[0], dtype=bool)
        near = np.flatnonzero(got.near)
        if near.size:  # the only rows that can hold NaN or infinity (FastPlan.evaluate)
            finite[near] = np.isfinite(h32[near]).all(axis=1)
            gate[~finite] = 0
            redo = near[finite[near]]
            if redo.size:
                index[redo], prob[redo], gate[redo] = self.bundle._decide_alone(h32, redo)
        return HostDecisions(index, prob, gate, finite)

    @staticmethod
    def _features(state: _DeviceState, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x64, heads)``: the scaled rows in float64 and their fused product.

        On the CPU the rows are already in host memory, and entering torch's thread pool
        right after the model's own parallel work can wait for a busy pool (tens of
        milliseconds measured on 2 loaded cores, for any operation above torch's parallel
        grain). So there the ``[N, H]`` operations run in row blocks below that grain,
        into a NumPy buffer shared with the returned tensor (no copy), and the fused
        product is the NumPy plan's own single-threaded ``fused_product``. Rows are
        independent, so blocks give the same values. On other devices: one pass each.
        """
        n, width = int(h.shape[0]), int(h.shape[1])
        if h.device.type != "cpu":
            x64 = state.scaler.run(h.to(torch.float32)).to(torch.float64)
            return x64, x64 @ state.fused
        step = max(1, CPU_BLOCK_ELEMENTS // max(1, width))
        buf = np.empty((n, width), dtype=np.float64)
        for i in range(0, n, step):
            x = state.scaler.run(h[i : i + step].to(torch.float32))
            buf[i : i + step] = x.numpy()  # float32 -> float64 is exact
        x64 = torch.from_numpy(buf)
        with np.errstate(all="ignore"):  # non-finite rows are flagged, not warned about
            return x64, torch.from_numpy(fused_product(buf, state.fused_np))

    # -- steering vectors -------------------------------------------------------------------
    def mixed_vectors(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """``[n_domains, H]``: ``bundle.steering_vector(d)`` per domain (float32 math), cast to ``dtype``."""
        dev = _canonical(torch.device(device))
        key = (dtype, dev)
        with self._lock:
            cached = self._vectors.get(key)
            if cached is None:
                v = np.stack(
                    [
                        np.asarray(self.bundle.steering_vector(i), dtype=np.float32)
                        for i in range(len(self.domains))
                    ]
                )
                cached = torch.from_numpy(v).to(device=dev, dtype=dtype)
                self._vectors[key] = cached
        return cached

    def delta_table(
        self, dtype: torch.dtype, device: torch.device | str, alpha: float | None = None
    ) -> torch.Tensor:
        """``[n_domains, 3, H]``: ``float32(g*alpha) * v[d]`` in float32, cast to ``dtype``, for g = -1, 0, +1.

        ``table[domain_index, gate + 1]`` is a row's delta (spec 4.6): a gather, with static shapes.
        """
        a = self.alpha if alpha is None else float(alpha)
        v = self.mixed_vectors(torch.float32, device)
        scale = torch.tensor(
            [float(np.float32(g * a)) for g in (-1, 0, 1)], dtype=torch.float32, device=v.device
        )
        return (scale.view(1, 3, 1) * v.unsqueeze(1)).to(dtype)


def _host_float32(h: torch.Tensor) -> np.ndarray:
    """``float32(h)`` as a NumPy array: a view when ``h`` is float32 and contiguous, else a
    copy converted in row blocks below torch's parallel grain (no entry into its pool)."""
    if h.dtype == torch.float32 and h.is_contiguous():
        return h.numpy(force=False) if not h.requires_grad else h.detach().numpy()
    n, width = int(h.shape[0]), int(h.shape[1])
    step = max(1, CPU_BLOCK_ELEMENTS // max(1, width))
    out = np.empty((n, width), dtype=np.float32)
    for i in range(0, n, step):
        out[i : i + step] = h[i : i + step].detach().to(torch.float32).numpy()
    return out


def _tensor(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A copy of ``arr`` on ``device`` (the plan's arrays may be read-only)."""
    return torch.from_numpy(np.array(arr, copy=True, order="C")).to(device)


def _canonical(device: torch.device) -> torch.device:
    """``cuda`` and ``cuda:0`` are the same device when 0 is current."""
    if device.type != "cpu" and device.index is None:
        return torch.device(device.type, torch.empty(0, device=device).device.index)
    if device.type == "cpu":
        return torch.device("cpu")
    return device
