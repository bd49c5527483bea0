"""Structure-aware mutators for the long fuzzer: ONNX graphs and pickles.

ONNX graphs are mutated as protobufs, not bytes: node kinds (any operator of
the allowlist), attribute values (edge integers, lists, new attributes),
initializer shapes and values (consistent data, extreme values, other
dtypes), new nodes wired into the graph (element-wise, ``Concat`` of a value
with itself, ``MatMul`` by a square weight, ``Reshape``, a ``Constant``
output), rewired inputs and deleted nodes. Pickles are mutated at the opcode
level: the file is split into opcodes with :mod:`pickletools`, then opcodes
are deleted, repeated, swapped, crossed over from another pickle, or
replaced by hand-encoded opcodes with edge arguments (huge lengths, lone
surrogates, big memo indices, allowlisted and forbidden globals).
"""

from __future__ import annotations

import itertools
import pickletools
import random
import struct
from typing import Any

import numpy as np

__all__ = ["mutate_graph", "mutate_pickle", "pickle_ops"]

OPS_DEFAULT = (
    "Abs", "Add", "ArgMax", "Cast", "Clip", "Concat", "Constant", "Div", "Exp", "Flatten", "Gather", "Gemm",
    "Identity", "Log", "MatMul", "Max", "Min", "Mul", "Neg", "Reciprocal", "ReduceLogSumExp", "ReduceMax",
    "ReduceSum", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "Sum",
    "Transpose", "Unsqueeze",
)  # fmt: skip
OPS_ML = (
    "ArrayFeatureExtractor",
    "Binarizer",
    "LinearClassifier",
    "Normalizer",
    "Scaler",
    "TreeEnsembleClassifier",
)
MAX_MUTANT_BYTES = 1 << 22  # pickles the mutator may produce (the reader's cap is tested elsewhere)
INTS = (-(2**63), -(2**31), -2, -1, 0, 1, 2, 3, 7, 11, 16, 255, 2**31 - 1, 2**40, 2**63 - 1)
FLOATS = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-300,
    1e300,
    709.7,
    710.0,
    -745.2,
    float("inf"),
    float("-inf"),
    float("nan"),
)
ATTRS = (
    "axis",
    "keepdims",
    "to",
    "perm",
    "axes",
    "allowzero",
    "transA",
    "transB",
    "alpha",
    "beta",
    "noop_with_empty_axes",
)


def _values(graph: Any) -> list[str]:
    names = [vi.name for vi in graph.input] + [t.name for t in graph.initializer]
    return names + [o for n in graph.node for o in n.output if o]


