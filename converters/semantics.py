"""The legacy ASA decision, reproduced exactly from the pickled arrays.

The legacy hook computes, on one float32 hidden-state row ``h``::

    x = scaler.transform(h)                           # float32 row
    d = domains[argmax(router.decision_function(x))]
    p = probes[d].predict_proba(x)[0, 1]  (0.5 when d has no probe)
    gate = +1 if p >= tau, -1 if p <= 1 - tau, else 0

The exact arithmetic of each step depends on the scikit-learn version that
wrote the pickles. This module reproduces it with numpy alone (no estimator
code runs), choosing the variant from the pickled ``_sklearn_version`` and
hyper-parameters:

* **Scaler.** Up to 1.7.x, ``transform`` does ``X -= mean_; X /= scale_`` on the
  float32 input with float64 statistics: each in-place step is computed in
  float64 and rounded to float32. From 1.8.0 on it does
  ``X -= astype(mean_, X.dtype)`` (and the same for ``scale_``): pure float32
  arithmetic with float32-rounded statistics.
* **Router.** ``decision_function`` is ``x @ coef_.T + intercept_`` in float64
  (the float32 ``x`` is promoted exactly). With more than two classes the
  decision is the first maximal score; with two, ``coef_`` has one row and the
  class is ``classes_[score > 0]``. ``classes_`` holds either indices into
  ``domains`` (integers) or domain names (strings).
* **Probes.** Binary (``classes_ == [0, 1]``). ``predict_proba`` is the
  logistic sigmoid of the score, except when the writing version (before
  1.8.0) saw ``multi_class == 'multinomial'``: it then returned
  ``softmax([-s, s])``, i.e. ``sigmoid(2 s)``. From 1.8.0 on binary
  ``predict_proba`` always uses the sigmoid.
"""

from __future__ import annotations

import re

import numpy as np

from asa_format.constants import GLOBAL_VECTOR, NORM_EPS
from asa_format.converters.legacy_model import LegacyAssets, LegacyLogisticRegression, LegacyScaler
from asa_format.errors import ConversionError, LegacyFormatError

__all__ = [
    "FLOAT32_SCALER_SINCE",
    "NO_PROBE_PROBABILITY",
    "SIGMOID_BINARY_SINCE",
    "gate_from_probability",
    "legacy_decide",
    "legacy_steering_vector",
    "probe_probability",
    "probe_uses_softmax",
    "route",
    "router_class_to_domain",
    "router_scores",
    "scaler_transform",
    "scaler_uses_float32",
    "sklearn_version_tuple",
]

# First scikit-learn release whose StandardScaler.transform casts mean_/scale_
# to the input dtype (float32 arithmetic).
FLOAT32_SCALER_SINCE = (1, 8)
# First release whose binary LogisticRegression.predict_proba ignores
# ``multi_class`` (always the sigmoid).
SIGMOID_BINARY_SINCE = (1, 8)
# Probability used by the legacy code for a domain without a probe.
NO_PROBE_PROBABILITY = 0.5

_VERSION_RE = re.compile(
    r"^\s*([0-9]{1,6})\.([0-9]{1,6})(?![0-9])"
)  # bounded: no int() of 5000 digits


def sklearn_version_tuple(version: str | None) -> tuple[int, int] | None:
    """``"1.6.1"`` -> ``(1, 6)``; ``None`` or an unparsable string -> ``None``."""
    if version is None:
        return None
    match = _VERSION_RE.match(str(version))
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _at_least(version: str | None, since: tuple[int, int]) -> bool:
    parsed = sklearn_version_tuple(version)
    return parsed is not None and parsed >= since


# Scaler -------------------------------------------------------------------------


def scaler_uses_float32(scaler: LegacyScaler) -> bool:
    """True when the writing version computed ``transform`` in pure float32."""
    return _at_least(scaler.sklearn_version, FLOAT32_SCALER_SINCE)


