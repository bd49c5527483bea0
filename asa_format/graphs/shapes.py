"""Static shape rules of the allowlisted operators, for the cost walk of ``onnx_cost``.

Each rule maps a node and the abstract values of its inputs (shape with a
symbolic batch dimension, known small integer contents, integer range,
row locality, data dependence) to the abstract values of its outputs and the
operations it costs per input row; a node whose shapes cannot be derived
statically raises :class:`CostError` (``ONNX_SHAPE``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any, Protocol

from asa_format.errors import ErrorCode
from asa_format.graphs.wire import value_of

__all__ = [
    "CLASSIFIERS",
    "FLOAT_TYPES",
    "HANDLERS",
    "INT_TYPES",
    "KEEPS_VALUES",
    "MAX_KNOWN_VALUES",
    "CostError",
    "Shape",
    "Value",
    "Walk",
    "attr",
    "batch_first",
    "elements",
    "mixes_rows",
    "shape_error",
    "show",
]

Dim = int  # >= 0: a static size; < 0: -k means k * N (N = batch rows)
Shape = tuple[Dim, ...]
MAX_KNOWN_VALUES = 64  # int tensors up to this size have their values tracked
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # float, float16, double, bfloat16
INT_TYPES = frozenset({2, 3, 4, 5, 6, 7, 12, 13})
CLASSIFIERS = frozenset({"LinearClassifier", "TreeEnsembleClassifier"})
KEEPS_VALUES = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_INT64_MAX = (1 << 63) - 1


class CostError(Exception):
    """The graph exceeds a bound (code ONNX_COST) or cannot be bounded (ONNX_SHAPE)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


@dataclass
class _Value:
    shape: Shape
    values: list[int] | None = None  # known integer contents (small int tensors only)
    local: bool = True  # every block of rows depends only on the matching input row
    data: bool = False  # depends on the values of the input (not only on constants or N)
    bound: tuple[int, int] | None = None  # inclusive range of integer contents, when known
    integer: bool = False  # an integer (or boolean, string) element type


def _depends(shape: Shape) -> bool:
    return any(d < 0 for d in shape)


def _batch_first(shape: Shape) -> bool:
    return bool(shape) and shape[0] < 0 and not any(d < 0 for d in shape[1:])


def _mixes_rows(w: Walk, node: Any, ins: list[_Value | None], label: str) -> bool:
    """Whether the node combines different rows (its inputs have the batch first)."""
    op = node.op_type
    dep = [v is not None and v.data for v in ins]
    if op in ("ArgMax", "ReduceLogSumExp", "ReduceMax", "ReduceSum"):
        x = ins[0]
        assert x is not None
        axes = _reduce_axes(w, node, ins, label, len(x.shape))
        return axes is None or 0 in axes
    if op == "Softmax":
        x = ins[0]
        assert x is not None
        axis = int(_attr(node, "axis", -1 if w.opset >= 13 else 1))
        return _axis(axis, len(x.shape), label) == 0
    if op == "Gather":
        x = ins[0]
        assert x is not None
        return _axis(int(_attr(node, "axis", 0)), len(x.shape), label) == 0 or dep[1]
    if op == "MatMul":
        return dep[1]
    if op == "Gemm":
        return bool(int(_attr(node, "transA", 0))) or any(dep[1:])
    if op == "ArrayFeatureExtractor":
        return dep[1]
    return False


def _shape_error(message: str) -> CostError:
    return CostError("ONNX_SHAPE", message)


def _elements(shape: Shape) -> tuple[int, int]:
    """(elements per row, fixed elements): one of the two is 0."""
    k = [-d for d in shape if d < 0]
    rest = prod(d for d in shape if d >= 0)
    if len(k) > 1:
        raise _shape_error(f"a value of shape {_show(shape)} depends on the batch twice")
    return (k[0] * rest, 0) if k else (0, rest)


def _show(shape: Shape) -> str:
    return "[" + ", ".join(("N" if d == -1 else f"{-d}N") if d < 0 else str(d) for d in shape) + "]"


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return value_of(a)
    return default


def _broadcast(shapes: Sequence[Shape], label: str) -> Shape:
    rank = max(len(s) for s in shapes)
    out: list[int] = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if not dims:
            out.append(1)
        elif len(dims) == 1:
            out.append(dims.pop())
        else:
            raise _shape_error(
                f"node {label}: shapes {', '.join(_show(s) for s in shapes)} do not broadcast statically"
            )
    return tuple(out)


