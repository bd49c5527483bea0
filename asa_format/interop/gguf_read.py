"""A bounded reader of GGUF files (the subset a control vector uses), in pure Python.

ggml's Python ``gguf.GGUFReader`` trusts the counts and lengths of a file: a
metadata array header that announces 2**40 elements makes it loop and grow
without end, and it accepts two tensors sharing the same bytes. This reader
checks every count, length and offset against the bytes the file still has
*before* it reads or allocates anything, and applies the rules of ggml's own
C reader (``gguf_init_from_file_impl``), which llama.cpp uses to load a
control vector:

- magic ``GGUF``, version 2 or 3, little-endian;
- metadata keys unique; value types known; no nested arrays (ggml refuses
  them); booleans 0 or 1; ``general.alignment`` a ``UINT32`` power of two;
- tensor names unique and shorter than 64 bytes; at most 4 dimensions, none
  negative, the element count representable;
- tensor data offsets exactly the sum of the padded sizes of the tensors
  before them: data follows in order, aligned, without overlap or gap; the
  padded data of every tensor inside the file.

It reads at most what the file holds (an open descriptor of a regular file
whose size is known), keeps only short metadata values (longer strings and
arrays are skipped, their size checked), and stops at the first
``general.architecture`` that is not a control vector. Every refusal is a
:class:`~asa_format.errors.ConversionError` (``IMPORT_INVALID``, or
``IMPORT_UNKNOWN_KIND`` for another kind of GGUF file).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asa_format.errors import ConversionError

__all__ = [
    "GGML_MAX_DIMS",
    "GGML_MAX_NAME",
    "GGUF_MAGIC",
    "Dropped",
    "GGUFFile",
    "GGUFTensor",
    "read_gguf",
]

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_NAME = 64  # a tensor name is shorter (ggml stores it NUL-terminated in 64 bytes)
GGML_MAX_DIMS = 4
GGML_TYPE_F32 = 0
GGML_TYPE_COUNT = 40  # ggml types 0..39 exist (some retired); the reader keeps F32 only
MAX_KEY_BYTES = 1 << 16
MAX_KEPT_STRING = 1 << 12  # longer string values are skipped (their length checked)
MAX_KEPT_ITEMS = 64  # longer arrays are skipped (their length checked)
MAX_STRING_ITEMS = 1 << 18  # string elements over all arrays: each is walked one by one

# GGUF value types: (name, struct format of one element or None for a string)
_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<B"),
    1: ("INT8", "<b"),
    2: ("UINT16", "<H"),
    3: ("INT16", "<h"),
    4: ("UINT32", "<I"),
    5: ("INT32", "<i"),
    6: ("FLOAT32", "<f"),
    7: ("BOOL", "<B"),
    8: ("STRING", None),
    10: ("UINT64", "<Q"),
    11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
_ARRAY = 9
_STRING = 8
_BOOL = 7
_UINT32 = 4
_INT64_MAX = (1 << 63) - 1
_WINDOW = 1 << 16


@dataclass(frozen=True)
class Dropped:
    """A metadata value that was checked but not kept (too long, or not UTF-8 text)."""

    reason: str


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] first
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class GGUFFile:
    version: int
    fields: dict[str, Any] = field(default_factory=dict)  # key -> value or Dropped
    field_types: dict[str, str] = field(default_factory=dict)  # key -> "UINT32", "ARRAY[STRING]"
    tensors: list[GGUFTensor] = field(default_factory=list)
    alignment: int = GGUF_DEFAULT_ALIGNMENT
    data_start: int = 0
    size: int = 0


Refuse = Callable[[str], ConversionError]


def _pad(x: int, n: int) -> int:
    return ((x + n - 1) // n) * n


class _Cursor:
    """Sequential reads from a descriptor, never past ``size``, through a small window."""

    def __init__(self, fd: int, size: int, refuse: Refuse) -> None:
        self.fd, self.size, self.refuse = fd, size, refuse
        self.pos = 0
        self._buf = b""
        self._buf_at = 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise self.refuse(
                f"{what} needs {n} bytes at offset {self.pos}, but the file ends at {self.size}"
            )

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        start = self.pos - self._buf_at
        if start < 0 or start + n > len(self._buf):
            self._buf = _pread_exact(
                self.fd, max(n, min(_WINDOW, self.left)), self.pos, self.refuse
            )
            self._buf_at, start = self.pos, 0
        self.pos += n
        return self._buf[start : start + n]

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]


def _pread_exact(fd: int, n: int, offset: int, refuse: Refuse) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            raise refuse(f"the file ended at offset {offset + got} while it was read (truncated?)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def read_gguf(
    fd: int,
    size: int,
    refuse: Refuse,
    *,
    architectures: tuple[str, ...] | None = None,
    unknown_kind: Refuse | None = None,
    max_tensors: int = 100_000,
    max_kv: int = 10_000,
) -> GGUFFile:
    """Parse the GGUF file open at ``fd`` (``size`` bytes); ``refuse(message)`` makes the error.

    ``architectures``: the ``general.architecture`` values accepted; another
    string value stops the reading with ``unknown_kind(message)``.
    """
    cur = _Cursor(fd, size, refuse)
    if size < 24:
        raise refuse(f"is {size} bytes, shorter than a GGUF header (24 bytes)")
    if cur.take(4, "the magic") != GGUF_MAGIC:
        raise refuse("is not a GGUF file (no GGUF magic)")
    version = cur.unpack("<I", "the version")
    if version & 0xFFFF == 0 and version != 0:
        raise refuse(f"has GGUF version {version:#x}: a big-endian file; little-endian is read")
    if version not in GGUF_VERSIONS:
        raise refuse(f"has GGUF version {version}; versions 2 and 3 are read")
    n_tensors = cur.unpack("<Q", "the tensor count")
    n_kv = cur.unpack("<Q", "the metadata count")
    # smallest possible entries: a key-value pair 8 + 1 + 4 + 1 bytes, a tensor 8 + 0 + 4 + 4 + 8
    if n_tensors > max_tensors or n_kv > max_kv or 24 + n_kv * 14 + n_tensors * 24 > size:
        raise refuse(
            f"announces {n_tensors} tensors and {n_kv} metadata entries, more than its "
            f"{size} bytes can hold (or over the caps of {max_tensors} and {max_kv})"
        )
    out = GGUFFile(version=version, size=size)
    budget = [MAX_STRING_ITEMS]
    for i in range(n_kv):
        key_len = cur.unpack("<Q", f"the length of metadata key {i}")
        if key_len == 0 or key_len > MAX_KEY_BYTES:
            raise refuse(f"metadata key {i} is {key_len} bytes long (1..{MAX_KEY_BYTES})")
        key = _text(cur.take(key_len, f"metadata key {i}"))
        if key is None or _has_control(key):
            raise refuse(f"metadata key {i} is not UTF-8 text without control characters")
        if key in out.fields:
            raise refuse(f"metadata key {key[:80]!r} appears twice")
        vtype = cur.unpack("<I", f"the type of {key[:80]!r}")
        value, type_name = _value(cur, vtype, key, budget, refuse)
        out.fields[key] = value
        out.field_types[key] = type_name
        if (
            key == "general.architecture"
            and architectures is not None
            and isinstance(value, str)
            and value not in architectures
        ):
            raise (unknown_kind or refuse)(
                f"is a GGUF file with general.architecture {value[:80]!r}, not a control vector"
            )
    if "general.alignment" in out.fields:
        align = out.fields["general.alignment"]
        if out.field_types["general.alignment"] != "UINT32":
            raise refuse(
                f"general.alignment has type {out.field_types['general.alignment']}, expected UINT32"
            )
        if align == 0 or align & (align - 1):
            raise refuse(f"general.alignment is {align}, not a power of two")
        out.alignment = int(align)
    names: set[str] = set()
    for i in range(n_tensors):
        out.tensors.append(_tensor_info(cur, i, names, refuse))
    out.data_start = _pad(cur.pos, out.alignment)
    expected = 0
    for t in out.tensors:
        if t.offset != expected:
            raise refuse(
                f"tensor {t.name!r} has data offset {t.offset}, expected {expected}: tensor data "
                "follows the tensor list in order, each aligned, without overlap or gap (as ggml requires)"
            )
        expected += _pad(t.nbytes, out.alignment)
        if out.data_start + expected > size:
            raise refuse(
                f"the data of tensor {t.name!r} ends at byte {out.data_start + expected} "
                f"(padded), past the end of the file ({size} bytes)"
            )
    return out


def _value(
    cur: _Cursor, vtype: int, key: str, budget: list[int], refuse: Refuse
) -> tuple[Any, str]:
    where = repr(key[:80])
    if vtype == _ARRAY:
        etype = cur.unpack("<I", f"the element type of {where}")
        count = cur.unpack("<Q", f"the length of {where}")
        if etype == _ARRAY:
            raise refuse(f"{where} is an array of arrays, which ggml refuses")
        if etype not in _TYPES:
            raise refuse(f"{where} is an array of unknown type {etype}")
        name, fmt = _TYPES[etype]
        if fmt is None:  # strings: each at least its 8-byte length
            cur.need(count * 8, f"the {count} strings of {where}")
            if count > budget[0]:
                raise refuse(
                    f"{where} holds {count} strings, over the {MAX_STRING_ITEMS} the reader walks"
                )
            budget[0] -= count
            items = [
                _string(cur, f"{where}[{j}]", keep=count <= MAX_KEPT_ITEMS) for j in range(count)
            ]
            dropped = [v for v in items if isinstance(v, Dropped)]
            if count > MAX_KEPT_ITEMS or dropped:
                return Dropped(f"an array of {count} strings"), f"ARRAY[{name}]"
            return items, f"ARRAY[{name}]"
        width = struct.calcsize(fmt)
        cur.need(count * width, f"the {count} elements of {where}")
        if count > MAX_KEPT_ITEMS:
            cur.skip(count * width, where)
            return Dropped(f"an array of {count} {name} values"), f"ARRAY[{name}]"
        raw = cur.take(count * width, where)
        values = [v for (v,) in struct.iter_unpack(fmt, raw)]
        if etype == _BOOL:
            if any(v not in (0, 1) for v in values):
                raise refuse(f"{where} holds a boolean that is neither 0 nor 1")
            values = [bool(v) for v in values]
        return values, f"ARRAY[{name}]"
    if vtype not in _TYPES:
        raise refuse(f"{where} has unknown value type {vtype}")
    name, fmt = _TYPES[vtype]
    if fmt is None:
        return _string(cur, where, keep=True), name
    value = cur.unpack(fmt, where)
    if vtype == _BOOL:
        if value not in (0, 1):
            raise refuse(f"{where} is a boolean that is neither 0 nor 1")
        value = bool(value)
    return value, name


def _string(cur: _Cursor, where: str, *, keep: bool) -> str | Dropped:
    n = cur.unpack("<Q", f"the length of {where}")
    cur.need(n, where)
    if not keep or n > MAX_KEPT_STRING:
        cur.skip(n, where)
        return Dropped(f"a string of {n} bytes")
    text = _text(cur.take(n, where))
    return Dropped("not UTF-8 text") if text is None else text


def _tensor_info(cur: _Cursor, i: int, names: set[str], refuse: Refuse) -> GGUFTensor:
    n = cur.unpack("<Q", f"the name length of tensor {i}")
    if n >= GGML_MAX_NAME:
        raise refuse(f"tensor {i} has a name of {n} bytes; ggml allows {GGML_MAX_NAME - 1}")
    name = _text(cur.take(n, f"the name of tensor {i}"))
    if name is None:
        raise refuse(f"the name of tensor {i} is not UTF-8")
    if name in names:
        raise refuse(f"tensor {name!r} appears twice")
    names.add(name)
    n_dims = cur.unpack("<I", f"the rank of tensor {name!r}")
    if n_dims > GGML_MAX_DIMS:
        raise refuse(f"tensor {name!r} has {n_dims} dimensions; ggml allows {GGML_MAX_DIMS}")
    shape = tuple(cur.unpack("<Q", f"a dimension of tensor {name!r}") for _ in range(n_dims))
    if any(d > _INT64_MAX for d in shape):
        raise refuse(f"tensor {name!r} has a negative dimension")
    count = math.prod(shape)
    if count > _INT64_MAX // 8:
        raise refuse(f"tensor {name!r} has {count} elements, more than ggml can address")
    ggml_type = cur.unpack("<I", f"the type of tensor {name!r}")
    offset = cur.unpack("<Q", f"the data offset of tensor {name!r}")
    if ggml_type != GGML_TYPE_F32:
        kind = "an unknown" if ggml_type >= GGML_TYPE_COUNT else "GGML"
        raise refuse(f"tensor {name!r} has {kind} type {ggml_type}, control vectors are F32")
    return GGUFTensor(name, shape, ggml_type, offset, count * 4)


def read_tensor(fd: int, gguf: GGUFFile, tensor: GGUFTensor, refuse: Refuse) -> np.ndarray:
    """The float32 values of one checked tensor (a fresh, writable array)."""
    raw = _pread_exact(fd, tensor.nbytes, gguf.data_start + tensor.offset, refuse)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
