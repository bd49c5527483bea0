"""A bounded reader of the ONNX protobuf wire format (no ``onnx`` import).

``asa validate``, ``asa inspect`` and ``asa verify`` check graphs without the
``onnx`` package (importing it, through ``ml_dtypes``, costs more CPU time
than the whole validation) and without onnxruntime. :func:`parse_model`
decodes a ``ModelProto`` from bytes into light objects whose attributes,
``HasField``, ``WhichOneof`` and ``len`` behave like the protobuf messages the
static checks were written against, and decides the same inputs valid and
invalid as the protobuf runtime ``onnx`` uses (upb):

* every field of every message reachable from ``ModelProto`` is decoded (a
  corrupt nested message is an error even in a field nobody reads);
* a field whose wire type differs from its declaration is an unknown field
  (skipped, groups checked), as is an enum value outside its (closed) enum;
* a singular message field that occurs twice is merged, a scalar overwritten,
  repeated scalars accept the packed and the unpacked encodings;
* a string field that is not valid UTF-8 reads as ``bytes``;
* tags and lengths are varints of at most 5 bytes that fit 32 bits, other
  varints at most 10 bytes; field number 0, wire types 6 and 7, a stray or
  mismatched end group, a truncated value are errors; messages and groups
  nest at most 100 deep.

Bounds: the caller caps the input size; every length is checked against the
bytes left in its parent before anything is read; each decoded element takes
at least one input byte, so objects grow linearly with the input; nesting is
at most 100 deep (Python recursion well below its limit).
"""

from __future__ import annotations

import struct
from array import array
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_MESSAGES",
    "Message",
    "WireError",
    "WireLimit",
    "attribute_value",
    "is_message",
    "parse_model",
    "to_array",
]

MAX_DEPTH = 100
MAX_MESSAGES = 1 << 18  # nested messages per graph (nodes, attributes, tensors, value infos)
_CORRUPT = "Wire format was corrupt"
_TOO_DEEP = "Exceeded upb_DecodeOptions_MaxDepth"


class WireError(ValueError):
    """The bytes are not a valid serialized message (the protobuf runtime's wording)."""

    def __init__(self, reason: str, type_name: str = "onnx.ModelProto") -> None:
        super().__init__(f"Error parsing message with type '{type_name}': {reason}")


