"""The manifest's string types (spec section 3.3), for text that ends up in a manifest.

A model type read from a GGUF or ``.svec`` file, an option such as
``--model-type`` or ``--model-hint``, or a model's ``config.json`` becomes a
manifest member; it is checked against the same schema definition
(``$defs/label``, ``$defs/text``) with the same ECMA-262 pattern semantics
(:func:`asa_format.format.schema.ecma_regex`: no match before a final newline).
"""

from __future__ import annotations

from typing import Any

from asa_format.format.manifest import manifest_schema
from asa_format.format.schema import iter_violations

__all__ = ["is_label", "is_text"]


def _conforms(value: Any, definition: str) -> bool:
    schema = manifest_schema()
    return isinstance(value, str) and not any(
        True for _ in iter_violations(value, schema["$defs"][definition], schema)
    )


def is_label(value: Any) -> bool:
    """A *label*: 1 to 128 characters, none a control character (U+0000..U+001F, U+007F)."""
    return _conforms(value, "label")


def is_text(value: Any) -> bool:
    """A *text*: 1 to 512 characters, no control characters."""
    return _conforms(value, "text")
