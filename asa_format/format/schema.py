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


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


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
    instance: Any, schema: Any, root: Any | None = None, path: tuple[str | int, ...] = ()
) -> Iterator[SchemaViolation]:
    """Yield every violation of ``schema`` by ``instance`` (like jsonschema's iter_errors)."""
    root = schema if root is None else root
    if schema is True:
        return
    if schema is False:
        yield SchemaViolation(path, "false", "no value is allowed here")
        return
    if "$ref" in schema:
        target = root["$defs"][schema["$ref"][len("#/$defs/") :]]
        yield from iter_violations(instance, target, root, path)
    if "type" in schema and not _is_type(instance, schema["type"]):
        yield SchemaViolation(path, "type", f"{_short(instance)} is not of type {schema['type']!r}")
        return
    if "const" in schema and not _json_equal(instance, schema["const"]):
        yield SchemaViolation(path, "const", f"{schema['const']!r} was expected")
    if "enum" in schema and not any(_json_equal(instance, e) for e in schema["enum"]):
        yield SchemaViolation(path, "enum", f"{_short(instance)} is not one of {schema['enum']!r}")
    if "not" in schema and not any(
        True for _ in iter_violations(instance, schema["not"], root, path)
    ):
        yield SchemaViolation(
            path, "not", f"{_short(instance)} should not be valid under {schema['not']!r}"
        )
    if "oneOf" in schema:
        matches = sum(
            1
            for sub in schema["oneOf"]
            if not any(True for _ in iter_violations(instance, sub, root, path))
        )
        if matches != 1:
            what = (
                "is not valid under any of the given schemas"
                if matches == 0
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
                yield from iter_violations(item, schema["items"], root, (*path, i))
    if isinstance(instance, dict):
        yield from _object_violations(instance, schema, root, path)


def _object_violations(
    instance: dict[str, Any], schema: dict[str, Any], root: Any, path: tuple[str | int, ...]
) -> Iterator[SchemaViolation]:
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
            for v in iter_violations(key, schema["propertyNames"], root, path):
                yield SchemaViolation(path, "propertyNames", f"property name {key!r}: {v.message}")
    properties = schema.get("properties", {})
    extra: list[str] = []
    for key, value in instance.items():
        if key in properties:
            yield from iter_violations(value, properties[key], root, (*path, key))
        else:
            extra.append(key)
    additional = schema.get("additionalProperties", True)
    if extra and additional is False:
        names = ", ".join(repr(k) for k in extra)
        yield SchemaViolation(
            path,
            "additionalProperties",
            f"additional properties are not allowed ({names} {'was' if len(extra) == 1 else 'were'} unexpected)",
        )
    elif extra and isinstance(additional, dict):
        for key in extra:
            yield from iter_violations(instance[key], additional, root, (*path, key))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
