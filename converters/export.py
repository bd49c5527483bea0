"""Export of the decision graphs (scaler, router, probes) to ONNX through skl2onnx.

The graphs follow the asa-bundle graph contract:

* ``scaler.onnx``: input ``hidden`` float32 ``[N, H]`` -> output ``x`` float32
  ``[N, H]``, with the arithmetic of the scikit-learn version that wrote the
  legacy scaler (see :mod:`asa_format.converters.semantics`): up to 1.7.x
  ``Cast(double) -> Sub -> Cast(float) -> Cast(double) -> Div -> Cast(float)``
  (float64 steps rounded to float32 like numpy's in-place ops), from 1.8.0 on
  ``Sub -> Div`` on float32-rounded statistics.
* ``router.onnx`` / ``probe_<i>.onnx``: input ``x`` float64 ``[N, H]`` ->
  ``label`` int64 ``[N]`` and ``probabilities`` float64 ``[N, K]``. Router
  columns follow the domain order and ``label`` is the domain index.

Graphs are built by converting freshly constructed estimators (fitted
attributes set from the arrays) with skl2onnx, then normalised so that the
same input gives byte-identical output: fixed graph names, producer fields
and empty doc strings, symbolic batch dimension ``N``, no ZipMap, no local
functions, no external data. The float64-then-round scaler variant is a
post-edit of skl2onnx's ``StandardScaler`` graph (``div`` option): ``Cast``
nodes are inserted around its ``Sub`` and ``Div``.

Router probabilities are the softmax of the decision scores (or the sigmoid
pair for two domains). Their argmax (first index on ties) is the argmax of
``decision_function``, which is all the legacy decision uses; for a
one-vs-rest router this differs from its ``predict_proba`` values but not
from its decision, and avoids the ties a saturated sigmoid would create.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from asa_format.constants import (
    CLASSIFIER_INPUT,
    CLASSIFIER_LABEL,
    CLASSIFIER_PROBABILITIES,
    PRODUCER_NAME,
    SCALER_INPUT,
    SCALER_OUTPUT,
)
from asa_format.converters.legacy_model import LegacyLogisticRegression, LegacyScaler
from asa_format.converters.semantics import (
    probe_uses_softmax,
    router_class_to_domain,
    scaler_uses_float32,
)
from asa_format.errors import ConversionError, LegacyFormatError

__all__ = [
    "BATCH_DIM",
    "EXPORT_OP_TYPES",
    "TARGET_OPSET",
    "export_fitted_classifier",
    "export_fitted_scaler",
    "export_probe",
    "export_router",
    "export_scaler",
    "graph_op_types",
]

# Highest opsets skl2onnx may use; it emits the lowest sufficient ones
# (skl2onnx 1.20: default domain 13, ai.onnx.ml 1 for these graphs).
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
BATCH_DIM = "N"
# Operators the exported scaler / logistic-regression graphs use: (domain, op_type).
EXPORT_OP_TYPES: frozenset[tuple[str, str]] = frozenset(
    {
        ("", "Cast"),
        ("", "Sub"),
        ("", "Div"),
        ("", "MatMul"),
        ("", "Add"),
        ("", "ArgMax"),
        ("", "Softmax"),
        ("", "Sigmoid"),
        ("", "Abs"),
        ("", "ReduceSum"),
        ("", "Reshape"),
        ("ai.onnx.ml", "ArrayFeatureExtractor"),
    }
)

_GRAPH_NAMES = {"scaler": "asa_scaler", "router": "asa_router", "probe": "asa_probe"}


def _skl2onnx() -> Any:
    try:
        import skl2onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConversionError(
            "skl2onnx is not installed",
            code="EXPORT_FAILED",
            hint="install the converter extra: pip install 'asa-format[convert]'",
        ) from exc
    return skl2onnx


def _producer_version() -> str:
    return f"skl2onnx-{_skl2onnx().__version__}"


def graph_op_types(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """``(domain, op_type)`` of every node of ``model``."""
    return {(n.domain if n.domain != "ai.onnx" else "", n.op_type) for n in model.graph.node}


def _finite(name: str, arr: np.ndarray, file: str | None) -> None:
    if not np.all(np.isfinite(arr)):
        raise LegacyFormatError(
            f"{name} contains NaN or infinite values",
            code="LEGACY_CONTENT",
            file=file,
            hint="the legacy estimator is corrupt; re-fit it",
        )


def _convert(
    est: Any,
    inputs: list[tuple[str, Any]],
    outputs: list[tuple[str, Any]],
    options: dict[str, Any] | None,
) -> onnx.ModelProto:
    skl2onnx = _skl2onnx()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model: onnx.ModelProto = skl2onnx.convert_sklearn(
                est,
                initial_types=inputs,
                final_types=outputs or None,
                options={id(est): options} if options else None,
                target_opset=dict(TARGET_OPSET),
            )
            return model
    except Exception as exc:  # skl2onnx raises many unrelated types
        raise ConversionError(
            f"skl2onnx could not convert {type(est).__name__}: {exc}",
            code="EXPORT_FAILED",
            hint="only estimators supported by skl2onnx with predict_proba can be exported",
        ) from exc


def _set_batch_dim(value_info: onnx.ValueInfoProto) -> None:
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) > 0:
        dims[0].ClearField("dim_value")
        dims[0].dim_param = BATCH_DIM


def _finalize(model: onnx.ModelProto, kind: str) -> bytes:
    """Normalise names, producer and doc fields; check; serialise deterministically."""
    model.producer_name = PRODUCER_NAME
    model.producer_version = _producer_version()
    model.domain = ""
    model.model_version = 0
    model.doc_string = ""
    del model.metadata_props[:]
    del model.functions[:]
    graph = model.graph
    graph.name = _GRAPH_NAMES[kind]
    graph.doc_string = ""
    del graph.value_info[:]
    for node in graph.node:
        node.doc_string = ""
    for vi in list(graph.input) + list(graph.output):
        vi.doc_string = ""
        _set_batch_dim(vi)
    used = {n.domain for n in graph.node} | {""}
    versions: dict[str, int] = {}
    for imp in model.opset_import:  # each domain once, at its highest version
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in used:
            versions[domain] = max(versions.get(domain, 0), imp.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    for init in graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:  # pragma: no cover - never produced
            raise ConversionError("exported graph has external data", code="EXPORT_FAILED")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # pragma: no cover - would be a converter bug
        raise ConversionError(
            f"exported {kind} graph is not valid ONNX: {exc}", code="EXPORT_FAILED"
        ) from exc
    return bytes(model.SerializeToString(deterministic=True))


# Scaler ---------------------------------------------------------------------------


def _fresh_scaler(scaler: LegacyScaler) -> Any:
    from sklearn.preprocessing import StandardScaler

    h = int(scaler.n_features_in)
    est = StandardScaler(with_mean=bool(scaler.with_mean), with_std=bool(scaler.with_std))
    mean = None if scaler.mean is None else np.asarray(scaler.mean, dtype=np.float64)
    scale = None if scaler.scale is None else np.asarray(scaler.scale, dtype=np.float64)
    for name, arr in (("scaler mean_", mean), ("scaler scale_", scale)):
        if arr is not None:
            if arr.shape != (h,):
                raise LegacyFormatError(
                    f"{name} has shape {arr.shape}, expected [{h}]",
                    code="LEGACY_CONTENT",
                    file="scaler.pkl",
                    hint="mean_ and scale_ must have one entry per hidden feature",
                )
            _finite(name, arr, "scaler.pkl")
    if scale is not None and np.any(scale == 0):
        raise LegacyFormatError(
            "scaler scale_ contains zeros",
            code="LEGACY_CONTENT",
            file="scaler.pkl",
            hint="a fitted StandardScaler replaces zero scales by 1; the pickle is corrupt",
        )
    est.mean_ = mean if est.with_mean else None
    est.scale_ = scale if est.with_std else None
    est.var_ = None if scale is None else scale * scale
    est.n_features_in_ = h
    est.n_samples_seen_ = np.int64(1)
    return est


def _insert_after(model: onnx.ModelProto, op_type: str, to: list[int], tag: str) -> None:
    """Follow every ``op_type`` node's output by a chain of Casts to ``to`` types."""
    graph = model.graph
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.append(node)
        if node.op_type != op_type:
            continue
        final = node.output[0]
        current = f"{final}_{tag}_raw"
        node.output[0] = current
        for i, dtype in enumerate(to):
            out = final if i == len(to) - 1 else f"{final}_{tag}_{i}"
            new_nodes.append(
                helper.make_node("Cast", [current], [out], name=f"{node.name}_{tag}_{i}", to=dtype)
            )
            current = out
    del graph.node[:]
    graph.node.extend(new_nodes)


