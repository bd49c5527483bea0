"""The fast path: a NumPy evaluator for graphs proven equal to onnxruntime.

Most of an onnxruntime call on these tiny graphs is per-call overhead. This
module recognises, structurally, the graphs whose result it can reproduce on
*every* input, and evaluates only those:

* a scaler that is a chain of element-wise ``Cast`` (float32/float64),
  ``Sub``/``Div`` by a constant, ``Add``/``Mul`` with a constant and
  ``Identity``: IEEE 754 operations that NumPy and onnxruntime round the
  same way, so the result is bit-identical;
* a classifier ``probabilities = post(x @ W + b)`` with ``post`` one of
  ``Softmax`` (axis 1), ``Sigmoid`` normalised by the sum of its columns (the
  skl2onnx binary form), or ``[1 - sigmoid(s), sigmoid(s)]``, followed by
  ``Cast``/``Identity`` to float64 only.

Any other graph is evaluated by onnxruntime: there is no general compiler.
For a recognised classifier the matrix product is the only step whose
rounding depends on the evaluator (summation order); its error is bounded
for every row by ``gamma(H) * ||x|| * ||w_j||`` (the classic bound for any
summation order). :meth:`FastPlan.decide` returns, per row, whether the row
lies within that bound of a decision boundary (top-two router
probabilities, ``tau``, ``1 - tau``), has a non-finite value or a score in
the exponential's overflow window; the bundle decides such rows with
onnxruntime on the row alone, so a row gets the same domain and gate alone,
inside any batch, and from onnxruntime.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.gating import gate_of
from asa_format.graphs.native import compile_lane
from asa_format.graphs.wire import array_of, value_of

__all__ = [
    "SINGLE_THREAD_MNK",
    "FastPlan",
    "LinearHead",
    "ScalerChain",
    "build_plan",
    "check_inputs",
    "fused_product",
    "match_classifier",
    "match_scaler",
]

_UNIT_ROUNDOFF = 2.0**-53
OVERFLOW_WINDOW = (
    700.0  # |score| above this: exp() is near float64 overflow, decided by onnxruntime
)
PROBABILITY_SLACK = 1e-12  # added to every margin: transcendental functions differ by a few ulps
_FLOAT, _DOUBLE = 1, 11

# NumPy >= 2 keeps the floating-point error state in a context variable: setting it directly
# costs two C calls, where ``np.errstate`` runs Python frames (about 10 us on a cold cache,
# which is what a decision inside a forward hook meets). Used only where ``np.geterr()``
# confirms that the value set is the state "ignore everything"; else ``np.errstate``.
_ERR_VAR: Any = None
_ERR_IGNORE: Any = None
_IGNORE_ALL = {"divide": "ignore", "over": "ignore", "under": "ignore", "invalid": "ignore"}


def _fast_error_state() -> bool:
    global _ERR_VAR, _ERR_IGNORE
    if _ERR_VAR is not None:
        return True
    try:
        from numpy._core.umath import _extobj_contextvar, _make_extobj

        value = _make_extobj(all="ignore")
        token = _extobj_contextvar.set(value)
        try:
            ok = np.geterr() == _IGNORE_ALL
        finally:
            _extobj_contextvar.reset(token)
    except Exception:
        return False
    if ok:
        _ERR_VAR, _ERR_IGNORE = _extobj_contextvar, value
    return ok


_NP = {_FLOAT: np.float32, _DOUBLE: np.float64}


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return value_of(a)
    return default


class _Graph:
    """Producers and constants of a checked ModelProto."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.input = graph.input[0].name
        self.inits = {t.name: t for t in graph.initializer}
        self.producers = {o: n for n in graph.node for o in n.output if o}
        self._array = array_of
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else np.asarray(self._array(t))

    def node(self, name: str, *ops: str) -> Any | None:
        n = self.producers.get(name)
        return n if n is not None and n.domain in ("", "ai.onnx") and n.op_type in ops else None


# -- scaler ------------------------------------------------------------------------------


