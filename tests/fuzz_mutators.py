"""Structure-aware mutators for the long fuzzer: ONNX graphs, pickles, GGUF and .svec files.

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

GGUF control vectors are mutated as structures (:class:`GFile`: header,
key-value pairs, tensor infos, data) and serialized with the lies: counts,
key, string and array lengths, value and element types, nested arrays,
duplicated and dropped pairs and tensors, alignment values and types,
tensor names, ranks, dimensions, types and data offsets, truncated or
poisoned data. ``.svec`` files are mutated as JSON documents (block keys
that alias, values out of float32, lengths, model types, members) and as
text (duplicate keys, non-finite literals, truncation, bad UTF-8).
"""

from __future__ import annotations

import itertools
import json
import pickletools
import random
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "GFile",
    "gguf_seed",
    "mutate_gguf",
    "mutate_graph",
    "mutate_pickle",
    "mutate_svec",
    "pickle_ops",
]

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


# -- GGUF control vectors: mutated as structures, serialized with the lies ----------------------

GGUF_TYPES = {"UINT8": 0, "INT8": 1, "UINT16": 2, "INT16": 3, "UINT32": 4, "INT32": 5, "FLOAT32": 6,
              "BOOL": 7, "STRING": 8, "ARRAY": 9, "UINT64": 10, "INT64": 11, "FLOAT64": 12}  # fmt: skip
_GGUF_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
COUNTS = (0, 1, 2, 3, 63, 64, 65, 255, 2**16, 2**31 - 1, 2**32, 2**40, 2**62, 2**63, 2**64 - 1)


def _gstr(raw: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(raw) if length is None else length) + raw


@dataclass
class GKV:
    """One key-value pair; ``body`` is the type and the encoded value, as written."""

    key: bytes
    body: bytes
    key_len: int | None = None  # a lie about the key's length

    def encode(self) -> bytes:
        return _gstr(self.key, self.key_len) + self.body


@dataclass
class GTensor:
    name: bytes
    dims: list[int]
    ggml_type: int = 0
    offset: int = 0
    name_len: int | None = None

    def encode(self) -> bytes:
        return (
            _gstr(self.name, self.name_len)
            + struct.pack("<I", len(self.dims))
            + b"".join(struct.pack("<Q", d % 2**64) for d in self.dims)
            + struct.pack("<IQ", self.ggml_type % 2**32, self.offset % 2**64)
        )


@dataclass
class GFile:
    kvs: list[GKV]
    tensors: list[GTensor]
    data: bytes
    version: int = 3
    n_tensors: int | None = None  # lies about the counts
    n_kv: int | None = None
    alignment: int = 32
    magic: bytes = b"GGUF"

    def encode(self) -> bytes:
        head = self.magic + struct.pack(
            "<IQQ",
            self.version % 2**32,
            (len(self.tensors) if self.n_tensors is None else self.n_tensors) % 2**64,
            (len(self.kvs) if self.n_kv is None else self.n_kv) % 2**64,
        )
        out = (
            head
            + b"".join(kv.encode() for kv in self.kvs)
            + b"".join(t.encode() for t in self.tensors)
        )
        pad = -len(out) % max(self.alignment, 1)
        return out + b"\0" * pad + self.data


def gkv(key: str, vtype: str, value: Any) -> GKV:
    t = GGUF_TYPES[vtype]
    payload = (
        _gstr(value.encode() if isinstance(value, str) else value)
        if t == 8
        else struct.pack(_GGUF_FMT[t], value)
    )
    return GKV(key.encode(), struct.pack("<I", t) + payload)


def garray(key: str, etype: str, items: list[Any]) -> GKV:
    t = GGUF_TYPES[etype]
    enc = b"".join(_gstr(v.encode()) if t == 8 else struct.pack(_GGUF_FMT[t], v) for v in items)
    return GKV(key.encode(), struct.pack("<IIQ", 9, t, len(items)) + enc)


