"""Small, valid bundles built from explicit linear parameters (for tests and examples).

The graphs are written directly with ``onnx.helper`` (no scikit-learn), in
the profile's interface: a float32 Sub/Div scaler, a float64
MatMul/Add/Softmax router and float64 MatMul/Add/Sigmoid probes. They show
that a second producer can write conforming graphs, and let tests force any
decision (e.g. ``probe_bias=+20`` makes p ~ 1 and the gate +1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from asa_format import constants as C
from asa_format.format.manifest import ModelBinding, Provenance, Steering
from asa_format.storage.writer import BundleContents, save_bundle

__all__ = [
    "linear_probe_graph",
    "linear_router_graph",
    "make_test_bundle",
    "make_test_contents",
    "scaler_graph",
]

_OPSET = 13
_IR_VERSION = 8


def _model_bytes(graph: object) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph,  # type: ignore[arg-type]
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name=C.PRODUCER_NAME,
        producer_version="testing",
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString(deterministic=True))


def scaler_graph(mean: np.ndarray, scale: np.ndarray) -> bytes:
    """``x = (hidden - mean) / scale`` in float32."""
    from onnx import TensorProto, helper, numpy_helper

    h = int(mean.shape[0])
    graph = helper.make_graph(
        [
            helper.make_node("Sub", [C.SCALER_INPUT, "mean"], ["centered"]),
            helper.make_node("Div", ["centered", "scale"], [C.SCALER_OUTPUT]),
        ],
        "scaler",
        [helper.make_tensor_value_info(C.SCALER_INPUT, TensorProto.FLOAT, ["N", h])],
        [helper.make_tensor_value_info(C.SCALER_OUTPUT, TensorProto.FLOAT, ["N", h])],
        [
            numpy_helper.from_array(mean.astype(np.float32), "mean"),
            numpy_helper.from_array(scale.astype(np.float32), "scale"),
        ],
    )
    return _model_bytes(graph)


def linear_router_graph(weights: np.ndarray, bias: np.ndarray) -> bytes:
    """``probabilities = softmax(x @ W + b)``, ``label = argmax``; W is [H, D]."""
    from onnx import TensorProto, helper, numpy_helper

    h, d = (int(s) for s in weights.shape)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["scores"]),
            helper.make_node("Softmax", ["scores"], [C.CLASSIFIER_PROBABILITIES], axis=1),
            helper.make_node("ArgMax", ["scores"], [C.CLASSIFIER_LABEL], axis=1, keepdims=0),
        ],
        "router",
        [helper.make_tensor_value_info(C.CLASSIFIER_INPUT, TensorProto.DOUBLE, ["N", h])],
        [
            helper.make_tensor_value_info(C.CLASSIFIER_LABEL, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(C.CLASSIFIER_PROBABILITIES, TensorProto.DOUBLE, ["N", d]),
        ],
        [
            numpy_helper.from_array(weights.astype(np.float64), "W"),
            numpy_helper.from_array(bias.astype(np.float64), "b"),
        ],
    )
    return _model_bytes(graph)


def linear_probe_graph(weights: np.ndarray, bias: float) -> bytes:
    """``p = sigmoid(x @ w + b)``, ``probabilities = [1 - p, p]``; w is [H]."""
    from onnx import TensorProto, helper, numpy_helper

    h = int(weights.shape[0])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [C.CLASSIFIER_INPUT, "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["score"]),
            helper.make_node("Sigmoid", ["score"], ["p"]),
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], [C.CLASSIFIER_PROBABILITIES], axis=1),
            helper.make_node(
                "ArgMax", [C.CLASSIFIER_PROBABILITIES], [C.CLASSIFIER_LABEL], axis=1, keepdims=0
            ),
        ],
        "probe",
        [helper.make_tensor_value_info(C.CLASSIFIER_INPUT, TensorProto.DOUBLE, ["N", h])],
        [
            helper.make_tensor_value_info(C.CLASSIFIER_LABEL, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(C.CLASSIFIER_PROBABILITIES, TensorProto.DOUBLE, ["N", 2]),
        ],
        [
            numpy_helper.from_array(weights.astype(np.float64).reshape(h, 1), "w"),
            numpy_helper.from_array(np.array([bias], dtype=np.float64), "b"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float64), "one"),
        ],
    )
    return _model_bytes(graph)


def _unit(rng: np.random.Generator, h: int) -> np.ndarray:
    v = rng.standard_normal(h)
    return (v / np.linalg.norm(v)).astype(np.float32)


def make_test_contents(
    *,
    hidden_size: int = 16,
    domains: Sequence[str] = ("math", "search", "code"),
    layer: int = 1,
    alpha: float = 4.0,
    tau: float = 0.6,
    beta: float = 0.3,
    policy: str = C.POLICY_PREFILL_LAST_TOKEN,
    probe_bias: float | Mapping[str, float] = 0.0,
    probe_scale: float = 1.0,
    router_scale: float = 1.0,
    route_to: str | None = None,
    missing_probes: Sequence[str] = (),
    model_type: str | None = "llama",
    model_id: str | None = None,
    num_layers: int | None = None,
    no_probe_probability: float = 0.5,
    seed: int = 0,
) -> BundleContents:
    """Contents of a valid bundle with seeded random linear parameters.

    ``probe_bias`` (one value or per domain) shifts each probe's score, so
    ``+20`` forces p ~ 1 (gate +1) and ``-20`` forces p ~ 0 (gate -1) when
    ``probe_scale`` is 0. ``route_to`` makes the router pick that domain for
    every input.
    """
    rng = np.random.default_rng(seed)
    h, names = hidden_size, list(domains)
    mean = rng.standard_normal(h).astype(np.float32) * 0.1
    scale = (0.5 + rng.random(h)).astype(np.float32)
    weights = rng.standard_normal((h, len(names))) * router_scale / np.sqrt(h)
    bias = np.zeros(len(names))
    if route_to is not None:
        weights[:] = 0.0
        bias[names.index(route_to)] = 10.0
    probes: dict[str, bytes] = {}
    for name in names:
        if name in missing_probes:
            continue
        b = probe_bias[name] if isinstance(probe_bias, Mapping) else probe_bias
        w = rng.standard_normal(h) * probe_scale / np.sqrt(h)
        probes[name] = linear_probe_graph(w, float(b))
    vectors = {name: _unit(rng, h) for name in [*names, C.GLOBAL_VECTOR]}
    return BundleContents(
        model=ModelBinding(hidden_size=h, id=model_id, type=model_type, num_layers=num_layers),
        layer=layer,
        steering=Steering(
            alpha=alpha,
            tau=tau,
            beta=beta,
            policy=policy,
            no_probe_probability=no_probe_probability,
        ),
        domains=names,
        vectors=vectors,
        scaler=scaler_graph(mean, scale),
        router=linear_router_graph(weights, bias),
        probes=probes,
        provenance=Provenance(
            source="other", metadata={"generator": "asa_format.testing", "seed": seed}
        ),
    )


def make_test_bundle(destination: str | os.PathLike[str], **kwargs: object) -> Path:
    """Write :func:`make_test_contents` (same keyword arguments) to ``destination``.

    If ``destination`` is an existing directory that is not a bundle (no
    manifest), the bundle is written to a new ``bundle-<n>`` directory in it.
    """
    dest = Path(destination)
    if dest.is_dir() and not (dest / C.MANIFEST_FILE).exists():
        n = 0
        while (dest / f"bundle-{n}").exists():
            n += 1
        dest = dest / f"bundle-{n}"
    return save_bundle(make_test_contents(**kwargs), dest)  # type: ignore[arg-type]