def _axis(axis: int, rank: int, label: str) -> int:
    if not -rank <= axis < max(rank, 1):
        raise _shape_error(f"node {label}: axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _known(v: _Value, label: str, what: str) -> list[int]:
    if v.values is None:
        raise _shape_error(f"node {label}: its {what} is not a constant")
    return v.values


class Walk(Protocol):
    """What a shape rule needs from the walk: the opset, the parameter count, constants."""

    opset: int
    params: int

    def tensor(self, tensor: Any, where: str) -> _Value: ...


Handler = Callable[[Walk, Any, list["_Value | None"], str], tuple[list[_Value], int]]


def _first(ins: list[_Value | None], label: str, count: int = 1) -> list[_Value]:
    got = [v for v in ins[:count] if v is not None]
    if len(got) != count:
        raise _shape_error(f"node {label} lacks a required input")
    return got


def _row_ops(shape: Shape, per_element: int = 1) -> int:
    row, _ = _elements(shape)
    return row * per_element


def _same(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    (x,) = _first(ins, label)
    values = x.values if node.op_type in ("Identity", "Cast") else None
    return [_Value(x.shape, values)], _row_ops(x.shape, 4)


def _clip(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    for bound in ins[
        1:3
    ]:  # min and max must be one-element values (onnxruntime checks it at run time)
        if bound is not None and _elements(bound.shape) != (0, 1):
            raise _shape_error(
                f"node {label}: Clip bounds must be single values, got {_show(bound.shape)}"
            )
    return _same(w, node, ins, label)


def _nary(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    args = [v for v in ins if v is not None]
    if not args:
        raise _shape_error(f"node {label} has no inputs")
    shape = _broadcast([v.shape for v in args], label)
    return [_Value(shape)], _row_ops(shape, len(args))


def _reduce_axes(
    w: Walk, node: Any, ins: list[_Value | None], label: str, rank: int
) -> list[int] | None:
    if node.op_type == "ArgMax":
        return [_axis(int(_attr(node, "axis", 0)), rank, label)]
    axes = _attr(node, "axes", None)
    if len(ins) > 1 and ins[1] is not None:
        axes = _known(ins[1], label, "axes input")
    if axes is None or len(axes) == 0:
        if int(_attr(node, "noop_with_empty_axes", 0)):
            return []
        return None  # all axes
    return sorted({_axis(int(a), rank, label) for a in axes})


def _reduce(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    rank = len(x.shape)
    axes = _reduce_axes(w, node, ins, label, rank)
    if axes is None:
        axes = list(range(rank))
    if node.op_type in ("ArgMax", "ReduceMax") and any(x.shape[a] == 0 for a in axes):
        raise _shape_error(f"node {label}: {node.op_type} over an empty axis fails at run time")
    keep = int(_attr(node, "keepdims", 1))
    shape = tuple((1 if keep else None) if i in axes else d for i, d in enumerate(x.shape))
    out = _Value(tuple(d for d in shape if d is not None))
    if node.op_type == "ArgMax" and axes and x.shape[axes[0]] > 0:
        out.bound = (0, x.shape[axes[0]] - 1)
    return [out], _row_ops(x.shape, 2)


def _matmul(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    a, b = _first(ins, label, 2)
    sa, sb = a.shape, b.shape
    if len(sa) < 2 or len(sb) < 2:
        raise _shape_error(
            f"node {label}: MatMul of rank-{len(sa)} and rank-{len(sb)} values is outside the profile"
        )
    k = sa[-1]
    if k < 0 or sb[-2] != k:
        raise _shape_error(f"node {label}: MatMul contracts {_show(sa)} with {_show(sb)}")
    batch = _broadcast([sa[:-2], sb[:-2]], label) if len(sa) > 2 or len(sb) > 2 else ()
    out = (*batch, sa[-2], sb[-1])
    return [_Value(out)], _row_ops(out, max(k, 1))


def _gemm(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    a, b = _first(ins, label, 2)
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise _shape_error(f"node {label}: Gemm needs rank-2 inputs")
    m, k = a.shape[::-1] if int(_attr(node, "transA", 0)) else a.shape
    k2, n = b.shape[::-1] if int(_attr(node, "transB", 0)) else b.shape
    if k < 0 or k != k2:
        raise _shape_error(f"node {label}: Gemm contracts {_show(a.shape)} with {_show(b.shape)}")
    out: Shape = (m, n)
    if len(ins) > 2 and ins[2] is not None:
        _broadcast([out, ins[2].shape], label)
    return [_Value(out)], _row_ops(out, max(k, 1) + 1)


def _concat(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    args = [v for v in ins if v is not None]
    if not args or len({len(v.shape) for v in args}) != 1:
        raise _shape_error(f"node {label}: Concat inputs differ in rank")
    rank = len(args[0].shape)
    axis = _axis(int(_attr(node, "axis", 0 if w.opset < 11 else 1)), rank, label)
    total = 0
    for v in args:
        d = v.shape[axis]
        if d < 0:
            raise _shape_error(f"node {label}: Concat along the batch dimension")
        total += d
        if v.shape[:axis] + v.shape[axis + 1 :] != args[0].shape[:axis] + args[0].shape[axis + 1 :]:
            raise _shape_error(f"node {label}: Concat of {', '.join(_show(a.shape) for a in args)}")
    out = (*args[0].shape[:axis], total, *args[0].shape[axis + 1 :])
    values = None
    if rank == 1 and all(v.values is not None for v in args):
        values = [x for v in args for x in (v.values or [])]
    return [_Value(out, values)], _row_ops(out)


def _constant(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    if len(node.attribute) != 1:
        raise _shape_error(f"node {label}: Constant needs exactly one value attribute")
    a = node.attribute[0]
    if a.name == "value":
        return [w.tensor(a.t, f"node {label}")], 0
    if a.name in ("value_float", "value_int"):
        w.params += 1
        if a.name == "value_int":
            return [_Value((), [int(a.i)], bound=(int(a.i), int(a.i)), integer=True)], 0
        return [_Value(())], 0
    if a.name in ("value_floats", "value_ints"):
        n = len(a.floats) + len(a.ints)
        if a.name == "value_floats":
            return [_Value((n,))], 0
        ints = [int(v) for v in a.ints]
        bound = (min(ints), max(ints)) if ints else None
        return [_Value((n,), ints if n <= MAX_KNOWN_VALUES else None, bound=bound, integer=True)], 0
    raise _shape_error(f"node {label}: Constant attribute {a.name!r} is outside the profile")


def _flatten(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    rank = len(x.shape)
    axis = int(_attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise _shape_error(f"node {label}: Flatten axis out of range")
    return [_Value((_merge(x.shape[:axis]), _merge(x.shape[axis:])))], 0


def _merge(dims: Sequence[int]) -> int:
    batch = [-d for d in dims if d < 0]
    rest = prod(d for d in dims if d >= 0)
    if len(batch) > 1:
        raise _shape_error("a value depends on the batch twice")
    return -batch[0] * rest if batch else rest


def _gather(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    data, idx = _first(ins, label, 2)
    rank = len(data.shape)
    if rank == 0:
        raise _shape_error(f"node {label}: Gather from a scalar")
    axis = _axis(int(_attr(node, "axis", 0)), rank, label)
    _indices_in_range(idx, data.shape[axis], label, allow_negative=True)
    out = (*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])
    values = None
    if data.values is not None and idx.values is not None and rank == 1:
        n = len(data.values)
        if not all(-n <= i < n for i in idx.values):
            raise _shape_error(f"node {label}: Gather index out of range")
        values = [data.values[i] for i in idx.values]
    return [_Value(out, values)], _row_ops(out)


def _indices_in_range(idx: _Value, dim: int, label: str, *, allow_negative: bool) -> None:
    """Indices must provably address ``dim`` entries (they may depend on the input: ArgMax)."""
    if dim < 0:
        raise _shape_error(f"node {label}: indexing along the batch dimension")
    low = -dim if allow_negative else 0
    if _elements(idx.shape) == (0, 0):
        return  # no index at all
    if idx.bound is None or not (low <= idx.bound[0] and idx.bound[1] < dim):
        raise _shape_error(f"node {label}: its indices cannot be shown to lie in {low}..{dim - 1}")


def _reshape(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    x, s = _first(ins, label, 2)
    target = _known(s, label, "shape")
    allowzero = int(_attr(node, "allowzero", 0))
    dims: list[int | None] = []
    for i, t in enumerate(target):
        if t == 0 and not allowzero:
            if i >= len(x.shape):
                raise _shape_error(f"node {label}: Reshape copies a dimension the input lacks")
            dims.append(x.shape[i])
        elif t == -1:
            dims.append(None)
        elif t < -1:
            raise _shape_error(f"node {label}: Reshape to a negative dimension")
        else:
            dims.append(t)
    row, fixed = _elements(x.shape)
    known = [d for d in dims if d is not None]
    batch = [-d for d in known if d < 0]
    rest = prod(d for d in known if d >= 0)
    free = dims.count(None)
    if free > 1 or len(batch) > 1:
        raise _shape_error(f"node {label}: Reshape target {target} is ambiguous")
    if row:  # the input depends on the batch: k * N elements
        if batch:
            ok = free == 0 and batch[0] * rest == row
            fill = 0
        else:
            ok = free == 1 and rest > 0 and row % rest == 0
            fill = -(row // rest) if ok else 0
    else:
        ok = not batch and (
            (free == 0 and rest == fixed) or (free == 1 and rest > 0 and fixed % rest == 0)
        )
        fill = fixed // rest if ok and free else 0
    if not ok:
        raise _shape_error(f"node {label}: Reshape of {_show(x.shape)} to {target}")
    out = tuple(fill if d is None else d for d in dims)
    return [_Value(out, x.values)], 0


def _shape(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    if node.attribute:
        raise _shape_error(f"node {label}: Shape with start/end is outside the profile")
    values = None if any(d < 0 for d in x.shape) else list(x.shape)
    return [_Value((len(x.shape),), values)], 0


def _slice(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    rank = len(x.shape)
    if w.opset < 10:
        starts, ends = list(_attr(node, "starts", [])), list(_attr(node, "ends", []))
        axes = list(_attr(node, "axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        if len(ins) < 3 or ins[1] is None or ins[2] is None:
            raise _shape_error(f"node {label}: Slice lacks starts or ends")
        starts, ends = _known(ins[1], label, "starts"), _known(ins[2], label, "ends")
        axes = (
            _known(ins[3], label, "axes")
            if len(ins) > 3 and ins[3] is not None
            else list(range(len(starts)))
        )
        steps = (
            _known(ins[4], label, "steps")
            if len(ins) > 4 and ins[4] is not None
            else [1] * len(starts)
        )
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise _shape_error(f"node {label}: Slice parameters differ in length")
    out = list(x.shape)
    for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
        a = _axis(int(ax), rank, label)
        if sp == 0:
            raise _shape_error(f"node {label}: Slice step 0")
        d = out[a]
        if d < 0:
            if not (st == 0 and sp == 1 and en >= _INT64_MAX // 2):
                raise _shape_error(f"node {label}: Slice of the batch dimension")
            continue
        out[a] = len(range(*slice(int(st), int(en), int(sp)).indices(d)))
    return [_Value(tuple(out))], _row_ops(tuple(out))


def _axes_of(node: Any, ins: list[_Value | None], label: str) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return _known(ins[1], label, "axes")
    axes = _attr(node, "axes", None)
    return None if axes is None else [int(a) for a in axes]


def _squeeze(w: Walk, node: Any, ins: list[_Value | None], label: str) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    axes = _axes_of(node, ins, label)
    rank = len(x.shape)
    if axes is None and any(d < 0 for d in x.shape):  # would also drop the batch when N = 1
        raise _shape_error(
            f"node {label}: Squeeze without axes of a value that depends on the batch"
        )
    drop = (
        {i for i, d in enumerate(x.shape) if d == 1}
        if axes is None
        else {_axis(a, rank, label) for a in axes}
    )
    if any(x.shape[i] != 1 for i in drop):
        raise _shape_error(f"node {label}: Squeeze of a dimension that is not 1")
    return [_Value(tuple(d for i, d in enumerate(x.shape) if i not in drop), x.values)], 0


def _unsqueeze(
    w: Walk, node: Any, ins: list[_Value | None], label: str
) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    axes = _axes_of(node, ins, label)
    if axes is None:
        raise _shape_error(f"node {label}: Unsqueeze without axes")
    rank = len(x.shape) + len(axes)
    where = {_axis(a, rank, label) for a in axes}
    if len(where) != len(axes):
        raise _shape_error(f"node {label}: Unsqueeze repeats an axis")
    it = iter(x.shape)
    return [_Value(tuple(1 if i in where else next(it) for i in range(rank)), x.values)], 0


def _transpose(
    w: Walk, node: Any, ins: list[_Value | None], label: str
) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    rank = len(x.shape)
    perm = [int(p) for p in _attr(node, "perm", list(range(rank))[::-1])]
    if sorted(perm) != list(range(rank)):
        raise _shape_error(f"node {label}: Transpose perm {perm} is not a permutation")
    return [_Value(tuple(x.shape[p] for p in perm))], _row_ops(x.shape)


def _feature_extractor(
    w: Walk, node: Any, ins: list[_Value | None], label: str
) -> tuple[list[_Value], int]:
    x, idx = _first(ins, label, 2)
    if not x.shape:
        raise _shape_error(f"node {label}: ArrayFeatureExtractor of a scalar")
    _indices_in_range(idx, x.shape[-1], label, allow_negative=False)
    n = _merge(idx.shape)
    out = (1, n) if len(x.shape) == 1 else (*x.shape[:-1], n)
    return [_Value(out)], _row_ops(out)


def _classes(node: Any, label: str) -> int:
    n = len(_attr(node, "classlabels_ints", [])) + len(_attr(node, "classlabels_strings", []))
    n += len(_attr(node, "classlabels_int64s", []))
    if n < 1:
        raise _shape_error(f"node {label}: classifier without class labels")
    return n


def _rows(x: _Value, label: str) -> tuple[int, int]:
    if len(x.shape) != 2 or x.shape[1] < 0:
        raise _shape_error(
            f"node {label}: classifier input must be [rows, features], got {_show(x.shape)}"
        )
    return x.shape[0], x.shape[1]


def _linear_classifier(
    w: Walk, node: Any, ins: list[_Value | None], label: str
) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    rows, features = _rows(x, label)
    k = _classes(node, label)
    coef = len(_attr(node, "coefficients", []))
    if coef % max(features, 1):
        raise _shape_error(f"node {label}: {coef} coefficients for {features} features")
    width = max(k, coef // max(features, 1))
    return [_Value((rows,)), _Value((rows, width))], _row_ops((rows, width), max(features, 1))


def _tree_classifier(
    w: Walk, node: Any, ins: list[_Value | None], label: str
) -> tuple[list[_Value], int]:
    x = _first(ins, label)[0]
    rows, features = _rows(x, label)
    k = _classes(node, label)
    if any(not 0 <= int(f) < features for f in _attr(node, "nodes_featureids", [])):
        raise _shape_error(f"node {label}: a tree node reads a feature outside 0..{features - 1}")
    nodes = len(_attr(node, "nodes_nodeids", [])) + len(_attr(node, "class_ids", []))
    return [_Value((rows,)), _Value((rows, k))], _row_ops((rows, 1), nodes + k)


_HANDLERS: dict[str, Handler] = {
    **{
        op: _same
        for op in (
            "Abs",
            "Cast",
            "Exp",
            "Identity",
            "Log",
            "Neg",
            "Reciprocal",
            "Sigmoid",
            "Softmax",
            "Sqrt",
            "Binarizer",
            "Normalizer",
            "Scaler",
        )
    },
    **{op: _nary for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum")},
    **{op: _reduce for op in ("ArgMax", "ReduceLogSumExp", "ReduceMax", "ReduceSum")},
    "Clip": _clip,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Concat": _concat,
    "Constant": _constant,
    "Flatten": _flatten,
    "Gather": _gather,
    "Reshape": _reshape,
    "Shape": _shape,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "ArrayFeatureExtractor": _feature_extractor,
    "LinearClassifier": _linear_classifier,
    "TreeEnsembleClassifier": _tree_classifier,
}


# public names for onnx_cost
Value = _Value
HANDLERS = _HANDLERS
elements = _elements
mixes_rows = _mixes_rows
shape_error = _shape_error
show = _show
attr = _attr
batch_first = _batch_first