@dataclass
class ScalerChain:
    """Element-wise steps from ``hidden`` (float32) to ``x`` (float32)."""

    steps: list[tuple[str, Any]]  # ("cast", dtype) or (ufunc name, constant [1, H] row)
    _ops: list[tuple[Any, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Compiled once: a cast to the dtype the value already has is the identity (skl2onnx
        # writes several float32 -> float32 casts), and the ufuncs are looked up here.
        ops: list[tuple[Any, Any]] = []
        dtype: Any = np.dtype(np.float32)
        for kind, arg in self.steps:
            if kind == "cast":
                if np.dtype(arg) != dtype:
                    dtype = np.dtype(arg)
                    ops.append((None, dtype))
                continue
            ops.append((getattr(np, kind), np.ascontiguousarray(arg)))
        self._ops = ops
        # one row into preallocated buffers: (ufunc or None for a cast, constant row, output
        # is float64); every step keeps its input's dtype (match_scaler checks it)
        row_ops: list[tuple[Any, Any, bool]] = []
        dtype = np.dtype(np.float32)
        for ufunc, arg in ops:
            if ufunc is None:
                dtype = arg
                row_ops.append((None, None, dtype == np.float64))
            else:
                row_ops.append((ufunc, np.ascontiguousarray(arg.reshape(-1)), dtype == np.float64))
        self._row_ops = row_ops

    def run(self, h32: np.ndarray) -> np.ndarray:
        """The scaled rows (float32); a new array unless the chain is the identity.

        The first step allocates, the others write in place: element-wise ufuncs give the
        same values in place. Callers silence floating-point warnings (``np.errstate``).
        """
        out = h32
        owned = False
        for ufunc, arg in self._ops:
            if ufunc is None:
                out = out.astype(arg)
                owned = True
            elif owned:
                ufunc(out, arg, out=out)
            else:
                out = ufunc(out, arg)
                owned = True
        return out

    def run_row(self, h: np.ndarray, buf32: np.ndarray, buf64: np.ndarray) -> np.ndarray:
        """:meth:`run` on one row ``[H]`` (float32), written into the buffer of each step's
        dtype (the same element-wise operations, so the same values): the input itself when
        the chain is the identity, else ``buf32``. Callers silence floating-point warnings."""
        out = h
        for ufunc, arg, wide in self._row_ops:
            dst = buf64 if wide else buf32
            if ufunc is None:
                dst[...] = out
            else:
                ufunc(out, arg, out=dst)
            out = dst
        return out


_BINARY = {"Sub": "subtract", "Div": "divide", "Add": "add", "Mul": "multiply"}


def match_scaler(model: Any, hidden_size: int) -> ScalerChain | None:
    """The scaler as a chain of exact element-wise steps, or None."""
    g = _Graph(model)
    steps: list[tuple[str, Any]] = []
    name = C.SCALER_OUTPUT
    while name != g.input:
        node = g.node(name, "Cast", "Identity", *_BINARY)
        if node is None or len(node.output) != 1:
            return None
        if node.op_type == "Identity":
            name = node.input[0]
            continue
        if node.op_type == "Cast":
            to = int(_attr(node, "to", 0))
            if to not in _NP:
                return None
            steps.append(("cast", _NP[to]))
            name = node.input[0]
            continue
        a, b = node.input
        if b in g.inits and a not in g.inits:
            dynamic, const = a, g.const(b)
        elif a in g.inits and b not in g.inits and node.op_type in ("Add", "Mul"):
            dynamic, const = b, g.const(a)
        else:
            return None
        assert const is not None
        if (
            const.dtype not in (np.float32, np.float64)
            or const.size not in (1, hidden_size)
            or const.ndim > 2
        ):
            return None
        steps.append((_BINARY[node.op_type], const.reshape(1, -1)))
        name = dynamic
    steps.reverse()
    # every step must keep the dtype of its input (as ONNX requires), ending in float32
    dtype: Any = np.float32
    for kind, arg in steps:
        if kind == "cast":
            dtype = arg
        elif arg.dtype != dtype:
            return None
    return ScalerChain(steps) if dtype == np.float32 else None


# -- classifiers ---------------------------------------------------------------------------


@dataclass
class LinearHead:
    """``probabilities = post(x @ weight + bias)``."""

    weight: np.ndarray  # float64 [H, k]
    bias: np.ndarray  # float64 [k]
    post: str  # "softmax", "sigmoid_norm" or "sigmoid_pair"
    column_norm: float = 0.0  # largest L2 norm of a column of weight
    bias_max: float = 0.0

    def __post_init__(self) -> None:
        self.column_norm = float(np.sqrt((self.weight * self.weight).sum(axis=0)).max(initial=0.0))
        self.bias_max = float(np.abs(self.bias).max(initial=0.0))

    @property
    def needs_sum_check(self) -> bool:
        """``sigmoid_norm`` divides by ``sigmoid(s0) + sigmoid(s1)``; onnxruntime's sigmoid is
        accurate in absolute terms only (it returns 0 below about -37), so a row whose sum
        is small (both scores very negative) is decided by onnxruntime. Not needed for the
        binary logistic regression form, columns and biases negations of each other: there
        ``s0 == -s1`` bit for bit and the sum is 1."""
        if self.post != "sigmoid_norm":
            return False
        w, b = self.weight, self.bias
        balanced = (
            w.shape[1] == 2
            and (-w[:, 0]).tobytes() == w[:, 1].tobytes()
            and (-b[0]).tobytes() == b[1].tobytes()
        )
        return not balanced

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            if self.post == "softmax":
                e = np.exp(scores - scores.max(axis=1, keepdims=True))
                return e / e.sum(axis=1, keepdims=True)
            t = 1.0 / (1.0 + np.exp(-scores))
            if self.post == "sigmoid_norm":
                return t / np.abs(t).sum(axis=1, keepdims=True)
            return np.concatenate([1.0 - t, t], axis=1)

    def row_probabilities(self, scores: list[float]) -> list[float]:
        """The same for one row of plain floats (|scores| <= OVERFLOW_WINDOW)."""
        if self.post == "softmax":
            m = max(scores)
            e = [math.exp(s - m) for s in scores]
            total = sum(e)
            return [v / total for v in e]
        t = [1.0 / (1.0 + math.exp(-s)) for s in scores]
        if self.post == "sigmoid_norm":
            total = sum(t)
            return [v / total for v in t]
        return [1.0 - t[0], t[0]]

    def error(self, xnorm: Any, hidden_size: int) -> Any:
        """A bound on |probability(fast) - probability(onnxruntime)| for rows of L2 norm ``xnorm``
        (a float or an array)."""
        n = (hidden_size + 2) * _UNIT_ROUNDOFF
        gamma = n / (1.0 - n)
        dot = xnorm * self.column_norm
        logit = 2.0 * (
            1.01 * gamma * dot + 2.0 * _UNIT_ROUNDOFF * (self.bias_max + dot)
        )  # both evaluators
        return (
            3.0 * logit + PROBABILITY_SLACK
        )  # softmax / sigmoid move by at most 2x (1/4x) the logits


def _axes_are_one(node: Any, g: _Graph) -> bool:
    axes = _attr(node, "axes", None)
    if len(node.input) > 1 and node.input[1]:
        c = g.const(node.input[1])
        axes = None if c is None else c.reshape(-1).tolist()
    return (
        axes is not None
        and [int(a) for a in axes] in ([1], [-1])
        and int(_attr(node, "keepdims", 1)) == 1
    )


def _sigmoid_of(name: str, g: _Graph) -> str | None:
    node = g.node(name, "Sigmoid")
    return None if node is None else str(node.input[0])


def match_classifier(model: Any, hidden_size: int, n_classes: int) -> LinearHead | None:
    """The classifier as a :class:`LinearHead`, or None when it has another form."""
    g = _Graph(model)
    name = C.CLASSIFIER_PROBABILITIES
    while (node := g.node(name, "Cast", "Identity")) is not None:
        if node.op_type == "Cast" and int(_attr(node, "to", 0)) != _DOUBLE:
            return None  # a cast to float32 would round the probabilities
        name = node.input[0]
    post, scores = _match_post(name, g)
    if post is None or scores is None:
        return None
    bias: np.ndarray | None = None
    add = g.node(scores, "Add")
    if add is not None:
        a, b = add.input
        if b in g.inits and a not in g.inits:
            scores, bias = a, g.const(b)
        elif a in g.inits and b not in g.inits:
            scores, bias = b, g.const(a)
        else:
            return None
    matmul = g.node(scores, "MatMul")
    if matmul is None or matmul.input[0] != g.input or matmul.input[1] not in g.inits:
        return None
    weight = g.const(matmul.input[1])
    if (
        weight is None
        or weight.dtype != np.float64
        or weight.ndim != 2
        or weight.shape[0] != hidden_size
    ):
        return None
    k = weight.shape[1]
    if bias is None:
        bias = np.zeros(k)
    if (
        bias.dtype != np.float64
        or bias.size != k
        or bias.ndim > 2
        or (bias.ndim == 2 and bias.shape[0] != 1)
    ):
        return None
    if (post == "sigmoid_pair") != (k == 1) or (k if post != "sigmoid_pair" else 2) != n_classes:
        return None
    return LinearHead(np.ascontiguousarray(weight), bias.reshape(-1).copy(), post)


def _match_post(name: str, g: _Graph) -> tuple[str | None, str | None]:
    softmax = g.node(name, "Softmax")
    if softmax is not None:
        axis = int(_attr(softmax, "axis", -1 if g.opset >= 13 else 1))
        return ("softmax", softmax.input[0]) if axis in (1, -1) else (None, None)
    div = g.node(name, "Div")
    if div is not None:
        t, n = div.input
        total = g.node(n, "ReduceSum")
        absolute = (
            g.node(total.input[0], "Abs") if total is not None and _axes_are_one(total, g) else None
        )
        if absolute is not None and absolute.input[0] == t:
            s = _sigmoid_of(t, g)
            return ("sigmoid_norm", s) if s is not None else (None, None)
        return None, None
    concat = g.node(name, "Concat")
    if concat is not None and len(concat.input) == 2 and int(_attr(concat, "axis", 0)) in (1, -1):
        q, t = concat.input
        sub = g.node(q, "Sub")
        one = g.const(sub.input[0]) if sub is not None else None
        if (
            sub is not None
            and sub.input[1] == t
            and one is not None
            and one.size == 1
            and float(one.reshape(-1)[0]) == 1.0
        ):
            s = _sigmoid_of(t, g)
            return ("sigmoid_pair", s) if s is not None else (None, None)
    return None, None


# -- the fused matrix product, in single-threaded blocks ---------------------------------
# A multi-threaded BLAS call (OpenBLAS threads a GEMM above M*N*K = 65536*4)
# contends with any other thread pool of the process: right after a 2-thread
# torch or NumPy matrix product, batch-64 decisions took 6-18 ms instead of
# 0.4 ms. Row blocks below that size run on the calling thread (the same dot
# products, up to the kernel's summation order; the error bound covers it).

SINGLE_THREAD_MNK = 1 << 18


def fused_product(x64: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """``x64 @ fused``, computed in row blocks of at most ``SINGLE_THREAD_MNK`` multiply-adds."""
    n = x64.shape[0]
    rows = max(1, SINGLE_THREAD_MNK // max(1, fused.shape[0] * fused.shape[1]))
    if n <= rows:
        return x64 @ fused
    out = np.empty((n, fused.shape[1]), dtype=np.result_type(x64, fused))
    for i in range(0, n, rows):
        np.matmul(x64[i : i + rows], fused, out=out[i : i + rows])
    return out


def transposed_product(x64: np.ndarray, fused_t: np.ndarray) -> np.ndarray:
    """``fused_t @ x64.T`` (``[W, N]``), in column blocks of at most ``SINGLE_THREAD_MNK``
    multiply-adds: the faster orientation for a few heads and many rows."""
    n = x64.shape[0]
    cols = max(1, SINGLE_THREAD_MNK // max(1, fused_t.shape[0] * fused_t.shape[1]))
    if n <= cols:
        return fused_t @ x64.T
    out = np.empty((fused_t.shape[0], n), dtype=np.result_type(x64, fused_t))
    for i in range(0, n, cols):
        np.matmul(fused_t, x64[i : i + cols].T, out=out[:, i : i + cols])
    return out


# -- the plan ---------------------------------------------------------------------------------


def _unique_columns(fused: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unique [H, U], source [W], sign [W])`` with ``fused[:, j] == sign[j] * unique[:, source[j]]``
    bit for bit: a column equal to an earlier one, or to its negation (the two columns of a
    binary logistic regression), is not multiplied again. Negation is exact in IEEE 754 and
    each product of a column is bounded on its own, so the error bound is unchanged."""
    keep: list[int] = []
    seen: dict[bytes, tuple[int, float]] = {}
    source, sign = [], []
    for j in range(fused.shape[1]):
        col = np.ascontiguousarray(fused[:, j])
        hit = seen.get(col.tobytes())
        if hit is None:
            neg = seen.get((-col).tobytes())
            hit = None if neg is None else (neg[0], -1.0)
        if hit is None:
            hit = (len(keep), 1.0)
            keep.append(j)
            seen[col.tobytes()] = (hit[0], 1.0)
        source.append(hit[0])
        sign.append(hit[1])
    unique = np.ascontiguousarray(fused[:, keep])
    return unique, np.asarray(source, dtype=np.intp), np.asarray(sign, dtype=np.float64)


@dataclass(frozen=True)
class HostDecisions:
    """Per-row results of :meth:`FastPlan.evaluate` (``N`` rows)."""

    index: np.ndarray  # int64 [N]: routed domain (argmax of the router probabilities)
    probability: np.ndarray  # float64 [N]: the routed probe's probability, or no-probe p
    gate: np.ndarray  # int8 [N]
    near: np.ndarray  # bool [N]: to be decided by onnxruntime on the row alone (every row
    # whose input may hold NaN or infinity is near)


@dataclass
class FastPlan:
    scaler: ScalerChain
    router: LinearHead
    probes: list[LinearHead | None]  # per domain
    hidden_size: int
    fused: np.ndarray = field(init=False)  # [H, total width]: every head in one product
    slices: list[tuple[int, int]] = field(init=False)  # router first, then per domain
    _fused_t: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        blocks, self.slices, start = [], [], 0
        for head in [self.router, *self.probes]:
            width = 0 if head is None else head.width
            self.slices.append((start, start + width))
            if head is not None:
                blocks.append(head.weight)
            start += width
        self.fused = np.ascontiguousarray(np.concatenate(blocks, axis=1))
        self._fused_t = np.ascontiguousarray(self.fused.T)
        self._prepare_host()

    # -- precomputed once, for the host evaluation ------------------------------------------
    def _prepare_host(self) -> None:
        h = self.hidden_size
        unique, source, sign = _unique_columns(self.fused)
        self._unique = unique  # [H, U] float64
        self._unique_t = np.ascontiguousarray(unique.T)  # [U, H]: one row's product is a gemv
        self._local = threading.local()  # per thread: the one-row buffers (_row_work)
        _fast_error_state()
        self._source = source
        self._sign = sign
        self._gathered = not (
            np.array_equal(source, np.arange(source.size)) and bool(np.all(sign == 1.0))
        )
        self._negated = bool(np.any(sign < 0.0))
        biases = [self.router.bias] + [p.bias for p in self.probes if p is not None]
        self._bias = np.ascontiguousarray(np.concatenate(biases)).astype(np.float64)
        # one row: (unique column, sign, bias) of each score, router first, then per domain
        terms = list(zip(source.tolist(), sign.tolist(), self._bias.tolist(), strict=True))
        self._router_terms = terms[: self.router.width]
        self._probe_terms = [terms[a:b] for a, b in self.slices[1:]]
        self._router_softmax = self.router.post == "softmax"
        # LinearHead.needs_sum_check compares the weights each time: once here
        self._router_sum_check = self.router.needs_sum_check
        self._probe_sum_check = [p is not None and p.needs_sum_check for p in self.probes]
        d = len(self.probes)
        self._router_width = self.router.width
        # 2 * LinearHead.error(xnorm) = slope * xnorm + offset, per head (router, then domains)
        self._router_slope, self._router_offset = _margin_line(self.router, h)
        slope = np.zeros(d)
        offset = np.full(d, -1.0)  # a domain without probe: never near its (absent) thresholds
        for i, probe in enumerate(self.probes):
            if probe is not None:
                slope[i], offset[i] = _margin_line(probe, h)
        # the float32 sum of squares of a row, in any summation order, is within gamma_{H+1}
        # (unit roundoff 2^-24) of the exact one; squares below 2^-126 lose at most 2^-150
        # each: sqrt(ss * inflate) + tiny bounds the row's L2 norm from above
        g = (h + 1) * 2.0**-24
        self._norm32 = g < 0.25  # else the float64 sum (long rows)
        inflate = (1.0 + 2.0**-40) / (1.0 - g / (1.0 - g)) if self._norm32 else 1.0
        tiny = 2.0 * math.sqrt(h * 2.0**-150)  # sqrt(a + b) <= sqrt(a) + sqrt(b); x2 for inflate
        root = math.sqrt(inflate) * (1.0 + 2.0**-40)
        self._router_slope32 = self._router_slope * root
        self._router_offset32 = self._router_offset + self._router_slope * tiny
        self._probe_slope = slope
        self._row_probe_slope = slope.tolist()  # plain floats for decide_one
        self._row_probe_offset = offset.tolist()
        self._probe_offset = offset
        self._probe_slope32 = slope * root
        self._probe_offset32 = offset + slope * tiny
        # the probe probability of every domain from the scores [N, W]: per output form
        self._has_probe = np.array([p is not None for p in self.probes])
        forms: dict[str, tuple[list[int], list[int], list[int]]] = {}
        for i, (probe, (a, _)) in enumerate(zip(self.probes, self.slices[1:], strict=True)):
            if probe is None:
                continue
            cols = forms.setdefault(probe.post, ([], [], []))
            cols[0].append(i)
            cols[1].append(a)
            cols[2].append(a + 1 if probe.width > 1 else a)
        self._forms = {k: tuple(np.asarray(c, dtype=np.intp) for c in v) for k, v in forms.items()}
        checked = [i for i, c in enumerate(self._probe_sum_check) if c]
        self._sum_checked = np.asarray(checked, dtype=np.intp)  # domains whose sum is checked
        r = self._router_width
        w = self.fused.shape[1]
        # the common export (skl2onnx): every domain has a binary logistic probe in the
        # sigmoid_norm form, columns laid out in pairs after the router: strided views
        self._pairs = (
            list(forms) == ["sigmoid_norm"]
            and bool(self._has_probe.all())
            and not any(self._probe_sum_check)
            and w == r + 2 * d
            and all(b - a == 2 for a, b in self.slices[1:])
        )
        # the one-row lane in C when it is built, checked against the Python lane (native.py)
        self._lane = compile_lane(self, self._decide_one_python, _lane_check_rows(h))

    # -- scaling -------------------------------------------------------------------------------
    def scale(self, h32: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(self.scaler.run(h32), dtype=np.float32)

    # -- one row -------------------------------------------------------------------------------
    def decide_one(self, h32: np.ndarray, tau: float) -> tuple[int, float | None, bool] | None:
        """One row (``[1, H]`` or ``[H]``, float32): ``(domain index, probe probability or
        None, router output has NaN)``, or None when the row must be decided by onnxruntime
        (near a boundary, non-finite values, overflow window).

        In a forward hook the model's own work has just evicted the caches, and each NumPy
        call or line of Python then costs microseconds: the C lane (``native.py``) does the
        whole decision in one call when it is built; else, and for a row it does not take
        (not C-contiguous), the Python lane below, with the same steps."""
        lane = self._lane
        if lane is not None:
            got = lane.decide(h32, tau)
            if got is not NotImplemented:
                return got
        return self._decide_one_python(h32, tau)

    def decide_gated(
        self, hidden: np.ndarray, b: int, p: int, tau: float, no_probe: float
    ) -> tuple[int, float, int] | None:
        """Row ``(b, p)`` of ``hidden`` (``[B, T, H]`` float32) decided as :meth:`decide_one`
        decides it, with its gate: ``(domain index, probability, gate)``, where a domain
        without probe has probability ``no_probe`` and the gate is
        :func:`asa_format.gating.gate_of`'s; None as :meth:`decide_one`, or when the row is
        not float32 of the hidden size. One call to the C lane when it is built: the row is
        read where it lies, without a NumPy index (microseconds in a hook)."""
        lane = self._lane
        if lane is not None:
            got = lane.decide_gated(hidden, tau, no_probe, b, p)
            if got is not NotImplemented:
                return got
        row = hidden[b, p]
        if row.dtype != np.float32 or row.shape != (self.hidden_size,):
            return None
        one = self._decide_one_python(row, tau)
        if one is None:
            return None
        d, prob, _ = one
        pv = no_probe if prob is None else prob
        return d, pv, gate_of(pv, tau)

    def _decide_one_python(
        self, h32: np.ndarray, tau: float
    ) -> tuple[int, float | None, bool] | None:
        """:meth:`decide_one` in Python: few NumPy calls, into this thread's preallocated
        buffers; after the matrix product, plain floats."""
        h = h32[0] if h32.ndim == 2 else h32
        var = _ERR_VAR
        if var is None:
            with np.errstate(all="ignore"):
                *heads, ss = self._row_product(h)
        else:
            token = var.set(_ERR_IGNORE)
            try:
                *heads, ss = self._row_product(h)
            finally:
                var.reset(token)
        xnorm = math.sqrt(ss)
        if not xnorm < math.inf:
            return None
        window = OVERFLOW_WINDOW
        margin = self._router_slope * xnorm + self._router_offset
        if self._router_softmax:  # exp-space, as in evaluate (|scores| < 700: no overflow)
            e = []
            for k, sign, b in self._router_terms:
                v = heads[k] * sign + b
                if not -window < v < window:
                    return None
                e.append(math.exp(v))
            top = max(e)
            best = e.index(top)
            if len(e) > 1:
                second = max(e[:best] + e[best + 1 :])
                if not (top - second) / math.fsum(e) > margin:
                    return None
        else:
            scores = [heads[k] * sign + b for k, sign, b in self._router_terms]
            for v in scores:
                if not -window < v < window:
                    return None
            if self._router_sum_check and not _sigmoid_sum(scores) >= 0.5:
                return None
            probs = self.router.row_probabilities(scores)
            best = max(range(len(probs)), key=probs.__getitem__)
            if len(probs) > 1:
                second = max(p for j, p in enumerate(probs) if j != best)
                if not probs[best] - second > margin:
                    return None
        probe = self.probes[best]
        if probe is None:
            return best, None, False
        pscores = [heads[k] * sign + b for k, sign, b in self._probe_terms[best]]
        for v in pscores:
            if not -window < v < window:
                return None
        if probe.post == "sigmoid_norm":
            t0 = 1.0 / (1.0 + math.exp(-pscores[0]))
            t1 = 1.0 / (1.0 + math.exp(-pscores[1]))
            if not t0 + t1 >= 0.5 and self._probe_sum_check[best]:
                return None
            p = t1 / (t0 + t1)
        else:
            p = probe.row_probabilities(pscores)[1]
        margin = self._row_probe_slope[best] * xnorm + self._row_probe_offset[best]
        if not (abs(p - tau) > margin and abs(p - (1.0 - tau)) > margin):
            return None
        return best, p, False

    def _row_product(self, h: np.ndarray) -> list[float]:
        """The row's scaled values in this thread's buffers, then one product: every head and,
        from the row itself as the last line of the work matrix, ``x . x``. Callers silence
        floating-point warnings."""
        work, row, buf32, buf64 = self._row_work()
        row[...] = self.scaler.run_row(h, buf32, buf64)  # float32 -> float64 is exact
        heads: list[float] = np.dot(work, row).tolist()
        return heads

    def _row_work(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """This thread's buffers (threads never share them): ``[U + 1, H]`` float64, the
        unique head columns then a line for the scaled row; that line; and float32 and
        float64 rows for the scaler's steps."""
        got: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = getattr(
            self._local, "work", None
        )
        if got is None:
            work = np.empty((self._unique_t.shape[0] + 1, self.hidden_size))
            work[:-1] = self._unique_t
            got = (work, work[-1], np.empty(self.hidden_size, np.float32), work[-1].copy())
            self._local.work = got
        return got

    # -- a batch ---------------------------------------------------------------------------
    def evaluate(self, h32: np.ndarray, tau: float, no_probe: float) -> HostDecisions:
        """Decide rows ``[N, H]`` (float32, C-contiguous).

        Rows in ``near`` lie within the proven error bound of a decision boundary, have a
        score in the exponential's overflow window, or non-finite features: the caller
        decides them with onnxruntime on the row alone. Only near rows can come from an
        input holding NaN or infinity: a non-finite input value makes its scaled row,
        hence its sum of squares and its error bound, non-finite (every scaler step keeps
        it so), and a comparison with a non-finite bound fails.
        """
        n = h32.shape[0]
        with np.errstate(all="ignore"):
            x32 = self.scaler.run(h32)
            if self._norm32:
                ss = _row_dots(x32)
                slope_r, offset_r = self._router_slope32, self._router_offset32
                slope_p, offset_p = self._probe_slope32, self._probe_offset32
                x64 = x32.astype(np.float64)
            else:
                x64 = x32.astype(np.float64)
                ss = _row_dots(x64)
                slope_r, offset_r = self._router_slope, self._router_offset
                slope_p, offset_p = self._probe_slope, self._probe_offset
            xnorm = np.sqrt(ss, dtype=np.float64)
            # [W, N]: one row per head column, the rows of the batch along the last axis
            s = transposed_product(x64, self._unique_t)
            if self._gathered:
                s = np.take(s, self._source, axis=0)
                if self._negated:
                    s *= self._sign[:, None]
            s += self._bias[:, None]
            fine = self._within_window(s)
            r = self._router_width
            if self.router.post == "softmax":
                # argmax and top-two gap of softmax(s) = e / sum(e), e = exp(s): on the rows
                # within the window |s| < 700 no term overflows (D <= 1024), and no row outside
                # it is fine; without the shift by the row maximum (an exact transformation in
                # real arithmetic) each probability moves by a few ulps, within the slack
                e = np.exp(s[:r])
                top = np.sort(e, axis=0)[-2:] if r > 1 else e
                index = e.argmax(axis=0)
                if r > 1:
                    gap = (top[1] - top[0]) / e.sum(axis=0)
                    fine &= gap > slope_r * xnorm + offset_r
            else:
                scores = self.router.probabilities(s[:r].T)  # [N, D] (D = 2 for one column)
                index = scores.argmax(axis=1)
                if self._router_sum_check:
                    fine &= (1.0 / (1.0 + np.exp(-s[:r]))).sum(axis=0) >= 0.5
                if scores.shape[1] > 1:
                    top2 = np.sort(scores, axis=1)[:, -2:]
                    fine &= top2[:, 1] - top2[:, 0] > slope_r * xnorm + offset_r
            p_all, sums = self._probe_probabilities(s, n, no_probe)  # [D, N]
            rows = np.arange(n)
            p = p_all[index, rows]
            if sums is not None:  # the normalising sums that must be >= 1/2 (needs_sum_check)
                fine &= sums[index, rows] >= 0.5
            margin = np.take(slope_p, index) * xnorm + np.take(offset_p, index)
            fine &= np.abs(p - tau) > margin
            fine &= np.abs(p - (1.0 - tau)) > margin
            up = p >= tau  # +1 if p >= tau, else -1 if p <= 1 - tau (tau may be <= 0.5)
            gate = up.view(np.int8) - ((p <= 1.0 - tau) > up).view(np.int8)
        return HostDecisions(index.astype(np.int64, copy=False), p, gate, ~fine)

    @staticmethod
    def _within_window(s: np.ndarray) -> np.ndarray:
        """Bool ``[N]``: every score of the row lies inside the overflow window (not NaN)."""
        if s.max() < OVERFLOW_WINDOW and s.min() > -OVERFLOW_WINDOW:  # False with a NaN
            return np.ones(s.shape[1], dtype=bool)
        out: np.ndarray = np.abs(s).max(axis=0) < OVERFLOW_WINDOW
        return out

    def _probe_probabilities(
        self, s: np.ndarray, n: int, no_probe: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``[D, N]``: each domain's probe probability from the scores ``[W, N]``
        (``no_probe`` for a domain without probe), and the sums ``sigmoid(s0) +
        sigmoid(s1)`` of the probes that need the check (1 elsewhere), or None."""
        r = self._router_width
        if self._pairs:  # t = sigmoid(scores); p = t1 / (|t0| + |t1|), and |t| = t in [0, 1]
            t = np.exp(-s[r:])
            t += 1.0
            np.divide(1.0, t, out=t)
            t1 = t[1::2]
            out: np.ndarray = t1 / (t[0::2] + t1)
            return out, None
        out = np.full((len(self.probes), n), no_probe)
        sums = np.ones((len(self.probes), n)) if self._sum_checked.size else None
        for post, (domains, c0, c1) in self._forms.items():
            if post == "softmax":
                s0, s1 = s[c0], s[c1]
                m = np.maximum(s0, s1)
                e0, e1 = np.exp(s0 - m), np.exp(s1 - m)
                out[domains] = e1 / (e0 + e1)
                continue
            t1 = 1.0 / (1.0 + np.exp(-s[c1]))
            if post == "sigmoid_norm":
                t0 = 1.0 / (1.0 + np.exp(-s[c0]))
                total = np.abs(t0) + np.abs(t1)
                out[domains] = t1 / total
                if sums is not None:
                    sums[domains] = total
            else:  # sigmoid_pair
                out[domains] = t1
        if sums is not None:
            balanced = np.setdiff1d(np.arange(len(self.probes)), self._sum_checked)
            sums[balanced] = 1.0
        return out, sums


def _sigmoid_sum(scores: list[float]) -> float:
    return sum(1.0 / (1.0 + math.exp(-v)) for v in scores)


def _row_dots(x: np.ndarray) -> np.ndarray:
    """Per row, the sum of squares (any summation order)."""
    vecdot = getattr(np, "vecdot", None)  # NumPy >= 2.0: a SIMD dot per row
    if vecdot is not None:
        out: np.ndarray = vecdot(x, x)
        return out
    return np.einsum("ij,ij->i", x, x)


def _margin_line(head: LinearHead, hidden_size: int) -> tuple[float, float]:
    """``(slope, offset)`` with ``2 * head.error(xnorm) <= slope * xnorm + offset`` for any
    ``xnorm >= 0`` (the same expression, expanded; rounded up by a relative 2^-40)."""
    n = (hidden_size + 2) * _UNIT_ROUNDOFF
    gamma = n / (1.0 - n)
    up = 1.0 + 2.0**-40
    slope = 2.0 * 3.0 * 2.0 * (1.01 * gamma + 2.0 * _UNIT_ROUNDOFF) * head.column_norm * up
    offset = 2.0 * (3.0 * 2.0 * 2.0 * _UNIT_ROUNDOFF * head.bias_max + PROBABILITY_SLACK) * up
    return slope, offset


def build_plan(
    models: dict[str, Any], probe_files: list[str | None], hidden_size: int
) -> FastPlan | None:
    """The fast path for these checked graphs, or None if any graph has another form."""
    try:
        scaler = match_scaler(models[C.SCALER_FILE], hidden_size)
        router = match_classifier(models[C.ROUTER_FILE], hidden_size, len(probe_files))
        probes = [match_classifier(models[f], hidden_size, 2) if f else None for f in probe_files]
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    if (
        scaler is None
        or router is None
        or any(p is None for p, f in zip(probes, probe_files, strict=True) if f)
    ):
        return None
    return FastPlan(scaler, router, probes, hidden_size)


def _lane_check_rows(hidden_size: int) -> list[np.ndarray]:
    """The rows the C lane must decide as the Python lane before it is used: the load check's
    inputs and rows holding NaN, infinities, float32 overflow and subnormals."""
    rows = check_inputs(hidden_size)
    edge = np.zeros((5, hidden_size), dtype=np.float32)
    edge[0, ::7] = np.nan
    edge[1, -1] = np.inf
    edge[2, 0] = -np.inf
    edge[3] = 3.0e38
    edge[4] = 1e-42
    return list(rows) + list(edge)


def check_inputs(hidden_size: int, seed: int = 20240229) -> np.ndarray:
    """Deterministic float32 inputs used to compare the plan with onnxruntime on load."""
    rng = np.random.default_rng(seed)
    rows = [np.zeros(hidden_size), np.ones(hidden_size)]
    rows += list(rng.standard_normal((30, hidden_size)))
    rows += list(rng.standard_normal((16, hidden_size)) * 10.0)
    return np.asarray(rows, dtype=np.float32)
