"""Inert, typed data read from a legacy ASA bundle.

These dataclasses hold only numbers, strings and numpy arrays: what the
legacy pickles contain, read as data by :mod:`asa_format.converters.safe_pickle`
(never by calling estimator code). Conversion and the legacy reference
decision function work on these objects alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "LegacyAssets",
    "LegacyConfig",
    "LegacyLogisticRegression",
    "LegacyScaler",
    "SourceFile",
]


@dataclass(frozen=True)
class SourceFile:
    """A file of the legacy bundle: name, size in bytes and sha256 (hex)."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LegacyConfig:
    """The checked ``config.json`` of a legacy bundle.

    ``raw`` is the whole parsed object; ``extra`` holds the keys beyond the
    required five and ``model``, with non-finite floats replaced by strings
    so it can go into strict JSON.
    """

    raw: dict[str, Any]
    domains: list[str]
    layer: int  # L_star
    alpha: float
    tau: float
    beta: float
    model_id: str | None
    extra: dict[str, Any]


@dataclass
class LegacyScaler:
    """State of a fitted ``sklearn.preprocessing.StandardScaler``.

    ``mean`` / ``scale`` are float64 ``[hidden]`` arrays, or ``None`` when
    ``with_mean`` / ``with_std`` was false. ``sklearn_version`` is the pickled
    ``_sklearn_version`` (``None`` if absent); it decides the float32
    arithmetic of ``transform`` (see ``converters/semantics.py``).
    """

    mean: np.ndarray | None
    scale: np.ndarray | None
    n_features_in: int
    with_mean: bool = True
    with_std: bool = True
    sklearn_version: str | None = None


@dataclass
class LegacyLogisticRegression:
    """State of a fitted ``sklearn.linear_model.LogisticRegression``.

    ``coef`` is float64 ``[k, hidden]`` (k = 1 for two classes), ``intercept``
    float64 ``[k]``, ``classes`` the ``classes_`` array (int64, bool or str).
    ``multi_class`` and ``solver`` are the pickled hyper-parameters (``None``
    when absent); together with ``sklearn_version`` they decide how
    probabilities were computed by the version that wrote the pickle.
    """

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    multi_class: str | None = None
    solver: str | None = None
    sklearn_version: str | None = None


@dataclass
class LegacyAssets:
    """Everything read from a legacy ``asa_assets/`` directory."""

    domains: list[str]
    layer: int  # L_star
    alpha: float
    tau: float
    beta: float
    vectors: dict[str, np.ndarray]  # float32 [hidden], domain names plus "global"
    scaler: LegacyScaler
    router: LegacyLogisticRegression
    probes: dict[str, LegacyLogisticRegression]  # domains without a probe are absent
    model_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the whole parsed config.json
    extra_config: dict[str, Any] = field(
        default_factory=dict
    )  # keys beyond the required five and `model`
    sources: list[SourceFile] = field(default_factory=list)

    @property
    def hidden_size(self) -> int:
        return int(self.scaler.n_features_in)
