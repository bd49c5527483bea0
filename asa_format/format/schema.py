"""A small, fast JSON Schema (Draft 2020-12) evaluator for the manifest schema.

``spec/manifest.schema.json`` uses a fixed subset of Draft 2020-12 keywords.
This module evaluates exactly that subset (and refuses a schema that uses
any other keyword, so the subset cannot drift silently). It exists because
``asa validate`` must run in a fraction of a second and a general JSON
Schema library costs more to import than the whole check. The test suite
checks that it agrees with the ``jsonschema`` reference implementation on
every conformance manifest and on mutated manifests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "SUPPORTED_KEYWORDS",
    "SchemaError",
    "SchemaViolation",
    "check_schema",
    "ecma_regex",
    "iter_violations",
]

SUPPORTED_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$defs",
        "$ref",
        "title",
        "description",
        "type",
        "const",
        "enum",
        "not",
        "oneOf",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "items",
        "minItems",
        "maxItems",
    }
)


class SchemaError(ValueError):
    """The schema itself uses something this evaluator does not support."""


@dataclass(frozen=True)
class SchemaViolation:
    path: tuple[str | int, ...]  # location in the instance
    keyword: str  # the failing keyword, e.g. "additionalProperties"
    message: str
    unknown: bool = (
        False  # an ``additionalProperties: false`` violation: members the schema does not know
    )


def check_schema(schema: Any) -> None:
    """Raise SchemaError if ``schema`` uses keywords outside the supported subset."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"schema node is {type(schema).__name__}, expected an object")
    unknown = set(schema) - SUPPORTED_KEYWORDS
    if unknown:
        raise SchemaError(f"unsupported keywords {sorted(unknown)}")
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            check_schema(sub)
    for key in ("not", "items", "propertyNames", "additionalProperties"):
        if key in schema and not isinstance(schema[key], bool):
            check_schema(schema[key])
    for sub in schema.get("oneOf", []):
        check_schema(sub)
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/$defs/")):
        raise SchemaError(f"unsupported $ref {ref!r}")
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            raise SchemaError(f"pattern {schema['pattern']!r} is not a string")
        ecma_regex(schema["pattern"])  # SchemaError for syntax whose meaning differs in Python


# ECMA-262 escapes with the same meaning in Python's ``re`` (identity escapes of
# syntax characters, and the control escapes); ``\uXXXX`` is handled apart.
_SAME_ESCAPES = frozenset("\\.-^$()[]{}|*+?/ntrfv")
_LINE_TERMINATORS = "\\n\\r\\u2028\\u2029"


def ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile a JSON Schema ``pattern`` with its ECMA-262 meaning.

    JSON Schema patterns are ECMA-262 regular expressions. Python's ``re``
    differs where it matters for validation: ``$`` also matches *before* a
    final newline (``"^[a-z]+$"`` accepts ``"valid\\n"``) and ``.`` matches
    ``\\r``. So ``$`` outside a character class becomes ``\\Z`` (the end of
    the string, nothing else), ``.`` becomes ``[^\\n\\r\\u2028\\u2029]``, and
    the escapes whose meaning differs (``\\d``, ``\\w``, ``\\s``, ``\\b`` and
    the like: Unicode-aware in Python) and group syntax other than ``(?:``,
    ``(?=`` and ``(?!`` are refused with SchemaError, as is an empty class
    ``[]``. Patterns are searched (not anchored), as in JSON Schema.
    """
    return _ecma_regex(pattern)


@lru_cache(maxsize=256)
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise SchemaError(f"pattern {pattern!r} ends with a lone backslash")
            nxt = pattern[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", pattern[i + 2 : i + 6]):
                out.append(pattern[i : i + 6])
                i += 6
                continue
            if nxt not in _SAME_ESCAPES:
                raise SchemaError(
                    f"pattern {pattern!r}: the escape \\{nxt} means something else in Python's re"
                )
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            out.append(ch)
        elif ch == "[":
            rest = pattern[i + 1 : i + 3]
            if rest.startswith("]") or rest == "^]":
                raise SchemaError(f"pattern {pattern!r}: empty character class")
            in_class = True
            out.append(ch)
            if rest.startswith("^"):
                out.append("^")
                i += 1
        elif ch == "$":
            out.append(r"\Z")
        elif ch == ".":
            out.append(f"[^{_LINE_TERMINATORS}]")
        elif (
            ch == "("
            and pattern[i + 1 : i + 2] == "?"
            and pattern[i + 2 : i + 3] not in (":", "=", "!")
        ):
            raise SchemaError(
                f"pattern {pattern!r}: group syntax (?{pattern[i + 2 : i + 3]} is not portable"
            )
        else:
            out.append(ch)
        i += 1
    if in_class:
        raise SchemaError(f"pattern {pattern!r}: unterminated character class")
    try:
        return re.compile("".join(out))
    except re.error as exc:
        raise SchemaError(f"pattern {pattern!r} does not compile: {exc}") from None


def _regex(pattern: str) -> re.Pattern[str]:
    return ecma_regex(pattern)


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float))
    raise SchemaError(f"unsupported type {name!r}")


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def iter_violations(
    instance: Any,
    schema: Any,
    root: Any | None = None,
    path: tuple[str | int, ...] = (),
    *,
    ignore_unknown: bool = False,
) -> Iterator[SchemaViolation]:
    """Yield every violation of ``schema`` by ``instance`` (like jsonschema's iter_errors).

    ``ignore_unknown`` (a manifest of a newer minor version, spec section 9.2):
    members that an ``additionalProperties: false`` rejects are still yielded
    (``unknown=True``, for the caller to report as warnings), but they do not
    make a ``oneOf`` branch or a ``not`` subschema fail, so an unknown member
    is ignored at every depth, inside ``oneOf`` alternatives included.
    """
    root = schema if root is None else root
    sub: dict[str, Any] = {"ignore_unknown": ignore_unknown}

    def matches(instance: Any, subschema: Any) -> tuple[bool, list[SchemaViolation]]:
        found = list(iter_violations(instance, subschema, root, path, **sub))
        ok = all(v.unknown for v in found) if ignore_unknown else not found
        return ok, found

    if schema is True:
        return
    if schema is False:
        yield SchemaViolation(path, "false", "no value is allowed here")
        return
    if "$ref" in schema:
        target = root["$defs"][schema["$ref"][len("#/$defs/") :]]
        yield from iter_violations(instance, target, root, path, **sub)
    if "type" in schema and not _is_type(instance, schema["type"]):
        yield SchemaViolation(path, "type", f"{_short(instance)} is not of type {schema['type']!r}")
        return
    if "const" in schema and not _json_equal(instance, schema["const"]):
        yield SchemaViolation(path, "const", f"{schema['const']!r} was expected")
    if "enum" in schema and not any(_json_equal(instance, e) for e in schema["enum"]):
        yield SchemaViolation(path, "enum", f"{_short(instance)} is not one of {schema['enum']!r}")
    if "not" in schema and matches(instance, schema["not"])[0]:
        yield SchemaViolation(
            path, "not", f"{_short(instance)} should not be valid under {schema['not']!r}"
        )
    if "oneOf" in schema:
        results = [matches(instance, branch) for branch in schema["oneOf"]]
        matching = [found for ok, found in results if ok]
        if len(matching) == 1:
            yield from matching[0]  # ignore_unknown: the unknown members of the one branch
        else:
            what = (
                "is not valid under any of the given schemas"
                if not matching
                else "is valid under each of several given schemas"
            )
            yield SchemaViolation(path, "oneOf", f"{_short(instance)} {what}")
    if isinstance(instance, (int, float)) and not isinstance(instance, bool):
        if "minimum" in schema and instance < schema["minimum"]:
            yield SchemaViolation(
                path, "minimum", f"{instance!r} is less than the minimum of {schema['minimum']!r}"
            )
        if "maximum" in schema and instance > schema["maximum"]:
            yield SchemaViolation(
                path,
                "maximum",
                f"{instance!r} is greater than the maximum of {schema['maximum']!r}",
            )
    if isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            yield SchemaViolation(path, "minLength", f"{_short(instance)} is too short")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            yield SchemaViolation(path, "maxLength", f"{_short(instance)} is too long")
        if "pattern" in schema and _regex(schema["pattern"]).search(instance) is None:
            yield SchemaViolation(
                path, "pattern", f"{_short(instance)} does not match {schema['pattern']!r}"
            )
    if isinstance(instance, list):
        if "minItems" in schema and len(instance) < schema["minItems"]:
            yield SchemaViolation(
                path, "minItems", f"should have at least {schema['minItems']} items"
            )
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            yield SchemaViolation(
                path, "maxItems", f"should have at most {schema['maxItems']} items"
            )
        if "items" in schema:
            for i, item in enumerate(instance):
                yield from iter_violations(item, schema["items"], root, (*path, i), **sub)
    if isinstance(instance, dict):
        yield from _object_violations(instance, schema, root, path, ignore_unknown)


def _object_violations(
    instance: dict[str, Any],
    schema: dict[str, Any],
    root: Any,
    path: tuple[str | int, ...],
    ignore_unknown: bool,
) -> Iterator[SchemaViolation]:
    sub: dict[str, Any] = {"ignore_unknown": ignore_unknown}
    for name in schema.get("required", []):
        if name not in instance:
            yield SchemaViolation(path, "required", f"{name!r} is a required property")
    if "minProperties" in schema and len(instance) < schema["minProperties"]:
        yield SchemaViolation(
            path, "minProperties", f"should have at least {schema['minProperties']} properties"
        )
    if "maxProperties" in schema and len(instance) > schema["maxProperties"]:
        yield SchemaViolation(
            path, "maxProperties", f"should have at most {schema['maxProperties']} properties"
        )
    if "propertyNames" in schema:
        for key in instance:
            for v in iter_violations(key, schema["propertyNames"], root, path, **sub):
                yield SchemaViolation(path, "propertyNames", f"property name {key!r}: {v.message}")
    properties = schema.get("properties", {})
    extra: list[str] = []
    for key, value in instance.items():
        if key in properties:
            yield from iter_violations(value, properties[key], root, (*path, key), **sub)
        else:
            extra.append(key)
    additional = schema.get("additionalProperties", True)
    if extra and additional is False:
        names = ", ".join(repr(k) for k in extra)
        yield SchemaViolation(
            path,
            "additionalProperties",
            f"additional properties are not allowed ({names} {'was' if len(extra) == 1 else 'were'} unexpected)",
            unknown=True,
        )
    elif extra and isinstance(additional, dict):
        for key in extra:
            yield from iter_violations(instance[key], additional, root, (*path, key), **sub)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
