"""GGUF control vectors from the attacker's side: every count, length, type and offset lies.

The files are written field by field (tests/gguf_bytes.py), so each case
bends exactly one thing a writer would never get wrong. Every case must end
in a coded refusal with nothing written; the ones that made ggml's Python
reader loop, allocate or accept shared tensor bytes are measured in a fresh
process: its peak memory (``ru_maxrss``) and CPU time, under an address-space
limit, against a child that imports a valid file.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf_bytes import array_kv, gguf_file, kv, string, tensor_info

from asa_format.errors import AsaError
from asa_format.interop import detect_kind, import_file, import_source
from asa_format.interop.gguf_cv import read_control_vector

ROOT = Path(__file__).resolve().parents[1]
D7 = {
    1: np.linspace(-1, 1, 7, dtype=np.float32),
    3: np.full(7, 0.25, np.float32),
}  # 28 bytes + 4 pad


def _code(fn: Callable[[], object]) -> str:
    with pytest.raises(AsaError) as info:
        fn()
    return info.value.code


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _arch() -> bytes:
    return kv("general.architecture", "STRING", "controlvector")


def test_a_valid_file_reads_exactly(tmp_path: Path) -> None:
    p = tmp_path / "ok.gguf"
    extra = [kv("controlvector.method", "STRING", "pca"), array_kv("x.list", "INT32", [1, -2, 3])]
    p.write_bytes(gguf_file(directions=D7, extra=extra))
    hint, dirs, meta = read_control_vector(p)
    assert hint == "llama" and sorted(dirs) == [1, 3]
    for b, v in D7.items():
        assert dirs[b].dtype == np.float32
        np.testing.assert_array_equal(dirs[b], v)
    assert meta["controlvector.method"] == "pca" and meta["x.list"] == [1, -2, 3]
    assert detect_kind(p) == "gguf"
    contents = import_source(p)
    assert contents.model.type == "llama" and contents.model.hidden_size == 7


# (case, bytes, expected code): one field bent per case
def _cases() -> list[tuple[str, bytes, str]]:
    ok = gguf_file(directions=D7)
    dirs8 = {1: np.ones(8, np.float32), 2: np.ones(8, np.float32)}
    cases = [
        # counts
        ("n_kv_2_62", _header(0, 2**62) + _arch(), "IMPORT_INVALID"),
        ("n_tensors_2_62", _header(2**62, 1) + _arch(), "IMPORT_INVALID"),
        ("n_kv_beyond_file", _header(0, 50) + _arch() * 3, "IMPORT_INVALID"),
        (
            "n_kv_more_than_present",
            gguf_file(directions=D7, n_kv=4),
            "IMPORT_INVALID",
        ),  # the 4th pair is read from tensor infos and data: garbage, refused
        ("n_tensors_more_than_present", gguf_file(directions=D7, n_tensors=3), "IMPORT_INVALID"),
        # arrays and strings announcing more than the file holds
        (
            "array_2_40_uint8",
            _header(0, 2) + _arch() + array_kv("x", "UINT8", [], count=2**40),
            "IMPORT_INVALID",
        ),
        (
            "array_2_40_strings",
            _header(0, 2) + _arch() + array_kv("x", "STRING", [], count=2**40),
            "IMPORT_INVALID",
        ),
        (
            "array_2_64_minus_1_uint64",
            _header(0, 2) + _arch() + array_kv("x", "UINT64", [], count=2**64 - 1),
            "IMPORT_INVALID",
        ),
        (
            "string_length_2_63",
            _header(0, 2) + _arch() + string("x") + struct.pack("<I", 8) + struct.pack("<Q", 2**63),
            "IMPORT_INVALID",
        ),
        ("key_length_2_40", _header(0, 1) + struct.pack("<Q", 2**40) + b"k" * 64, "IMPORT_INVALID"),
        (
            "key_empty",
            _header(0, 1) + string("") + struct.pack("<IB", 0, 1) + b"\0" * 64,
            "IMPORT_INVALID",
        ),
        (
            "nested_array",
            _header(0, 2)
            + _arch()
            + string("x")
            + struct.pack("<IIQ", 9, 9, 1)
            + struct.pack("<IQ", 0, 0),
            "IMPORT_INVALID",
        ),
        (
            "value_type_13",
            _header(0, 2) + _arch() + string("x") + struct.pack("<I", 13),
            "IMPORT_INVALID",
        ),
        (
            "array_of_type_99",
            _header(0, 2) + _arch() + string("x") + struct.pack("<IIQ", 9, 99, 0),
            "IMPORT_INVALID",
        ),
        (
            "bool_2",
            gguf_file(directions=D7, extra=[string("x") + struct.pack("<IB", 7, 2)]),
            "IMPORT_INVALID",
        ),
        (
            "bool_array_7",
            gguf_file(
                directions=D7, extra=[string("x") + struct.pack("<IIQ", 9, 7, 2) + b"\x00\x07"]
            ),
            "IMPORT_INVALID",
        ),
        (
            "duplicate_key",
            gguf_file(directions=D7, extra=[kv("k", "UINT8", 1), kv("k", "UINT8", 1)]),
            "IMPORT_INVALID",
        ),
        ("duplicate_architecture", gguf_file(directions=D7, extra=[_arch()]), "IMPORT_INVALID"),
        (
            "key_with_newline",
            gguf_file(directions=D7, extra=[kv("controlvector.model_hint\n", "STRING", "x")]),
            "IMPORT_INVALID",
        ),
        (
            "key_not_utf8",
            gguf_file(directions=D7, extra=[kv(b"k\xff", "UINT8", 1)]),
            "IMPORT_INVALID",
        ),
        # versions
        ("version_1", gguf_file(directions=D7, version=1), "IMPORT_INVALID"),
        ("version_4", gguf_file(directions=D7, version=4), "IMPORT_INVALID"),
        ("version_big_endian", gguf_file(directions=D7, version=3 << 24), "IMPORT_INVALID"),
        ("no_magic", b"GGUG" + ok[4:], "IMPORT_UNKNOWN_KIND"),
        ("short_header", ok[:20], "IMPORT_INVALID"),
        ("truncated_in_a_pair", ok[:40], "IMPORT_INVALID"),
        # alignment
        (
            "alignment_0",
            gguf_file(directions=D7, extra=[kv("general.alignment", "UINT32", 0)]),
            "IMPORT_INVALID",
        ),
        (
            "alignment_48",
            gguf_file(directions=D7, extra=[kv("general.alignment", "UINT32", 48)]),
            "IMPORT_INVALID",
        ),
        (
            "alignment_uint64",
            gguf_file(directions=D7, extra=[kv("general.alignment", "UINT64", 64)]),
            "IMPORT_INVALID",
        ),
        (
            "alignment_2_31",
            gguf_file(directions=D7, extra=[kv("general.alignment", "UINT32", 2**31)]),
            "IMPORT_INVALID",
        ),
        # tensor data layout (ggml: in order, aligned, no overlap, no gap, inside the file)
        ("tensors_share_bytes", gguf_file(directions=dirs8, offsets=[0, 0]), "IMPORT_INVALID"),
        (
            "tensors_overlap",
            gguf_file(
                directions={1: np.ones(16, np.float32), 2: np.ones(16, np.float32)}, offsets=[0, 32]
            ),
            "IMPORT_INVALID",
        ),
        ("tensor_gap", gguf_file(directions=dirs8, offsets=[0, 64]), "IMPORT_INVALID"),
        ("tensor_unaligned", gguf_file(directions=dirs8, offsets=[0, 36]), "IMPORT_INVALID"),
        ("tensors_swapped", gguf_file(directions=dirs8, offsets=[32, 0]), "IMPORT_INVALID"),
        ("tensor_first_not_at_0", gguf_file(directions=dirs8, offsets=[32, 64]), "IMPORT_INVALID"),
        ("tensor_offset_2_63", gguf_file(directions=dirs8, offsets=[0, 2**63]), "IMPORT_INVALID"),
        ("data_truncated", ok[:-8], "IMPORT_INVALID"),
        ("last_padding_missing", gguf_file(directions=D7, pad_last=False), "IMPORT_INVALID"),
        # tensor infos
        (
            "tensor_name_64_bytes",
            gguf_file(directions=D7, names=["direction.1" + "x" * 53, "direction.3"]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_name_not_utf8",
            _header(1, 1) + _arch() + tensor_info(b"direction.\xff", [8]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_name_twice",
            gguf_file(directions=dirs8, names=["direction.1", "direction.1"]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_name_newline",
            gguf_file(directions=dirs8, names=["direction.1\n", "direction.2"]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_name_leading_zero",
            gguf_file(directions=dirs8, names=["direction.01", "direction.2"]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_name_block_0",
            gguf_file(directions=dirs8, names=["direction.0", "direction.2"]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_rank_5",
            _header(1, 1) + _arch() + tensor_info("direction.1", [1, 1, 1, 1, 8]),
            "IMPORT_INVALID",
        ),
        ("tensor_rank_2", gguf_file(directions={1: np.ones((2, 4), np.float32)}), "IMPORT_INVALID"),
        (
            "tensor_rank_0",
            _header(1, 1) + _arch() + tensor_info("direction.1", []) + b"\0" * 64,
            "IMPORT_INVALID",
        ),
        (
            "tensor_dim_negative",
            _header(1, 1) + _arch() + tensor_info("direction.1", [2**63 + 8]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_elements_overflow",
            _header(1, 1) + _arch() + tensor_info("direction.1", [2**32, 2**32, 2**32]),
            "IMPORT_INVALID",
        ),
        (
            "tensor_dim_2_40",
            _header(1, 1) + _arch() + tensor_info("direction.1", [2**40]) + b"\0" * 64,
            "IMPORT_INVALID",
        ),
        ("tensor_dim_0", gguf_file(directions={1: np.ones(0, np.float32)}), "IMPORT_INVALID"),
        (
            "tensor_f16",
            _header(1, 1) + _arch() + tensor_info("direction.1", [8], 1) + b"\0" * 64,
            "IMPORT_INVALID",
        ),
        (
            "tensor_type_99",
            _header(1, 1) + _arch() + tensor_info("direction.1", [8], 99) + b"\0" * 64,
            "IMPORT_INVALID",
        ),
        (
            "tensor_nan",
            gguf_file(directions={1: np.array([1, np.nan, 0, 0, 0, 0, 0, 0], np.float32)}),
            "IMPORT_INVALID",
        ),
        (
            "tensor_inf",
            gguf_file(directions={1: np.array([1, np.inf, 0, 0, 0, 0, 0, 0], np.float32)}),
            "IMPORT_INVALID",
        ),
        (
            "tensor_lengths_differ",
            gguf_file(directions={1: np.ones(8, np.float32), 2: np.ones(16, np.float32)}),
            "IMPORT_INVALID",
        ),
        ("no_tensors", gguf_file(directions={}), "IMPORT_INVALID"),
        # meaning
        ("architecture_llama", gguf_file(arch="llama", directions=D7), "IMPORT_UNKNOWN_KIND"),
        ("architecture_missing", _header(0, 1) + kv("x", "UINT8", 1), "IMPORT_UNKNOWN_KIND"),
        (
            "architecture_not_a_string",
            _header(0, 1) + kv("general.architecture", "UINT32", 1),
            "IMPORT_UNKNOWN_KIND",
        ),
        ("hint_newline", gguf_file(directions=D7, hint="llama\n"), "IMPORT_INVALID"),
        ("hint_empty", gguf_file(directions=D7, hint=""), "IMPORT_INVALID"),
        (
            "hint_not_utf8",
            gguf_file(
                directions=D7,
                hint=None,
                extra=[kv("controlvector.model_hint", "STRING", b"\xff\xfe")],
            ),
            "IMPORT_INVALID",
        ),
        ("hint_5000_bytes", gguf_file(directions=D7, hint="x" * 5000), "IMPORT_INVALID"),
        (
            "hint_not_a_string",
            gguf_file(
                directions=D7, hint=None, extra=[kv("controlvector.model_hint", "UINT32", 7)]
            ),
            "IMPORT_INVALID",
        ),
        (
            "hints_disagree",
            gguf_file(
                arch="steeringvector",
                directions=D7,
                extra=[kv("controlvector.model_hint", "STRING", "qwen2")],
            ),
            "IMPORT_INVALID",
        ),
        (
            "layer_count_wrong",
            gguf_file(
                directions=D7,
                layer_count=False,
                extra=[kv("controlvector.layer_count", "UINT32", 9)],
            ),
            "IMPORT_INVALID",
        ),
        (
            "layer_count_float",
            gguf_file(
                directions=D7,
                layer_count=False,
                extra=[kv("controlvector.layer_count", "FLOAT32", 2.0)],
            ),
            "IMPORT_INVALID",
        ),
        (
            "layer_count_string",
            gguf_file(
                directions=D7,
                layer_count=False,
                extra=[kv("controlvector.layer_count", "STRING", "2")],
            ),
            "IMPORT_INVALID",
        ),
    ]
    # the architecture check comes first: a model file is refused as what it is, before its
    # tokenizer arrays are walked (here one that lies about its length)
    cases.append(
        (
            "model_file_with_a_lying_array",
            _header(0, 2)
            + kv("general.architecture", "STRING", "llama")
            + array_kv("tokenizer.ggml.tokens", "STRING", [], count=2**40),
            "IMPORT_UNKNOWN_KIND",
        )
    )
    return cases


CASES = _cases()


def test_case_names_are_unique() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("name", "data", "code"), CASES, ids=[c[0] for c in CASES])
def test_hostile_gguf_is_refused_with_nothing_written(
    tmp_path: Path, name: str, data: bytes, code: str
) -> None:
    src = tmp_path / f"{name}.gguf"
    src.write_bytes(data)
    assert _code(lambda: import_file(src, tmp_path / "b")) == code
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        src.name
    ]  # nothing written, no temporary left


def test_a_string_array_longer_than_the_walk_budget_is_refused(tmp_path: Path) -> None:
    """300 000 empty strings (2.4 MB, every length backed by the file) exceed what is walked."""
    p = tmp_path / "many.gguf"
    count = 300_000
    p.write_bytes(
        _header(0, 2) + _arch() + array_kv("x", "STRING", [], count=count) + b"\0" * 8 * count
    )
    assert _code(lambda: read_control_vector(p)) == "IMPORT_INVALID"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX")
def test_a_fifo_a_device_a_directory_and_a_sparse_giant_are_refused_without_reading(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse.gguf"
    with open(sparse, "wb") as fh:
        fh.write(b"GGUF")
        fh.truncate((1 << 30) + 1)  # a hole: no disk space used
    for path, code in (
        (fifo, "INPUT_NOT_REGULAR"),
        (Path("/dev/zero"), "INPUT_NOT_REGULAR"),
        (tmp_path, "INPUT_NOT_REGULAR"),
        (sparse, "INPUT_TOO_LARGE"),
        (tmp_path / "missing.gguf", "IO_ERROR"),
    ):
        assert _code(lambda path=path: import_file(path, tmp_path / "b")) == code, path
        assert _code(lambda path=path: detect_kind(path)) == code, path
    assert not (tmp_path / "b").exists()


# -- bounded by measurement, in a fresh process ---------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway fails, it does not swap
    resource.setrlimit(resource.RLIMIT_CPU, (120, 120))
    from asa_format.errors import AsaError
    from asa_format.interop import import_source
    codes = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    rss0 = before.ru_maxrss
    for path in sys.argv[1:]:
        try:
            import_source(path)
            codes.append("ok")
        except AsaError as exc:
            codes.append(exc.code)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"codes": codes, "rss0_kib": rss0, "rss_kib": after.ru_maxrss, "cpu_s": cpu}))
    """
)