class WireLimit(ValueError):
    """The message holds more nested messages than :data:`MAX_MESSAGES` (refused before
    they are built: an empty message takes 2 bytes on the wire, its object ~100)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the graph holds more than {limit} protobuf messages")
        self.limit = limit


# -- the schema: onnx-ml.proto as the onnx package compiles it --------------------------
# (number, name, kind, repeated, message type or enum values, oneof); checked against
# onnx's own descriptors by tests/test_onnx_wire.py.
_F = tuple[int, str, str, bool, Any, str | None]
SCHEMA: dict[str, tuple[_F, ...]] = {
    "ModelProto": (
        (1, "ir_version", "int64", False, None, None),
        (8, "opset_import", "message", True, "OperatorSetIdProto", None),
        (2, "producer_name", "string", False, None, None),
        (3, "producer_version", "string", False, None, None),
        (4, "domain", "string", False, None, None),
        (5, "model_version", "int64", False, None, None),
        (6, "doc_string", "string", False, None, None),
        (7, "graph", "message", False, "GraphProto", None),
        (14, "metadata_props", "message", True, "StringStringEntryProto", None),
        (20, "training_info", "message", True, "TrainingInfoProto", None),
        (25, "functions", "message", True, "FunctionProto", None),
        (26, "configuration", "message", True, "DeviceConfigurationProto", None),
    ),
    "OperatorSetIdProto": (
        (1, "domain", "string", False, None, None),
        (2, "version", "int64", False, None, None),
    ),
    "GraphProto": (
        (1, "node", "message", True, "NodeProto", None),
        (2, "name", "string", False, None, None),
        (5, "initializer", "message", True, "TensorProto", None),
        (15, "sparse_initializer", "message", True, "SparseTensorProto", None),
        (10, "doc_string", "string", False, None, None),
        (11, "input", "message", True, "ValueInfoProto", None),
        (12, "output", "message", True, "ValueInfoProto", None),
        (13, "value_info", "message", True, "ValueInfoProto", None),
        (14, "quantization_annotation", "message", True, "TensorAnnotation", None),
        (16, "metadata_props", "message", True, "StringStringEntryProto", None),
    ),
    "NodeProto": (
        (1, "input", "string", True, None, None),
        (2, "output", "string", True, None, None),
        (3, "name", "string", False, None, None),
        (4, "op_type", "string", False, None, None),
        (7, "domain", "string", False, None, None),
        (8, "overload", "string", False, None, None),
        (5, "attribute", "message", True, "AttributeProto", None),
        (6, "doc_string", "string", False, None, None),
        (9, "metadata_props", "message", True, "StringStringEntryProto", None),
        (10, "device_configurations", "message", True, "NodeDeviceConfigurationProto", None),
    ),
    "AttributeProto": (
        (1, "name", "string", False, None, None),
        (21, "ref_attr_name", "string", False, None, None),
        (13, "doc_string", "string", False, None, None),
        (20, "type", "enum", False, frozenset(range(15)), None),
        (2, "f", "float", False, None, None),
        (3, "i", "int64", False, None, None),
        (4, "s", "bytes", False, None, None),
        (5, "t", "message", False, "TensorProto", None),
        (6, "g", "message", False, "GraphProto", None),
        (22, "sparse_tensor", "message", False, "SparseTensorProto", None),
        (14, "tp", "message", False, "TypeProto", None),
        (7, "floats", "float", True, None, None),
        (8, "ints", "int64", True, None, None),
        (9, "strings", "bytes", True, None, None),
        (10, "tensors", "message", True, "TensorProto", None),
        (11, "graphs", "message", True, "GraphProto", None),
        (23, "sparse_tensors", "message", True, "SparseTensorProto", None),
        (15, "type_protos", "message", True, "TypeProto", None),
    ),
    "TensorProto": (
        (1, "dims", "int64", True, None, None),
        (2, "data_type", "int32", False, None, None),
        (3, "segment", "message", False, "TensorProto.Segment", None),
        (4, "float_data", "float", True, None, None),
        (5, "int32_data", "int32", True, None, None),
        (6, "string_data", "bytes", True, None, None),
        (7, "int64_data", "int64", True, None, None),
        (8, "name", "string", False, None, None),
        (12, "doc_string", "string", False, None, None),
        (9, "raw_data", "bytes", False, None, None),
        (13, "external_data", "message", True, "StringStringEntryProto", None),
        (14, "data_location", "enum", False, frozenset({0, 1}), None),
        (10, "double_data", "double", True, None, None),
        (11, "uint64_data", "uint64", True, None, None),
        (16, "metadata_props", "message", True, "StringStringEntryProto", None),
    ),
    "TensorProto.Segment": (
        (1, "begin", "int64", False, None, None),
        (2, "end", "int64", False, None, None),
    ),
    "StringStringEntryProto": (
        (1, "key", "string", False, None, None),
        (2, "value", "string", False, None, None),
    ),
    "SparseTensorProto": (
        (1, "values", "message", False, "TensorProto", None),
        (2, "indices", "message", False, "TensorProto", None),
        (3, "dims", "int64", True, None, None),
    ),
    "TypeProto": (
        (1, "tensor_type", "message", False, "TypeProto.Tensor", "value"),
        (4, "sequence_type", "message", False, "TypeProto.Sequence", "value"),
        (5, "map_type", "message", False, "TypeProto.Map", "value"),
        (9, "optional_type", "message", False, "TypeProto.Optional", "value"),
        (8, "sparse_tensor_type", "message", False, "TypeProto.SparseTensor", "value"),
        (7, "opaque_type", "message", False, "TypeProto.Opaque", "value"),
        (6, "denotation", "string", False, None, None),
    ),
    "TypeProto.Tensor": (
        (1, "elem_type", "int32", False, None, None),
        (2, "shape", "message", False, "TensorShapeProto", None),
    ),
    "TensorShapeProto": ((1, "dim", "message", True, "TensorShapeProto.Dimension", None),),
    "TensorShapeProto.Dimension": (
        (1, "dim_value", "int64", False, None, "value"),
        (2, "dim_param", "string", False, None, "value"),
        (3, "denotation", "string", False, None, None),
    ),
    "TypeProto.Sequence": ((1, "elem_type", "message", False, "TypeProto", None),),
    "TypeProto.Map": (
        (1, "key_type", "int32", False, None, None),
        (2, "value_type", "message", False, "TypeProto", None),
    ),
    "TypeProto.Optional": ((1, "elem_type", "message", False, "TypeProto", None),),
    "TypeProto.SparseTensor": (
        (1, "elem_type", "int32", False, None, None),
        (2, "shape", "message", False, "TensorShapeProto", None),
    ),
    "TypeProto.Opaque": (
        (1, "domain", "string", False, None, None),
        (2, "name", "string", False, None, None),
    ),
    "NodeDeviceConfigurationProto": (
        (1, "configuration_id", "string", False, None, None),
        (2, "sharding_spec", "message", True, "ShardingSpecProto", None),
        (3, "pipeline_stage", "int32", False, None, None),
    ),
    "ShardingSpecProto": (
        (1, "tensor_name", "string", False, None, None),
        (2, "device", "int64", True, None, None),
        (3, "index_to_device_group_map", "message", True, "IntIntListEntryProto", None),
        (4, "sharded_dim", "message", True, "ShardedDimProto", None),
    ),
    "IntIntListEntryProto": (
        (1, "key", "int64", False, None, None),
        (2, "value", "int64", True, None, None),
    ),
    "ShardedDimProto": (
        (1, "axis", "int64", False, None, None),
        (2, "simple_sharding", "message", True, "SimpleShardedDimProto", None),
    ),
    "SimpleShardedDimProto": (
        (1, "dim_value", "int64", False, None, "dim"),
        (2, "dim_param", "string", False, None, "dim"),
        (3, "num_shards", "int64", False, None, None),
    ),
    "ValueInfoProto": (
        (1, "name", "string", False, None, None),
        (2, "type", "message", False, "TypeProto", None),
        (3, "doc_string", "string", False, None, None),
        (4, "metadata_props", "message", True, "StringStringEntryProto", None),
    ),
    "TensorAnnotation": (
        (1, "tensor_name", "string", False, None, None),
        (2, "quant_parameter_tensor_names", "message", True, "StringStringEntryProto", None),
    ),
    "TrainingInfoProto": (
        (1, "initialization", "message", False, "GraphProto", None),
        (2, "algorithm", "message", False, "GraphProto", None),
        (3, "initialization_binding", "message", True, "StringStringEntryProto", None),
        (4, "update_binding", "message", True, "StringStringEntryProto", None),
    ),
    "FunctionProto": (
        (1, "name", "string", False, None, None),
        (4, "input", "string", True, None, None),
        (5, "output", "string", True, None, None),
        (6, "attribute", "string", True, None, None),
        (11, "attribute_proto", "message", True, "AttributeProto", None),
        (7, "node", "message", True, "NodeProto", None),
        (8, "doc_string", "string", False, None, None),
        (9, "opset_import", "message", True, "OperatorSetIdProto", None),
        (10, "domain", "string", False, None, None),
        (13, "overload", "string", False, None, None),
        (12, "value_info", "message", True, "ValueInfoProto", None),
        (14, "metadata_props", "message", True, "StringStringEntryProto", None),
    ),
    "DeviceConfigurationProto": (
        (1, "name", "string", False, None, None),
        (2, "num_devices", "int32", False, None, None),
        (3, "device", "string", True, None, None),
    ),
}

# the wire type of each kind when not packed
_WIRE = {
    "int64": 0,
    "int32": 0,
    "uint64": 0,
    "enum": 0,
    "float": 5,
    "double": 1,
    "string": 2,
    "bytes": 2,
    "message": 2,
}
_DEFAULT: dict[str, Any] = {
    "int64": 0,
    "int32": 0,
    "uint64": 0,
    "enum": 0,
    "float": 0.0,
    "double": 0.0,
    "string": "",
    "bytes": b"",
}


class Message:
    """A decoded message: fields as attributes (defaults when absent), protobuf-style
    ``HasField`` / ``WhichOneof``. Repeated fields are lists; a singular message field
    that is absent reads as an empty message of its type (never stored)."""

    __slots__ = ("_oneof", "_type", "_values")

    def __init__(self, type_name: str) -> None:
        self._type = type_name
        # fields present on the wire (a singular field is stored only when present) and the
        # repeated fields read so far
        self._values: dict[str, Any] = {}
        self._oneof: dict[str, str] | None = None  # oneof name -> member present

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            pass
        spec = _FIELDS_BY_NAME[self._type].get(name)
        if spec is None:
            raise AttributeError(f"{self._type} has no field {name!r}")
        _, _, kind, repeated, sub, _ = spec
        if repeated:
            code = _ARRAY.get(kind)
            value: Any = array(code) if code else []
            self._values[name] = value  # a container the caller may keep
            return value
        if kind == "message":
            return Message(sub)
        return _DEFAULT[kind]

    def HasField(self, name: str) -> bool:
        spec = _FIELDS_BY_NAME[self._type].get(name)
        if spec is None or spec[3]:
            raise ValueError(f"{self._type} has no singular field {name!r}")
        return name in self._values

    def WhichOneof(self, group: str) -> str | None:
        return None if self._oneof is None else self._oneof.get(group)

    @property
    def type_name(self) -> str:
        return self._type

    def __repr__(self) -> str:
        return f"<{self._type} {sorted(self._values)}>"


def is_message(obj: Any) -> bool:
    """Whether ``obj`` comes from this reader (rather than from the ``onnx`` package)."""
    return isinstance(obj, Message)


_FIELDS_BY_NAME: dict[str, dict[str, _F]] = {
    t: {f[1]: f for f in fields} for t, fields in SCHEMA.items()
}
_FIELDS_BY_NUMBER: dict[str, dict[int, _F]] = {
    t: {f[0]: f for f in fields} for t, fields in SCHEMA.items()
}

_FIXED = {"float": 4, "double": 8}
# repeated numbers are held compactly (as protobuf holds them), not as lists of objects
_ARRAY = {"float": "f", "double": "d", "int64": "q", "int32": "i", "uint64": "Q"}
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_MASK64 = (1 << 64) - 1


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A varint of at most 10 bytes (bits beyond 64 dropped, as upb does)."""
    result = 0
    shift = 0
    for i in range(10):
        if pos >= end:
            raise WireError(_CORRUPT)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        del i
    raise WireError(_CORRUPT)


