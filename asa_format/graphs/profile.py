"""The ONNX profile of bundle graphs: static checks on the parsed protobuf.

Everything here runs on a ``ModelProto`` parsed from the file's bytes, before
any onnxruntime session exists. A graph that passes is small, self-contained
(no external data, functions, subgraphs or training info), uses only
allowlisted operators of the ``""`` and ``ai.onnx.ml`` domains, and has
exactly the inputs and outputs of its role (see ``GraphRole``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from asa_format import constants as C
from asa_format.errors import ErrorCode, Problem
from asa_format.graphs.check import CheckFailure, check_model, predict_session
from asa_format.graphs.cost import CostError, check_cost
from asa_format.graphs.wire import WireError, WireLimit, parse_model

__all__ = ["ALLOWED_OPS", "GraphRole", "check_onnx", "role_for_file", "session_problems"]

# Operators allowed per domain. The default-domain set covers what skl2onnx
# emits for StandardScaler and linear classifiers (float and double), plus a
# few pure elementwise / shape operators; the ai.onnx.ml set covers linear and
# tree classifiers. Everything else is refused (ONNX_OP).
ALLOWED_OPS: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "Abs",
            "Add",
            "ArgMax",
            "Cast",
            "Clip",
            "Concat",
            "Constant",
            "Div",
            "Exp",
            "Flatten",
            "Gather",
            "Gemm",
            "Identity",
            "Log",
            "MatMul",
            "Max",
            "Min",
            "Mul",
            "Neg",
            "Reciprocal",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceSum",
            "Reshape",
            "Shape",
            "Sigmoid",
            "Slice",
            "Softmax",
            "Sqrt",
            "Squeeze",
            "Sub",
            "Sum",
            "Transpose",
            "Unsqueeze",
        }
    ),
    "ai.onnx.ml": frozenset(
        {
            "ArrayFeatureExtractor",
            "Binarizer",
            "LinearClassifier",
            "Normalizer",
            "Scaler",
            "TreeEnsembleClassifier",
        }
    ),
}

FLOAT = 1
INT64 = 7
DOUBLE = 11
EXTERNAL = 1  # TensorProto.DataLocation
ATTR_GRAPH, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 10, 11, 12  # AttributeProto
_TYPE_NAMES = {FLOAT: "float32", INT64: "int64", DOUBLE: "float64"}

COST_HINTS: dict[ErrorCode, str] = {
    "ONNX_COST": "a scaler, a linear router or probe, or a small tree ensemble fits the budget (see the spec's section 6.7)",
    "ONNX_SHAPE": "every value's shape must follow from the input [N, hidden] alone (constant reshape targets, no broadcast against N)",
    "ONNX_IO": "the graph must compute one output row per input row, of the role's width",
    "HIDDEN_SIZE_MISMATCH": "the graph's weights must match the manifest's hidden size",
    "DOMAIN_MISMATCH": "the graph must have one probability column per class (domains for the router, 2 for a probe)",
}

Report = Callable[[ErrorCode, str, str], None]  # (code, message, hint)


@dataclass(frozen=True)
class GraphRole:
    """Expected interface of one graph: names, element types and ranks."""

    name: str  # "scaler", "router" or "probe"
    inputs: tuple[tuple[str, int], ...]
    outputs: tuple[tuple[str, int, int], ...]  # (name, elem type, rank)


SCALER_ROLE = GraphRole("scaler", ((C.SCALER_INPUT, FLOAT),), ((C.SCALER_OUTPUT, FLOAT, 2),))
ROUTER_ROLE = GraphRole(
    "router",
    ((C.CLASSIFIER_INPUT, DOUBLE),),
    ((C.CLASSIFIER_LABEL, INT64, 1), (C.CLASSIFIER_PROBABILITIES, DOUBLE, 2)),
)
PROBE_ROLE = GraphRole("probe", ROUTER_ROLE.inputs, ROUTER_ROLE.outputs)


def role_for_file(name: str) -> GraphRole:
    if name == C.SCALER_FILE:
        return SCALER_ROLE
    if name == C.ROUTER_FILE:
        return ROUTER_ROLE
    return PROBE_ROLE


def _tensors_with_location(model: object) -> Iterable[tuple[str, object]]:
    """Yield (where, TensorProto) for every tensor stored in the graph."""
    graph = model.graph  # type: ignore[attr-defined]
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield f"attribute {attr.name!r} of node {node.name or node.op_type!r}", attr.t
            for t in attr.tensors:
                yield f"attribute {attr.name!r} of node {node.name or node.op_type!r}", t


def _dims(value_info: object) -> list[int | None]:
    shape = value_info.type.tensor_type.shape  # type: ignore[attr-defined]
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def check_onnx(
    data: bytes,
    *,
    file: str,
    hidden_size: int | None,
    n_classes: int | None,
    engine: str = "wire",
) -> tuple[object | None, list[Problem]]:
    """Parse ``data`` and check it against the profile for ``file``'s role.

    Returns the parsed model (or None when it could not be parsed or is
    refused before deeper checks) and the problems found. ``engine="wire"``
    (the default) parses with the bounded reader of ``onnx_wire`` and checks
    with ``onnx_check``: no ``onnx`` import. ``engine="onnx"`` uses the ``onnx``
    package's parser and checker (the reference the tests compare with).
    """
    problems: list[Problem] = []

    def bad(code: ErrorCode, message: str, hint: str) -> None:
        problems.append(Problem(code=code, file=file, message=message, hint=hint))

    if len(data) > C.MAX_ONNX_BYTES:
        bad(
            "ONNX_TOO_LARGE",
            f"graph is {len(data)} bytes, over the cap of {C.MAX_ONNX_BYTES}",
            "a linear graph is far smaller",
        )
        return None, problems
    model: Any
    if engine == "onnx":
        import onnx
        from google.protobuf.message import DecodeError

        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            bad("ONNX_PARSE", f"not a valid ONNX protobuf: {exc}", "re-export the graph")
            return None, problems
    else:
        try:
            model = parse_model(data)
        except WireError as exc:
            bad("ONNX_PARSE", f"not a valid ONNX protobuf: {exc}", "re-export the graph")
            return None, problems
        except WireLimit as exc:
            bad("ONNX_TOO_LARGE", str(exc), "a linear graph holds a few hundred messages")
            return None, problems
    if not model.HasField("graph"):
        bad("ONNX_PARSE", "the file holds no graph", "re-export the graph")
        return None, problems

    if not (C.ONNX_IR_VERSION_MIN <= model.ir_version <= C.ONNX_IR_VERSION_MAX):
        bad(
            "ONNX_IR_VERSION",
            f"IR version {model.ir_version} is outside {C.ONNX_IR_VERSION_MIN}..{C.ONNX_IR_VERSION_MAX}",
            "export with an onnx release whose IR version is in range",
        )
    # functions first: their domain import is a consequence, not the cause
    if len(model.functions):
        bad(
            "ONNX_FUNCTION",
            f"the model defines {len(model.functions)} local function(s)",
            "inline functions when exporting",
        )
    seen_domains: dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in seen_domains:
            bad(
                "ONNX_OPSET",
                f"domain {domain or 'ai.onnx'!r} is imported twice",
                "import each domain once",
            )
            continue
        seen_domains[domain] = imp.version
        if domain not in C.ONNX_OPSET_RANGES:
            bad(
                "ONNX_OPSET",
                f"opset domain {imp.domain!r} is not allowed",
                "use only the '' (ai.onnx) and ai.onnx.ml domains",
            )
            continue
        low, high = C.ONNX_OPSET_RANGES[domain]
        if not (low <= imp.version <= high):
            bad(
                "ONNX_OPSET",
                f"opset {imp.version} of domain {domain or 'ai.onnx'!r} is outside {low}..{high}",
                "export with a target opset in range",
            )
    if "" not in seen_domains:
        bad(
            "ONNX_OPSET", "the default domain (ai.onnx) is not imported", "import the default opset"
        )
    if len(model.training_info):
        bad("ONNX_TRAINING", "the model carries training info", "export an inference-only graph")
    for prop in model.metadata_props:
        key = prop.key.lower()
        if key == "ort_config" or key.startswith(("ort.", "ort_", "onnxruntime")):
            bad(
                "ONNX_METADATA",
                f"metadata key {prop.key!r} could configure the runtime",
                "remove runtime configuration from the model's metadata",
            )

    graph = model.graph
    if len(graph.sparse_initializer):
        bad("ONNX_SPARSE", "the graph has sparse initializers", "store dense initializers")
    if len(graph.node) > C.MAX_ONNX_NODES:
        bad(
            "ONNX_TOO_LARGE",
            f"the graph has {len(graph.node)} nodes, over the cap of {C.MAX_ONNX_NODES}",
            "linear graphs need a handful of nodes",
        )
    for where, tensor in _tensors_with_location(model):
        if tensor.data_location == EXTERNAL or len(tensor.external_data):  # type: ignore[attr-defined]
            bad(
                "ONNX_EXTERNAL_DATA",
                f"{where} references external data",
                "embed all tensor data in the .onnx file",
            )
    for node in graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        label = node.name or node.op_type
        if len(node.input) > C.MAX_ONNX_NODE_INPUTS or len(node.output) > C.MAX_ONNX_NODE_INPUTS:
            bad(
                "ONNX_COST",
                f"node {label!r} has {len(node.input)} inputs and {len(node.output)} outputs, over the cap of {C.MAX_ONNX_NODE_INPUTS}",
                COST_HINTS["ONNX_COST"],
            )
        # attributes first: a control-flow op (If, Loop) is refused for its subgraph
        for attr in node.attribute:
            if attr.type in (ATTR_GRAPH, ATTR_GRAPHS) or attr.HasField("g") or len(attr.graphs):
                bad(
                    "ONNX_SUBGRAPH",
                    f"node {label!r} has graph-valued attribute {attr.name!r}",
                    "subgraphs are not allowed",
                )
            if (
                attr.type in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS)
                or attr.HasField("sparse_tensor")
                or len(attr.sparse_tensors)
            ):
                bad(
                    "ONNX_SPARSE",
                    f"node {label!r} has sparse-tensor attribute {attr.name!r}",
                    "use dense tensors",
                )
            if attr.ref_attr_name:
                bad(
                    "ONNX_FUNCTION",
                    f"node {label!r} has a reference attribute {attr.name!r}",
                    "reference attributes belong to functions",
                )
        if node.op_type == "ZipMap":
            bad(
                "ONNX_OP",
                f"node {label!r} is ZipMap (sequence of maps output)",
                "export classifiers with zipmap=False",
            )
        elif domain not in ALLOWED_OPS:
            bad(
                "ONNX_OP",
                f"node {label!r} uses operator {node.op_type!r} of domain {node.domain!r}",
                "use only ai.onnx and ai.onnx.ml operators",
            )
        elif node.op_type not in ALLOWED_OPS[domain]:
            bad(
                "ONNX_OP",
                f"node {label!r} uses operator {domain or 'ai.onnx'}::{node.op_type}, not on the allowlist",
                "see the spec's operator allowlist",
            )
        elif domain not in seen_domains:
            bad(
                "ONNX_OPSET",
                f"node {label!r} uses domain {node.domain!r}, which is not imported",
                "import the domain once",
            )
    role = role_for_file(file)
    _check_io(graph, role, hidden_size, n_classes, bad)
    if problems:
        return None, problems
    try:
        if engine == "onnx":
            import onnx

            onnx.checker.check_model(model)
        else:
            check_model(model)
    except Exception as exc:  # onnx raises ValidationError and others; ours CheckFailure
        bad(
            "ONNX_PARSE",
            f"fails the ONNX checker: {str(exc).splitlines()[0][:300]}",
            "re-export the graph",
        )
        return None, problems
    if hidden_size is not None and n_classes is not None:
        # bounded work before any work: static shapes and cost, before any session exists
        shapes = {
            name: ((-1, hidden_size) if role.name == "scaler" else (-1, n_classes))
            if rank == 2
            else (-1,)
            for name, _, rank in role.outputs
        }
        try:
            check_cost(
                model,
                input_name=role.inputs[0][0],
                outputs=shapes,
                row_local=(C.SCALER_OUTPUT,)
                if role.name == "scaler"
                else (C.CLASSIFIER_PROBABILITIES,),
                hidden_size=hidden_size,
                n_classes=n_classes,
                width_code="HIDDEN_SIZE_MISMATCH" if role.name == "scaler" else "DOMAIN_MISMATCH",
            )
        except CostError as exc:
            bad(exc.code, exc.message, COST_HINTS[exc.code])
            return None, problems
    return model, problems


def session_problems(model: Any, *, file: str, hidden_size: int, n_classes: int) -> list[Problem]:
    """What creating an onnxruntime session for the checked ``model`` would report, predicted
    statically (``onnx_check.predict_session``): ``[]`` or one ``ONNX_SESSION`` problem."""
    role = role_for_file(file)
    try:
        shapes = check_cost(
            model,
            input_name=role.inputs[0][0],
            outputs={},
            hidden_size=hidden_size,
            n_classes=n_classes,
        )
        predict_session(model, shapes)
    except Exception as exc:  # CheckFailure, CostError; anything else: not predictable, refused
        if not isinstance(exc, (CheckFailure, CostError)):
            exc = CheckFailure(f"cannot be predicted ({type(exc).__name__}: {exc})")
        return [
            Problem(
                code="ONNX_SESSION",
                file=file,
                message=f"onnxruntime would refuse the graph: {str(exc).splitlines()[0][:300]}",
                hint="re-export the graph",
            )
        ]
    return []


def _check_io(
    graph: object, role: GraphRole, hidden_size: int | None, n_classes: int | None, report: Report
) -> None:
    initializer_names = {t.name for t in graph.initializer}  # type: ignore[attr-defined]
    inputs = [vi for vi in graph.input if vi.name not in initializer_names]  # type: ignore[attr-defined]
    outputs = list(graph.output)  # type: ignore[attr-defined]
    want_in = [name for name, _ in role.inputs]
    want_out = [name for name, _, _ in role.outputs]
    got_in = [vi.name for vi in inputs]
    got_out = [vi.name for vi in outputs]
    if got_in != want_in:
        report(
            "ONNX_IO",
            f"{role.name} graph inputs are {got_in}, expected {want_in}",
            "rename the graph inputs",
        )
        return
    if got_out != want_out:
        report(
            "ONNX_IO",
            f"{role.name} graph outputs are {got_out}, expected {want_out}",
            "rename the outputs and drop extra ones",
        )
        return
    for vi, (name, elem) in zip(inputs, role.inputs, strict=True):
        _check_value(vi, name, elem, 2, hidden_size, "hidden size", role, report)
    for vi, (name, elem, rank) in zip(outputs, role.outputs, strict=True):
        expected_last: int | None = None
        what = ""
        if name == C.SCALER_OUTPUT and role.name == "scaler":
            expected_last, what = hidden_size, "hidden size"
        elif name == C.CLASSIFIER_PROBABILITIES:
            expected_last = n_classes
            what = "number of domains" if role.name == "router" else "2 classes"
        _check_value(vi, name, elem, rank, expected_last if rank == 2 else None, what, role, report)


def _check_value(
    vi: object,
    name: str,
    elem: int,
    rank: int,
    last: int | None,
    what: str,
    role: GraphRole,
    report: Report,
) -> None:
    kind = vi.type.WhichOneof("value")  # type: ignore[attr-defined]
    if kind != "tensor_type":
        report(
            "ONNX_IO",
            f"{role.name} graph value {name!r} is a {kind}, expected a tensor",
            "sequence and map values are not allowed (zipmap=False)",
        )
        return
    tt = vi.type.tensor_type  # type: ignore[attr-defined]
    if tt.elem_type != elem:
        report(
            "ONNX_IO",
            f"{role.name} graph value {name!r} has element type {tt.elem_type}, expected {_TYPE_NAMES[elem]}",
            "see the spec's graph interface table",
        )
        return
    if not tt.HasField("shape"):
        report(
            "ONNX_IO",
            f"{role.name} graph value {name!r} has no shape",
            f"declare a rank-{rank} shape",
        )
        return
    dims = _dims(vi)
    if len(dims) != rank:
        report(
            "ONNX_IO",
            f"{role.name} graph value {name!r} has rank {len(dims)}, expected {rank}",
            "see the spec's graph interface table",
        )
        return
    if dims[0] not in (None,):
        report(
            "ONNX_IO",
            f"{role.name} graph value {name!r} has a fixed batch dimension {dims[0]}",
            "leave the first dimension symbolic",
        )
    if rank == 2 and last is not None and dims[1] != last:
        report(
            "HIDDEN_SIZE_MISMATCH" if what == "hidden size" else "DOMAIN_MISMATCH",
            f"{role.name} graph value {name!r} has last dimension {dims[1]}, the manifest's {what} is {last}",
            "the graph must match the manifest",
        )