def _array(rng: random.Random, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    base = np.array([rng.choice((*FLOATS, rng.uniform(-3, 3))) for _ in range(min(n, 8))] or [0.0])
    with np.errstate(
        over="ignore", invalid="ignore"
    ):  # NaN / Inf cast to an integer type: any value will do
        return np.resize(base, shape).astype(dtype)


def _shape(rng: random.Random, hidden: int) -> tuple[int, ...]:
    return rng.choice([(), (1,), (hidden,), (1, hidden), (hidden, 1), (hidden, 2), (hidden, 3), (hidden, hidden),
                       (hidden + 1,), (2,), (3,), (0,), (1, 1), (2, hidden)])  # fmt: skip


def mutate_graph(rng: random.Random, model: Any, hidden: int) -> str:
    """Apply one structure-aware mutation to ``model`` in place; return its description."""
    from onnx import AttributeProto, TensorProto, helper, numpy_helper

    g = model.graph
    nodes = g.node
    kind = rng.choice(["op", "attr", "new_attr", "init_shape", "init_values", "init_dtype", "insert", "rewire",
                       "drop", "constant_out", "double", "chain", "opset"])  # fmt: skip
    if kind == "op" and len(nodes):
        node = nodes[rng.randrange(len(nodes))]
        if rng.random() < 0.2:
            node.domain, node.op_type = "ai.onnx.ml", rng.choice(OPS_ML)
        else:
            node.domain, node.op_type = "", rng.choice(OPS_DEFAULT)
        return f"op({node.name or node.output[0]}->{node.op_type})"
    if kind == "attr":
        attrs = [a for n in nodes for a in n.attribute]
        if attrs:
            a = rng.choice(attrs)
            if a.type == AttributeProto.INT:
                a.i = rng.choice(INTS)
            elif a.type == AttributeProto.FLOAT:
                a.f = rng.choice(FLOATS)
            elif a.type == AttributeProto.INTS:
                a.ints[:] = [rng.choice(INTS) for _ in range(rng.randrange(4))]
            elif a.type == AttributeProto.FLOATS and len(a.floats):
                a.floats[rng.randrange(len(a.floats))] = rng.choice(FLOATS)
            return f"attr({a.name})"
    if kind == "new_attr" and len(nodes):
        node = nodes[rng.randrange(len(nodes))]
        name = rng.choice(ATTRS)
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        value: Any = (
            [rng.choice((0, 1, -1, 2)) for _ in range(rng.randrange(1, 4))]
            if name in ("perm", "axes")
            else rng.choice(INTS[3:9])
        )
        node.attribute.append(helper.make_attribute(name, value))
        return f"new_attr({name}={value})"
    if kind in ("init_shape", "init_values", "init_dtype") and len(g.initializer):
        i = rng.randrange(len(g.initializer))
        t = g.initializer[i]
        arr = numpy_helper.to_array(t)
        if kind == "init_shape":
            arr = _array(rng, _shape(rng, hidden), arr.dtype if arr.dtype.kind == "f" else np.int64)
        elif kind == "init_values" and arr.size:
            arr = arr.copy()
            if arr.dtype.kind == "f":
                arr.reshape(-1)[rng.randrange(arr.size)] = rng.choice(FLOATS)
            else:
                arr.reshape(-1)[rng.randrange(arr.size)] = rng.choice(INTS)
        else:
            arr = arr.astype(rng.choice([np.float32, np.float64, np.int64, np.int32]))
        g.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
        return f"{kind}({t.name}:{arr.dtype}{list(arr.shape)})"
    names = _values(g)
    if kind == "insert" and len(nodes):
        pos = rng.randrange(len(nodes))
        node = nodes[pos]
        slot = rng.randrange(max(len(node.input), 1))
        if len(node.input):
            src = node.input[slot]
            op = rng.choice(
                [
                    "Identity",
                    "Neg",
                    "Exp",
                    "Abs",
                    "Sigmoid",
                    "Softmax",
                    "Add",
                    "Mul",
                    "Concat",
                    "Reshape",
                    "Cast",
                ]
            )
            out = f"fz{rng.randrange(1 << 30)}"
            ins = (
                [src] if op not in ("Add", "Mul", "Concat", "Reshape") else [src, rng.choice(names)]
            )
            node_attrs: dict[str, Any] = {"axis": rng.choice((0, 1, -1))} if op == "Concat" else {}
            if op == "Cast":
                node_attrs["to"] = int(
                    rng.choice((TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64))
                )
            new = helper.make_node(op, ins, [out], **node_attrs)
            node.input[slot] = out
            nodes.insert(pos, new)
            return f"insert({op} before {node.op_type})"
    if kind == "rewire" and len(nodes):
        node = nodes[rng.randrange(len(nodes))]
        if len(node.input):
            node.input[rng.randrange(len(node.input))] = rng.choice(names)
            return f"rewire({node.op_type})"
    if kind == "drop" and len(nodes):
        del nodes[rng.randrange(len(nodes))]
        return "drop"
    if kind == "constant_out" and len(g.output):
        out = rng.choice(list(g.output)).name
        for n in nodes:
            for j, o in enumerate(n.output):
                if o == out:
                    n.output[j] = f"fz_dead{rng.randrange(1 << 30)}"
        shape = rng.choice([(2,), (2, 2), (2, 3), (1, hidden), (2, hidden), (3,)])
        arr = _array(rng, shape, rng.choice([np.float32, np.float64, np.int64]))
        nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(arr)))
        return f"constant_out({out}{list(shape)})"
    if kind == "double" and len(nodes):
        # x -> Concat(x, x) repeated: width doubles at every node
        node = nodes[0]
        src = node.input[0] if len(node.input) else g.input[0].name
        k = rng.choice([4, 12, 24])
        cur = src
        for j in range(k):
            nxt = f"fz_dbl{j}"
            nodes.insert(j, helper.make_node("Concat", [cur, cur], [nxt], axis=rng.choice((0, 1))))
            cur = nxt
        node.input[0] = cur
        return f"double({k})"
    if kind == "chain" and len(nodes):
        # k chained [H, H] products on one weight
        w = f"fz_w{rng.randrange(1 << 30)}"
        g.initializer.append(
            numpy_helper.from_array(np.eye(hidden, dtype=rng.choice([np.float32, np.float64])), w)
        )
        node = nodes[0]
        if not len(node.input):
            return "chain(noop)"
        cur = node.input[0]
        k = rng.choice([2, 50, 250])
        for j in range(k):
            nxt = f"fz_mm{j}"
            nodes.insert(j, helper.make_node("MatMul", [cur, w], [nxt]))
            cur = nxt
        node.input[0] = cur
        return f"chain({k})"
    if kind == "opset" and len(model.opset_import):
        model.opset_import[rng.randrange(len(model.opset_import))].version = rng.choice(
            (1, 9, 11, 13, 17, 18, 21, 23, 24)
        )
        return "opset"
    return "noop"


# -- pickles ---------------------------------------------------------------------------------


