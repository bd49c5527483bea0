"""Generate asa_format/graphs/ops.py: what the ONNX checker and onnxruntime accept, per operator.

For every allowlisted operator (``asa_format.graphs.profile.ALLOWED_OPS``) and every
schema version within the profile's opset ranges, the table holds

* the schema facts the ONNX checker verifies (input and output counts and
  options, attributes with their types and whether required, deprecation),
  from ``onnx.defs``;
* the type parameters of the schema and, measured, every assignment of
  element types to them for which onnxruntime creates a session for a
  one-node graph with the profile's session options (graph optimizations
  off): type constraints and kernel availability on the CPU at once.

Usage (needs onnx and onnxruntime; takes about a minute)::

    python tests/make_onnx_ops.py            # rewrite asa_format/graphs/ops.py
    python tests/make_onnx_ops.py --check    # exit 1 if the committed table differs

tests/test_onnx_session.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "asa_format" / "graphs" / "ops.py"
ELEM_TYPES = tuple(range(1, 29))  # TensorProto.DataType, UNDEFINED excluded
IR_VERSION = 11  # the newest the profile allows
_BYTES = {
    1: 4,
    2: 1,
    3: 1,
    4: 2,
    5: 2,
    6: 4,
    7: 8,
    9: 1,
    10: 2,
    11: 8,
    12: 4,
    13: 8,
    14: 8,
    15: 16,
    16: 2,
}


def _options(params: Any) -> list[str]:
    return [str(p.option).rsplit(".", 1)[-1].lower() for p in params]


def _schema_versions(op: str, domain: str, low: int, high: int) -> list[tuple[int, int]]:
    """``(since_version, a model opset that selects it)`` for each schema in ``low..high``."""
    import onnx.defs

    out: dict[int, int] = {}
    for v in range(low, high + 1):
        try:
            s = onnx.defs.get_schema(op, v, domain)
        except onnx.defs.SchemaError:
            continue
        out.setdefault(s.since_version, v)
    return sorted(out.items())


def _value(elem: int, name: str) -> Any:
    """A one-element tensor of type ``elem`` (packed types: one byte)."""
    from onnx import TensorProto

    t = TensorProto(name=name, data_type=elem, dims=[1])
    if elem == 8:
        t.string_data.append(b"a")
    else:
        t.raw_data = bytes(_BYTES.get(elem, 1))
    return t


def _node_model(op: str, domain: str, opset: int, binding: dict[str, int]) -> Any | None:
    """A one-node model of ``op`` with the element types of ``binding``; None if the
    combination cannot be expressed (e.g. an output-only parameter without an attribute)."""
    from onnx import TensorProto, ValueInfoProto, helper

    x_shape: list[Any] = ["N", 3]
    inputs: list[Any] = []
    attrs: dict[str, Any] = {}
    names: list[str] = []

    def add(name: str, elem: int, shape: list[Any]) -> None:
        inputs.append(helper.make_tensor_value_info(name, elem, shape))
        names.append(name)

    t = binding.get("T", binding.get("V", binding.get("T1")))
    unary = ("Abs", "Exp", "Log", "Neg", "Reciprocal", "Sigmoid", "Sqrt", "Identity")
    if op in unary or op in ("Binarizer", "Softmax", "Transpose", "Flatten", "Shape", "Clip"):
        add("x", t, x_shape)
        if op in ("Softmax", "Flatten"):
            attrs["axis"] = 1
        if op == "Normalizer":
            attrs["norm"] = "L2"
    elif op in ("Add", "Sub", "Mul", "Div"):
        add("a", t, x_shape)
        add("b", t, x_shape)
    elif op in ("Max", "Min", "Sum", "Concat"):
        add("a", t, x_shape)
        add("b", t, x_shape)
        if op == "Concat":
            attrs["axis"] = 1
    elif op in ("MatMul", "Gemm"):
        add("a", t, x_shape)
        add("b", t, [3, 4])
        if op == "Gemm":
            add("c", t, [4])
    elif op == "ArgMax":
        add("x", t, x_shape)
        attrs.update(axis=1, keepdims=0)
    elif op.startswith("Reduce"):
        add("x", t, x_shape)
        attrs["keepdims"] = 1
    elif op == "Cast":
        add("x", t, x_shape)
        attrs["to"] = binding["T2"]
    elif op == "Constant":
        attrs["value"] = _value(t, "c")
    elif op == "Gather":
        add("data", t, [3, 2])
        add("idx", binding.get("Tind", TensorProto.INT64), [2])
    elif op == "Reshape":
        add("x", t, x_shape)
        add("shape", TensorProto.INT64, [2])
    elif op == "Slice":
        add("x", t, x_shape)
        if "Tind" in binding:
            add("starts", binding["Tind"], [1])
            add("ends", binding["Tind"], [1])
        else:
            attrs.update(starts=[0], ends=[1])
    elif op in ("Squeeze", "Unsqueeze"):
        add("x", t, [1, 3])
        if opset >= 13:
            add("axes", TensorProto.INT64, [1])
        else:
            attrs["axes"] = [0]
    elif op == "ArrayFeatureExtractor":
        add("x", t, x_shape)
        add("idx", TensorProto.INT64, [1])
    elif op in ("Normalizer", "Scaler"):
        add("x", t, x_shape)
        if op == "Normalizer":
            attrs["norm"] = "L2"
        else:
            attrs.update(scale=[1.0], offset=[0.0])
    elif op in ("LinearClassifier", "TreeEnsembleClassifier"):
        add("x", t, x_shape)
        label = binding["T2"]
        if label == TensorProto.STRING:
            attrs["classlabels_strings"] = ["a", "b"]
        elif label == TensorProto.INT64:
            attrs["classlabels_ints" if op == "LinearClassifier" else "classlabels_int64s"] = [0, 1]
        else:
            return None
        if op == "LinearClassifier":
            attrs.update(coefficients=[0.5] * 6, intercepts=[0.0, 0.0])
        else:
            attrs.update(
                nodes_treeids=[0], nodes_nodeids=[0], nodes_featureids=[0], nodes_modes=["LEAF"],
                nodes_values=[0.0], nodes_truenodeids=[0], nodes_falsenodeids=[0],
                class_treeids=[0], class_nodeids=[0], class_ids=[0], class_weights=[1.0],
            )  # fmt: skip
    else:
        raise AssertionError(f"no builder for {op}")
    outputs = [ValueInfoProto(name="y")]
    if op in ("LinearClassifier", "TreeEnsembleClassifier"):
        outputs.append(ValueInfoProto(name="z"))
    node = helper.make_node(op, names, [o.name for o in outputs], domain=domain, **attrs)
    graph = helper.make_graph([node], "g", inputs, outputs)
    imports = [helper.make_opsetid("", opset if domain == "" else 13)]
    if domain:
        imports.append(helper.make_opsetid(domain, opset))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = IR_VERSION
    return model


def _accepts(model: Any) -> bool:
    import onnxruntime as ort

    from asa_format.storage.reader import session_options

    options = session_options()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception:
        return False
    return True


def _bindings(op: str, params: list[str], opset: int) -> list[dict[str, int]]:
    from itertools import product

    from onnx import TensorProto

    choices: list[tuple[int, ...]] = []
    for p in params:
        if op == "Shape" and p == "T1":
            choices.append((TensorProto.INT64,))
        elif op in ("LinearClassifier", "TreeEnsembleClassifier") and p == "T2":
            choices.append((TensorProto.INT64, TensorProto.STRING))
        else:
            choices.append(ELEM_TYPES)
    return [dict(zip(params, combo, strict=True)) for combo in product(*choices)]


def generate(progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    import onnx.defs

    from asa_format import constants as C
    from asa_format.graphs.profile import ALLOWED_OPS

    table: dict[str, Any] = {}
    for domain, ops in sorted(ALLOWED_OPS.items()):
        low, high = C.ONNX_OPSET_RANGES[domain]
        for op in sorted(ops):
            versions = []
            for since, opset in _schema_versions(op, domain, low, high):
                s = onnx.defs.get_schema(op, opset, domain)
                params = [c.type_param_str for c in s.type_constraints]
                accepted = []
                for binding in _bindings(op, params, opset):
                    model = _node_model(op, domain, opset, binding)
                    if model is not None and _accepts(model):
                        accepted.append(tuple(binding[p] for p in params))
                if not accepted and not s.deprecated:
                    raise AssertionError(f"{domain}::{op} v{since}: no type accepted (builder bug)")
                versions.append(
                    {
                        "since": since,
                        "deprecated": bool(s.deprecated),
                        "inputs": [(p.type_str, o) for p, o in zip(s.inputs, _options(s.inputs), strict=True)],
                        "outputs": [(p.type_str, o) for p, o in zip(s.outputs, _options(s.outputs), strict=True)],
                        "min_input": s.min_input,
                        "max_input": s.max_input,
                        "min_output": s.min_output,
                        "max_output": s.max_output,
                        "attributes": {
                            name: (int(a.type.value), bool(a.required))
                            for name, a in sorted(s.attributes.items())
                        },
                        "params": params,
                        "accepted": sorted(accepted),
                    }
                )  # fmt: skip
                progress(f"{domain or 'ai.onnx'}::{op} v{since}: {len(accepted)} accepted")
            table[f"{domain}::{op}"] = versions
    return table


def render(table: dict[str, Any]) -> str:
    import json

    import onnx
    import onnxruntime

    lines = [
        '"""Generated by tests/make_onnx_ops.py; do not edit.',
        "",
        "Per allowlisted operator (``domain::op``), per schema version in the profile's opset",
        "ranges: the ONNX schema facts the checker verifies, and the element types (per type",
        "parameter, in ``params`` order) for which onnxruntime creates a session on the CPU",
        f"(measured with onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, graph",
        "optimizations off). Each entry is JSON text, decoded when an operator is first met",
        "(a module of string constants loads in well under a millisecond).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import json",
        "from functools import cache",
        "from typing import Any",
        "",
        '__all__ = ["OPS_JSON", "versions"]',
        "",
        "OPS_JSON: dict[str, str] = {",
    ]
    for key, versions in table.items():
        text = json.dumps(versions, separators=(",", ":"), sort_keys=True)
        lines.append(f"    {key!r}: (")
        for i in range(0, len(text), 88):
            lines.append(f"        {text[i : i + 88]!r}")
        lines.append("    ),")
    lines += [
        "}  # fmt: skip",
        "",
        "",
        "@cache",
        "def versions(key: str) -> tuple[dict[str, Any], ...]:",
        '    """The schema versions of ``domain::op`` (oldest first); () if not allowlisted."""',
        "    text = OPS_JSON.get(key)",
        "    return () if text is None else tuple(json.loads(text))",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed table")
    args = p.parse_args()
    text = render(generate(lambda m: print(m, file=sys.stderr)))
    if args.check:
        same = OUT.read_text(encoding="utf-8") == text
        print("the committed table is current" if same else "asa_format/graphs/ops.py differs")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