def _measure(paths: list[Path]) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits are POSIX")
def test_hostile_headers_cost_no_memory_and_little_cpu(tmp_path: Path) -> None:
    """The cases that made ggml's Python reader loop and grow: 2**40 elements in 16 bytes of
    array header, a 2 MB file with a 2M-element array, a 2.4 MB file of 300 000 strings.

    Measured in a child: the peak resident memory while importing them may grow by less than
    32 MiB over what the child had already, and the CPU time stays under 5 s in all (ggml's
    reader: over 1 GB and about a minute for the second file alone)."""
    files = {
        "announce_2_40.gguf": _header(0, 2) + _arch() + array_kv("x", "UINT8", [], count=2**40),
        "two_million.gguf": _header(0, 2) + _arch() + array_kv("x", "UINT8", [0] * 2_000_000),
        "strings.gguf": _header(0, 2)
        + _arch()
        + array_kv("x", "STRING", [], count=300_000)
        + b"\0" * 2_400_000,
        "string_2_40.gguf": _header(0, 2) + _arch() + string("x") + struct.pack("<IQ", 8, 2**40),
        "tensor_2_40.gguf": _header(1, 1)
        + _arch()
        + tensor_info("direction.1", [2**40])
        + b"\0" * 64,
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    valid = tmp_path / "valid.gguf"
    valid.write_bytes(gguf_file(directions=D7))
    doc = _measure([valid, *paths])
    assert doc["codes"] == ["ok"] + ["IMPORT_INVALID"] * len(files), doc
    grown_mib = (int(doc["rss_kib"]) - int(doc["rss0_kib"])) / 1024  # type: ignore[call-overload]
    assert grown_mib < 32, doc
    assert float(doc["cpu_s"]) < 5.0, doc  # type: ignore[arg-type]
