"""Finite products: a coefficient (or alpha) times a vector, in the dtype it is used in.

Every number a bundle stores is finite, but a product of two finite numbers
need not be: ``1e6 x 1e33`` is finite in float64 and infinite in float32,
and far smaller products overflow float16 (65504) or bfloat16. Whoever
writes such a product (``asa export``) or adds it to a model's hidden states
(the runtime) checks it here first, so that no +/-Inf (and from there NaN)
is ever written or applied.

The product is modelled as the runtime and llama.cpp compute it: the exact
product rounded to float32 (float64 for ``float64``), then, for the 16-bit
types, rounded once more to the target type (round to nearest even: a
float32 value at or above the type's overflow threshold, ``max + ulp/2``,
becomes infinite).
"""

from __future__ import annotations

import numpy as np

from asa_format.errors import ConversionError, RuntimeCompatError, UsageError

__all__ = ["FLOAT_DTYPES", "check_finite_product", "finite_product", "overflow_threshold"]

# the smallest magnitude that rounds to infinity in each type (round to nearest even)
_THRESHOLDS: dict[str, float] = {
    "float64": float("inf"),  # float64 itself overflows: checked with isfinite
    "float32": float((2.0 - 2.0**-24) * 2.0**127),
    "bfloat16": float((2.0 - 2.0**-8) * 2.0**127),
    "float16": 65520.0,
}
_ALIASES = {"double": "float64", "float": "float32", "half": "float16", "bf16": "bfloat16"}
FLOAT_DTYPES = tuple(_THRESHOLDS)


def _dtype_name(dtype: object) -> str:
    """``"float32"`` from ``"float32"``, ``"torch.float32"``, ``torch.float32`` or ``np.float32``."""
    if isinstance(dtype, str):
        text = dtype
    elif isinstance(dtype, np.dtype):
        text = dtype.name
    elif isinstance(dtype, type) and issubclass(dtype, np.generic):
        text = np.dtype(dtype).name
    else:  # a torch dtype prints as "torch.bfloat16"
        text = str(dtype)
    text = text.removeprefix("torch.")
    text = _ALIASES.get(text, text)
    if text not in _THRESHOLDS:
        raise UsageError(
            f"dtype {str(dtype)[:40]!r} is not a floating-point type this check knows",
            hint=f"use one of {', '.join(FLOAT_DTYPES)}",
        )
    return text


def overflow_threshold(dtype: object) -> float:
    """The smallest magnitude that rounds to infinity in ``dtype``."""
    return _THRESHOLDS[_dtype_name(dtype)]


def finite_product(coefficient: float, vector: np.ndarray, dtype: object = "float32") -> bool:
    """Whether ``coefficient x vector`` is finite (every element) when computed in ``dtype``.

    ``dtype``: ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``
    (also ``"torch.bfloat16"``, a torch or NumPy dtype). A non-finite
    coefficient or vector element is never finite.
    """
    name = _dtype_name(dtype)
    coef = float(coefficient)
    values = np.asarray(vector)
    if values.dtype.kind not in "fiub":
        raise UsageError(
            f"the vector has dtype {values.dtype}, not a number type",
            hint="pass a float vector",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        exact = values.astype(np.float64) * np.float64(coef)
        if name == "float64":
            return bool(np.isfinite(exact).all())
        rounded = exact.astype(np.float32)
        if not np.isfinite(rounded).all():
            return False
        return bool((np.abs(rounded) < _THRESHOLDS[name]).all())


def check_finite_product(
    coefficient: float,
    vector: np.ndarray,
    dtype: object = "float32",
    *,
    what: str,
    hint: str,
    error: type[ConversionError] | type[RuntimeCompatError] = ConversionError,
) -> None:
    """Raise ``error`` with code ``VALUE_OVERFLOW`` unless :func:`finite_product` holds."""
    if not finite_product(coefficient, vector, dtype):
        values = np.asarray(vector, dtype=np.float64)
        peak = float(np.nanmax(np.abs(values))) if values.size else 0.0
        raise error(
            f"{what}: {coefficient:g} x a vector of peak magnitude {peak:.6g} is not finite in "
            f"{_dtype_name(dtype)} (it overflows past {overflow_threshold(dtype):.6g})",
            code="VALUE_OVERFLOW",
            hint=hint,
        )
