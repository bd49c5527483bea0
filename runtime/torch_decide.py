"""The decision function evaluated in torch, where the hidden states live.

``TorchDecider.for_bundle(bundle)`` translates the bundle's checked NumPy
plan (``asa_format.fastpath``: the same compiled nodes, the same fused first
matrix product, float64 after the scaler) into torch operations on a device,
and keeps it only if it reproduces onnxruntime on the plan's check rows
exactly as the NumPy plan was proven: bit-identical scaler output, identical
domains and gates, probabilities within 1e-12. Otherwise it returns None and
logs why (debug level), and the caller keeps ``Bundle.decide``.

``decide(rows)`` runs on the rows' device with static shapes and no
data-dependent control flow: every probe is evaluated on every row and the
routed one is gathered, so there is no host copy and no synchronisation.
Records (``Decision`` objects) are copied to the host only when asked for.

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
from asa_format.bundle import Decision, DecisionBatch, gates
from asa_format.errors import DecisionError
from asa_format.fastpath import CompiledGraph, FastPlan, check_inputs, fused_product

__all__ = ["TorchDecider", "TorchDecisions"]

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-12  # as the NumPy plan's check on load
CPU_BLOCK_ELEMENTS = 16384  # below torch's parallel grain (32768): one thread per operation

_ONNX_TO_TORCH = {1: torch.float32, 6: torch.int32, 7: torch.int64, 11: torch.float64}
_PROMOTE: dict[tuple[torch.dtype, torch.dtype], torch.dtype] = {}

Env = dict[str, torch.Tensor]
TorchOp = Callable[[Env], None]


class _Unsupported(Exception):
    """A node this translation does not implement."""


def _promoted(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """NumPy's promotion of two array dtypes (torch does not promote 0-d tensors the same way)."""
    key = (a, b)
    out = _PROMOTE.get(key)
    if out is None:
        na = torch.empty(0, dtype=a).numpy().dtype
        nb = torch.empty(0, dtype=b).numpy().dtype
        out = torch.from_numpy(np.empty(0, dtype=np.result_type(na, nb))).dtype
        _PROMOTE[key] = out
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: str, b: str, out: str) -> TorchOp:
    def run(env: Env) -> None:
        x, y = env[a], env[b]
        if x.dtype != y.dtype:
            dt = _promoted(x.dtype, y.dtype)
            x, y = x.to(dt), y.to(dt)
        env[out] = fn(x, y)

    return run


def _unary(fn: Callable[[torch.Tensor], torch.Tensor], a: str, out: str) -> TorchOp:
    def run(env: Env) -> None:
        env[out] = fn(env[a])

    return run


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
    "MatMul": torch.matmul,
}
_UNARY_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Identity": lambda x: x,
    "Sigmoid": _sigmoid,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
}


def _compile_node(node: Any, consts: dict[str, np.ndarray], opset: int) -> TorchOp:
    """The torch counterpart of ``fastpath._compile_node`` (same operators, same formulas)."""
    op, ins, outs = node.op_type, list(node.input), list(node.output)
    if node.domain not in ("", "ai.onnx") or len(outs) != 1:
        raise _Unsupported(op)
    out = outs[0]
    if op in _BINARY_OPS:
        return _binary(_BINARY_OPS[op], ins[0], ins[1], out)
    if op in _UNARY_OPS:
        return _unary(_UNARY_OPS[op], ins[0], out)
    src = ins[0]
    if op == "Cast":
        to = _ONNX_TO_TORCH.get(int(_attr(node, "to", 0)))
        if to is None:
            raise _Unsupported("Cast")
        dtype = to
        return _unary(lambda x: x.to(dtype), src, out)
    if op == "Softmax":
        if int(_attr(node, "axis", -1 if opset >= 13 else 1)) not in (1, -1):
            raise _Unsupported("Softmax axis")
        return _unary(_softmax, src, out)
    if op == "ReduceSum":
        keepdims = bool(_attr(node, "keepdims", 1))
        axes_attr = _attr(node, "axes", None)
        if len(ins) > 1 and ins[1]:
            if ins[1] not in consts:
                raise _Unsupported("ReduceSum dynamic axes")
            axes = [int(a) for a in consts[ins[1]].ravel()]
        elif axes_attr is not None:
            axes = [int(a) for a in axes_attr]
        else:
            raise _Unsupported("ReduceSum all axes")
        return _unary(lambda x: x.sum(dim=axes, keepdim=keepdims), src, out)
    if op == "Reshape":
        if ins[1] not in consts:
            raise _Unsupported("Reshape dynamic shape")
        shape = [int(s) for s in consts[ins[1]].ravel()]
        if 0 in shape:
            raise _Unsupported("Reshape zero dim")
        return _unary(lambda x: x.reshape(shape), src, out)
    if op == "Concat":
        axis = int(_attr(node, "axis", 0))

        def run_cat(env: Env) -> None:
            env[out] = torch.cat([env[i] for i in ins], dim=axis)

        return run_cat
    raise _Unsupported(op)


