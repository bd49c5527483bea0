"""The bounded protobuf reader (asa_format.graphs.wire) against the protobuf runtime onnx uses.

Every input must give the same outcome as ``onnx.ModelProto.ParseFromString``:
the same error message, or the same value in every field of every message
(repeated fields, presence of singular fields, oneof members, bytes where a
string is not UTF-8). The inputs: the conformance corpus's graphs with
byte-level mutations, messages generated field by field (wrong wire types,
packed and unpacked scalars, unknown fields and groups, enum values outside
their enum, repeated singular messages), and the limits (varint lengths, tag
ranges, nesting depth 100).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from asa_format.graphs import wire as W

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = sorted(
    p for p in (ROOT / "spec" / "conformance").rglob("*.onnx") if p.is_file() and not p.is_symlink()
)
_KINDS = {
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_MESSAGE: "message",
    FieldDescriptor.TYPE_ENUM: "enum",
}


def test_schema_is_onnx_s_own() -> None:
    """Every message reachable from ModelProto, every field, as onnx's descriptors declare."""
    seen: dict[str, Any] = {}

    def walk(d: Any) -> None:
        name = d.full_name.removeprefix("onnx.")
        if name in seen:
            return
        fields = []
        seen[name] = fields
        for f in d.fields:
            extra: Any = None
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                extra = f.message_type.full_name.removeprefix("onnx.")
                walk(f.message_type)
            elif f.type == FieldDescriptor.TYPE_ENUM:
                extra = frozenset(v.number for v in f.enum_type.values)
            repeated = bool(getattr(f, "is_repeated", None) or getattr(f, "label", 0) == 3)
            oneof = f.containing_oneof.name if f.containing_oneof else None
            fields.append((f.number, f.name, _KINDS[f.type], repeated, extra, oneof))

    walk(onnx.ModelProto.DESCRIPTOR)
    assert {k: sorted(v) for k, v in seen.items()} == {k: sorted(v) for k, v in W.SCHEMA.items()}


# -- the comparison ----------------------------------------------------------------------


def _norm(v: Any) -> Any:
    return struct.pack("<d", v) if isinstance(v, float) else v  # NaN payloads, -0.0


def _dump(msg: Any, type_name: str) -> list[Any]:
    out: list[Any] = []
    for _, name, kind, repeated, sub, _ in W.SCHEMA[type_name]:
        value = getattr(msg, name)
        if repeated:
            items = [_dump(m, sub) if kind == "message" else _norm(m) for m in value]
            out.append((name, items))
        elif kind == "message":
            has = msg.HasField(name)
            out.append((name, has, _dump(value, sub) if has else None))
        else:
            out.append((name, msg.HasField(name), _norm(value)))
    for group in {f[5] for f in W.SCHEMA[type_name] if f[5]}:
        out.append((group, msg.WhichOneof(group)))
    return out


def _outcome_onnx(data: bytes) -> tuple[str, Any]:
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except DecodeError as exc:
        return "error", str(exc)
    return "ok", _dump(m, "ModelProto")


def _outcome_wire(data: bytes) -> tuple[str, Any]:
    try:
        m = W.parse_model(data)
    except W.WireError as exc:
        return "error", str(exc)
    return "ok", _dump(m, "ModelProto")


def _same(data: bytes) -> None:
    assert _outcome_wire(data) == _outcome_onnx(data), data[:80]