def _varint32(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A tag or length: at most 5 bytes, fitting 32 bits."""
    result = 0
    shift = 0
    for _ in range(5):
        if pos >= end:
            raise WireError(_CORRUPT)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result > 0xFFFFFFFF:
                raise WireError(_CORRUPT)
            return result, pos
        shift += 7
    raise WireError(_CORRUPT)


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _skip(buf: bytes, pos: int, end: int, wire: int, field: int, depth: int) -> int:
    """Skip one unknown field's value; groups are decoded (nesting counts as depth)."""
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 1:
        if end - pos < 8:
            raise WireError(_CORRUPT)
        return pos + 8
    if wire == 5:
        if end - pos < 4:
            raise WireError(_CORRUPT)
        return pos + 4
    if wire == 2:
        n, pos = _varint32(buf, pos, end)
        if n > end - pos:
            raise WireError(_CORRUPT)
        return pos + n
    if wire == 3:
        if depth + 1 > MAX_DEPTH:
            raise WireError(_CORRUPT)
        while True:
            key, pos = _varint32(buf, pos, end)
            f, w = key >> 3, key & 7
            if f == 0 or w in (6, 7):
                raise WireError(_CORRUPT)
            if w == 4:
                if f != field:
                    raise WireError(_CORRUPT)
                return pos
            pos = _skip(buf, pos, end, w, f, depth + 1)
    raise WireError(_CORRUPT)  # wire types 4 (stray end group), 6, 7


def _scalar(kind: str, buf: bytes, pos: int, end: int) -> tuple[Any, int]:
    if kind == "float":
        if end - pos < 4:
            raise WireError(_CORRUPT)
        return _F32.unpack_from(buf, pos)[0], pos + 4
    if kind == "double":
        if end - pos < 8:
            raise WireError(_CORRUPT)
        return _F64.unpack_from(buf, pos)[0], pos + 8
    v, pos = _varint(buf, pos, end)
    if kind == "int64":
        return _signed64(v), pos
    if kind in ("int32", "enum"):
        return _signed32(v), pos
    return v, pos  # uint64


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # as the protobuf runtime returns a proto2 string that is not UTF-8


def _decode(msg: Message, buf: bytes, pos: int, end: int, depth: int, budget: list[int]) -> None:
    fields = _FIELDS_BY_NUMBER[msg._type]
    values = msg._values
    while pos < end:
        key, pos = _varint32(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0 or wire in (4, 6, 7):
            raise WireError(_CORRUPT)
        spec = fields.get(field)
        if spec is None:
            pos = _skip(buf, pos, end, wire, field, depth)
            continue
        _, name, kind, repeated, sub, oneof = spec
        expected = _WIRE[kind]
        packed = repeated and wire == 2 and expected != 2
        if wire != expected and not packed:
            pos = _skip(buf, pos, end, wire, field, depth)
            continue
        if packed:
            n, pos = _varint32(buf, pos, end)
            if n > end - pos:
                raise WireError(_CORRUPT)
            stop = pos + n
            items = values.get(name)
            if items is None:
                code = _ARRAY.get(kind)
                items = values[name] = array(code) if code else []
            width = _FIXED.get(kind)
            if width is not None:  # fixed-width elements: one call for the whole field
                if n % width:
                    raise WireError(_CORRUPT)
                code = "f" if width == 4 else "d"
                items.extend(struct.unpack_from(f"<{n // width}{code}", buf, pos))
                pos = stop
                continue
            while pos < stop:
                value, pos = _scalar(kind, buf, pos, stop)
                if kind != "enum" or value in sub:
                    items.append(value)
            continue
        if expected == 2:
            n, pos = _varint32(buf, pos, end)
            if n > end - pos:
                raise WireError(_CORRUPT)
            stop = pos + n
            if kind == "message":
                if depth + 1 > MAX_DEPTH:
                    raise WireError(_TOO_DEEP)
                if repeated:
                    child = Message(sub)
                    values.setdefault(name, []).append(child)
                else:
                    same = oneof is None or (msg._oneof or {}).get(oneof) == name
                    found = values.get(name) if same else None
                    if found is not None:
                        child = found
                    else:
                        child = Message(sub)
                        if oneof is not None:
                            _set_oneof(msg, oneof, name)
                        values[name] = child
                budget[0] -= 1
                if budget[0] < 0:
                    raise WireLimit(MAX_MESSAGES)
                _decode(child, buf, pos, stop, depth + 1, budget)
            else:
                raw = bytes(buf[pos:stop])
                value = _text(raw) if kind == "string" else raw
                if repeated:
                    values.setdefault(name, []).append(value)
                else:
                    _set_singular(msg, name, value, oneof)
            pos = stop
            continue
        value, pos = _scalar(kind, buf, pos, end)
        if kind == "enum" and value not in sub:
            continue  # a closed enum: the value is kept as an unknown field
        if repeated:
            items = values.get(name)
            if items is None:
                code = _ARRAY.get(kind)
                items = values[name] = array(code) if code else []
            items.append(value)
        else:
            _set_singular(msg, name, value, oneof)


def _set_oneof(msg: Message, oneof: str, name: str) -> None:
    """``name`` becomes the member of ``oneof`` that is set; the previous one is cleared."""
    if msg._oneof is None:
        msg._oneof = {}
    previous = msg._oneof.get(oneof)
    if previous is not None and previous != name:
        msg._values.pop(previous, None)
    msg._oneof[oneof] = name


def _set_singular(msg: Message, name: str, value: Any, oneof: str | None) -> None:
    if oneof is not None:
        _set_oneof(msg, oneof, name)
    msg._values[name] = value


def parse_model(data: bytes) -> Message:
    """Decode a serialized ``ModelProto``; raises :class:`WireError` as the protobuf runtime
    would raise ``DecodeError`` (same message)."""
    msg = Message("ModelProto")
    _decode(msg, data, 0, len(data), 0, [MAX_MESSAGES])
    return msg


def parse(data: bytes, type_name: str) -> Message:
    """Decode a serialized message of any type of :data:`SCHEMA`."""
    msg = Message(type_name)
    try:
        _decode(msg, data, 0, len(data), 0, [MAX_MESSAGES])
    except WireError as exc:
        raise WireError(str(exc).rsplit(": ", 1)[-1], f"onnx.{type_name}") from None
    return msg


# -- values ----------------------------------------------------------------------------
# TensorProto.DataType -> (NumPy dtype, typed field, its storage dtype) when not raw
_DTYPES: dict[int, tuple[str, str, str]] = {
    1: ("float32", "float_data", "float32"),
    2: ("uint8", "int32_data", "int32"),
    3: ("int8", "int32_data", "int32"),
    4: ("uint16", "int32_data", "int32"),
    5: ("int16", "int32_data", "int32"),
    6: ("int32", "int32_data", "int32"),
    7: ("int64", "int64_data", "int64"),
    9: ("bool", "int32_data", "int32"),
    10: ("float16", "int32_data", "int32"),
    11: ("float64", "double_data", "float64"),
    12: ("uint32", "uint64_data", "uint64"),
    13: ("uint64", "uint64_data", "uint64"),
    14: ("complex64", "float_data", "float32"),
    15: ("complex128", "double_data", "float64"),
}
_VIA_UINT16 = frozenset({4, 5, 10})
_VIA_UINT8 = frozenset({2, 3, 9})


def to_array(tensor: Any) -> Any:
    """The tensor's values as a NumPy array, as ``onnx.numpy_helper.to_array`` computes
    them, for the element types of ``_DTYPES`` (others raise ``TypeError``); raises
    ``ValueError`` when the data does not fill the shape."""
    import numpy as np

    if tensor.HasField("segment"):
        raise ValueError("Currently not supporting loading segments.")
    if tensor.data_type == 0:
        raise TypeError("The element type in the input tensor is UNDEFINED.")
    known = _DTYPES.get(tensor.data_type)
    if known is None:
        raise TypeError(f"element type {tensor.data_type} is not read here")
    name, field, storage = known
    dims = [int(d) for d in tensor.dims]
    if tensor.data_location == 1 or tensor.external_data:
        raise ValueError("external data is not read")
    if tensor.HasField("raw_data"):
        little = np.dtype(name).newbyteorder("<")
        return np.frombuffer(tensor.raw_data, dtype=little).astype(name).reshape(dims)
    values = getattr(tensor, field)
    if tensor.data_type in _VIA_UINT16:
        wide = np.array(values, dtype=np.int32).view(np.uint32).astype(np.uint16)
        return wide.reshape(dims).view(name)
    if tensor.data_type in _VIA_UINT8:
        return (
            np.array(values, dtype=np.int32)
            .view(np.uint32)
            .astype(np.uint8)
            .view(name)
            .reshape(dims)
        )
    if tensor.data_type in (14, 15):
        return np.array(values, dtype=storage).view(dtype=name).reshape(dims)
    return np.asarray(values, dtype=storage).astype(name).reshape(dims)


def attribute_value(attr: Any) -> Any:
    """``onnx.helper.get_attribute_value`` for an attribute of this reader."""
    if attr.ref_attr_name:
        raise ValueError("Cannot get value of reference attribute")
    t = attr.type
    single = {1: "f", 2: "i", 3: "s", 4: "t", 5: "g", 11: "sparse_tensor", 13: "tp"}
    if t in single:
        return getattr(attr, single[t])
    listed = {
        6: "floats",
        7: "ints",
        8: "strings",
        9: "tensors",
        10: "graphs",
        12: "sparse_tensors",
        14: "type_protos",
    }
    if t in listed:
        return list(getattr(attr, listed[t]))
    if t == 0:
        return None
    raise ValueError(f"Unsupported ONNX attribute type {t}")


def array_of(tensor: Any) -> Any:
    """:func:`to_array` for a tensor of this reader, ``onnx.numpy_helper.to_array`` for one
    of the ``onnx`` package (the static checks accept both)."""
    if isinstance(tensor, Message):
        return to_array(tensor)
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def value_of(attr: Any) -> Any:
    """:func:`attribute_value`, or ``onnx.helper.get_attribute_value`` for the ``onnx`` package."""
    if isinstance(attr, Message):
        return attribute_value(attr)
    from onnx import helper

    return helper.get_attribute_value(attr)