def gguf_seed(hidden: int, blocks: list[int], *, arch: str = "controlvector", alignment: int = 32,
              extra: list[GKV] | None = None, seed: int = 0) -> GFile:  # fmt: skip
    """A valid control vector as a structure."""
    rng = np.random.default_rng(seed)
    kvs = [gkv("general.architecture", "STRING", arch), gkv(f"{arch}.model_hint", "STRING", "llama"),
           gkv(f"{arch}.layer_count", "UINT32", len(blocks))]  # fmt: skip
    if alignment != 32:
        kvs.append(gkv("general.alignment", "UINT32", alignment))
    kvs += extra or []
    tensors, data, offset = [], b"", 0
    for b in blocks:
        raw = rng.standard_normal(hidden).astype("<f4").tobytes()
        raw += b"\0" * (-len(raw) % alignment)
        tensors.append(GTensor(f"direction.{b}".encode(), [hidden], 0, offset))
        data += raw
        offset += len(raw)
    return GFile(kvs, tensors, data, alignment=alignment)


def _edge(rng: random.Random, current: int) -> int:
    return rng.choice([*COUNTS, current - 1, current + 1, current * 2, rng.randrange(1 << 16)])


def mutate_gguf(rng: random.Random, f: GFile) -> str:
    """One structure-aware mutation of ``f`` in place; return its description."""
    kind = rng.choice(["count", "version", "magic", "key_len", "key", "vtype", "array_len", "array_type",
                       "string_len", "nested", "dup_kv", "drop_kv", "add_kv", "alignment", "name", "name_len",
                       "dims", "ggml_type", "offset", "drop_tensor", "dup_tensor", "swap_tensors",
                       "data_truncate", "data_flip", "data_append", "arch", "hint", "bool"])  # fmt: skip
    kvs, ts = f.kvs, f.tensors
    if kind == "count":
        if rng.random() < 0.5:
            f.n_tensors = _edge(rng, len(ts))
        else:
            f.n_kv = _edge(rng, len(kvs))
        return f"count(t={f.n_tensors},kv={f.n_kv})"
    if kind == "version":
        f.version = rng.choice([0, 1, 2, 4, 3 << 24, 2 << 24, 2**32 - 1])
        return f"version({f.version})"
    if kind == "magic":
        f.magic = rng.choice([b"GGUG", b"FUGG", b"\0\0\0\0", b"GGU\xff"])
        return "magic"
    if (
        kind
        in (
            "key_len",
            "key",
            "vtype",
            "array_len",
            "array_type",
            "string_len",
            "drop_kv",
            "dup_kv",
            "bool",
        )
        and kvs
    ):
        kv = rng.choice(kvs)
        if kind == "key_len":
            kv.key_len = _edge(rng, len(kv.key))
        elif kind == "key":
            kv.key = rng.choice([b"", b"general.architecture", b"controlvector.model_hint", b"k\n", b"\xff\xfe",
                                 b"controlvector.layer_count", b"general.alignment", b"x" * 70000, kv.key + b"\x00"])  # fmt: skip
        elif kind == "vtype":
            kv.body = struct.pack("<I", rng.choice([*range(14), 99, 2**31])) + kv.body[4:]
        elif kind == "array_len" and kv.body[:4] == struct.pack("<I", 9):
            kv.body = kv.body[:8] + struct.pack("<Q", _edge(rng, 0) % 2**64) + kv.body[16:]
        elif kind == "array_type" and kv.body[:4] == struct.pack("<I", 9):
            kv.body = kv.body[:4] + struct.pack("<I", rng.choice([*range(14), 99])) + kv.body[8:]
        elif kind == "string_len" and kv.body[:4] == struct.pack("<I", 8):
            kv.body = (
                kv.body[:4]
                + struct.pack("<Q", _edge(rng, len(kv.body) - 12) % 2**64)
                + kv.body[12:]
            )
        elif kind == "bool":
            kv.body = struct.pack("<IB", 7, rng.choice([0, 1, 2, 255]))
        elif kind == "drop_kv":
            kvs.remove(kv)
        else:
            kvs.insert(rng.randrange(len(kvs) + 1), GKV(kv.key, kv.body, kv.key_len))
        return f"{kind}({kv.key[:30]!r})"
    if kind == "nested":
        inner = struct.pack("<IQ", rng.choice([0, 8, 9]), rng.choice([0, 1, 2**40]))
        kvs.append(GKV(b"x.nested", struct.pack("<IIQ", 9, 9, rng.choice([1, 2, 2**40])) + inner))
        return "nested"
    if kind == "add_kv":
        n = rng.choice([0, 1, 64, 65, 1000, 300_000])
        etype = rng.choice(["UINT8", "STRING", "FLOAT64", "BOOL", "INT32"])
        items: list[Any] = {"UINT8": [7] * n, "STRING": ["s"] * min(n, 1000), "FLOAT64": [float("nan")] * n,
                            "BOOL": [1] * n, "INT32": [-1] * n}[etype]  # fmt: skip
        kvs.insert(
            rng.randrange(len(kvs) + 1), garray(f"x.added{rng.randrange(1 << 20)}", etype, items)
        )
        return f"add_kv({etype},{n})"
    if kind == "alignment":
        value, vtype = rng.choice([(0, "UINT32"), (1, "UINT32"), (3, "UINT32"), (48, "UINT32"), (64, "UINT32"),
                                   (2**31, "UINT32"), (64, "UINT64"), (64, "INT32"), (64, "STRING")])  # fmt: skip
        kvs.append(gkv("general.alignment", vtype, value if vtype != "STRING" else "64"))
        return f"alignment({value},{vtype})"
    if kind == "arch":
        for kv in kvs:
            if kv.key == b"general.architecture":
                kv.body = gkv(
                    "a", "STRING", rng.choice(["llama", "steeringvector", "", "controlvector\n"])
                ).body
        return "arch"
    if kind == "hint":
        for kv in kvs:
            if kv.key.endswith(b".model_hint"):
                kv.body = gkv(
                    "h", "STRING", rng.choice(["", "qwen2", "llama\n", "x" * 200, "\u202e"])
                ).body
        return "hint"
    if (
        kind
        in (
            "name",
            "name_len",
            "dims",
            "ggml_type",
            "offset",
            "drop_tensor",
            "dup_tensor",
            "swap_tensors",
        )
        and ts
    ):
        t = rng.choice(ts)
        if kind == "name":
            t.name = rng.choice([b"direction.0", b"direction.01", b"direction.1\n", b"direction.x", b"d" * 64,
                                 b"direction.99999", b"direction.100000", b"\xff", ts[0].name])  # fmt: skip
        elif kind == "name_len":
            t.name_len = _edge(rng, len(t.name))
        elif kind == "dims":
            t.dims = rng.choice([[], [0], [t.dims[0] if t.dims else 1, 2], [1] * 5, [2**63], [2**40],
                                 [2**32, 2**32, 2**32], [(t.dims[0] if t.dims else 1) + 1], [131073]])  # fmt: skip
        elif kind == "ggml_type":
            t.ggml_type = rng.choice([1, 2, 30, 39, 40, 99, 2**31])
        elif kind == "offset":
            t.offset = rng.choice(
                [0, t.offset + 4, t.offset + 32, t.offset - 32, 2**63, 2**64 - 1, len(f.data)]
            )
        elif kind == "drop_tensor":
            ts.remove(t)
        elif kind == "dup_tensor":
            ts.append(GTensor(t.name, list(t.dims), t.ggml_type, t.offset))
        elif len(ts) > 1:
            i, j = rng.randrange(len(ts)), rng.randrange(len(ts))
            ts[i].offset, ts[j].offset = ts[j].offset, ts[i].offset
        return f"{kind}({t.name[:20]!r})"
    if kind == "data_truncate" and f.data:
        f.data = f.data[: rng.randrange(len(f.data))]
        return "data_truncate"
    if kind == "data_flip" and f.data:
        data = bytearray(f.data)
        pos = rng.randrange(len(data) // 4) * 4
        data[pos : pos + 4] = rng.choice(
            [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f", b"\x01\x00\x00\x00"]
        )
        f.data = bytes(data)
        return "data_flip"
    if kind == "data_append":
        f.data += b"\0" * rng.choice([1, 4, 32, 4096])
        return "data_append"
    return "noop"


# -- .svec: mutated as JSON documents, then as text ------------------------------------------

SVEC_KEYS = ("0", "1", "2", "02", "2\n", " 2", "2 ", "+2", "-1", "2.0", "1e1", "\u0662", "", "99999", "100000",
             "9" * 50, "a", "2\x00")  # fmt: skip
SVEC_VALUES: tuple[Any, ...] = (
    0,
    -0.0,
    1,
    1.5,
    -1e38,
    3.5e38,
    1e39,
    1e-320,
    True,
    None,
    "1",
    [1.0],
    {},
    2**64,
)
SVEC_TEXT = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "0" * 5000,
    "1." + "0" * 500,
    '"\\ud800"',
    '"\\uffff"',
)


def mutate_svec(rng: random.Random, doc: dict[str, Any]) -> tuple[dict[str, Any] | bytes, str]:
    """One mutation of a .svec document: a structural edit, or (sometimes) raw text."""
    dirs = doc.get("directions")
    kind = rng.choice(
        ["key", "value", "length", "model_type", "member", "ev", "drop", "raw", "dup_key"]
    )
    if kind == "key" and isinstance(dirs, dict) and dirs:
        old = rng.choice(sorted(dirs))
        dirs[rng.choice(SVEC_KEYS)] = dirs.pop(old) if rng.random() < 0.5 else list(dirs[old])
        return doc, f"key({old!r})"
    if kind == "value" and isinstance(dirs, dict) and dirs:
        values = dirs[rng.choice(sorted(dirs))]
        if isinstance(values, list) and values:
            values[rng.randrange(len(values))] = rng.choice(SVEC_VALUES)
        return doc, "value"
    if kind == "length" and isinstance(dirs, dict) and dirs:
        key = rng.choice(sorted(dirs))
        dirs[key] = [0.5] * rng.choice([0, 1, 7, 9, 131072, 131073])
        return doc, f"length({key!r},{len(dirs[key])})"
    if kind == "model_type":
        doc["model_type"] = rng.choice(
            ["", "llama\n", "x" * 129, None, 5, ["llama"], "\u202e", "qwen2"]
        )
        return doc, "model_type"
    if kind == "member":
        doc[rng.choice(["condition", "layers", "coefficient", "directions", "model_type"])] = (
            rng.choice(SVEC_VALUES)
        )
        return doc, "member"
    if kind == "ev":
        doc["explained_variances"] = rng.choice(
            [{"2": 0.5}, {"2\n": 0.5}, {"2": "x"}, [], {"2": 1e308}, None]
        )
        return doc, "explained_variances"
    if kind == "drop":
        doc.pop(rng.choice(["directions", "model_type", "explained_variances"]), None)
        return doc, "drop"
    text = json.dumps(doc)
    if kind == "dup_key" and isinstance(dirs, dict) and dirs:
        key = rng.choice(sorted(dirs))
        text = text.replace('"directions": {', f'"directions": {{"{key}": [1.0], ', 1)
        return text.encode(), f"dup_key({key!r})"
    pos = rng.randrange(len(text) + 1)
    choice = rng.randrange(4)
    if choice == 0:
        text = text[:pos] + rng.choice(SVEC_TEXT) + text[pos:]
    elif choice == 1:
        text = text[:pos]
    elif choice == 2:
        text = "\ufeff" + text
    else:
        return text.encode()[:pos] + b"\xff" + text.encode()[pos:], "raw(bytes)"
    return text.encode("utf-8", "surrogatepass"), f"raw({choice},{pos})"
