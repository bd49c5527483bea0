"""The bounded GGUF reader against ggml's own Python reader (``gguf``), on valid files.

What ``gguf.GGUFWriter`` writes (every value type, arrays, strings, several
tensors, a custom alignment) is read by :mod:`asa_format.interop.gguf_read`
exactly as ``gguf.GGUFReader`` reads it; so are the files the hostile tests
write field by field (tests/gguf_bytes.py), which checks that writer too.
Where the two differ, on purpose, is what a hostile file gets away with:
``GGUFReader`` accepts two tensors sharing the same bytes, this reader (like
ggml's C reader) refuses them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gguf  # the interop extra: the reference reader
import numpy as np
import pytest
from gguf_bytes import array_kv, gguf_file, kv

from asa_format.errors import ConversionError
from asa_format.interop.gguf_read import Dropped, read_gguf, read_tensor

H = 24


def _refuse(message: str) -> ConversionError:
    return ConversionError(message, code="IMPORT_INVALID")


def _ours(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        parsed = read_gguf(fd, os.fstat(fd).st_size, _refuse)
        tensors = {t.name: read_tensor(fd, parsed, t, _refuse) for t in parsed.tensors}
    finally:
        os.close(fd)
    return parsed, tensors


def _theirs(path: Path) -> tuple[dict[str, Any], dict[str, tuple[list[int], int, np.ndarray]]]:
    reader = gguf.GGUFReader(path, "r")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {
        t.name: ([int(d) for d in t.shape], int(t.data_offset), np.array(t.data, copy=True))
        for t in reader.tensors
    }
    return fields, tensors


def _same_value(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, list):
        return (
            isinstance(theirs, list)
            and len(ours) == len(theirs)
            and all(_same_value(a, b) for a, b in zip(ours, theirs, strict=True))
        )
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return type(ours) is type(theirs) and ours == theirs
    if isinstance(ours, float) or isinstance(theirs, float):
        return bool(np.float64(ours) == np.float64(theirs))
    return type(ours) is type(theirs) and bool(ours == theirs)


def _compare(path: Path) -> None:
    parsed, tensors = _ours(path)
    fields, their_tensors = _theirs(path)
    assert set(parsed.fields) == set(fields)
    for key, value in parsed.fields.items():
        if isinstance(value, Dropped):  # long values are skipped, their size checked
            continue
        assert _same_value(value, fields[key]), (key, value, fields[key])
    assert [t.name for t in parsed.tensors] == list(their_tensors)
    for t in parsed.tensors:
        shape, data_offset, data = their_tensors[t.name]
        assert list(t.shape) == shape
        assert parsed.data_start + t.offset == data_offset
        np.testing.assert_array_equal(tensors[t.name], data.reshape(-1))


@pytest.mark.parametrize("alignment", [None, 64, 8])
def test_what_ggmls_writer_writes_reads_the_same(tmp_path: Path, alignment: int | None) -> None:
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "controlvector")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_string("controlvector.model_hint", "qwen2")
    w.add_uint32("controlvector.layer_count", 3)
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_int32("t.i32", -(2**31))
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", -1.5e300)
    w.add_bool("t.bool", True)
    w.add_string("t.text", "héllo wörld ✓")
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -0.25])
    w.add_array("t.strings", ["a", "", "ç"])
    w.add_array("t.long", list(range(100)))  # longer than what is kept: skipped, size checked
    w.add_string("t.big", "x" * 10_000)
    rng = np.random.default_rng(3)
    for block in (1, 2, 5):
        w.add_tensor(f"direction.{block}", rng.standard_normal(H).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _compare(path)


def test_what_the_test_writer_writes_reads_the_same_in_ggml(tmp_path: Path) -> None:
    path = tmp_path / "b.gguf"
    extra = [
        array_kv("t.bools", "BOOL", [True, False]),
        array_kv("t.u64", "UINT64", [0, 2**64 - 1]),
        kv("t.s", "STRING", "text"),
    ]
    directions = {3: np.arange(7, dtype=np.float32), 4: -np.arange(7, dtype=np.float32)}
    path.write_bytes(gguf_file(directions=directions, extra=extra, alignment=16))
    _compare(path)


def test_ggmls_python_reader_accepts_shared_tensor_bytes_this_reader_does_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.gguf"
    dirs = {1: np.ones(8, np.float32), 2: np.full(8, 2.0, np.float32)}
    path.write_bytes(gguf_file(directions=dirs, offsets=[0, 0]))
    _, tensors = _theirs(path)
    np.testing.assert_array_equal(tensors["direction.1"][2], tensors["direction.2"][2])
    with pytest.raises(ConversionError, match="without overlap"):
        _ours(path)