def pickle_ops(data: bytes) -> list[bytes]:
    """Split a pickle into the bytes of its opcodes (the prefix that parses)."""
    out: list[bytes] = []
    positions: list[int] = []
    try:
        for _, _, pos in pickletools.genops(data):
            positions.append(int(pos or 0))
    except Exception:  # a damaged seed: keep what parsed
        pass
    positions.append(len(data))
    for a, b in itertools.pairwise(positions):
        out.append(data[a:b])
    return out


def _edge_ops(rng: random.Random) -> bytes:
    big = rng.choice([0, 1, 255, 2**31 - 1, 2**32 - 1])
    u8 = rng.choice([0, 1, 255])
    text = rng.choice(["x", "\udcff", "\ud800", "\uffff", "a" * 300, "é", ""]).encode(
        "utf-8", "surrogatepass"
    )
    glob = rng.choice([
        ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
        ("sklearn.linear_model._logistic", "LogisticRegression"), ("sklearn.preprocessing._data", "StandardScaler"),
        ("builtins", "eval"), ("os", "system"), ("numpy", "frombuffer"), ("_codecs", "encode"), ("builtins", "bytes"),
    ])  # fmt: skip
    choices = [
        b"J" + struct.pack("<i", rng.choice([-1, 0, 1, 2**31 - 1])),  # BININT
        b"K" + bytes([u8]),  # BININT1
        b"M" + struct.pack("<H", rng.choice([0, 65535])),  # BININT2
        b"\x8a" + bytes([u8]) + bytes(rng.randrange(256) for _ in range(u8)),  # LONG1
        b"\x8b" + struct.pack("<i", rng.choice([-1, 0, 4, 10000])) + b"\x01" * 4,  # LONG4
        b"\x8c" + bytes([min(len(text), 255)]) + text[:255],  # SHORT_BINUNICODE
        b"X" + struct.pack("<I", min(big, len(text))) + text,  # BINUNICODE
        b"C" + bytes([u8]) + b"\x00" * u8,  # SHORT_BINBYTES
        b"B" + struct.pack("<I", big) + b"\x00" * 8,  # BINBYTES (length may lie)
        b"}",
        b"]",
        b")",
        b"(",
        b"u",
        b"e",
        b"t",
        b"s",
        b"a",
        b"R",
        b"b",
        b"\x81",
        b"\x85",
        b"\x86",
        b"\x87",
        b"\x94",
        b"0",
        b"2",
        b"N",
        b"\x88",
        b"\x89",
        b"\x8f",
        b"\x90",
        b"\x91",
        b"\x92",  # containers, memo, sets
        b"q" + bytes([u8]),
        b"h" + bytes([u8]),
        b"r" + struct.pack("<I", big),
        b"j" + struct.pack("<I", big),
        b"G" + struct.pack(">d", rng.choice(FLOATS)),  # BINFLOAT
        b"\x95" + struct.pack("<Q", rng.choice([0, 8, 2**40])),  # FRAME
        b"\x80" + bytes([rng.choice([0, 1, 2, 3, 4, 5, 6])]),  # PROTO
        b"c" + glob[0].encode() + b"\n" + glob[1].encode() + b"\n",  # GLOBAL
        b"\x8c"
        + bytes([len(glob[0])])
        + glob[0].encode()
        + b"\x8c"
        + bytes([len(glob[1])])
        + glob[1].encode()
        + b"\x93",
        b".",
    ]
    return rng.choice(choices)


def mutate_pickle(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    """One opcode-level mutation of ``data`` (``other``: a second pickle for cross-over)."""
    ops = pickle_ops(data)
    if not ops:
        return data + _edge_ops(rng), "append"
    i = rng.randrange(len(ops))
    kind = rng.choice(["delete", "repeat", "swap", "replace", "insert", "crossover", "truncate"])
    if kind == "delete":
        del ops[i]
    elif kind == "repeat":
        ops[i:i] = [ops[i]] * rng.choice([1, 2, 100, 5000])
    elif kind == "swap" and len(ops) > 1:
        j = rng.randrange(len(ops))
        ops[i], ops[j] = ops[j], ops[i]
    elif kind == "replace":
        ops[i] = _edge_ops(rng)
    elif kind == "insert":
        ops[i:i] = [_edge_ops(rng) for _ in range(rng.choice([1, 2, 3]))]
    elif kind == "crossover":
        theirs = pickle_ops(other)
        if theirs:
            a = rng.randrange(len(theirs))
            ops[i:i] = theirs[a : a + rng.choice([1, 3, 10, 50])]
    else:
        ops = ops[:i]
    out = b"".join(ops)
    if len(out) > MAX_MUTANT_BYTES:  # repeated repeats of a large unparsed tail: keep the input
        return data, f"{kind}@{i} skipped ({len(out)} bytes)"
    return out, f"{kind}@{i}"