class _TorchGraph:
    """One compiled graph's nodes as torch operations on one device."""

    def __init__(self, graph: CompiledGraph, device: torch.device) -> None:
        if not graph.nodes and graph.ops:
            raise _Unsupported("the compiled plan does not carry its nodes")
        used = {i for n in graph.nodes for i in n.input if i}
        self.consts: Env = {
            k: _tensor(v, device) for k, v in graph.consts.items() if k in used
        }
        self.ops = [_compile_node(n, graph.consts, graph.opset) for n in graph.nodes]
        self.input_name = graph.input_name
        self.output = graph.output
        self.head_output = graph.head_output

    def run(self, value: torch.Tensor, head: torch.Tensor | None) -> torch.Tensor:
        env = dict(self.consts)
        env[self.input_name] = value
        if self.head_output is not None:
            if head is None:
                raise _Unsupported("split head without its product")
            env[self.head_output] = head
        for op in self.ops:
            op(env)
        return env[self.output]


class _DeviceState:
    """The plan on one device: graphs, the fused head weight and the probe table."""

    def __init__(self, plan: FastPlan, device: torch.device) -> None:
        self.device = device
        self.scaler = _TorchGraph(plan.scaler, device)
        self.router = _TorchGraph(plan.router, device)
        self.probes = [None if p is None else _TorchGraph(p, device) for p in plan.probes]
        self.fused = None if plan.fused is None else _tensor(plan.fused, device)
        self.fused_np = None if plan.fused is None else np.array(plan.fused, dtype=np.float64, order="C")
        self.slices = list(plan.slices)
        if self.fused is None:  # each graph with a split head multiplies by its own weight
            self.weights: list[torch.Tensor | None] = [
                None if g is None or g.head_weight is None else _tensor(g.head_weight, device)
                for g in (plan.router, *plan.probes)
            ]
        else:
            self.weights = []

    def head(self, x64: torch.Tensor, heads: torch.Tensor | None, i: int) -> torch.Tensor | None:
        if heads is not None:
            a, b = self.slices[i]
            return heads[:, a:b]
        if self.weights and self.weights[i] is not None:
            w = self.weights[i]
            assert w is not None
            return x64 @ w
        return None


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
        finite = self.finite.cpu().numpy()
        if not finite.all():
            rows = np.flatnonzero(~finite).tolist()
            raise DecisionError(
                f"decide() got NaN or Infinity in the hidden states (rows {rows[:8]})",
                code="DECISION_INPUT",
                hint="the model produced non-finite activations; check its dtype and inputs",
            )
        return DecisionBatch(
            tuple(domains),
            self.domain_index.cpu().numpy().astype(np.int64),
            self.probability.cpu().numpy().astype(np.float64),
            self.gate.cpu().numpy().astype(np.int8),
        )

    def to_numpy_records(self, domains: Sequence[str]) -> list[Decision]:
        """The ``Decision`` of every row (one copy to the host, now)."""
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
        self._refused: dict[torch.device, str] = {}
        self._vectors: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    # -- construction and proof -------------------------------------------------------
    @classmethod
    def for_bundle(cls, bundle: Any, device: torch.device | str | None = None, *, host_numpy: bool = True) -> TorchDecider | None:
        """A decider proven on ``device`` (default CPU), or None (reason logged at debug level).

        ``host_numpy=False`` evaluates CPU rows with the torch operations too (as on
        an accelerator); by default CPU rows, already in host memory, are decided by
        the NumPy plan on them without a copy (faster: no entry into torch's pool).
        """
        plan = getattr(bundle, "_plan", None)
        if not isinstance(plan, FastPlan):
            log.debug("no torch decision for %r: the bundle has no checked NumPy plan (onnxruntime backend)", bundle)
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
                reason = f"the plan cannot be evaluated in torch on {dev}: {type(exc).__name__}: {exc}"
            if reason is None:
                self._states[dev] = state
            else:
                self._refused[dev] = reason
            return reason

    def _prove(self, state: _DeviceState) -> str | None:
        """Compare with onnxruntime on the NumPy plan's check rows (as ``Bundle._checked_plan``)."""
        probe = check_inputs(self.hidden_size)
        sessions = self.bundle._sessions
        ref_scaled = sessions[C.SCALER_FILE].run([C.SCALER_OUTPUT], {C.SCALER_INPUT: probe})[0]
        ref_scores, ref_index, ref_prob = self.bundle._decide_ort(probe)
        ref_gate = gates(ref_prob, self.tau)
        ref_gate[np.isnan(ref_scores).any(axis=1)] = 0
        h = torch.from_numpy(probe).to(state.device)
        scaled = state.scaler.run(h, None).cpu().numpy()
        got = self._decide_on(state, h)
        index = got.domain_index.cpu().numpy()
        prob = got.probability.cpu().numpy()
        gate = got.gate.cpu().numpy()
        if scaled.shape != ref_scaled.shape or scaled.dtype != ref_scaled.dtype or not np.array_equal(scaled, ref_scaled):
            return "its scaler output differs from onnxruntime's (not bit-identical)"
        if not np.array_equal(index, ref_index):
            return f"it routes {int(np.sum(index != ref_index))} check rows to another domain than onnxruntime"
        if not np.allclose(prob, ref_prob, rtol=0.0, atol=PROBABILITY_TOLERANCE, equal_nan=True):
            return f"its probabilities differ from onnxruntime's by up to {float(np.nanmax(np.abs(prob - ref_prob))):.3g}"
        if not np.array_equal(gate, ref_gate):
            return f"it gates {int(np.sum(gate != ref_gate))} check rows differently from onnxruntime"
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
        h = rows if rows.dim() == 2 else rows.reshape(1, -1) if rows.dim() == 1 else rows
        if h.dim() != 2 or int(h.shape[1]) != self.hidden_size:
            raise DecisionError(
                f"decide() needs a tensor of shape [N, {self.hidden_size}], got {list(rows.shape)}",
                code="DECISION_INPUT",
                hint="pass the hidden states of the bundle's layer at the decision positions, one row per prompt",
            )
        if h.is_complex() or h.dtype == torch.bool:
            raise DecisionError(f"decide() needs a real tensor, got dtype {h.dtype}", code="DECISION_INPUT")
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
        x64, heads = self._features(state, h)
        scores = state.router.run(x64, state.head(x64, heads, 0))
        nan = torch.isnan(scores)
        nan_row = nan.any(dim=1)
        # NumPy's argmax: the first maximum; the first NaN when the row has one
        index = torch.where(nan_row, nan.to(torch.int8).argmax(dim=1), scores.argmax(dim=1)).to(torch.int64)
        n = h.shape[0]
        columns = []
        for d, probe in enumerate(state.probes):
            if probe is None:
                columns.append(torch.full((n,), self.no_probe, dtype=torch.float64, device=h.device))
            else:
                columns.append(probe.run(x64, state.head(x64, heads, 1 + d))[:, 1].to(torch.float64))
        table = torch.stack(columns, dim=1)
        prob = table.gather(1, index.unsqueeze(1)).squeeze(1)
        gate = torch.where(prob >= self.tau, 1, torch.where(prob <= 1.0 - self.tau, -1, 0)).to(torch.int8)
        # A NaN or infinite input makes its scaled row, hence every fused head, non-finite (IEEE
        # products and sums propagate them): checking the [N, W] heads is exact and much cheaper
        # than a pass over [N, H]. (Only an input whose scaling overflows float32 is also flagged.)
        finite = torch.isfinite(heads).all(dim=1) if heads is not None else torch.isfinite(x64).all(dim=1)
        gate = torch.where(nan_row | ~finite, torch.zeros_like(gate), gate)
        return TorchDecisions(index, prob, gate, finite)

    def _decide_host(self, h: torch.Tensor) -> TorchDecisions:
        """CPU rows: the NumPy plan (``FastPlan.decide``) on a float32 view or block-wise copy."""
        h32 = _host_float32(h)
        with np.errstate(all="ignore"):
            scores, prob, has_probe = self.plan.decide(h32)
        nan = np.isnan(scores)
        nan_row = nan.any(axis=1)
        index = np.argmax(scores, axis=1).astype(np.int64)  # NumPy's argmax: the first NaN if any
        prob = np.where(has_probe, prob, self.no_probe).astype(np.float64)
        gate = gates(prob, self.tau)
        finite = np.isfinite(h32).all(axis=1)
        gate[nan_row | ~finite] = 0
        return TorchDecisions(torch.from_numpy(index), torch.from_numpy(prob), torch.from_numpy(gate), torch.from_numpy(finite))

    @staticmethod
    def _features(state: _DeviceState, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x64, heads)``: the scaled rows in float64 and their fused product (or None).

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
            x64 = state.scaler.run(h.to(torch.float32), None).to(torch.float64)
            return x64, (x64 @ state.fused if state.fused is not None else None)
        step = max(1, CPU_BLOCK_ELEMENTS // max(1, width))
        buf = np.empty((n, width), dtype=np.float64)
        for i in range(0, n, step):
            x = state.scaler.run(h[i : i + step].to(torch.float32), None)
            buf[i : i + step] = x.numpy()  # float32 -> float64 is exact
        x64 = torch.from_numpy(buf)
        if state.fused_np is None:
            return x64, None
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
                v = np.stack([np.asarray(self.bundle.steering_vector(i), dtype=np.float32) for i in range(len(self.domains))])
                cached = torch.from_numpy(v).to(device=dev, dtype=dtype)
                self._vectors[key] = cached
        return cached

    def delta_table(self, dtype: torch.dtype, device: torch.device | str, alpha: float | None = None) -> torch.Tensor:
        """``[n_domains, 3, H]``: ``float32(g*alpha) * v[d]`` in float32, cast to ``dtype``, for g = -1, 0, +1.

        ``table[domain_index, gate + 1]`` is a row's delta (spec 4.6): a gather, with static shapes.
        """
        a = self.alpha if alpha is None else float(alpha)
        v = self.mixed_vectors(torch.float32, device)
        scale = torch.tensor([float(np.float32(g * a)) for g in (-1, 0, 1)], dtype=torch.float32, device=v.device)
        return (scale.view(1, 3, 1) * v.unsqueeze(1)).to(dtype)


def _host_float32(h: torch.Tensor) -> np.ndarray:
    """``float32(h)`` as a NumPy array: a view when ``h`` is float32 and contiguous, else a
    copy converted in row blocks below torch's parallel grain (no entry into its pool)."""
    if h.dtype == torch.float32 and h.is_contiguous():
        return h.detach().numpy()
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