def scaler_transform(scaler: LegacyScaler, hidden: np.ndarray) -> np.ndarray:
    """``StandardScaler.transform`` of float32 rows, bit-exact for the writing version."""
    x = np.array(hidden, dtype=np.float32, copy=True)
    if x.ndim != 2 or x.shape[1] != scaler.n_features_in:
        raise ConversionError(
            f"hidden states have shape {x.shape}, expected [N, {scaler.n_features_in}]",
            code="INPUT_SHAPE",
            hint="pass a 2-D array of last-token hidden states of the bundle's hidden size",
        )
    f32 = scaler_uses_float32(scaler)
    if scaler.with_mean and scaler.mean is not None:
        mean = np.asarray(scaler.mean, dtype=np.float64)
        if f32:
            x -= mean.astype(np.float32)
        else:
            x -= mean  # float64 arithmetic, rounded to float32 in place
    if scaler.with_std and scaler.scale is not None:
        scale = np.asarray(scaler.scale, dtype=np.float64)
        if f32:
            x /= scale.astype(np.float32)
        else:
            x /= scale
    return x


# Router ---------------------------------------------------------------------------


def computes_in_float32(model: LegacyLogisticRegression) -> bool:
    """True when the estimator holds float32 coefficients (scikit-learn >= 1.8 fitted on
    float32 data): its ``decision_function`` and ``predict_proba`` then compute in float32."""
    return np.asarray(model.coef).dtype == np.float32


def estimators_use_float32(assets: LegacyAssets) -> bool:
    """Whether any of the router and probes computes in float32."""
    return computes_in_float32(assets.router) or any(
        computes_in_float32(p) for p in assets.probes.values()
    )


def _scores(model: LegacyLogisticRegression, x: np.ndarray) -> np.ndarray:
    """``X @ coef.T + intercept`` in the estimator's own dtype (float32 or float64)."""
    dtype = np.float32 if computes_in_float32(model) else np.float64
    xs: np.ndarray = np.asarray(x).astype(dtype)
    coef: np.ndarray = np.asarray(model.coef, dtype=dtype)
    intercept: np.ndarray = np.asarray(model.intercept, dtype=dtype)
    return np.asarray(np.matmul(xs, coef.T) + intercept, dtype=dtype)


def router_scores(router: LegacyLogisticRegression, x: np.ndarray) -> np.ndarray:
    """``decision_function``: ``[N, k]`` (k = 1 for a two-class router), in the router's dtype."""
    return _scores(router, x)


def router_class_to_domain(router: LegacyLogisticRegression, domains: list[str]) -> np.ndarray:
    """Map each entry of ``router.classes`` to its index in ``domains`` (int64 [k])."""
    classes = np.asarray(router.classes)
    out = np.empty(len(classes), dtype=np.int64)
    for i, cls in enumerate(classes.tolist()):
        if isinstance(cls, str):
            if cls not in domains:
                raise ConversionError(
                    f"router class {cls!r} is not one of the domains {domains}",
                    code="DOMAIN_MISMATCH",
                    file="router.pkl",
                    hint="the router must be fitted on the domain names or their indices",
                )
            out[i] = domains.index(cls)
        elif isinstance(cls, (int, bool, np.integer)) and 0 <= int(cls) < len(domains):
            out[i] = int(cls)
        else:
            raise ConversionError(
                f"router class {cls!r} does not index the {len(domains)} domains",
                code="DOMAIN_MISMATCH",
                file="router.pkl",
                hint="integer router classes must lie in [0, number of domains)",
            )
    if len(set(out.tolist())) != len(out) or len(out) != len(domains):
        raise ConversionError(
            f"router classes {classes.tolist()} do not map one-to-one onto domains {domains}",
            code="DOMAIN_MISMATCH",
            file="router.pkl",
            hint="every domain must be exactly one router class",
        )
    return out


def route(router: LegacyLogisticRegression, domains: list[str], x: np.ndarray) -> np.ndarray:
    """Domain index (int64 [N]) chosen by the legacy router for scaled rows ``x``."""
    scores = router_scores(router, x)
    mapping = router_class_to_domain(router, domains)
    if scores.shape[1] == 1:
        cls_index = (scores[:, 0] > 0).astype(np.int64)
    else:
        cls_index = np.argmax(scores, axis=1).astype(np.int64)
    return mapping[cls_index]


# Probes ---------------------------------------------------------------------------


def probe_uses_softmax(probe: LegacyLogisticRegression) -> bool:
    """True when the writing version's binary ``predict_proba`` was ``softmax([-s, s])``."""
    if _at_least(probe.sklearn_version, SIGMOID_BINARY_SINCE):
        return False
    # Before 1.8: binary problems are OvR unless multi_class was 'multinomial'
    # ('ovr', 'warn', 'auto' and 'deprecated' all give the sigmoid for two classes).
    return probe.multi_class == "multinomial"


