"""The pipeline API: fitted scikit-learn objects in memory -> a bundle.

``build_bundle`` takes what an ASA pipeline holds after fitting (a scaler, a
router, a dict of probes, a dict of steering vectors including ``global``,
hyper-parameters and the model binding), exports the graphs with skl2onnx,
writes the bundle atomically and checks, before committing it, that the
bundle decides exactly what the estimators themselves decide (these are the
caller's own objects, so their methods are the reference).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format._version import __version__
from asa_format.bundle import load_bundle
from asa_format.converters.parity import (
    DEFAULT_SAMPLES,
    FLOAT32_PARITY_TOLERANCE,
    PARITY_TOLERANCE,
    Parity,
    compare,
    sample_hidden_states,
)
from asa_format.errors import ConversionError, ParityError, UsageError
from asa_format.format.manifest import ModelBinding, Producer, Provenance, Steering
from asa_format.gating import gates
from asa_format.storage.writer import BundleContents, save_bundle

__all__ = ["build_bundle"]


def _shape_error(message: str, hint: str) -> ConversionError:
    return ConversionError(message, code="INPUT_SHAPE", hint=hint)


def _n_features(est: Any, what: str) -> int:
    n = getattr(est, "n_features_in_", None)
    if n is None:
        coef = getattr(est, "coef_", None)
        n = None if coef is None else np.asarray(coef).shape[-1]
    if n is None:
        raise _shape_error(
            f"{what} is not fitted (no n_features_in_)", "fit it before building a bundle"
        )
    return int(n)


def _domain_of_class(router: Any, domains: Sequence[str]) -> list[int]:
    """Map each router class (``classes_`` order) to its domain index."""
    classes = list(np.asarray(router.classes_).tolist())
    out: list[int] = []
    for c in classes:
        if isinstance(c, str):
            if c not in domains:
                raise _shape_error(
                    f"router class {c!r} is not one of the domains {list(domains)}",
                    "router labels must be domain names or indices",
                )
            out.append(list(domains).index(c))
        elif (
            isinstance(c, (int, np.integer))
            and not isinstance(c, bool)
            and 0 <= int(c) < len(domains)
        ):
            out.append(int(c))
        else:
            raise _shape_error(
                f"router class {c!r} is neither a domain name nor an index below {len(domains)}",
                "fit the router on domain names or indices",
            )
    if sorted(out) != list(range(len(domains))):
        raise _shape_error(
            f"router classes {classes} do not cover the domains {list(domains)} exactly once",
            "fit the router on every domain",
        )
    return out


def _reference(
    scaler: Any, router: Any, probes: Mapping[str, Any], domains: Sequence[str], tau: float
) -> Any:
    class_to_domain = np.asarray(_domain_of_class(router, domains))

    def decide(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = scaler.transform(h.astype(np.float32))
        if len(domains) == 2 and hasattr(router, "decision_function"):
            index = class_to_domain[(np.asarray(router.decision_function(x)) > 0).astype(int)]
        elif hasattr(router, "decision_function"):
            index = class_to_domain[np.argmax(router.decision_function(x), axis=1)]
        else:
            index = class_to_domain[np.argmax(router.predict_proba(x), axis=1)]
        prob = np.full(h.shape[0], 0.5)
        for d in np.unique(index):
            probe = probes.get(domains[int(d)])
            if probe is None:
                continue
            rows = np.flatnonzero(index == d)
            column = list(np.asarray(probe.classes_).tolist()).index(1)
            prob[rows] = probe.predict_proba(x[rows])[:, column]
        return index, prob, gates(prob, tau)

    return decide


def build_bundle(
    destination: str | os.PathLike[str],
    *,
    scaler: Any,
    router: Any,
    probes: Mapping[str, Any],
    vectors: Mapping[str, Any],
    domains: Sequence[str],
    layer: int,
    alpha: float,
    tau: float,
    beta: float,
    model_id: str | None = None,
    model_type: str | None = None,
    num_layers: int | None = None,
    policy: str = C.POLICY_PREFILL_LAST_TOKEN,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
    samples: int = DEFAULT_SAMPLES,
) -> tuple[Path, Parity]:
    """Write a bundle from fitted pipeline objects; return its path and parity.

    ``scaler`` is a fitted StandardScaler; ``router`` a fitted classifier over
    the domains (labels = domain names or indices); ``probes`` maps domain
    names to fitted binary classifiers with ``classes_ == [0, 1]`` (a domain
    may have none); ``vectors`` maps every domain and ``"global"`` to a
    ``[hidden]`` vector (normalized here to unit length in float32).
    """
    from asa_format.argcheck import (
        binding_args,
        bool_arg,
        finite_number_arg,
        int_arg,
        path_arg,
    )
    from asa_format.converters.export import export_fitted_classifier, export_fitted_scaler

    path_arg(destination, "destination")
    if (
        isinstance(domains, (str, bytes))
        or not isinstance(domains, Sequence)
        or not all(isinstance(d, str) for d in domains)
    ):
        raise UsageError("domains must be a list of domain names (str)", hint="pass domains=[...]")
    for what, mapping in (("probes", probes), ("vectors", vectors)):
        if not isinstance(mapping, Mapping):
            raise UsageError(
                f"{what} must be a mapping, not {type(mapping).__name__}",
                hint=f"pass {what}={{...}}",
            )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise UsageError("metadata must be a mapping or None", hint="pass metadata={...}")
    int_arg(layer, "layer", 0, 99_999)
    for name, value in (("alpha", alpha), ("tau", tau), ("beta", beta)):
        finite_number_arg(value, name, -1e6, 1e6)
    if not isinstance(policy, str):
        raise UsageError(
            f"policy must be a str, not {type(policy).__name__}", hint="pass a policy name"
        )
    binding_args(model_id, model_type, num_layers)
    bool_arg(force, "force")
    int_arg(samples, "samples", 1, 1_000_000)
    names = list(domains)
    hidden = _n_features(scaler, "the scaler")
    for what, est in [
        ("the router", router),
        *((f"the probe of {k!r}", v) for k, v in probes.items()),
    ]:
        n = _n_features(est, what)
        if n != hidden:
            raise _shape_error(
                f"{what} expects {n} features, the scaler {hidden}",
                "fit every estimator on the same hidden states",
            )
    unknown = sorted(set(probes) - set(names))
    if unknown:
        raise _shape_error(f"probes for unknown domains {unknown}", f"domains are {names}")
    missing = sorted({*names, C.GLOBAL_VECTOR} - set(vectors))
    if missing:
        raise _shape_error(
            f"no steering vector for {missing}", "give one vector per domain plus 'global'"
        )
    extra = sorted(set(vectors) - {*names, C.GLOBAL_VECTOR})
    if extra:
        raise _shape_error(f"steering vectors for unknown names {extra}", f"domains are {names}")
    unit: dict[str, np.ndarray] = {}
    for key, value in vectors.items():
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        if v.shape != (hidden,):
            raise _shape_error(
                f"vector {key!r} has shape {list(np.shape(value))}, expected [{hidden}]",
                "vectors live in the hidden space",
            )
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise _shape_error(
                f"vector {key!r} is zero or not finite", "give non-zero, finite vectors"
            )
        unit[key] = (v / norm).astype(np.float32)
    for name, probe in probes.items():
        if sorted(np.asarray(probe.classes_).tolist()) != [0, 1]:
            raise _shape_error(
                f"the probe of {name!r} has classes {np.asarray(probe.classes_).tolist()}, expected [0, 1]",
                "class 1 means 'tool call intended'",
            )
    class_order = _domain_of_class(router, names)
    router_classes = list(np.asarray(router.classes_).tolist())
    ordered = [router_classes[class_order.index(i)] for i in range(len(names))]

    contents = BundleContents(
        model=ModelBinding(hidden_size=hidden, id=model_id, type=model_type, num_layers=num_layers),
        layer=layer,
        steering=Steering(alpha=alpha, tau=tau, beta=beta, policy=policy, no_probe_probability=0.5),
        domains=names,
        vectors=unit,
        scaler=export_fitted_scaler(scaler),
        router=export_fitted_classifier(router, ordered),
        probes={name: export_fitted_classifier(probe, [0, 1]) for name, probe in probes.items()},
        provenance=Provenance(
            source="pipeline",
            tool=Producer("asa_format.converters.build_bundle", __version__),
            library_versions=_library_versions(),
            metadata=dict(metadata or {}),
        ),
    )
    mean = getattr(scaler, "mean_", None)
    scale = getattr(scaler, "scale_", None)
    sample = sample_hidden_states(mean, scale, hidden, samples)
    reference = _reference(scaler, router, probes, names, tau)
    outcome: dict[str, Parity] = {}

    # scikit-learn >= 1.8 keeps float32 coefficients when fitted on float32
    # data and then computes probabilities in float32: the reference itself is
    # only float32-accurate, while the bundle evaluates in float64.
    float32_reference = any(
        np.asarray(getattr(est, "coef_", np.zeros(1, np.float64))).dtype == np.float32
        for est in [router, *probes.values()]
    )
    tolerance = FLOAT32_PARITY_TOLERANCE if float32_reference else PARITY_TOLERANCE

    def self_check(tmp: Path) -> None:
        parity = compare(load_bundle(tmp), reference, sample, tolerance)
        outcome["parity"] = parity
        if not parity.ok:
            raise ParityError(
                f"the bundle does not reproduce the estimators: domain agreement {parity.domain_agreement:.4%}, "
                f"gate agreement {parity.gate_agreement:.4%}, max |dp| {parity.max_probability_difference:.3g}",
                hint="nothing was written; this estimator type may not export exactly",
            )

    path = save_bundle(contents, destination, force=force, before_commit=self_check)
    return path, outcome["parity"]


def _library_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("sklearn", "skl2onnx", "onnx", "numpy"):
        try:
            module = __import__(name)
        except ImportError:  # pragma: no cover - all are dependencies of conversion
            continue
        out["scikit-learn" if name == "sklearn" else name] = str(
            getattr(module, "__version__", "unknown")
        )
    return out
