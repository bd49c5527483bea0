"""Builders of hostile and generated decision graphs (router, probe, scaler roles).

Shared by tests/test_hostile_graphs.py and tests/test_contract.py. Every
builder returns serialized ONNX bytes in the role's interface, so a graph
reaches the profile's cost and shape checks rather than the interface checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from asa_format import constants as C
from asa_format.storage.writer import save_bundle
from asa_format.testing import make_test_contents

__all__ = ["classifier_model", "probe_pair", "router_softmax", "save_with", "sigmoid_norm"]


def classifier_model(
    nodes: Sequence[Any], inits: dict[str, np.ndarray], hidden: int, classes: int, opset: int = 13
) -> bytes:
    graph = helper.make_graph(
        list(nodes),
        "hostile",
        [helper.make_tensor_value_info(C.CLASSIFIER_INPUT, TensorProto.DOUBLE, ["N", hidden])],
        [
            helper.make_tensor_value_info(C.CLASSIFIER_LABEL, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(
                C.CLASSIFIER_PROBABILITIES, TensorProto.DOUBLE, ["N", classes]
            ),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hostile"
    )
    model.ir_version = 8
    return bytes(model.SerializeToString(deterministic=True))


def _label(src: str) -> Any:
    return helper.make_node("ArgMax", [src], [C.CLASSIFIER_LABEL], axis=1, keepdims=0)


def router_softmax(w: np.ndarray, b: np.ndarray, extra: Sequence[Any] = (), extra_inits: dict[str, np.ndarray] | None = None,
                   scores: str = "s") -> bytes:  # fmt: skip
    """softmax(x @ W + b); ``extra`` nodes may redefine what feeds the Softmax via ``scores``."""
    nodes = [
        helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["s"]),
        *extra,
        helper.make_node("Softmax", [scores], [C.CLASSIFIER_PROBABILITIES], axis=1),
        _label(C.CLASSIFIER_PROBABILITIES),
    ]
    return classifier_model(nodes, {"W": w, "b": b, **(extra_inits or {})}, w.shape[0], w.shape[1])


def sigmoid_norm(w: np.ndarray, b: np.ndarray) -> bytes:
    """The skl2onnx binary form: sigmoid(s) / sum(|sigmoid(s)|) over two columns."""
    nodes = [
        helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["t"]),
        helper.make_node("Abs", ["t"], ["a"]),
        helper.make_node("ReduceSum", ["a", "axis"], ["n"], keepdims=1),
        helper.make_node("Div", ["t", "n"], ["p"]),
        helper.make_node("Cast", ["p"], [C.CLASSIFIER_PROBABILITIES], to=TensorProto.DOUBLE),
        _label("p"),
    ]
    return classifier_model(
        nodes, {"W": w, "b": b, "axis": np.array([1], dtype=np.int64)}, w.shape[0], 2
    )


def probe_pair(w: np.ndarray, b: float, exp_trick: bool = False, shift: float = 0.0) -> bytes:
    """[1 - sigmoid(s), sigmoid(s)] with s = x.w + b; ``exp_trick`` uses ``s + shift + exp(s) * 0``
    instead (NaN once exp overflows, which an evaluator may do early)."""
    nodes = [
        helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["s0"]),
    ]
    inits = {"w": w.reshape(-1, 1).astype(np.float64), "b": np.array([b]), "one": np.array([1.0])}
    if exp_trick:
        nodes += [
            helper.make_node("Exp", ["s0"], ["e"]),
            helper.make_node("Mul", ["e", "zero"], ["ez"]),
            helper.make_node("Add", ["s0", "shift"], ["s1"]),
            helper.make_node("Add", ["s1", "ez"], ["s"]),
        ]
        inits |= {"zero": np.array([0.0]), "shift": np.array([shift])}
    else:
        nodes.append(helper.make_node("Identity", ["s0"], ["s"]))
    nodes += [
        helper.make_node("Sigmoid", ["s"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], [C.CLASSIFIER_PROBABILITIES], axis=1),
        _label(C.CLASSIFIER_PROBABILITIES),
    ]
    return classifier_model(nodes, inits, w.shape[0], 2)


def save_with(path: Path, *, hidden: int = 8, domains: Sequence[str] = ("a", "b"), router: bytes | None = None,
              probes: dict[str, bytes] | None = None, scaler: bytes | None = None, **kwargs: Any) -> Path:  # fmt: skip
    """A test bundle with some graphs replaced (the manifest lists their hashes)."""
    contents = make_test_contents(hidden_size=hidden, domains=domains, **kwargs)
    changes: dict[str, Any] = {}
    if router is not None:
        changes["router"] = router
    if probes is not None:
        changes["probes"] = {**contents.probes, **probes}
    if scaler is not None:
        changes["scaler"] = scaler
    return save_bundle(dataclasses.replace(contents, **changes), path, check=False)


def checked(data: bytes) -> bytes:
    """``data`` after the ONNX checker (a hostile graph must still be valid ONNX)."""
    onnx.checker.check_model(onnx.load_from_string(data))
    return data
