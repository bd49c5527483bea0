"""GGUF bytes for tests, written field by field from the format's description (no gguf package).

The tests build hostile files (lying counts, lengths, offsets, types) that no
writer would produce, so this writer lays out every field itself:
``magic, version u32, n_tensors u64, n_kv u64``; each key-value pair as
``key (u64 length + bytes), type u32, value`` (an array: ``element type u32,
count u64, elements``); each tensor info as ``name, n_dims u32, dims u64...,
ggml type u32, offset u64``; padding to the alignment; the tensor data, each
tensor padded. ``tests/test_gguf_reader.py`` checks that ggml's own Python
reader reads what this writes the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TYPE", "array_kv", "gguf_file", "kv", "string", "tensor_info"]

TYPE = {
    "UINT8": 0,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 3,
    "UINT32": 4,
    "INT32": 5,
    "FLOAT32": 6,
    "BOOL": 7,
    "STRING": 8,
    "ARRAY": 9,
    "UINT64": 10,
    "INT64": 11,
    "FLOAT64": 12,
}
_FMT = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def string(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def _scalar(vtype: int, value: Any) -> bytes:
    if vtype == TYPE["STRING"]:
        return string(value)
    return struct.pack(_FMT[vtype], value)


def kv(key: str | bytes, vtype: str, value: Any) -> bytes:
    return string(key) + struct.pack("<I", TYPE[vtype]) + _scalar(TYPE[vtype], value)


def array_kv(key: str | bytes, etype: str, items: Sequence[Any], count: int | None = None) -> bytes:
    """An array pair; ``count`` may lie about ``len(items)``."""
    body = b"".join(_scalar(TYPE[etype], v) for v in items)
    n = len(items) if count is None else count
    return string(key) + struct.pack("<IIQ", TYPE["ARRAY"], TYPE[etype], n) + body


def tensor_info(
    name: str | bytes, dims: Sequence[int], ggml_type: int = 0, offset: int = 0
) -> bytes:
    return (
        string(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _pad(n: int, align: int) -> int:
    return -n % align


def gguf_file(
    *,
    hint: str | None = "llama",
    arch: str = "controlvector",
    directions: Mapping[int, np.ndarray] | None = None,
    extra: Sequence[bytes] = (),
    layer_count: bool = True,
    version: int = 3,
    alignment: int = 32,
    offsets: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    pad_last: bool = True,
) -> bytes:
    """A control vector (valid with the defaults); each argument bends one field."""
    if directions is None:
        directions = {1: np.linspace(-1, 1, 8, dtype=np.float32), 2: np.full(8, 0.5, np.float32)}
    pairs = [kv("general.architecture", "STRING", arch)]
    if hint is not None:
        pairs.append(kv(f"{arch}.model_hint", "STRING", hint))
    if layer_count:
        pairs.append(kv(f"{arch}.layer_count", "UINT32", len(directions)))
    if alignment != 32:
        pairs.append(kv("general.alignment", "UINT32", alignment))
    pairs += list(extra)
    blocks = sorted(directions)
    datas = [np.ascontiguousarray(directions[b], dtype="<f4").tobytes() for b in blocks]
    infos = []
    offset = 0
    for i, b in enumerate(blocks):
        name = names[i] if names is not None else f"direction.{b}"
        shape = list(np.asarray(directions[b]).shape)[::-1] or [0]
        off = offsets[i] if offsets is not None else offset
        infos.append(tensor_info(name, shape, 0, off))
        offset += len(datas[i]) + _pad(len(datas[i]), alignment)
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(blocks) if n_tensors is None else n_tensors,
        len(pairs) if n_kv is None else n_kv,
    )
    out = head + b"".join(pairs) + b"".join(infos)
    out += b"\0" * _pad(len(out), alignment)
    for i, data in enumerate(datas):
        out += data
        if pad_last or i < len(datas) - 1:
            out += b"\0" * _pad(len(data), alignment)
    return out
