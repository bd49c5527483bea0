"""Argument checks of the public functions: a wrong type or range is a coded ``UsageError``.

The public functions (``load_bundle``, ``save_bundle``, the signing, import
and export functions, ...) call these first, before any file is read, so
that ``load_bundle(123)``, ``save_bundle(None, ...)``, ``verify=\"no\"`` or
``trusted_keys=5`` end in a ``UsageError`` (code ``USAGE``) that names the
argument, never in a ``TypeError`` or ``AttributeError`` from deep inside,
and a truthy non-bool is never taken for ``True``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from asa_format.errors import UsageError
from asa_format.storage.inputs import check_path_arg

__all__ = [
    "binding_args",
    "bool_arg",
    "bytes_arg",
    "callable_arg",
    "digest_arg",
    "digests_arg",
    "finite_number_arg",
    "int_arg",
    "key_sources_arg",
    "optional_path_arg",
    "path_arg",
]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # used with fullmatch
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch


def _usage(message: str, hint: str) -> UsageError:
    return UsageError(message, hint=hint)


def _kind(value: object) -> str:
    return type(value).__name__


def path_arg(value: object, name: str) -> Path:
    """A str or os.PathLike path (not bytes, not empty, no NUL)."""
    return check_path_arg(value, name)


def optional_path_arg(value: object, name: str) -> Path | None:
    return None if value is None else check_path_arg(value, name)


def bool_arg(value: object, name: str) -> bool:
    """``True`` or ``False`` exactly: a truthy string or number is not taken for True."""
    if not isinstance(value, bool):
        raise _usage(
            f"{name} must be True or False, not {_kind(value)}", f"pass {name}=True or False"
        )
    return value


def bytes_arg(value: object, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _usage(f"{name} must be bytes, not {_kind(value)}", f"pass {name} as bytes")
    return bytes(value)


def callable_arg(value: object, name: str) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise _usage(
            f"{name} must be callable or None, not {_kind(value)}", f"pass a function as {name}"
        )
    return value


def digest_arg(value: object, name: str) -> str | None:
    """None, or a root digest ``sha256:`` + 64 lowercase hex digits."""
    if value is None:
        return None
    if not isinstance(value, str) or _DIGEST.fullmatch(value) is None:
        raise _usage(
            f"{name} is {str(value)[:80]!r}; expected 'sha256:' and 64 lowercase hex digits",
            "pass the root digest that asa inspect or asa validate prints",
        )
    return value


def digests_arg(value: object, name: str) -> Mapping[str, str] | None:
    """None, or a mapping file name -> sha256 hex digest."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v) for k, v in value.items()
    ):
        raise _usage(
            f"{name} must map file names to sha256 hex digests",
            f"pass {name} as {{name: sha256 hex}}",
        )
    return value


def key_sources_arg(value: object, name: str) -> list[Any] | None:
    """None, a list or tuple of key sources, or one key source (returned as a list of one).

    The elements themselves (key objects, PEM bytes, key file paths) are checked
    where they are loaded: anything else is a ``SIGNATURE_KEY_INVALID`` that names
    its type.
    """
    del name
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def finite_number_arg(value: object, name: str, low: float, high: float) -> float:
    """A real number (not bool), finite, in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            ok = isinstance(value, (np.integer, np.floating))
        except ImportError:  # pragma: no cover
            ok = False
        if not ok:
            raise _usage(f"{name} must be a number, not {_kind(value)}", f"pass {name} as a float")
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise _usage(
            f"{name} is {str(value)[:40]}; it must be a finite number in [{low:g}, {high:g}]",
            f"pass a finite {name}",
        )
    return number


def int_arg(value: object, name: str, low: int, high: int) -> int:
    """An integer (not bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _usage(f"{name} must be an integer, not {_kind(value)}", f"pass {name} as an int")
    if not low <= value <= high:
        raise _usage(
            f"{name} is {str(value)[:40]}; it must be in [{low}, {high}]", f"pass {name} in range"
        )
    return value


def binding_args(model_id: object, model_type: object, num_layers: object) -> None:
    """The model binding options of the converters (each optional)."""
    from asa_format.format.textrules import is_label, is_text

    if model_id is not None and not is_text(model_id):
        raise _usage(
            f"model_id {str(model_id)[:60]!r} is not text without control characters",
            "pass the model id",
        )
    if model_type is not None and not is_label(model_type):
        raise _usage(
            f"model_type {str(model_type)[:60]!r} is not a model type (1..128 characters, no control characters)",
            "pass the transformers model_type, e.g. llama",
        )
    if num_layers is not None:
        int_arg(num_layers, "num_layers", 1, 100_000)
