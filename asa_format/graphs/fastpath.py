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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asa_format import constants as C

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
_NP = {_FLOAT: np.float32, _DOUBLE: np.float64}


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
    """Producers and constants of a checked ModelProto."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.input = graph.input[0].name
        self.inits = {t.name: t for t in graph.initializer}
        self.producers = {o: n for n in graph.node for o in n.output if o}
        self._array = numpy_helper.to_array
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

    def run(self, h32: np.ndarray) -> np.ndarray:
        out = h32
        with np.errstate(all="ignore"):
            for kind, arg in self.steps:
                out = out.astype(arg) if kind == "cast" else getattr(np, kind)(out, arg)
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


# -- the plan ---------------------------------------------------------------------------------


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

    def scale(self, h32: np.ndarray) -> np.ndarray:
        return np.asarray(self.scaler.run(h32), dtype=np.float32)

    def decide_one(self, h32: np.ndarray, tau: float) -> tuple[int, float | None, bool] | None:
        """One row: ``(domain index, probe probability or None, router output has NaN)``,
        or None when the row must be decided by onnxruntime (near a boundary, non-finite
        values, overflow window)."""
        x = self.scaler.run(h32)[0].astype(np.float64)
        xnorm = math.sqrt(float(np.dot(x, x)))
        if not xnorm < math.inf:
            return None
        heads = np.dot(self._fused_t, x).tolist()
        a, b = self.slices[0]
        scores = [v + c for v, c in zip(heads[a:b], self.router.bias.tolist(), strict=True)]
        if not all(-OVERFLOW_WINDOW < s < OVERFLOW_WINDOW for s in scores):
            return None
        probs = self.router.row_probabilities(scores)
        best = max(range(len(probs)), key=probs.__getitem__)
        if len(probs) > 1:
            second = max(p for j, p in enumerate(probs) if j != best)
            if probs[best] - second <= 2.0 * self.router.error(xnorm, self.hidden_size):
                return None
        probe = self.probes[best]
        if probe is None:
            return best, None, False
        a, b = self.slices[1 + best]
        pscores = [v + c for v, c in zip(heads[a:b], probe.bias.tolist(), strict=True)]
        if not all(-OVERFLOW_WINDOW < s < OVERFLOW_WINDOW for s in pscores):
            return None
        p = probe.row_probabilities(pscores)[1]
        margin = 2.0 * probe.error(xnorm, self.hidden_size)
        if abs(p - tau) <= margin or abs(p - (1.0 - tau)) <= margin:
            return None
        return best, p, False

    def decide(
        self, h32: np.ndarray, tau: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``[N, H]``: ``(router probabilities [N, D], probe probability [N] (NaN: no
        probe), has-probe mask [N], near mask [N])``; rows in the near mask must be
        decided by onnxruntime, one at a time."""
        with np.errstate(all="ignore"):
            x = self.scale(h32).astype(np.float64)
            xnorm = np.sqrt(np.einsum("ij,ij->i", x, x))
            heads = fused_product(x, self.fused)
            a, b = self.slices[0]
            rs = heads[:, a:b] + self.router.bias
            scores = self.router.probabilities(rs)
            near = ~np.isfinite(xnorm) | ~(np.abs(rs) < OVERFLOW_WINDOW).all(axis=1)
            if scores.shape[1] > 1:
                top2 = np.sort(scores, axis=1)[:, -2:]
                near |= ~(
                    top2[:, 1] - top2[:, 0] > 2.0 * self.router.error(xnorm, self.hidden_size)
                )
            index = np.argmax(scores, axis=1)
            prob = np.full(x.shape[0], np.nan)
            has_probe = np.zeros(x.shape[0], dtype=bool)
            for d in np.unique(index):
                probe = self.probes[int(d)]
                if probe is None:
                    continue
                rows = np.flatnonzero(index == d)
                a, b = self.slices[1 + int(d)]
                ps = heads[rows, a:b] + probe.bias
                p = probe.probabilities(ps)[:, 1]
                margin = 2.0 * probe.error(xnorm[rows], self.hidden_size)
                near[rows] |= ~(np.abs(ps) < OVERFLOW_WINDOW).all(axis=1)
                near[rows] |= ~((np.abs(p - tau) > margin) & (np.abs(p - (1.0 - tau)) > margin))
                prob[rows] = p
                has_probe[rows] = True
        return scores, prob, has_probe, near


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


def check_inputs(hidden_size: int, seed: int = 20240229) -> np.ndarray:
    """Deterministic float32 inputs used to compare the plan with onnxruntime on load."""
    rng = np.random.default_rng(seed)
    rows = [np.zeros(hidden_size), np.ones(hidden_size)]
    rows += list(rng.standard_normal((30, hidden_size)))
    rows += list(rng.standard_normal((16, hidden_size)) * 10.0)
    return np.asarray(rows, dtype=np.float32)