def _v(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def _tag(field: int, wire: int) -> bytes:
    return _v((field << 3) | wire)


def _ld(field: int, data: bytes) -> bytes:
    return _tag(field, 2) + _v(len(data)) + data


def test_corpus_graphs_read_alike() -> None:
    assert len(GRAPHS) >= 20
    for path in GRAPHS:
        _same(path.read_bytes())


def test_byte_mutations_of_the_corpus_read_alike() -> None:
    rng = random.Random(11)
    seeds = [p.read_bytes() for p in GRAPHS]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        d = bytearray(rng.choice(seeds))
        for _ in range(rng.choice([1, 1, 2, 3, 5])):
            op = rng.random()
            if op < 0.4 and d:
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            elif op < 0.55 and d:
                d[rng.randrange(len(d))] = rng.choice([0, 0x80, 0xFF, 0x7F, 2, 3, 4, 5, 6, 7, 0x12])
            elif op < 0.7:
                j = rng.randrange(len(d) + 1)
                d[j:j] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
            elif op < 0.8 and d:
                j = rng.randrange(len(d))
                del d[j : j + rng.randrange(1, 8)]
            elif op < 0.9 and d:
                j, k = rng.randrange(len(d)), rng.randrange(len(d))
                d[j:j] = d[k : k + rng.randrange(1, 30)]
            else:
                d = d[: rng.randrange(len(d) + 1)]
        data = bytes(d)
        want = _outcome_onnx(data)
        assert _outcome_wire(data) == want, data[:80]
        outcomes[want[0]] += 1
    assert min(outcomes.values()) > 100, outcomes  # both outcomes are exercised


_INTS = (0, 1, 2, 5, 7, 11, 14, 15, 99, -1, -5, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, 1 << 40)


def _generated(rng: random.Random, type_name: str, depth: int) -> bytes:
    """A message of ``type_name`` built field by field, with deliberate wire-level oddities."""
    out = b""
    if depth > 7:
        return out
    for _ in range(rng.randrange(0, 5 if depth < 4 else 2)):
        r = rng.random()
        if r < 0.06:
            out += _tag(rng.choice([99, 1000, 17]), 0) + _v(3)  # unknown field
            continue
        if r < 0.09:
            out += _tag(50, 3) + _tag(51, 3) + _tag(51, 4) + _tag(50, 4)  # nested unknown groups
            continue
        num, _, kind, repeated, sub, _ = rng.choice(W.SCHEMA[type_name])
        if rng.random() < 0.06:  # a wire type other than the declared one
            out += rng.choice(
                [
                    _tag(num, 0) + _v(rng.choice(_INTS)),
                    _tag(num, 1) + bytes(8),
                    _tag(num, 5) + bytes(4),
                    _tag(num, 3) + _tag(1, 0) + _v(1) + _tag(num, 4),
                    _ld(num, b"\x08\x01"),
                ]
            )
        elif kind == "message":
            out += _ld(num, _generated(rng, sub, depth + 1))
        elif kind in ("string", "bytes"):
            out += _ld(
                num, rng.choice([b"", b"abc", b"\xff\xfe", "\u00e9".encode(), b"\xed\xa0\x80"])
            )
        elif kind in ("int64", "int32", "uint64", "enum"):
            if repeated and rng.random() < 0.5:  # packed
                out += _ld(num, b"".join(_v(rng.choice(_INTS)) for _ in range(rng.randrange(4))))
            else:
                out += _tag(num, 0) + _v(rng.choice(_INTS))
        else:
            size = 4 if kind == "float" else 8
            if repeated and rng.random() < 0.5:
                out += _ld(num, bytes(rng.randrange(256) for _ in range(size * rng.randrange(3))))
            else:
                out += _tag(num, 5 if size == 4 else 1) + bytes(
                    rng.randrange(256) for _ in range(size)
                )
    return out


def test_generated_messages_read_alike() -> None:
    rng = random.Random(5)
    ok = 0
    for _ in range(1500):
        data = _generated(rng, "ModelProto", 0)
        if data and rng.random() < 0.2:
            j = rng.randrange(len(data))
            data = data[:j] + bytes([rng.randrange(256)]) + data[j + 1 :]
        want = _outcome_onnx(data)
        assert _outcome_wire(data) == want, data[:80]
        ok += want[0] == "ok"
    assert ok > 500


def _sequence_types(k: int) -> bytes:
    t = b""
    for _ in range(k):
        t = _ld(4, _ld(1, t))  # TypeProto{sequence_type{elem_type: t}}
    return _ld(7, _ld(11, _ld(1, b"x") + _ld(2, t)))


def _subgraphs(k: int) -> bytes:
    g = b""
    for _ in range(k):
        g = _ld(1, _ld(5, _ld(1, b"a") + _ld(6, g)))
    return _ld(7, g)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_tag(1, 0) + b"\xff" * 9 + b"\x7f", id="varint-10-bytes"),
        pytest.param(_tag(1, 0) + b"\xff" * 10 + b"\x01", id="varint-11-bytes"),
        pytest.param(b"\x88\x80\x80\x80\x00" + _v(7), id="tag-5-bytes"),
        pytest.param(b"\x88\x80\x80\x80\x80\x00" + _v(7), id="tag-6-bytes"),
        pytest.param(b"\x88\x80\x80\x80\x10" + _v(7), id="tag-over-32-bits"),
        pytest.param(_tag(2, 2) + b"\x83\x80\x00abc", id="length-3-bytes"),
        pytest.param(_tag(2, 2) + b"\x83" + b"\x80" * 8 + b"\x00abc", id="length-10-bytes"),
        pytest.param(_tag(0, 0) + _v(1), id="field-0"),
        pytest.param(_tag(9, 6), id="wire-6"),
        pytest.param(_tag(99, 4), id="stray-end-group"),
        pytest.param(_tag(99, 3) + _tag(98, 4), id="mismatched-end-group"),
        pytest.param(_tag(99, 3) * 100 + _tag(99, 4) * 100, id="groups-100"),
        pytest.param(_tag(99, 3) * 101 + _tag(99, 4) * 101, id="groups-101"),
        pytest.param(_ld(7, _tag(99, 3) * 99 + _tag(99, 4) * 99), id="groups-99-in-graph"),
        pytest.param(_ld(7, _tag(99, 3) * 100 + _tag(99, 4) * 100), id="groups-100-in-graph"),
        pytest.param(_sequence_types(48), id="depth-99"),
        pytest.param(_sequence_types(49), id="depth-101"),
        pytest.param(_subgraphs(33), id="depth-100"),
        pytest.param(_subgraphs(34), id="depth-103"),
        pytest.param(_ld(7, _ld(2, b"g1") + _ld(1, _ld(4, b"A"))) + _ld(7, _ld(1, _ld(4, b"B"))), id="merge"),
        pytest.param(_ld(7, _ld(5, _tag(14, 0) + _v(5))), id="enum-outside"),
        pytest.param(_ld(7, _ld(5, _tag(2, 0) + _v((1 << 40) | 1))), id="int32-truncated"),
        pytest.param(_ld(7, _ld(5, _ld(4, b"\x00\x00\x80"))), id="packed-float-short"),
        pytest.param(_ld(2, b"\xff\xfe"), id="string-not-utf8"),
    ],
)  # fmt: skip
def test_limits_read_alike(data: bytes) -> None:
    _same(data)