def _check_probe(probe: LegacyLogisticRegression, domain: str) -> None:
    classes = np.asarray(probe.classes).tolist()
    if [int(c) if isinstance(c, (bool, np.bool_)) else c for c in classes] != [0, 1]:
        raise LegacyFormatError(
            f"probe of domain {domain!r} has classes {classes}, expected [0, 1]",
            code="LEGACY_CONTENT",
            file="probes.pkl",
            hint="probes must be binary classifiers with class 1 = tool call intended",
        )
    if np.asarray(probe.coef).shape[0] != 1 or np.asarray(probe.intercept).shape != (1,):
        raise LegacyFormatError(
            f"probe of domain {domain!r} has coef shape {np.asarray(probe.coef).shape}, "
            "expected [1, hidden]",
            code="LEGACY_CONTENT",
            file="probes.pkl",
            hint="probes must be binary logistic regressions",
        )


def probe_probability(
    probe: LegacyLogisticRegression, x: np.ndarray, domain: str = "?"
) -> np.ndarray:
    """``predict_proba(x)[:, 1]`` of a binary probe as the writing version computed it."""
    _check_probe(probe, domain)
    s = _scores(probe, x)[:, 0]  # float32 for float32 estimators, as scikit-learn computes
    if probe_uses_softmax(probe):
        # sklearn.utils.extmath.softmax on [-s, s]: subtract the row max, exp, normalise.
        two = np.stack([-s, s], axis=1)
        two = two - two.max(axis=1, keepdims=True)
        e = np.exp(two)
        p: np.ndarray = e[:, 1] / e.sum(axis=1)
        return p
    with np.errstate(over="ignore"):
        one = s.dtype.type(1.0)
        return np.asarray(one / (one + np.exp(-s)), dtype=np.float64)


def gate_from_probability(p: np.ndarray, tau: float) -> np.ndarray:
    """Ternary gate (int8): +1 if p >= tau, -1 if p <= 1 - tau, else 0."""
    p = np.asarray(p, dtype=np.float64)
    gate = np.zeros(p.shape, dtype=np.int8)
    gate[p <= 1.0 - float(tau)] = -1
    gate[p >= float(tau)] = 1
    return gate


# The whole decision -----------------------------------------------------------------


def legacy_decide(
    assets: LegacyAssets, hidden: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Legacy decision for each row of ``hidden`` (float32 [N, H]).

    Returns ``(domain_index int64 [N], probability float64 [N], gate int8 [N])``.
    Each row is decided independently (the legacy hook's row-0-for-the-batch
    defect is not reproduced).
    """
    hidden = np.asarray(hidden)
    if hidden.ndim == 1:
        hidden = hidden[None, :]
    x = scaler_transform(assets.scaler, hidden)
    domain_index = route(assets.router, assets.domains, x)
    prob = np.full(x.shape[0], NO_PROBE_PROBABILITY, dtype=np.float64)
    for j, name in enumerate(assets.domains):
        rows = np.nonzero(domain_index == j)[0]
        if rows.size == 0 or name not in assets.probes:
            continue
        prob[rows] = probe_probability(assets.probes[name], x[rows], name)
    return domain_index, prob, gate_from_probability(prob, assets.tau)


def legacy_steering_vector(assets: LegacyAssets, domain: str) -> np.ndarray:
    """The float32 vector the legacy hook adds (before ``gate * alpha``) for ``domain``."""
    if domain not in assets.vectors or GLOBAL_VECTOR not in assets.vectors:
        raise LegacyFormatError(
            f"steering vectors lack {domain!r} or {GLOBAL_VECTOR!r}",
            code="LEGACY_CONTENT",
            file="steering_vectors.npz",
            hint="the archive must hold one vector per domain plus 'global'",
        )
    beta = float(assets.beta)
    v = (1.0 - beta) * np.asarray(assets.vectors[domain], dtype=np.float32) + beta * np.asarray(
        assets.vectors[GLOBAL_VECTOR], dtype=np.float32
    )
    v = np.asarray(v, dtype=np.float32)
    norm = np.linalg.norm(v)
    return np.asarray(v / (norm + NORM_EPS), dtype=np.float32)
