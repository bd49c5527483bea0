"""Static shapes and cost bounds of a bundle graph, before any session exists.

:func:`check_cost` walks the nodes of a ``ModelProto`` that already passed
the structural profile (allowlisted operators, no subgraphs) and computes the
exact shape of every value from the declared input shape ``[N, H]`` alone:
``N`` (the batch) is symbolic, every other dimension must be known
statically. From those shapes it bounds, per graph:

* parameters: elements of initializers, ``Constant`` values and list
  attributes (tree ensembles), against the hidden size and the class count;
* work per input row: multiply-adds of ``MatMul``/``Gemm``/linear
  classifiers, tree nodes, one operation per element of every other node;
* memory per input row: elements of all row-dependent values;
* memory of values that do not depend on the batch.

A graph whose shapes cannot be derived statically (a reshape to a computed
shape, a broadcast against the batch dimension, an unsupported attribute
form) is refused: the bound would be a guess. The graph outputs must have
exactly the shapes of the role: ``[N, H]`` for the scaler, ``[N]`` and
``[N, classes]`` for classifiers, so that a constant output of a fixed shape
(which passes a smoke run on two rows and fails on one) is refused here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

from asa_format import constants as C
from asa_format.errors import ErrorCode
from asa_format.graphs.shapes import (
    CLASSIFIERS,
    FLOAT_TYPES,
    HANDLERS,
    INT_TYPES,
    KEEPS_VALUES,
    MAX_KNOWN_VALUES,
    CostError,
    Shape,
    Value,
    attr,
    batch_first,
    elements,
    mixes_rows,
    shape_error,
    show,
)
from asa_format.graphs.wire import array_of

__all__ = ["Budget", "CostError", "budget_for", "check_cost"]


@dataclass(frozen=True)
class Budget:
    params: int  # elements of initializers, constants and list attributes
    row_flops: int  # operations per input row
    row_elements: int  # elements of row-dependent values, per input row
    fixed_elements: int  # elements of values that do not depend on the batch


def budget_for(hidden_size: int, n_classes: int) -> Budget:
    """The bounds for a graph of a bundle with this hidden size and class count.

    ``U = (H + 2) * (K + 2)`` is a little more than what a scaler plus a linear
    classifier need; tree ensembles get a fixed allowance of ``2**20``.
    """
    unit = (hidden_size + 2) * (max(n_classes, 2) + 2)
    return Budget(
        params=4 * unit + C.ONNX_COST_ALLOWANCE,
        row_flops=8 * unit + C.ONNX_COST_ALLOWANCE,
        row_elements=8 * unit + C.ONNX_COST_ALLOWANCE,
        fixed_elements=4 * unit + C.ONNX_COST_ALLOWANCE,
    )


class _Walker:
    def __init__(self, model: Any, input_name: str, hidden_size: int, opset: int) -> None:
        self.model = model
        self.opset = opset
        self.env: dict[str, Value] = {input_name: Value((-1, hidden_size), data=True)}
        self.params = 0
        self.row_flops = 0
        self.row_elements = 0
        self.fixed_elements = 0

    # -- constants -------------------------------------------------------------
    def tensor(self, tensor: Any, where: str) -> Value:
        dims = tuple(int(d) for d in tensor.dims)
        if any(d < 0 for d in dims):
            raise shape_error(f"{where} has a negative dimension")
        n = prod(dims)
        self.params += n
        values: list[int] | None = None
        bound: tuple[int, int] | None = None
        integer = tensor.data_type not in FLOAT_TYPES
        if tensor.data_type in INT_TYPES and n <= C.ONNX_COST_ALLOWANCE:
            try:
                flat = array_of(tensor).reshape(-1)
            except (ValueError, TypeError) as exc:
                raise shape_error(f"{where} cannot be read: {exc}") from exc
            if flat.size != n:
                raise shape_error(f"{where} holds {flat.size} values for dims {list(dims)}")
            if n:
                bound = (int(flat.min()), int(flat.max()))
            if n <= MAX_KNOWN_VALUES:
                values = [int(v) for v in flat]
        return Value(dims, values, bound=bound, integer=integer)

    # -- the walk --------------------------------------------------------------
    def run(self) -> None:
        graph = self.model.graph
        for init in graph.initializer:
            self.env[init.name] = self.tensor(init, f"initializer {init.name!r}")
        for node in graph.node:
            label = repr(node.name or node.op_type)
            for a in node.attribute:  # list attributes hold parameters too (trees)
                self.params += len(a.floats) + len(a.ints) + len(a.strings)
            ins: list[Value | None] = []
            for name in node.input:
                if not name:
                    ins.append(None)
                    continue
                if name not in self.env:
                    raise shape_error(
                        f"node {label} reads {name!r}, which nothing computed before it"
                    )
                ins.append(self.env[name])
            handler = HANDLERS.get(node.op_type)
            if handler is None:
                raise shape_error(f"node {label}: no static shape rule for {node.op_type}")
            if node.op_type == "Div" and ins and ins[0] is not None and ins[0].integer:
                raise shape_error(
                    f"node {label}: integer division can fail at run time (a zero divisor)"
                )
            outs, flops = handler(self, node, ins, label)
            first = next((v for v in ins if v is not None), None)
            for k, out in enumerate(outs):
                if node.op_type == "Cast":
                    out.integer = int(attr(node, "to", 0)) not in FLOAT_TYPES
                    out.bound = first.bound if first is not None and out.integer else None
                elif node.op_type in ("ArgMax", "Shape") or (
                    node.op_type in CLASSIFIERS and k == 0
                ):
                    out.integer = True
                elif node.op_type in CLASSIFIERS or node.op_type == "Constant":
                    pass  # set by the handler
                elif first is not None:
                    out.integer = first.integer
                    if node.op_type in KEEPS_VALUES or (node.op_type == "Gather" and k == 0):
                        out.bound = out.bound or first.bound
            dep = [v for v in ins if v is not None and v.data]
            local = all(v.local and batch_first(v.shape) for v in dep)
            if local and dep:
                local = not mixes_rows(self, node, ins, label)
            for out in outs:
                out.data = bool(dep) and node.op_type != "Shape"
                out.local = local and (not out.data or batch_first(out.shape))
            present = [o for o in node.output if o]
            if len(outs) < len(present):
                raise shape_error(
                    f"node {label} has {len(present)} outputs, {node.op_type} makes {len(outs)}"
                )
            for name, value in zip(node.output, outs, strict=False):
                if not name:
                    continue
                row, fixed = elements(value.shape)
                self.row_elements += row
                self.fixed_elements += fixed
                self.env[name] = value
            self.row_flops += flops


def check_cost(
    model: Any,
    *,
    input_name: str,
    outputs: Mapping[str, Shape],
    row_local: tuple[str, ...] = (),
    hidden_size: int,
    n_classes: int,
    width_code: ErrorCode = "ONNX_IO",
) -> dict[str, Shape]:
    """Raise :class:`CostError` unless the graph's shapes are static and its cost is in budget;
    return the shape of every value.

    ``outputs`` maps each graph output to its required shape (``-1`` = the batch);
    an output whose only wrong dimension is the last is reported as ``width_code``.
    Each output in ``row_local`` must compute row ``i`` from input row ``i`` only.
    """
    graph = model.graph
    for node in graph.node:
        if len(node.input) > C.MAX_ONNX_NODE_INPUTS or len(node.output) > C.MAX_ONNX_NODE_INPUTS:
            raise CostError(
                "ONNX_COST",
                f"node {node.name or node.op_type!r} has {len(node.input)} inputs and {len(node.output)} outputs, "
                f"over the cap of {C.MAX_ONNX_NODE_INPUTS}",
            )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    budget = budget_for(hidden_size, n_classes)
    walker = _Walker(model, input_name, hidden_size, opset)
    walker.run()
    for what, got, cap in (
        ("parameters (elements)", walker.params, budget.params),
        ("operations per input row", walker.row_flops, budget.row_flops),
        ("value elements per input row", walker.row_elements, budget.row_elements),
        ("elements of batch-independent values", walker.fixed_elements, budget.fixed_elements),
    ):
        if got > cap:
            raise CostError(
                "ONNX_COST",
                f"the graph needs {got} {what}, over the budget of {cap} for its hidden size and classes",
            )
    for name, shape in outputs.items():
        value = walker.env.get(name)
        if value is None:
            raise shape_error(f"no node computes the output {name!r}")
        if value.shape != shape:
            same_rows = len(value.shape) == len(shape) >= 2 and value.shape[:-1] == shape[:-1]
            raise CostError(
                width_code if same_rows else "ONNX_IO",
                f"output {name!r} has shape {show(value.shape)} for an input [N, {hidden_size}], expected {show(shape)}",
            )
        if name in row_local and not value.local:
            raise shape_error(
                f"output {name!r} combines values of different input rows (a decision must depend on its row alone)"
            )
    return {name: value.shape for name, value in walker.env.items()}