def _tensors() -> list[Any]:
    rng = np.random.default_rng(0)
    out = []
    for dtype in (np.float32, np.float64, np.int64, np.int32, np.int8, np.uint8, np.int16,
                  np.uint16, np.bool_, np.float16, np.uint32, np.uint64):  # fmt: skip
        arr = (rng.standard_normal((3, 2)) * 50).astype(dtype)
        out.append(numpy_helper.from_array(arr, "raw"))  # raw_data
        t = onnx.helper.make_tensor(
            "typed",
            onnx.helper.np_dtype_to_tensor_dtype(arr.dtype),
            [3, 2],
            arr.reshape(-1).tolist(),
        )
        out.append(t)  # typed fields  # fmt: skip
    out.append(onnx.TensorProto(name="short", data_type=7, dims=[3], int64_data=[1, 2]))
    out.append(onnx.TensorProto(name="long", data_type=1, dims=[1], raw_data=b"\x00" * 8))
    out.append(onnx.TensorProto(name="wrap", data_type=12, dims=[2], uint64_data=[1 << 40, 7]))
    return out


def test_to_array_is_numpy_helper_s() -> None:
    for tensor in _tensors():
        wire = W.parse(tensor.SerializeToString(), "TensorProto")
        try:
            want = numpy_helper.to_array(tensor)
        except (ValueError, TypeError, OverflowError) as exc:
            with pytest.raises(type(exc)):
                W.to_array(wire)
            continue
        got = W.to_array(wire)
        assert got.dtype == want.dtype and got.shape == want.shape, tensor.name
        np.testing.assert_array_equal(got, want)


def test_attribute_values_are_helper_s() -> None:
    attrs = [
        onnx.helper.make_attribute("f", 1.5),
        onnx.helper.make_attribute("i", -3),
        onnx.helper.make_attribute("s", b"abc"),
        onnx.helper.make_attribute("ints", [1, 2, 3]),
        onnx.helper.make_attribute("floats", [0.5, 1.0]),
        onnx.helper.make_attribute("strings", [b"a", b"b"]),
    ]
    for a in attrs:
        got = W.attribute_value(W.parse(a.SerializeToString(), "AttributeProto"))
        assert got == onnx.helper.get_attribute_value(a)


def test_message_count_is_bounded_before_building() -> None:
    """Empty nodes take 2 bytes each on the wire: past MAX_MESSAGES the reader stops (a file
    of the size cap could otherwise build hundreds of millions of objects)."""
    from asa_format.graphs.profile import check_onnx

    graph = _ld(1, b"") * (W.MAX_MESSAGES + 1)
    data = _ld(7, graph)
    with pytest.raises(W.WireLimit):
        W.parse_model(data)
    _, problems = check_onnx(data, file="probe_0.onnx", hidden_size=8, n_classes=2)
    assert [p.code for p in problems] == ["ONNX_TOO_LARGE"]
    assert W.parse_model(_ld(7, _ld(1, b"") * 1000)).graph.node  # well below: read as usual
