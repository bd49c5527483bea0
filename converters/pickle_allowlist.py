"""The allowlist of the restricted unpickler: globals, estimator state keys and caps.

Globals come from an exact ``(module, name)`` table (:data:`ALLOWED_GLOBALS`);
nothing is imported and no dotted name is resolved. Each global maps to the
kind of inert handler the opcode machine (:mod:`asa_format.converters.safe_pickle`)
gives it; estimators become :class:`EstimatorState` stand-ins whose state keys
come from a per-class list (:data:`ESTIMATOR_STATE_KEYS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALLOWED_GLOBALS",
    "DTYPE_SPEC",
    "ESTIMATOR_STATE_KEYS",
    "HINT",
    "LOGISTIC",
    "MAX_ARRAY_ELEMENTS",
    "MAX_ARRAY_NDIM",
    "MAX_DICT_ITEMS",
    "MAX_MEMO_ENTRIES",
    "MAX_NESTING",
    "MAX_OBJECT_CHARS",
    "MAX_OBJECT_ELEMENTS",
    "MAX_PICKLE_BYTES",
    "MAX_STACK_DEPTH",
    "MAX_UNICODE_ITEMSIZE",
    "SCALER",
    "EstimatorState",
    "GlobalRef",
]

MAX_PICKLE_BYTES = 256 << 20  # 256 MiB per pickle file
MAX_ARRAY_ELEMENTS = 1 << 28  # elements of one array
MAX_ARRAY_NDIM = 4
MAX_STACK_DEPTH = 1 << 16  # items on the stack plus open marks
MAX_MEMO_ENTRIES = 1 << 20
MAX_NESTING = 64  # container nesting depth of the result
MAX_UNICODE_ITEMSIZE = 1 << 12  # characters of a fixed-width numpy string dtype
MAX_DICT_ITEMS = 1 << 10  # entries of one dict: bounds hash-collision work (keys of one hash)
MAX_OBJECT_ELEMENTS = 1 << 16  # elements of one object (str) array
MAX_OBJECT_CHARS = 1 << 22  # elements x longest element of an object array (its fixed-width size)

HINT = (
    "re-export the estimator with a supported scikit-learn (1.3 to 1.9) and "
    "pickle protocol 2 to 5; asa-convert never executes pickled code"
)

SCALER = "StandardScaler"
LOGISTIC = "LogisticRegression"

# Every key a fitted estimator of scikit-learn 1.3 .. 1.9 pickles in its state.
ESTIMATOR_STATE_KEYS: dict[str, frozenset[str]] = {
    SCALER: frozenset(
        {
            "with_mean",
            "with_std",
            "copy",
            "n_features_in_",
            "feature_names_in_",
            "n_samples_seen_",
            "mean_",
            "var_",
            "scale_",
            "_sklearn_version",
            "_sklearn_output_config",
        }
    ),
    LOGISTIC: frozenset(
        {
            "penalty",
            "dual",
            "tol",
            "C",
            "fit_intercept",
            "intercept_scaling",
            "class_weight",
            "random_state",
            "solver",
            "max_iter",
            "multi_class",
            "verbose",
            "warm_start",
            "n_jobs",
            "l1_ratio",
            "n_features_in_",
            "feature_names_in_",
            "classes_",
            "n_iter_",
            "coef_",
            "intercept_",
            "_sklearn_version",
            "_sklearn_output_config",
        }
    ),
}


@dataclass
class EstimatorState:
    """Inert stand-in for a pickled estimator: its class and its state dict."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)
    built: bool = field(default=False, repr=False, compare=False)


# --------------------------------------------------------------------------
# The global allowlist: exact (module, name) -> kind of inert handler.
# --------------------------------------------------------------------------

G_RECONSTRUCT = "reconstruct"
G_NDARRAY = "ndarray"
G_DTYPE = "dtype"
G_SCALAR = "scalar"
G_FROMBUFFER = "frombuffer"
G_ENCODE = "codecs_encode"
G_BYTES = "bytes"
G_SCALER = "estimator:" + SCALER
G_LOGISTIC = "estimator:" + LOGISTIC

ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): G_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): G_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): G_SCALAR,
    ("numpy._core.multiarray", "scalar"): G_SCALAR,
    ("numpy.core.numeric", "_frombuffer"): G_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): G_FROMBUFFER,
    ("numpy", "ndarray"): G_NDARRAY,
    ("numpy", "dtype"): G_DTYPE,
    # protocol 2 spells non-empty bytes as _codecs.encode(text, "latin1") and
    # empty bytes as bytes() (``__builtin__`` with fix_imports).
    ("_codecs", "encode"): G_ENCODE,
    ("builtins", "bytes"): G_BYTES,
    ("__builtin__", "bytes"): G_BYTES,
    ("sklearn.preprocessing._data", "StandardScaler"): G_SCALER,
    ("sklearn.linear_model._logistic", "LogisticRegression"): G_LOGISTIC,
}


@dataclass(frozen=True)
class GlobalRef:
    module: str
    name: str
    kind: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


# dtype specs numpy pickles for the arrays an estimator holds
DTYPE_SPEC = re.compile(r"(f4|f8|i4|i8|b1|O8|O4|U[1-9][0-9]{0,4})")
