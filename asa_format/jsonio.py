"""Strict JSON reading and canonical JSON writing.

Reading rejects what the standard library accepts silently: duplicate keys
in one object, and the non-standard literals ``NaN``, ``Infinity`` and
``-Infinity``. Writing is canonical: ``indent=2``, ``sort_keys=True``, ASCII
escapes off (UTF-8), a final newline, and no non-finite floats.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["DuplicateKeyError", "NonFiniteError", "dumps_canonical", "loads_strict"]


class DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


class NonFiniteError(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(f"non-finite number literal {literal!r}")
        self.literal = literal


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def _reject_constant(literal: str) -> Any:
    raise NonFiniteError(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # e.g. 1e400 overflows to inf
        raise NonFiniteError(literal)
    return value


def loads_strict(text: str) -> Any:
    """Parse JSON, raising DuplicateKeyError / NonFiniteError / json.JSONDecodeError.

    Other ValueErrors are possible (e.g. an integer literal over Python's
    digit limit); callers treat every ValueError as invalid JSON.
    """
    return json.loads(
        text, object_pairs_hook=_pairs_hook, parse_constant=_reject_constant, parse_float=_finite_float
    )


def dumps_canonical(value: Any) -> bytes:
    """Serialize ``value`` canonically (UTF-8 bytes, trailing newline)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")