def export_scaler(scaler: LegacyScaler) -> bytes:
    """``scaler.onnx`` reproducing the writing version's ``transform`` bit for bit."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    est = _fresh_scaler(scaler)
    h = int(scaler.n_features_in)
    options = {"div": "div"}
    if scaler_uses_float32(scaler) or (est.mean_ is None and est.scale_ is None):
        model = _convert(
            est,
            [(SCALER_INPUT, FloatTensorType([None, h]))],
            [(SCALER_OUTPUT, FloatTensorType([None, h]))],
            options,
        )
        return _finalize(model, "scaler")
    # float64 arithmetic rounded to float32 after each in-place step.
    inner_in, inner_out = f"{SCALER_INPUT}_f64", f"{SCALER_OUTPUT}_f64"
    model = _convert(
        est,
        [(inner_in, DoubleTensorType([None, h]))],
        [(inner_out, DoubleTensorType([None, h]))],
        options,
    )
    _insert_after(model, "Sub", [TensorProto.FLOAT, TensorProto.DOUBLE], "round")
    graph = model.graph
    cast_in = helper.make_node(
        "Cast", [SCALER_INPUT], [inner_in], name="CastHiddenToDouble", to=TensorProto.DOUBLE
    )
    cast_out = helper.make_node(
        "Cast", [inner_out], [SCALER_OUTPUT], name="CastXToFloat", to=TensorProto.FLOAT
    )
    nodes = [cast_in, *graph.node, cast_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(SCALER_INPUT, TensorProto.FLOAT, [None, h]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(SCALER_OUTPUT, TensorProto.FLOAT, [None, h]))
    return _finalize(model, "scaler")


def export_fitted_scaler(est: Any, sklearn_version: str | None = None) -> bytes:
    """Export a fitted ``StandardScaler``.

    The graph follows the arithmetic of ``sklearn_version`` (default: the installed one).
    """
    import sklearn

    if not hasattr(est, "n_features_in_"):
        raise ConversionError(
            f"{type(est).__name__} is not fitted",
            code="INPUT_SHAPE",
            hint="fit the scaler before exporting it",
        )
    legacy = LegacyScaler(
        mean=None if getattr(est, "mean_", None) is None else np.asarray(est.mean_),
        scale=None if getattr(est, "scale_", None) is None else np.asarray(est.scale_),
        n_features_in=int(est.n_features_in_),
        with_mean=bool(est.with_mean),
        with_std=bool(est.with_std),
        sklearn_version=sklearn_version or sklearn.__version__,
    )
    return export_scaler(legacy)


# Logistic regressions -------------------------------------------------------------


def _fresh_logreg(coef: np.ndarray, intercept: np.ndarray, n_classes: int, multi_class: str) -> Any:
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(solver="lbfgs")
    est.coef_ = np.ascontiguousarray(coef, dtype=np.float64)
    est.intercept_ = np.ascontiguousarray(intercept, dtype=np.float64)
    est.classes_ = np.arange(n_classes, dtype=np.int64)
    est.n_features_in_ = int(coef.shape[1])
    est.n_iter_ = np.zeros(1, dtype=np.int32)
    # Read by skl2onnx to pick the post-transform: 'auto' -> sigmoid for two
    # classes, softmax for more; 'multinomial' on two classes -> softmax([-s, s]).
    est.multi_class = multi_class
    return est


def _logreg_arrays(lr: LegacyLogisticRegression, file: str) -> tuple[np.ndarray, np.ndarray]:
    coef = np.asarray(lr.coef, dtype=np.float64)
    intercept = np.asarray(lr.intercept, dtype=np.float64).reshape(-1)
    if coef.ndim != 2 or intercept.shape != (coef.shape[0],):
        raise LegacyFormatError(
            f"coef_ {coef.shape} and intercept_ {intercept.shape} are inconsistent",
            code="LEGACY_CONTENT",
            file=file,
            hint="expected coef_ [k, hidden] and intercept_ [k]",
        )
    _finite("coef_", coef, file)
    _finite("intercept_", intercept, file)
    return coef, intercept


def _export_logreg(
    coef: np.ndarray, intercept: np.ndarray, n_classes: int, multi_class: str, kind: str
) -> bytes:
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType

    est = _fresh_logreg(coef, intercept, n_classes, multi_class)
    h = int(coef.shape[1])
    model = _convert(
        est,
        [(CLASSIFIER_INPUT, DoubleTensorType([None, h]))],
        [
            (CLASSIFIER_LABEL, Int64TensorType([None])),
            (CLASSIFIER_PROBABILITIES, DoubleTensorType([None, n_classes])),
        ],
        {"zipmap": False},
    )
    return _finalize(model, kind)


def export_router(router: LegacyLogisticRegression, domains: Sequence[str]) -> bytes:
    """``router.onnx``: probability column j and label j mean ``domains[j]``."""
    domains = list(domains)
    coef, intercept = _logreg_arrays(router, "router.pkl")
    mapping = router_class_to_domain(router, domains)  # class i -> domain mapping[i]
    n = len(domains)
    if n == 2:
        if coef.shape[0] != 1:
            raise LegacyFormatError(
                f"two-domain router has coef_ shape {coef.shape}, expected [1, hidden]",
                code="LEGACY_CONTENT",
                file="router.pkl",
                hint="a binary LogisticRegression stores one coefficient row",
            )
        if mapping[1] == 0:  # the positive class is domain 0: flip the score
            coef, intercept = -coef, -intercept
        return _export_logreg(coef, intercept, 2, "auto", "router")
    if coef.shape[0] != n:
        raise ConversionError(
            f"router coef_ has {coef.shape[0]} rows for {n} domains",
            code="DOMAIN_MISMATCH",
            file="router.pkl",
            hint="the router must have one class per domain",
        )
    order = np.argsort(mapping)  # row for domain j is class order[j]
    return _export_logreg(coef[order], intercept[order], n, "auto", "router")


def export_probe(probe: LegacyLogisticRegression) -> bytes:
    """``probe_<i>.onnx``: column 1 = P(tool call intended), as the writing version computed it."""
    coef, intercept = _logreg_arrays(probe, "probes.pkl")
    classes = np.asarray(probe.classes).tolist()
    if [int(c) if isinstance(c, (bool, np.bool_)) else c for c in classes] != [0, 1] or coef.shape[
        0
    ] != 1:
        raise LegacyFormatError(
            f"probe has classes {classes} and coef_ shape {coef.shape}",
            code="LEGACY_CONTENT",
            file="probes.pkl",
            hint="probes must be binary LogisticRegressions with classes [0, 1]",
        )
    multi_class = "multinomial" if probe_uses_softmax(probe) else "auto"
    return _export_logreg(coef, intercept, 2, multi_class, "probe")


def _as_list(values: Any) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(values).tolist()]


def export_fitted_classifier(est: Any, classes_order: Sequence[Any]) -> bytes:
    """Export a fitted classifier with ``predict_proba``; columns follow ``classes_order``.

    ``label`` is the index into ``classes_order`` of the most probable class.
    A ``LogisticRegression`` is exported with the semantics of the installed
    scikit-learn (as for a legacy estimator written by it); any other
    classifier is converted by skl2onnx and its probability columns permuted.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    if not hasattr(est, "classes_"):
        raise ConversionError(
            f"{type(est).__name__} is not fitted",
            code="INPUT_SHAPE",
            hint="fit the classifier before exporting it",
        )
    est_classes = _as_list(est.classes_)
    order = _as_list(classes_order)
    if sorted(map(str, est_classes)) != sorted(map(str, order)) or len(order) != len(
        set(map(str, order))
    ):
        raise ConversionError(
            f"classes_order {order} is not a permutation of the classifier's classes {est_classes}",
            code="DOMAIN_MISMATCH",
            hint="list every class of the classifier exactly once",
        )
    if isinstance(est, LogisticRegression):
        legacy = LegacyLogisticRegression(
            coef=np.asarray(est.coef_),
            intercept=np.asarray(est.intercept_).reshape(-1),
            classes=np.asarray(est.classes_),
            multi_class=getattr(est, "multi_class", None),
            solver=getattr(est, "solver", None),
            sklearn_version=sklearn.__version__,
        )
        if order == [0, 1] and est_classes == [0, 1]:
            return export_probe(legacy)
        str_order = [str(c) for c in order]
        legacy.classes = np.array([str_order.index(str(c)) for c in est_classes], dtype=np.int64)
        return export_router(legacy, str_order)
    return _export_generic(est, est_classes, order)


