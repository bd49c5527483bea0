"""The safetensors profile of ``vectors.safetensors``: strict reader and writer.

Byte format (a strict subset of safetensors, readable by the safetensors
library)::

    [8 bytes]  N, unsigned little-endian 64-bit: length of the header
    [N bytes]  header: UTF-8 JSON object, optionally right-padded with spaces
    [rest]     tensor data, little-endian, row-major, no gaps, no trailing bytes

Header: ``{"__metadata__": {"format": "asa-bundle"}, NAME: {"dtype": "F32",
"shape": [H], "data_offsets": [BEGIN, END]}, ...}``. Offsets are relative to
the first byte after the header. Profile rules (each with its error code):

* ``N <= 1 MiB`` and ``8 + N <= file size``          (SAFETENSORS_HEADER_TOO_LARGE / _HEADER)
* strict JSON, no duplicate keys, entries are objects  (SAFETENSORS_HEADER / SAFETENSORS_KEYS)
* entry keys exactly ``dtype``, ``shape``, ``data_offsets``   (SAFETENSORS_KEYS)
* dtype ``F32`` only                                     (SAFETENSORS_DTYPE)
* shape ``[H]`` with H the manifest's hidden size         (SAFETENSORS_SHAPE)
* sorted by offset the tensors tile the data exactly: first at 0, each
  starting where the previous ended, END - BEGIN = 4 * H, the last ending at
  the end of the file                                    (SAFETENSORS_OFFSETS)
* tensor names exactly the domain names plus ``global`` (SAFETENSORS_KEYS)
* ``__metadata__`` absent or exactly ``{"format": "asa-bundle"}`` (SAFETENSORS_METADATA)
* all values finite                                      (SAFETENSORS_NONFINITE)
* every vector unit-norm within 1e-4                     (VECTOR_NOT_UNIT)

The writer emits tensors in sorted name order, the header with sorted keys and
no whitespace, padded with spaces to a multiple of 8 bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from asa_format import constants as C
from asa_format.errors import BundleError, ErrorCode, Problem
from asa_format.format.jsonio import DuplicateKeyError, loads_strict

__all__ = ["METADATA", "parse_vectors", "serialize_vectors"]

METADATA = {"format": C.FORMAT_NAME}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def serialize_vectors(vectors: Mapping[str, np.ndarray]) -> bytes:
    """Serialize float32 ``[H]`` vectors deterministically (sorted names)."""
    header: dict[str, object] = {"__metadata__": dict(METADATA)}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(vectors):
        try:
            arr = np.ascontiguousarray(np.asarray(vectors[name], dtype="<f4"))
        except (TypeError, ValueError) as exc:
            raise BundleError(
                f"vector {name!r} is not a numeric array: {exc}",
                code="SAFETENSORS_DTYPE",
                file=C.VECTORS_FILE,
                hint="pass one float32 array of shape [hidden_size] per name",
            ) from exc
        if arr.ndim != 1:
            raise BundleError(
                f"vector {name!r} must be 1-D, got shape {list(arr.shape)}",
                code="SAFETENSORS_SHAPE",
                file=C.VECTORS_FILE,
                hint="pass one float32 array of shape [hidden_size] per domain and 'global'",
            )
        blob = arr.tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": [int(arr.shape[0])],
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def parse_vectors(
    data: bytes,
    *,
    hidden_size: int | None,
    names: Sequence[str] | None,
    file: str = C.VECTORS_FILE,
    unit_norm: bool = True,
) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """Parse and check ``vectors.safetensors`` bytes against the profile.

    ``hidden_size`` / ``names`` come from the manifest (``None`` skips that
    check). Returns the vectors (float32 copies) and the problems found.
    ``file``/``unit_norm``: format 1.1's ``interventions.safetensors`` has the
    same profile except that its directions carry their magnitude.
    """
    problems: list[Problem] = []

    def bad(code: ErrorCode, message: str, hint: str) -> None:
        problems.append(Problem(code=code, file=file, message=message, hint=hint))

    if len(data) < 8:
        bad(
            "SAFETENSORS_HEADER",
            f"file is {len(data)} bytes, too short for a header length",
            "rewrite the file",
        )
        return {}, problems
    (n,) = struct.unpack("<Q", data[:8])
    if n > C.MAX_SAFETENSORS_HEADER_BYTES:
        bad(
            "SAFETENSORS_HEADER_TOO_LARGE",
            f"header length {n} exceeds the cap of {C.MAX_SAFETENSORS_HEADER_BYTES} bytes",
            "the header of a valid vectors file is a few kilobytes",
        )
        return {}, problems
    if 8 + n > len(data):
        bad(
            "SAFETENSORS_HEADER",
            f"header length {n} runs past the end of the {len(data)}-byte file",
            "the file is truncated or corrupt",
        )
        return {}, problems
    raw = data[8 : 8 + n]
    try:
        text = raw.decode("utf-8")
        header = loads_strict(text.rstrip(" "))
    except DuplicateKeyError as exc:
        bad(
            "SAFETENSORS_KEYS",
            f"header repeats the key {exc.key!r}",
            "each tensor name must appear once",
        )
        return {}, problems
    except (ValueError, RecursionError) as exc:  # bad UTF-8, JSON, NaN, huge integers
        bad(
            "SAFETENSORS_HEADER",
            f"header is not valid UTF-8 JSON: {exc}",
            "rewrite the file with asa-format",
        )
        return {}, problems
    if not isinstance(header, dict):
        bad("SAFETENSORS_HEADER", "header is not a JSON object", "rewrite the file with asa-format")
        return {}, problems

    metadata = header.pop("__metadata__", None)
    if metadata is not None and metadata != METADATA:
        bad(
            "SAFETENSORS_METADATA",
            f"__metadata__ is {json.dumps(metadata)[:200]}, only {json.dumps(METADATA)} is allowed",
            "drop other metadata; provenance belongs in manifest.json",
        )

    data_len = len(data) - 8 - n
    entries: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            bad(
                "SAFETENSORS_KEYS",
                f"entry {name!r} is not an object",
                "each tensor entry is {dtype, shape, data_offsets}",
            )
            continue
        keys = set(entry)
        if keys != _ENTRY_KEYS:
            extra = sorted(keys - _ENTRY_KEYS)
            missing = sorted(_ENTRY_KEYS - keys)
            bad(
                "SAFETENSORS_KEYS",
                f"entry {name!r} has unknown keys {extra} / lacks keys {missing}",
                "a tensor entry has exactly dtype, shape and data_offsets",
            )
            continue
        if entry["dtype"] != "F32":
            bad(
                "SAFETENSORS_DTYPE",
                f"tensor {name!r} has dtype {entry['dtype']!r}",
                "steering vectors are F32",
            )
            continue
        shape = entry["shape"]
        if not (
            isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0
        ):
            bad(
                "SAFETENSORS_SHAPE",
                f"tensor {name!r} has shape {shape!r}, expected [hidden_size]",
                "store 1-D vectors",
            )
            continue
        if hidden_size is not None and shape[0] != hidden_size:
            bad(
                "SAFETENSORS_SHAPE",
                f"tensor {name!r} has shape [{shape[0]}], "
                f"the manifest's hidden size is {hidden_size}",
                "vectors must have the model's hidden size",
            )
            continue
        offsets = entry["data_offsets"]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int and o >= 0 for o in offsets)
        ):
            bad(
                "SAFETENSORS_OFFSETS",
                f"tensor {name!r} has data_offsets {offsets!r}",
                "use [begin, end] byte offsets",
            )
            continue
        begin, end = offsets
        if end - begin != 4 * shape[0]:
            bad(
                "SAFETENSORS_OFFSETS",
                f"tensor {name!r} spans {end - begin} bytes, its shape needs {4 * shape[0]}",
                "offsets must match dtype and shape",
            )
            continue
        entries.append((begin, end, name))

    entries.sort()
    position = 0
    for begin, end, name in entries:
        if begin != position:
            kind = (
                "overlaps the previous tensor"
                if begin < position
                else f"leaves a gap of {begin - position} bytes"
            )
            bad(
                "SAFETENSORS_OFFSETS",
                f"tensor {name!r} starts at {begin}: it {kind}",
                "tensors must be contiguous",
            )
        position = max(position, end)
    if entries and position != data_len:
        if position > data_len:
            bad(
                "SAFETENSORS_OFFSETS",
                f"tensor data runs to byte {position}, past the {data_len}-byte data section",
                "the file is truncated",
            )
        else:
            bad(
                "SAFETENSORS_OFFSETS",
                f"{data_len - position} trailing bytes after the last tensor",
                "remove the trailing bytes",
            )
    if not entries and data_len:
        bad(
            "SAFETENSORS_OFFSETS",
            f"{data_len} data bytes but no tensors",
            "remove the trailing bytes",
        )

    if names is not None:
        expected = set(names) | {C.GLOBAL_VECTOR}
        present = set(header)
        missing_names = sorted(expected - present)
        unknown_names = sorted(present - expected)
        if missing_names:
            bad(
                "SAFETENSORS_KEYS",
                f"missing vectors for {missing_names}",
                "store one vector per domain plus 'global'",
            )
        if unknown_names:
            bad(
                "SAFETENSORS_KEYS",
                f"unknown tensors {unknown_names}",
                "store only the domains' vectors and 'global'",
            )
    if problems:
        return {}, problems

    body = memoryview(data)[8 + n :]
    vectors: dict[str, np.ndarray] = {}
    for begin, end, name in entries:
        arr = np.frombuffer(body[begin:end], dtype="<f4").astype(np.float32)
        if not np.isfinite(arr).all():
            bad(
                "SAFETENSORS_NONFINITE",
                f"vector {name!r} contains NaN or Infinity",
                "store finite values",
            )
            continue
        norm = float(np.linalg.norm(arr.astype(np.float64)))
        if unit_norm and abs(norm - 1.0) > C.UNIT_NORM_TOLERANCE:
            bad(
                "VECTOR_NOT_UNIT",
                f"vector {name!r} has L2 norm {norm:.6g}, "
                f"expected 1 within {C.UNIT_NORM_TOLERANCE}",
                "normalize steering vectors before writing",
            )
            continue
        vectors[name] = arr
    return (vectors if not problems else {}), problems
