"""Strict JSON reading and canonical JSON writing.

One reader for every JSON document asa-format parses (manifest, safetensors
header, legacy ``config.json``, ``model.sig``). It rejects what the standard
library accepts silently:

* duplicate keys in one object (:class:`DuplicateKeyError`);
* the non-standard literals ``NaN``, ``Infinity``, ``-Infinity`` and number
  literals that overflow to infinity (:class:`NonFiniteError`);
* nesting deeper than ``MAX_JSON_DEPTH``, integer literals longer than
  ``MAX_JSON_INT_DIGITS`` digits, any number literal longer than
  ``MAX_JSON_NUMBER_CHARS`` characters (:class:`JsonLimitError`);
* strings (keys and values) holding a lone surrogate (``"\\ud800"``) or a
  Unicode non-character (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF)
  (:class:`JsonTextError`): such text cannot be written as UTF-8 or printed.

The limits are checked before or while parsing, so the work is linear in the
size of the document. Writing is canonical: ``indent=2``, ``sort_keys=True``,
UTF-8 (no ASCII escapes), a final newline, and no non-finite floats.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_JSON_INT_DIGITS",
    "MAX_JSON_NUMBER_CHARS",
    "DuplicateKeyError",
    "JsonLimitError",
    "JsonTextError",
    "NonFiniteError",
    "bad_text",
    "dumps_canonical",
    "loads_strict",
]

MAX_JSON_DEPTH = 64  # arrays and objects nested in one another
MAX_JSON_INT_DIGITS = 40  # digits of one integer literal (2**128 has 39)
MAX_JSON_NUMBER_CHARS = 400  # characters of one number literal


class DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


class NonFiniteError(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(f"non-finite number literal {literal!r}")
        self.literal = literal


class JsonLimitError(json.JSONDecodeError):
    """The document exceeds a structural limit (depth, digits, literal length).

    A ``JSONDecodeError`` so that every caller handling malformed JSON handles it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, "", 0)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


class JsonTextError(JsonLimitError):
    """A string holds a lone surrogate or a Unicode non-character."""


_NONCHARS = "\ufdd0-\ufdef" + "".join(
    re.escape(chr(plane * 0x10000 + 0xFFFE)) + re.escape(chr(plane * 0x10000 + 0xFFFF))
    for plane in range(17)
)
_BAD_TEXT = re.compile(f"[\ud800-\udfff{_NONCHARS}]")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def bad_text(text: str) -> str | None:
    """Describe the first lone surrogate or non-character in ``text``, or None."""
    m = _BAD_TEXT.search(text)
    if m is None:
        return None
    cp = ord(m.group())
    kind = "a lone surrogate" if 0xD800 <= cp <= 0xDFFF else "a Unicode non-character"
    return f"U+{cp:04X} ({kind}) at character {m.start()}"


_DEPTH_CHUNK = 1 << 20


def _max_depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings; linear time, memory bounded by a chunk."""
    skeleton = _STRINGS.sub("", text).encode("utf-8", "surrogatepass")
    depth = best = 0
    for start in range(0, len(skeleton), _DEPTH_CHUNK):
        arr = np.frombuffer(skeleton, dtype=np.uint8)[start : start + _DEPTH_CHUNK]
        opens = (arr == ord("[")) | (arr == ord("{"))
        closes = (arr == ord("]")) | (arr == ord("}"))
        running = np.cumsum(opens.astype(np.int64) - closes.astype(np.int64)) + depth
        best = max(best, int(running.max()))
        depth = int(running[-1])
    return best


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
    if len(literal) > MAX_JSON_NUMBER_CHARS:
        raise JsonLimitError(
            f"a number literal has {len(literal)} characters, over the limit of {MAX_JSON_NUMBER_CHARS}"
        )
    value = float(literal)
    if not math.isfinite(value):  # e.g. 1e400 overflows to inf
        raise NonFiniteError(literal)
    return value


def _any_float(literal: str) -> float:
    if len(literal) > MAX_JSON_NUMBER_CHARS:
        raise JsonLimitError(
            f"a number literal has {len(literal)} characters, over the limit of {MAX_JSON_NUMBER_CHARS}"
        )
    return float(literal)


def _bounded_int(literal: str) -> int:
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_JSON_INT_DIGITS:
        raise JsonLimitError(
            f"an integer literal has {digits} digits, over the limit of {MAX_JSON_INT_DIGITS}"
        )
    return int(literal)


def _check_strings(doc: Any) -> None:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            where = bad_text(item)
            if where is not None:
                raise JsonTextError(f"a string holds {where}")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _python_constant(literal: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[literal]


def loads_strict(text: str, *, nonfinite: bool = False) -> Any:
    """Parse JSON text under the limits above.

    ``nonfinite=True`` accepts the literals ``NaN``, ``Infinity`` and
    ``-Infinity`` that Python's ``json.dump`` writes (legacy ``config.json``).

    Raises DuplicateKeyError, NonFiniteError, JsonLimitError, JsonTextError or
    json.JSONDecodeError, all subclasses of ValueError: callers may treat every
    ValueError as invalid JSON and report ``str(exc)``.
    """
    where = bad_text(text)  # raw (unescaped) lone surrogates in the text itself
    if where is not None:
        raise JsonTextError(f"the text holds {where}")
    depth = _max_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise JsonLimitError(
            f"the document nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}"
        )
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_pairs_hook,
            parse_constant=_python_constant if nonfinite else _reject_constant,
            parse_float=_any_float if nonfinite else _finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError as exc:  # pragma: no cover - the depth pre-check prevents it
        raise JsonLimitError("the document nests too deeply") from exc
    _check_strings(doc)
    return doc


def dumps_canonical(value: Any) -> bytes:
    """Serialize ``value`` canonically (UTF-8 bytes, trailing newline)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")
