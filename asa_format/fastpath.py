"""A fast, exact evaluator of bundle graphs in NumPy, checked against onnxruntime.

The decision graphs are tiny (a scaler, then affine maps followed by a few
element-wise operators), so most of an onnxruntime call is per-call
overhead. This module compiles the checked ``ModelProto`` of each graph into
a short list of NumPy operations, and fuses the first ``MatMul`` of the
router and of every probe (all on the same input ``x``) into one matrix
product. The plan is only used if, on load, it reproduces onnxruntime on a
deterministic set of inputs (same domains, same gates, probabilities within
1e-12, scaler output within float32 rounding); otherwise the bundle keeps
using onnxruntime. Unsupported operators simply mean "no fast path".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from asa_format import constants as C

__all__ = ["CompiledGraph", "FastPlan", "build_plan", "compile_graph"]

_ONNX_TO_NUMPY = {1: np.float32, 6: np.int32, 7: np.int64, 11: np.float64}

Op = Callable[[dict[str, np.ndarray]], None]


class Unsupported(Exception):
    """The graph uses something this evaluator does not implement."""


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _compile_node(node: Any, consts: dict[str, np.ndarray], opset: int) -> Op:
    op, ins, outs = node.op_type, list(node.input), list(node.output)
    if node.domain not in ("", "ai.onnx") or len(outs) != 1:
        raise Unsupported(node.op_type)
    out = outs[0]

    def binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Op:
        a, b = ins
        if b in consts and a not in consts:
            const_b = consts[b]

            def run_const(env: dict[str, np.ndarray]) -> None:
                env[out] = fn(env[a], const_b)

            return run_const

        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = fn(env[a], env[b])

        return run

    if op == "Sub":
        return binary(np.subtract)
    if op == "Div":
        return binary(np.divide)
    if op == "Add":
        return binary(np.add)
    if op == "Mul":
        return binary(np.multiply)
    if op == "MatMul":
        return binary(np.matmul)
    if op in ("Identity", "Sigmoid", "Abs", "Neg", "Exp", "Cast", "Softmax", "ReduceSum", "Reshape", "Concat"):
        pass
    else:
        raise Unsupported(op)
    src = ins[0]
    if op == "Identity":
        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = env[src]
    elif op == "Sigmoid":
        def run(env: dict[str, np.ndarray]) -> None:
            x = env[src]
            env[out] = 1.0 / (1.0 + np.exp(-x))
    elif op == "Abs":
        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = np.abs(env[src])
    elif op == "Neg":
        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = np.negative(env[src])
    elif op == "Exp":
        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = np.exp(env[src])
    elif op == "Cast":
        to = _ONNX_TO_NUMPY.get(int(_attr(node, "to", 0)))
        if to is None:
            raise Unsupported("Cast")
        dtype = to

        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = env[src].astype(dtype)
    elif op == "Softmax":
        axis = int(_attr(node, "axis", -1 if opset >= 13 else 1))
        if axis not in (1, -1):
            raise Unsupported("Softmax axis")

        def run(env: dict[str, np.ndarray]) -> None:
            x = env[src]
            e = np.exp(x - x.max(axis=1, keepdims=True))
            env[out] = e / e.sum(axis=1, keepdims=True)
    elif op == "ReduceSum":
        keepdims = bool(_attr(node, "keepdims", 1))
        axes_attr = _attr(node, "axes", None)
        if len(ins) > 1 and ins[1]:
            if ins[1] not in consts:
                raise Unsupported("ReduceSum dynamic axes")
            axes = tuple(int(a) for a in consts[ins[1]].ravel())
        elif axes_attr is not None:
            axes = tuple(int(a) for a in axes_attr)
        else:
            raise Unsupported("ReduceSum all axes")

        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = env[src].sum(axis=axes, keepdims=keepdims)
    elif op == "Reshape":
        if ins[1] not in consts:
            raise Unsupported("Reshape dynamic shape")
        shape = tuple(int(s) for s in consts[ins[1]].ravel())
        if 0 in shape:
            raise Unsupported("Reshape zero dim")

        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = env[src].reshape(shape)
    else:  # Concat
        axis = int(_attr(node, "axis", 0))

        def run(env: dict[str, np.ndarray]) -> None:
            env[out] = np.concatenate([env[i] for i in ins], axis=axis)
    return run


@dataclass
class CompiledGraph:
    """Operations computing ``output`` from ``input_name``; a leading MatMul may be split off."""

    input_name: str
    output: str
    consts: dict[str, np.ndarray]
    ops: list[Op]
    head_output: str | None = None  # name bound to x @ head_weight (fused by the plan)
    head_weight: np.ndarray | None = None
    row_tail: Callable[[list[float]], list[float]] | None = None  # one row, plain floats
    nodes: tuple[Any, ...] = ()  # the compiled ONNX nodes, in order (for other evaluators)
    opset: int = 13

    def run(self, value: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
        env = self.consts.copy()
        env[self.input_name] = value
        if self.head_output is not None:
            env[self.head_output] = head if head is not None else value @ self.head_weight
        for op in self.ops:
            op(env)
        return env[self.output]


def compile_graph(model: Any, output: str, *, split_head: bool) -> CompiledGraph:
    """Compile the nodes ``output`` depends on; raise Unsupported if not possible."""
    from onnx import numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    needed: list[Any] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in consts or name == graph.input[0].name:
            return
        seen.add(name)
        node = producers.get(name)
        if node is None:
            raise Unsupported(f"value {name} has no producer")
        if node.op_type == "Constant":
            raise Unsupported("Constant")
        for i in node.input:
            if i:
                visit(i)
        needed.append(node)

    visit(output)
    input_name = graph.input[0].name
    head_output: str | None = None
    head_weight: np.ndarray | None = None
    if split_head:
        first = [n for n in needed if n.op_type == "MatMul" and n.input[0] == input_name and n.input[1] in consts]
        users = [n for n in needed if input_name in n.input]
        if len(first) == 1 and users == first and consts[first[0].input[1]].ndim == 2:
            head_output = first[0].output[0]
            head_weight = consts[first[0].input[1]].astype(np.float64)
            needed = [n for n in needed if n is not first[0]]
    ops = [_compile_node(n, consts, opset) for n in needed]
    row_tail = _compile_row_tail(needed, consts, head_output, output) if head_output is not None else None
    return CompiledGraph(input_name, output, consts, ops, head_output, head_weight, row_tail, tuple(needed), opset)


# -- one row with plain Python floats ---------------------------------------------------
# For a single prompt the operators after the fused matrix product act on a
# handful of numbers, where NumPy's per-call overhead dominates. The same
# operators on lists of floats (IEEE double, like NumPy) are much cheaper.

Row = list[float]
RowOp = Callable[[dict[str, Row]], None]


def _sigmoid(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def _f32(v: float) -> float:
    return float(np.float32(v))


def _const_row(arr: np.ndarray) -> Row | None:
    if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1) or arr.dtype.kind != "f":
        return None
    return [float(v) for v in arr.reshape(-1)]


def _broadcast(a: Row, b: Row, fn: Callable[[float, float], float]) -> Row:
    if len(a) == len(b):
        return [fn(x, y) for x, y in zip(a, b, strict=True)]
    if len(b) == 1:
        return [fn(x, b[0]) for x in a]
    if len(a) == 1:
        return [fn(a[0], y) for y in b]
    raise Unsupported("broadcast")


def _ieee_div(x: float, y: float) -> float:
    """IEEE 754 division (Python raises on a zero divisor; NumPy and ONNX do not)."""
    if y != 0.0:
        return x / y
    if x == 0.0 or math.isnan(x):
        return math.nan
    return math.copysign(math.inf, x) * math.copysign(1.0, y)


_BINARY: dict[str, Callable[[float, float], float]] = {
    "Add": lambda x, y: x + y,
    "Sub": lambda x, y: x - y,
    "Mul": lambda x, y: x * y,
    "Div": lambda x, y: _ieee_div(x, y),
}
_UNARY: dict[str, Callable[[float], float]] = {
    "Identity": lambda x: x,
    "Sigmoid": _sigmoid,
    "Abs": abs,
    "Neg": lambda x: -x,
    "Exp": lambda x: math.exp(x) if x < 709.0 else math.inf,
}


def _softmax_row(v: Row) -> Row:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    total = sum(e)
    return [x / total for x in e]


def _compile_row_tail(nodes: list[Any], consts: dict[str, np.ndarray], head: str, output: str) -> Callable[[Row], Row] | None:
    """Compile the nodes after the head for one row of plain floats, or None."""
    const_rows: dict[str, Row] = {}
    ops: list[RowOp] = []
    for node in nodes:
        op, ins, out = node.op_type, list(node.input), node.output[0]
        for name in ins:
            if name in consts and name not in const_rows:
                row = _const_row(consts[name])
                if row is None and op not in ("ReduceSum",):
                    return None
                if row is not None:
                    const_rows[name] = row
        if op in _BINARY:
            fn2, a, b = _BINARY[op], ins[0], ins[1]

            def run2(env: dict[str, Row], fn2: Any = fn2, a: str = a, b: str = b, out: str = out) -> None:
                env[out] = _broadcast(env[a], env[b], fn2)

            ops.append(run2)
        elif op in _UNARY:
            fn1, a = _UNARY[op], ins[0]

            def run1(env: dict[str, Row], fn1: Any = fn1, a: str = a, out: str = out) -> None:
                env[out] = [fn1(x) for x in env[a]]

            ops.append(run1)
        elif op == "Softmax" and int(_attr(node, "axis", -1)) in (1, -1):
            a = ins[0]

            def run_sm(env: dict[str, Row], a: str = a, out: str = out) -> None:
                env[out] = _softmax_row(env[a])

            ops.append(run_sm)
        elif op == "ReduceSum" and bool(_attr(node, "keepdims", 1)):
            axes = consts[ins[1]].ravel().tolist() if len(ins) > 1 and ins[1] in consts else _attr(node, "axes", None)
            if axes is None or [int(x) for x in axes] not in ([1], [-1]):
                return None
            a = ins[0]

            def run_rs(env: dict[str, Row], a: str = a, out: str = out) -> None:
                env[out] = [sum(env[a])]

            ops.append(run_rs)
        elif op == "Concat" and int(_attr(node, "axis", 0)) in (1, -1):
            names = list(ins)

            def run_cat(env: dict[str, Row], names: list[str] = names, out: str = out) -> None:
                env[out] = [x for n in names for x in env[n]]

            ops.append(run_cat)
        elif op == "Cast" and int(_attr(node, "to", 0)) in (1, 11):
            a, to_float = ins[0], int(_attr(node, "to", 0)) == 1

            def run_cast(env: dict[str, Row], a: str = a, out: str = out, to_float: bool = to_float) -> None:
                env[out] = [_f32(x) for x in env[a]] if to_float else list(env[a])

            ops.append(run_cast)
        else:
            return None

    def run(head_row: Row) -> Row:
        env: dict[str, Row] = dict(const_rows)
        env[head] = head_row
        for op in ops:
            op(env)
        return env[output]

    return run


# -- the fused matrix product, in single-threaded blocks ---------------------------------
# A multi-threaded BLAS call (OpenBLAS threads a GEMM above M*N*K = 65536*4)
# contends with any other thread pool of the process: right after a 2-thread
# torch or NumPy matrix product, batch-64 decisions took 6-18 ms instead of
# 0.4 ms. Row blocks below that size run on the calling thread (the same dot
# products, up to the kernel's summation order; the check on load covers it).

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


@dataclass
class FastPlan:
    scaler: CompiledGraph
    router: CompiledGraph
    probes: list[CompiledGraph | None]  # per domain
    fused: np.ndarray | None  # [H, sum of head widths] or None
    slices: list[tuple[int, int]]  # router first, then per domain (0, 0) when absent
    _fused_t: np.ndarray | None = None  # fused.T, C-contiguous, for one row

    def scale(self, h32: np.ndarray) -> np.ndarray:
        return np.asarray(self.scaler.run(h32), dtype=np.float32)

    @property
    def single_row(self) -> bool:
        """Whether one row can be decided with plain floats after the matrix product."""
        return (
            self.fused is not None
            and self.router.row_tail is not None
            and all(p is None or p.row_tail is not None for p in self.probes)
        )

    def decide_one(self, h32: np.ndarray) -> tuple[int, float | None, bool, bool]:
        """One row: ``(domain index, probe probability or None, router output has NaN,
        every fused score finite)``. A non-finite input always gives a non-finite score."""
        x64 = self.scaler.run(h32).astype(np.float64)
        assert self.fused is not None and self.router.row_tail is not None
        if self._fused_t is None:
            self._fused_t = np.ascontiguousarray(self.fused.T)
        heads = np.dot(self._fused_t, x64[0]).tolist()  # matrix-vector product: cheapest for one row
        finite = all(-math.inf < v < math.inf for v in heads)
        a, b = self.slices[0]
        scores = self.router.row_tail(heads[a:b])
        best = 0
        for j in range(1, len(scores)):
            if scores[j] > scores[best]:
                best = j
        has_nan = any(v != v for v in scores)
        if has_nan:  # NumPy's argmax returns the first NaN
            best = next(j for j, v in enumerate(scores) if v != v)
        probe = self.probes[best]
        if probe is None:
            return best, None, has_nan, finite
        a, b = self.slices[1 + best]
        assert probe.row_tail is not None
        return best, probe.row_tail(heads[a:b])[1], has_nan, finite

    def decide(self, h32: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(router probabilities [N, D], probe probability, has-probe mask)``."""
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            return self._decide(h32)

    def _decide(self, h32: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x64 = self.scale(h32).astype(np.float64)
        heads = fused_product(x64, self.fused) if self.fused is not None else None

        def head(i: int) -> np.ndarray | None:
            if heads is None:
                return None
            a, b = self.slices[i]
            return heads[:, a:b]

        scores = self.router.run(x64, head(0))
        if x64.shape[0] == 1:  # the common case of one prompt: no grouping
            d = int(np.argmax(scores[0]))
            probe1 = self.probes[d]
            if probe1 is None:
                return scores, np.array([np.nan]), np.array([False])
            h1 = head(1 + d)
            return scores, probe1.run(x64, h1)[:, 1], np.array([True])
        index = np.argmax(scores, axis=1)
        prob = np.full(x64.shape[0], np.nan)
        has_probe = np.zeros(x64.shape[0], dtype=bool)
        for d in np.unique(index):
            probe = self.probes[int(d)]
            if probe is None:
                continue
            rows = np.flatnonzero(index == d)
            h = head(1 + int(d))
            out = probe.run(x64[rows], h[rows] if h is not None else None)
            prob[rows] = out[:, 1]
            has_probe[rows] = True
        return scores, prob, has_probe


def build_plan(models: dict[str, Any], probe_files: list[str | None]) -> FastPlan | None:
    """Compile every graph and fuse the heads; None if anything is unsupported."""
    try:
        scaler = compile_graph(models[C.SCALER_FILE], C.SCALER_OUTPUT, split_head=False)
        router = compile_graph(models[C.ROUTER_FILE], C.CLASSIFIER_PROBABILITIES, split_head=True)
        probes = [
            compile_graph(models[f], C.CLASSIFIER_PROBABILITIES, split_head=True) if f else None for f in probe_files
        ]
    except (Unsupported, KeyError, IndexError, ValueError):
        return None
    graphs = [router, *probes]
    fused: np.ndarray | None = None
    slices: list[tuple[int, int]] = []
    if all(g is None or g.head_weight is not None for g in graphs):
        blocks: list[np.ndarray] = []
        start = 0
        for g in graphs:
            if g is None or g.head_weight is None:
                slices.append((start, start))
                continue
            blocks.append(g.head_weight)
            slices.append((start, start + g.head_weight.shape[1]))
            start += g.head_weight.shape[1]
        try:
            fused = np.ascontiguousarray(np.concatenate(blocks, axis=1))
        except ValueError:
            return None
    return FastPlan(scaler, router, probes, fused, slices)


def check_inputs(hidden_size: int, seed: int = 20240229) -> np.ndarray:
    """Deterministic float32 inputs used to compare the plan with onnxruntime on load."""
    rng = np.random.default_rng(seed)
    rows = [np.zeros(hidden_size), np.ones(hidden_size)]
    rows += list(rng.standard_normal((30, hidden_size)))
    rows += list(rng.standard_normal((16, hidden_size)) * 10.0)
    return np.asarray(rows, dtype=np.float32)