def _export_generic(est: Any, est_classes: list[Any], order: list[Any]) -> bytes:
    from skl2onnx.common.data_types import DoubleTensorType

    h = int(getattr(est, "n_features_in_", 0))
    if h <= 0:
        raise ConversionError(
            f"{type(est).__name__} does not record n_features_in_",
            code="INPUT_SHAPE",
            hint="fit the classifier on a 2-D array",
        )
    model = _convert(est, [(CLASSIFIER_INPUT, DoubleTensorType([None, h]))], [], {"zipmap": False})
    graph = model.graph
    if len(graph.output) != 2:
        raise ConversionError(
            f"{type(est).__name__} exports {len(graph.output)} outputs, expected label and "
            "probabilities",
            code="EXPORT_FAILED",
            hint="use a classifier with predict_proba",
        )
    contract = (CLASSIFIER_LABEL, CLASSIFIER_PROBABILITIES)

    def free(name: str) -> str:
        return f"{name}_raw" if name in contract else name

    prob_name = free(graph.output[1].name)
    nodes = list(graph.node)
    # Rename the converter's own tensors so the contract names are free.
    for node in nodes:
        for i, name in enumerate(node.output):
            node.output[i] = free(name)
        for i, name in enumerate(node.input):
            node.input[i] = free(name)
    perm = np.array([[str(c) for c in est_classes].index(str(c)) for c in order], dtype=np.int64)
    graph.initializer.append(onnx.numpy_helper.from_array(perm, "class_permutation"))
    # Declared output types of some converters do not match what they compute: cast always.
    nodes.append(
        helper.make_node(
            "Cast", [prob_name], ["proba_double"], name="ProbaToDouble", to=TensorProto.DOUBLE
        )
    )
    nodes.append(
        helper.make_node(
            "Gather",
            ["proba_double", "class_permutation"],
            [CLASSIFIER_PROBABILITIES],
            name="PermuteClasses",
            axis=1,
        )
    )
    nodes.append(
        helper.make_node(
            "ArgMax",
            [CLASSIFIER_PROBABILITIES],
            [CLASSIFIER_LABEL],
            name="LabelArgMax",
            axis=1,
            keepdims=0,
        )
    )
    del graph.node[:]
    graph.node.extend(nodes)
    k = len(order)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(CLASSIFIER_LABEL, TensorProto.INT64, [None]),
            helper.make_tensor_value_info(CLASSIFIER_PROBABILITIES, TensorProto.DOUBLE, [None, k]),
        ]
    )
    kind = "probe" if k == 2 else "router"
    return _finalize(model, kind)
