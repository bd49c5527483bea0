"""The ONNX checker and onnxruntime's session creation, predicted without either package.

Both run on graphs that already passed the profile (``onnx_profile``): one
graph, no functions, subgraphs, sparse tensors or external data, allowlisted
operators of imported domains within the opset ranges, the role's inputs and
outputs. Within that envelope:

* :func:`check_model` is ``onnx.checker.check_model`` (onnx/checker.cc and
  ``OpSchema::Verify``): graph and value names, single static assignment and
  graph order, tensors (one value field that holds the shape's data),
  attributes (one value field of the declared type), each node against its
  schema (input and output counts and options, known and required
  attributes). It returns the first failure, as the checker words it.
* :func:`predict_session` is what onnxruntime checks when it creates a session
  with the profile's options (graph optimizations off, so the session runs
  the graph's own nodes): constant tensors hold exactly the data their shape
  needs; every node's element types satisfy its schema and have a CPU kernel
  (``onnx_ops.OPS``, measured on onnxruntime); types of declared values agree
  with the inferred ones; the attributes its type and shape inference and
  kernels read are valid.

The schema facts and accepted types come from ``asa_format.graphs.ops``,
generated from onnx and onnxruntime by ``tests/make_onnx_ops.py``;
``tests/test_onnx_session.py`` compares both functions with the two packages
on the conformance corpus, the hostile graphs and mutated graphs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CheckFailure", "check_model", "predict_session"]

_STRING = 8
# bytes per element of raw data (packed types: elements per byte, as a negative number)
_RAW_BYTES = {
    1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16,
    16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: -2, 22: -2, 23: -2, 24: 1, 25: -4, 26: -4,
}  # fmt: skip
# the typed field each element type is stored in, and values per element (packed: negative)
_FIELD = {
    1: ("float_data", 1), 14: ("float_data", 2), 11: ("double_data", 1), 15: ("double_data", 2),
    **{t: ("int32_data", 1) for t in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 24)},
    **{t: ("int32_data", -8) for t in (21, 22, 23)},
    **{t: ("int32_data", -16) for t in (25, 26)},
    7: ("int64_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1), 8: ("string_data", 1),
    27: ("int32_data", 1), 28: ("int32_data", 1),
}  # fmt: skip
_FLOAT6 = frozenset({27, 28})  # 6-bit types: packed 6 bits per element in raw data
_VALUE_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "raw_data",
    "double_data",
    "uint64_data",
)
_ATTR_SINGLE = {
    "f": 1,
    "i": 2,
    "s": 3,
    "t": 4,
    "g": 5,
    "tp": 13,
    "sparse_tensor": 11,
}
_ATTR_LIST = {
    "floats": 6,
    "ints": 7,
    "strings": 8,
    "tensors": 9,
    "graphs": 10,
    "sparse_tensors": 12,
    "type_protos": 14,
}
_ATTR_NAMES = {
    0: "UNDEFINED", 1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH", 6: "FLOATS",
    7: "INTS", 8: "STRINGS", 9: "TENSORS", 10: "GRAPHS", 11: "SPARSE_TENSOR",
    12: "SPARSE_TENSORS", 13: "TYPE_PROTO", 14: "TYPE_PROTOS",
}  # fmt: skip
_INT64_MAX = (1 << 63) - 1
TYPE_NAMES = {
    1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64",
    14: "complex64", 15: "complex128", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
    19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1",
    24: "float8e8m0", 25: "uint2", 26: "int2", 27: "float6e2m3", 28: "float6e3m2",
}  # fmt: skip


class CheckFailure(Exception):
    """The first problem found, worded as the checker or the runtime would."""


def _fail(*parts: object) -> CheckFailure:
    return CheckFailure("".join(str(p) for p in parts))


def _show(value: Any) -> str:
    """A name as the C++ checker prints it (bytes that are not UTF-8, escaped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


# -- the ONNX checker -----------------------------------------------------------------------


def _schema(op: str, domain: str, version: int) -> dict[str, Any] | None:
    from asa_format.graphs.ops import versions

    key = f"{domain}::{op}"  # as onnx's registry: "ai.onnx" is not "" there
    best = None
    for entry in versions(key):
        if entry["since"] <= version:
            best = entry
    return best


def _check_tensor(tensor: Any) -> None:
    name = _show(tensor.name)
    if not tensor.HasField("data_type"):
        raise _fail("Field 'data_type' of 'tensor' is required but missing.")
    data_type = tensor.data_type
    if data_type == 0:
        raise _fail("setting data_type field (tensor name: ", name, ") to UNDEFINED is not allowed")
    present = [f for f in _VALUE_FIELDS if len(getattr(tensor, f))]
    if tensor.HasField("data_location") and tensor.data_location == 1:
        return  # external data: refused by the profile before
    nelem = 1
    for d in tensor.dims:
        if d < 0:
            raise _fail("Negative dimension value (tensor name: ", name, ")")
        nelem *= d
        if nelem > _INT64_MAX:
            raise _fail("Tensor dimension product overflow (tensor name: ", name, ")")
    if nelem == 0 and present:
        raise _fail("TensorProto (tensor name: ", name, ") is 0-element but contains data!")
    if nelem != 0 and len(present) != 1:
        raise _fail(
            "TensorProto (tensor name: ", name, ") should contain one and only one value field."
        )
    if "raw_data" in present:
        if data_type == _STRING:
            raise _fail(
                "STRING data (tensor name: ", name, ") should not be stored in raw_data field"
            )
        per = _RAW_BYTES.get(data_type, 0)
        expected = -(-nelem // -per) if per < 0 else nelem * per
        if data_type in _FLOAT6:
            expected = -(-nelem * 6 // 8)
        if expected > _INT64_MAX:
            raise _fail(
                "TensorProto (tensor name: ",
                name,
                ") has a shape too large to validate against its data type.",
            )
        if expected > 0 and len(tensor.raw_data) < expected:
            raise _fail(
                "TensorProto (tensor name: ", name, ") raw_data size (", len(tensor.raw_data),
                " bytes) is too small for the declared shape and type (", expected,
                " bytes required).",
            )  # fmt: skip
        bits = nelem * 6 % 8
        if data_type in _FLOAT6 and bits and tensor.raw_data[expected - 1] & (0xFF << bits) & 0xFF:
            raise _fail(
                "TensorProto (tensor name: ", name, ") has non-zero padding bits in its packed",
                " FLOAT6 raw_data.",
            )  # fmt: skip
        return
    stored = _FIELD.get(data_type)
    if stored is None:
        raise _fail("Unrecognized data_type (tensor name: ", name, "): ", data_type)
    field, per = stored
    if nelem != 0 and field not in present:
        raise _fail(
            "values of data_type '", data_type, "' should be stored in field '", field,
            "' instead of '", present[0] if present else "", "'",
        )  # fmt: skip
    if nelem > 0:
        need = -(-nelem // -per) if per < 0 else nelem * per
        if need > _INT64_MAX:
            raise _fail(
                "TensorProto (tensor name: ",
                name,
                ") has a shape too large to validate against its data type.",
            )
        if len(getattr(tensor, field)) < need:
            raise _fail(
                "TensorProto (tensor name: ", name, ") ", field, " size (",
                len(getattr(tensor, field)), ") is too small for the declared shape (", need,
                " values required).",
            )  # fmt: skip
    if data_type in _FLOAT6 and any(not 0 <= v <= 63 for v in tensor.int32_data):
        raise _fail(
            "TensorProto (tensor name: ", name, ") FLOAT6 int32_data values must use only bits 0-5."
        )


def _check_attribute(attr: Any) -> None:
    name = _show(attr.name)
    if not attr.name:
        raise _fail("Field 'name' of 'attr' is required to be non-empty.")
    if not attr.HasField("type"):
        raise _fail("Field 'type' of 'attr' is required but missing.")
    used = 0
    for field, kind in _ATTR_SINGLE.items():
        if attr.HasField(field):
            used += 1
            if attr.type != kind:
                raise _fail("type field and data field mismatch in attribute ", name, ".")
    for field, kind in _ATTR_LIST.items():
        if len(getattr(attr, field)):
            used += 1
            if attr.type != kind:
                raise _fail("type field and data field mismatch in attribute ", name, ".")
    if used > 1:
        raise _fail("Attribute (name: ", name, ") should not contain more than one value field.")
    if attr.HasField("t"):
        _check_tensor(attr.t)
    for t in attr.tensors:
        _check_tensor(t)


def _verify(node: Any, schema: dict[str, Any], version: int, domain: str) -> None:
    """``OpSchema::Verify``."""
    label = _show(node.name)
    op = _show(node.op_type)
    if schema["deprecated"]:
        raise _fail("Operator '", op, "' has been deprecated since version ", schema["since"])
    prefix = ("Node(" + label + ")" if label else "Node") + (
        f" with schema({domain}::{op}:{schema['since']})"
    )
    n_in, n_out = len(node.input), len(node.output)
    if not schema["min_input"] <= n_in <= schema["max_input"]:
        raise _fail(
            prefix, " has input size ", n_in, " not in range [min=", schema["min_input"],
            ", max=", schema["max_input"], "].",
        )  # fmt: skip
    if not schema["min_output"] <= n_out <= schema["max_output"]:
        raise _fail(
            prefix, " has output size ", n_out, " not in range [min=", schema["min_output"],
            ", max=", schema["max_output"], "].",
        )  # fmt: skip
    for names, formal, what in ((node.input, schema["inputs"], "input"), (node.output, schema["outputs"], "output")):  # fmt: skip
        for i, value in enumerate(names):
            if i >= len(formal):
                if formal and formal[-1][1] == "variadic":
                    break
                raise _fail(
                    "Node (", label, ") has more ", what, "s (", len(names),
                    ") than declared (", len(formal), ") in op definition.",
                )  # fmt: skip
            if not value and formal[i][1] == "single":
                raise _fail(
                    "Node (", label, ")'s ", what, " ", i,
                    " is marked single but has an empty string in the graph",
                )  # fmt: skip
    seen: set[Any] = set()
    attributes = schema["attributes"]
    for attr in node.attribute:
        name = attr.name
        if name in seen:
            raise _fail("Attribute '", _show(name), "' appeared multiple times.")
        seen.add(name)
        known = attributes.get(name) if isinstance(name, str) else None
        if known is None:
            if isinstance(name, str) and name.startswith("__"):
                continue
            raise _fail("Unrecognized attribute: ", _show(name), " for operator ", op)
        expected = known[0]
        if attr.type != expected:
            raise _fail(
                "Mismatched attribute type in '", label + " : " + _show(name), "'. Expected: '",
                _ATTR_NAMES.get(expected, "?"), "', actual: '",
                _ATTR_NAMES.get(attr.type, "?"), "'",
            )  # fmt: skip
        if attr.ref_attr_name:
            continue
        need = {4: "t", 11: "sparse_tensor", 5: "g", 13: "tp"}.get(expected)
        if need is not None and not attr.HasField(need):
            field = "type_proto" if need == "tp" else need
            raise _fail("Attribute '", _show(name), "' is expected to have field '", field, "'")
    for name, (_, required) in attributes.items():
        if required and name not in seen:
            raise _fail("Required attribute '", name, "' is missing.")


def _check_value_info(vi: Any) -> None:
    if not vi.name:
        raise _fail("Field 'name' of 'value_info' is required to be non-empty.")
    if not vi.HasField("type"):
        raise _fail("Field 'type' of 'value_info' is required but missing.")
    kind = vi.type.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        t = getattr(vi.type, kind)
        if not t.HasField("elem_type"):
            raise _fail("Field 'elem_type' of 'type' is required but missing.")
        if not t.HasField("shape"):
            raise _fail("Field 'shape' of 'type' is required but missing.")
    elif kind in ("optional_type", "sequence_type"):
        if not getattr(vi.type, kind).HasField("elem_type"):
            raise _fail("Field 'elem_type' of 'type' is required but missing.")
    elif kind == "map_type":
        m = vi.type.map_type
        if not m.HasField("key_type"):
            raise _fail("Field 'key_type' of 'type' is required but missing.")
        if not m.HasField("value_type"):
            raise _fail("Field 'value_type' of 'type' is required but missing.")
    elif kind == "opaque_type":
        if not vi.type.opaque_type.name:
            raise _fail("Field 'name' of 'type' is required to be non-empty.")
    else:
        raise _fail("Unrecognized type value case (value_info name: ", _show(vi.name), "): 0")


def check_model(model: Any) -> None:
    """Raise :class:`CheckFailure` where ``onnx.checker.check_model`` fails (a profile-checked
    model: see the module docstring)."""
    if not model.ir_version:
        raise _fail("The model does not have an ir_version set properly.")
    keys = [p.key for p in model.metadata_props]
    if len(keys) > 1 and len(set(keys)) != len(keys):
        raise _fail("Your model has duplicate keys in metadata_props.")
    imports: dict[Any, int] = {}
    for imp in model.opset_import:
        imports[imp.domain] = imp.version
    if not imports:
        raise _fail("model with IR version >= 3 must specify opset_import for ONNX")
    graph = model.graph
    if not graph.name:
        raise _fail("Field 'name' of 'graph' is required to be non-empty.")
    for vi in graph.input:
        _check_value_info(vi)
    for vi in graph.output:
        _check_value_info(vi)
    known: set[Any] = set()
    for vi in graph.input:
        if vi.name in known:
            raise _fail(
                "Graph must be in single static assignment (SSA) form, however '",
                _show(vi.name), "' has been used as graph input names multiple times.",
            )  # fmt: skip
        known.add(vi.name)
    initializers: set[Any] = set()
    for init in graph.initializer:
        if not init.HasField("name"):
            raise _fail("Field 'name' of 'init' is required but missing.")
        if not init.name:
            raise _fail("Tensor initializers must have a non-empty name")
        if init.name in initializers:
            raise _fail(_show(init.name), " initializer name is not unique")
        initializers.add(init.name)
        _check_tensor(init)
        known.add(init.name)
    for node in graph.node:
        for value in node.input:
            if value and value not in known:
                raise _fail(
                    "Nodes in a graph must be topologically sorted, however input '",
                    _show(value), "' of node: \nname: ", _show(node.name), " OpType: ",
                    _show(node.op_type), "\n is not output of any previous nodes.",
                )  # fmt: skip
        _check_node(node, imports)
        for value in node.output:
            if not value:
                continue
            if value in known:
                raise _fail(
                    "Graph must be in single static assignment (SSA) form, however '",
                    _show(value), "' has been used as output names multiple times.",
                )  # fmt: skip
            known.add(value)
    for vi in graph.output:
        if vi.name not in known:
            raise _fail(
                "Graph output '", _show(vi.name), "' is not an output of any node in graph."
            )


def _check_node(node: Any, imports: Mapping[Any, int]) -> None:
    if not node.op_type:
        raise _fail("Field 'op_type' of 'node' is required to be non-empty.")
    if not len(node.input) and not len(node.output):
        raise _fail(
            "NodeProto (name: ", _show(node.name), ", type: ", _show(node.op_type),
            ") has zero input and zero output.",
        )  # fmt: skip
    domain = node.domain
    version = imports.get(domain)
    if version is None and domain == "":
        version = imports.get("ai.onnx")
    if version is None:
        raise _fail("No opset import for domain '", _show(domain), "'")
    seen: set[Any] = set()
    for attr in node.attribute:
        if attr.name in seen:
            raise _fail("Attribute '", _show(attr.name), "' appeared multiple times.")
        seen.add(attr.name)
        _check_attribute(attr)
    schema = _schema(node.op_type, domain, version) if isinstance(node.op_type, str) else None
    if schema is None:
        raise _fail(
            "No Op registered for ", _show(node.op_type), " with domain_version of ", version
        )
    _verify(node, schema, version, domain)


# -- onnxruntime's session ----------------------------------------------------------------


def _elements(tensor: Any) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _exact_data(tensor: Any, where: str) -> None:
    """onnxruntime reads a constant tensor only if it holds exactly its shape's data."""
    n = _elements(tensor)
    t = tensor.data_type
    if tensor.HasField("raw_data"):
        per = _RAW_BYTES.get(t)
        if per is None:
            raise _fail(where, ": element type ", t, " cannot be held in raw data")
        need = -(-n // -per) if per < 0 else n * per
        if len(tensor.raw_data) != need:
            raise _fail(
                where, ": raw_data size (", len(tensor.raw_data),
                " bytes) does not match expected size from shape and data type (", need, " bytes)",
            )  # fmt: skip
        return
    stored = _FIELD.get(t)
    if stored is None:
        raise _fail(where, ": element type ", t, " is not supported")
    field, per = stored
    need = -(-n // -per) if per < 0 else n * per
    got = len(getattr(tensor, field))
    if got != need:
        raise _fail(where, ": ", field, " holds ", got, " values, the shape needs ", need)


def _tensor_types(values: Iterable[Any]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for vi in values:
        if vi.type.WhichOneof("value") == "tensor_type":
            out[vi.name] = vi.type.tensor_type.elem_type
    return out


def _output_params(node: Any, schema: dict[str, Any], binding: dict[str, int]) -> None:
    """Type parameters that only outputs carry, from the node's attributes (or None)."""
    op = node.op_type
    attrs = {a.name: a for a in node.attribute}
    if op == "Cast":
        to = attrs.get("to")
        value = to.i if to is not None else 0
        if value not in TYPE_NAMES:
            raise _fail(
                "Node (",
                _show(node.name),
                ") Op (Cast) [TypeInferenceError] Attribute to does not specify a valid type",
            )
        binding["T2"] = value
    elif op == "Constant":
        elem = _constant_type(attrs)
        if elem is None:
            raise _fail(
                "Node (", _show(node.name), ") Op (Constant): no value attribute to type the output"
            )
        binding["T"] = elem
    elif op in ("LinearClassifier", "TreeEnsembleClassifier"):
        strings = attrs.get("classlabels_strings")
        binding["T2"] = _STRING if strings is not None and len(strings.strings) else 7
    elif op == "Shape":
        binding["T1"] = 7


def _constant_type(attrs: Mapping[Any, Any]) -> int | None:
    for name, elem in (("value_float", 1), ("value_floats", 1), ("value_int", 7), ("value_ints", 7),
                       ("value_string", _STRING), ("value_strings", _STRING)):  # fmt: skip
        if name in attrs:
            return elem
    value = attrs.get("value")
    if value is not None and value.HasField("t"):
        return int(value.t.data_type)
    return None


def predict_session(model: Any, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Raise :class:`CheckFailure` where onnxruntime would refuse to create a session for a
    model that passed the profile, the checker and the static shape walk (or could not
    evaluate it). ``shapes`` maps value names to their shapes from the walk (``-1`` = the
    batch), for the attribute checks that need them."""
    graph = model.graph
    imports: dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        imports.setdefault(domain, imp.version)
    declared = _tensor_types(graph.input)
    expected = {**_tensor_types(graph.value_info), **_tensor_types(graph.output)}
    types: dict[Any, int] = {}
    for vi in graph.input:
        if vi.name in declared:
            types[vi.name] = declared[vi.name]
    for init in graph.initializer:
        _exact_data(init, f"initializer {_show(init.name)!r}")
        if init.name in types and types[init.name] != init.data_type:
            raise _fail(
                "initializer ", repr(_show(init.name)), " of type ", _type_name(init.data_type),
                " is declared as a graph input of type ", _type_name(types[init.name]),
            )  # fmt: skip
        types[init.name] = init.data_type
    for node in graph.node:
        _predict_node(node, imports, types, expected, shapes or {})


def _type_name(elem: int) -> str:
    return f"tensor({TYPE_NAMES.get(elem, str(elem))})"


def _predict_node(
    node: Any,
    imports: Mapping[str, int],
    types: dict[Any, int],
    expected: Mapping[Any, int],
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    version = imports[domain]
    schema = _schema(node.op_type, domain, version)
    assert schema is not None  # the checker found it
    label = f"node ({_show(node.name)}) Op ({_show(node.op_type)})"
    for attr in node.attribute:
        if attr.name == "value" and attr.HasField("t"):
            _exact_data(attr.t, f"the value of {label}")
    binding: dict[str, int] = {}
    formal = schema["inputs"]
    for i, name in enumerate(node.input):
        if not name:
            continue
        param = formal[min(i, len(formal) - 1)][0]
        elem = types[name]
        if param.startswith("tensor("):
            if param != _type_name(elem):
                raise _fail("Type Error: Type '", _type_name(elem), "' of input ", i, " of ", label, " is invalid (", param, " expected)")  # fmt: skip
            continue
        bound = binding.setdefault(param, elem)
        if bound != elem:
            raise _fail(
                "Type Error: Type parameter (", param, ") of ", label,
                " bound to different types (", _type_name(bound), " and ", _type_name(elem), ")",
            )  # fmt: skip
    _output_params(node, schema, binding)
    key = tuple(binding.get(p) for p in schema["params"])
    if key not in _accepted(node.op_type, domain, schema["since"]):
        shown = ", ".join(
            f"{p}={_type_name(binding[p]) if p in binding else '?'}" for p in schema["params"]
        )
        raise _fail("no implementation of ", label, " version ", schema["since"], " for ", shown)
    features = None
    shape = shapes.get(node.input[0]) if node.input else None
    if shape is not None and len(shape) == 2 and shape[1] >= 0:
        features = int(shape[1])
    _attribute_rules(node, version, {k: len(v) for k, v in shapes.items()}, label, features)
    for i, name in enumerate(node.output):
        if not name:
            continue
        param = schema["outputs"][min(i, len(schema["outputs"]) - 1)][0]
        elem = _elem_of(param) if param.startswith("tensor(") else binding[param]
        want = expected.get(name)
        if want is not None and want != elem:
            raise _fail(
                "Type Error: Type (", _type_name(elem), ") of output arg (", _show(name),
                ") of ", label, " does not match expected type (", _type_name(want), ")",
            )  # fmt: skip
        types[name] = elem


_ACCEPTED: dict[tuple[str, str, int], frozenset[tuple[int, ...]]] = {}


def _accepted(op: str, domain: str, since: int) -> frozenset[tuple[int, ...]]:
    key = (op, domain, since)
    found = _ACCEPTED.get(key)
    if found is None:
        from asa_format.graphs.ops import versions

        entry = next(e for e in versions(f"{domain}::{op}") if e["since"] == since)
        found = frozenset(tuple(t) for t in entry["accepted"])
        _ACCEPTED[key] = found
    return found


def _elem_of(type_str: str) -> int:
    name = type_str[len("tensor(") : -1]
    for elem, n in TYPE_NAMES.items():
        if n == name:
            return elem
    raise _fail("unknown type ", type_str)


_TRANSFORMS = frozenset({b"NONE", b"LOGISTIC", b"SOFTMAX", b"SOFTMAX_ZERO", b"PROBIT"})
_NORMS = frozenset({b"MAX", b"L1", b"L2"})
_NODE_MODES = frozenset(
    {b"BRANCH_LEQ", b"BRANCH_LT", b"BRANCH_GTE", b"BRANCH_GT", b"BRANCH_EQ", b"BRANCH_NEQ", b"LEAF"}
)


def _strings(attrs: Mapping[Any, Any], name: str) -> list[bytes]:
    a = attrs.get(name)
    return [] if a is None else list(a.strings)


def _ints(attrs: Mapping[Any, Any], name: str) -> list[int]:
    a = attrs.get(name)
    return [] if a is None else [int(v) for v in a.ints]


def _floats(attrs: Mapping[Any, Any], name: str) -> int:
    a = attrs.get(name)
    return 0 if a is None else len(a.floats)


def _string(attrs: Mapping[Any, Any], name: str, default: bytes) -> bytes:
    a = attrs.get(name)
    return default if a is None else bytes(a.s)


def _ml_rules(node: Any, attrs: Mapping[Any, Any], features: int | None, label: str) -> None:
    """The ai.onnx.ml kernels' own checks when onnxruntime creates them (and what they need
    to evaluate without reading past their attributes): only the forms proven here pass."""
    op = node.op_type
    if op == "Normalizer" and _string(attrs, "norm", b"MAX") not in _NORMS:
        raise _fail(label, ": Invalid normalize value")
    if op == "Scaler":
        scale, offset = _floats(attrs, "scale"), _floats(attrs, "offset")
        if not scale or scale != offset or (scale != 1 and scale != features):
            raise _fail(label, ": scale and offset must both hold 1 value or one per feature")
    if op == "LinearClassifier":
        if _string(attrs, "post_transform", b"NONE") not in _TRANSFORMS:
            raise _fail(label, ": Unexpected value for post_eval_transform")
        labels = len(_ints(attrs, "classlabels_ints")) or len(
            _strings(attrs, "classlabels_strings")
        )
        classes = _floats(attrs, "intercepts")
        agree = classes == labels or (classes == 1 and labels == 2)
        if not agree or features is None or _floats(attrs, "coefficients") != classes * features:
            raise _fail(label, ": coefficients, intercepts and class labels do not agree")
    if op == "TreeEnsembleClassifier":
        _tree_rules(attrs, label)


def _tree_rules(attrs: Mapping[Any, Any], label: str) -> None:
    """TreeEnsembleClassifier: consistent attribute lengths, known modes and transform, class
    ids in range, and trees whose branches point to other existing nodes of the same tree
    without a cycle (onnxruntime follows them without a bound when it evaluates)."""
    if any(name.endswith("_as_tensor") for name in attrs if isinstance(name, str)):
        raise _fail(label, ": tensor-valued tree attributes are outside the checked form")
    if _string(attrs, "post_transform", b"NONE") not in _TRANSFORMS:
        raise _fail(label, ": Unexpected value for post_transform")
    tree, node = _ints(attrs, "nodes_treeids"), _ints(attrs, "nodes_nodeids")
    true_ids, false_ids = _ints(attrs, "nodes_truenodeids"), _ints(attrs, "nodes_falsenodeids")
    modes = _strings(attrs, "nodes_modes")
    n = len(false_ids)
    sizes = {len(tree), len(node), len(true_ids), len(_ints(attrs, "nodes_featureids")), len(modes),
             _floats(attrs, "nodes_values")}  # fmt: skip
    hit = _floats(attrs, "nodes_hitrates")
    missing = len(_ints(attrs, "nodes_missing_value_tracks_true"))
    if sizes != {n} or hit not in (0, n) or missing not in (0, n) or n == 0:
        raise _fail(label, ": tree attributes of different lengths")
    if any(m not in _NODE_MODES for m in modes):
        raise _fail(label, ": Unexpected value for node_mode")
    classes = len(_ints(attrs, "classlabels_int64s")) or len(_strings(attrs, "classlabels_strings"))
    c_ids, c_nodes, c_trees = (
        _ints(attrs, k) for k in ("class_ids", "class_nodeids", "class_treeids")
    )
    weights = _floats(attrs, "class_weights")
    if (
        classes < 1
        or not len(c_ids) == len(c_nodes) == len(c_trees)
        or weights not in (0, len(c_ids))
    ):
        raise _fail(label, ": class attributes of different lengths")
    if any(not 0 <= c < classes for c in c_ids):
        raise _fail(label, ": a class id is outside 0..", classes - 1)
    base = _floats(attrs, "base_values")
    if (classes <= 2 and base > 2) or (classes > 2 and base not in (0, classes)):
        raise _fail(label, ": base_values of the wrong length")
    index = {(t, i): k for k, (t, i) in enumerate(zip(tree, node, strict=True))}
    if len(index) != n:
        raise _fail(label, ": a tree node id is repeated")
    children: dict[int, tuple[int, int]] = {}
    for k in range(n):
        if modes[k] == b"LEAF":
            continue
        pair = []
        for child in (true_ids[k], false_ids[k]):
            j = index.get((tree[k], child))
            if j is None or j == k:
                raise _fail(label, ": a branch points to a missing node or to itself")
            pair.append(j)
        children[k] = (pair[0], pair[1])
    if any((t, i) not in index for t, i in zip(c_trees, c_nodes, strict=True)):
        raise _fail(label, ": a class weight refers to a missing node")
    state = [0] * n  # 0 new, 1 on the path, 2 done: every tree must be acyclic
    for start in range(n):
        stack = [(start, 0)]
        while stack:
            k, step = stack.pop()
            if step == 0:
                if state[k] == 2:
                    continue
                if state[k] == 1:
                    raise _fail(label, ": a tree has a cycle")
                state[k] = 1
                stack.append((k, 1))
                for j in children.get(k, ()):
                    if state[j] == 1:
                        raise _fail(label, ": a tree has a cycle")
                    if state[j] == 0:
                        stack.append((j, 0))
            else:
                state[k] = 2


def _attribute_rules(
    node: Any, version: int, ranks: Mapping[str, int], label: str, features: int | None = None
) -> None:
    """Attributes that onnxruntime's shape inference or kernels refuse (at session creation
    or on the first evaluation); the static shape walk checks the other axes."""
    op = node.op_type
    attrs = {a.name: a for a in node.attribute}
    if node.domain == "ai.onnx.ml":
        _ml_rules(node, attrs, features, label)
    if op == "Softmax" and node.input and node.input[0] in ranks:
        rank = ranks[node.input[0]]
        axis_attr = attrs.get("axis")
        axis = axis_attr.i if axis_attr is not None else (-1 if version >= 13 else 1)
        if not -rank <= axis <= rank - 1:
            raise _fail(
                label, " 'axis' must be in [", -rank, " , ", rank - 1,
                "]. Its actual value is: ", axis,
            )  # fmt: skip
