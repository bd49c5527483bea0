"""Legacy record checks: estimator stand-ins -> typed records.

:func:`to_legacy_scaler` and :func:`to_legacy_logistic` turn the
:class:`~asa_format.converters.pickle_allowlist.EstimatorState` stand-ins the
restricted unpickler returns into the typed records of
:mod:`asa_format.converters.legacy_model`, checking every field they use.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.converters.legacy_model import LegacyLogisticRegression, LegacyScaler
from asa_format.converters.pickle_allowlist import LOGISTIC, SCALER, EstimatorState
from asa_format.errors import LegacyFormatError

__all__ = ["to_legacy_logistic", "to_legacy_scaler"]


def _content_error(filename: str, what: str, message: str) -> LegacyFormatError:
    return LegacyFormatError(
        f"{what}: {message}",
        code="LEGACY_CONTENT",
        file=filename,
        hint="re-export the estimator from a fitted scikit-learn model",
    )


def _expect_estimator(obj: Any, class_name: str, filename: str, what: str) -> dict[str, Any]:
    if not isinstance(obj, EstimatorState) or obj.class_name != class_name:
        found = obj.class_name if isinstance(obj, EstimatorState) else type(obj).__name__
        raise _content_error(filename, what, f"expected a {class_name}, found {found}")
    return obj.state


def _float_vector(value: Any, filename: str, what: str, key: str, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim != ndim:
        raise _content_error(
            filename, what, f"{key} must be a {ndim}-D float array, found {_short(value)}"
        )
    # float32 stays float32: scikit-learn >= 1.8 computes with float32 estimators in float32.
    array = value.astype(np.float32 if value.dtype == np.float32 else np.float64)
    if not np.all(np.isfinite(array)):
        raise _content_error(filename, what, f"{key} contains NaN or infinity")
    return array


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype.str} {tuple(value.shape)}"
    return type(value).__name__


def _int_value(value: Any, filename: str, what: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise _content_error(filename, what, f"{key} must be an integer, found {_short(value)}")
    return int(value)


def _bool_value(state: dict[str, Any], key: str, filename: str, what: str) -> bool:
    value = state.get(key, True)
    if not isinstance(value, bool | np.bool_):
        raise _content_error(filename, what, f"{key} must be a bool, found {_short(value)}")
    return bool(value)


_VERSION = re.compile(r"[0-9]{1,4}\.[0-9]{1,4}([.+\-a-zA-Z0-9]{0,48})")


def _opt_str(state: dict[str, Any], key: str, filename: str, what: str) -> str | None:
    value = state.get(key)
    if value is not None and type(value) is not str:
        raise _content_error(filename, what, f"{key} must be a string, found {_short(value)}")
    if key == "_sklearn_version" and value is not None and not _VERSION.fullmatch(value):
        raise _content_error(
            filename, what, f"{key} {_short(value)} is not a scikit-learn version (like '1.6.1')"
        )
    return value


def to_legacy_scaler(obj: Any, *, filename: str, what: str = "scaler") -> LegacyScaler:
    """Turn a ``StandardScaler`` stand-in into a :class:`LegacyScaler`."""
    state = _expect_estimator(obj, SCALER, filename, what)
    with_mean = _bool_value(state, "with_mean", filename, what)
    with_std = _bool_value(state, "with_std", filename, what)
    for key in ("mean_", "scale_", "n_features_in_"):
        if key not in state:
            raise _content_error(filename, what, f"state has no {key} (is the scaler fitted?)")
    mean = (
        None
        if state["mean_"] is None
        else _float_vector(state["mean_"], filename, what, "mean_", 1)
    )
    scale = (
        None
        if state["scale_"] is None
        else _float_vector(state["scale_"], filename, what, "scale_", 1)
    )
    n_features = _int_value(state["n_features_in_"], filename, what, "n_features_in_")
    if not 1 <= n_features <= C.MAX_HIDDEN_SIZE:
        raise _content_error(
            filename,
            what,
            f"n_features_in_ is {n_features}; the hidden size must be 1..{C.MAX_HIDDEN_SIZE}",
        )
    if with_mean and mean is None:
        raise _content_error(filename, what, "with_mean is true but mean_ is None")
    if with_std and scale is None:
        raise _content_error(filename, what, "with_std is true but scale_ is None")
    for key, array in (("mean_", mean), ("scale_", scale)):
        if array is not None and array.shape != (n_features,):
            raise _content_error(
                filename, what, f"{key} has shape {array.shape}, expected ({n_features},)"
            )
    if scale is not None and np.any(scale <= 0):
        raise _content_error(filename, what, "scale_ has non-positive entries")
    return LegacyScaler(
        mean=mean if with_mean else None,
        scale=scale if with_std else None,
        n_features_in=n_features,
        with_mean=with_mean,
        with_std=with_std,
        sklearn_version=_opt_str(state, "_sklearn_version", filename, what),
    )


def to_legacy_logistic(
    obj: Any, *, filename: str, what: str = "LogisticRegression"
) -> LegacyLogisticRegression:
    """Turn a ``LogisticRegression`` stand-in into a :class:`LegacyLogisticRegression`."""
    state = _expect_estimator(obj, LOGISTIC, filename, what)
    for key in ("coef_", "intercept_", "classes_"):
        if key not in state:
            raise _content_error(filename, what, f"state has no {key} (is the model fitted?)")
    coef = _float_vector(state["coef_"], filename, what, "coef_", 2)
    intercept = _float_vector(state["intercept_"], filename, what, "intercept_", 1)
    classes = state["classes_"]
    if not isinstance(classes, np.ndarray) or classes.ndim != 1:
        raise _content_error(
            filename, what, f"classes_ must be a 1-D array, found {_short(classes)}"
        )
    if classes.dtype.kind not in "iubUO":
        raise _content_error(filename, what, f"classes_ has unsupported dtype {classes.dtype.str}")
    if classes.dtype.kind == "O":
        classes = classes.astype(str)
    n_classes = classes.shape[0]
    if n_classes < 2:
        raise _content_error(filename, what, f"classes_ has {n_classes} class(es)")
    if len(set(classes.tolist())) != n_classes:
        raise _content_error(filename, what, "classes_ has duplicate entries")
    rows = 1 if n_classes == 2 else n_classes
    if coef.shape[0] != rows or coef.shape[1] < 1:
        raise _content_error(
            filename,
            what,
            f"coef_ has shape {coef.shape} for {n_classes} classes ({rows} rows expected)",
        )
    if intercept.shape != (rows,):
        raise _content_error(
            filename, what, f"intercept_ has shape {intercept.shape}, expected ({rows},)"
        )
    if "n_features_in_" in state:
        n_features = _int_value(state["n_features_in_"], filename, what, "n_features_in_")
        if n_features != coef.shape[1]:
            raise _content_error(
                filename,
                what,
                f"n_features_in_ is {n_features} but coef_ has {coef.shape[1]} columns",
            )
    return LegacyLogisticRegression(
        coef=coef,
        intercept=intercept,
        classes=np.ascontiguousarray(classes),
        multi_class=_opt_str(state, "multi_class", filename, what),
        solver=_opt_str(state, "solver", filename, what),
        sklearn_version=_opt_str(state, "_sklearn_version", filename, what),
    )
