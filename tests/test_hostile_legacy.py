"""Hostile legacy inputs: bounded time and memory, coded errors, before any large allocation.

Memory is measured with tracemalloc (NumPy reports its buffers to it), so a
bound holds whatever ran before in the same process.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from asa_format import constants as C
from asa_format.converters.legacy import parse_steering_npz
from asa_format.converters.safe_pickle import safe_load_pickle, to_legacy_logistic
from asa_format.errors import AsaError

MiB = 1 << 20


def _measure(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result or the AsaError raised, peak traced MiB)."""
    tracemalloc.start()
    try:
        out: Any = fn()
    except AsaError as exc:
        out = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return out, peak / MiB


# -- pickles ------------------------------------------------------------------------------------


def _colliding_dict_pickle(n: int) -> bytes:
    """{k * (2**61 - 1): 0 for k in 1..n}: every key hashes to 0 (CPython's int hash)."""
    body = bytearray(b"\x80\x02}(")
    for k in range(1, n + 1):
        raw = (k * ((1 << 61) - 1)).to_bytes(10, "little", signed=True)
        body += b"\x8a" + bytes([len(raw)]) + raw + b"K\x00"
    body += b"u."
    return bytes(body)


def test_hash_flooding_dict_is_refused_before_the_quadratic_work() -> None:
    data = _colliding_dict_pickle(30_000)
    with pytest.raises(AsaError) as info:  # refused at the first SETITEMS, before any insertion
        safe_load_pickle(data, filename="probes.pkl")
    assert info.value.code == "PICKLE_TOO_LARGE"


def test_object_array_of_repeated_long_strings_is_refused_before_astype() -> None:
    data = pickle.dumps(np.array(["x" * 10_000] * 60_000, dtype=object), protocol=2)
    assert len(data) < 1 * MiB  # one string, 60k memo references
    out, peak = _measure(lambda: safe_load_pickle(data, filename="router.pkl"))
    assert isinstance(out, AsaError) and out.code == "PICKLE_TOO_LARGE"
    assert peak < 64


def test_object_classes_within_the_caps_still_convert() -> None:
    x = np.random.default_rng(0).standard_normal((30, 4))
    est = LogisticRegression().fit(x, np.array(["alpha", "beta", "gamma"] * 10, dtype=object))
    lr = to_legacy_logistic(
        safe_load_pickle(pickle.dumps(est, protocol=4), filename="router.pkl"),
        filename="router.pkl",
    )
    assert lr.classes.tolist() == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("code_point", [0x110000, 0xFFFFFFFF, 0xD800])
def test_numpy_strings_beyond_unicode_are_a_coded_error(code_point: int) -> None:
    data = pickle.dumps(np.array(["ab", "cd"]), protocol=2)
    patched = data.replace("a".encode("utf-32-le"), struct.pack("<I", code_point), 1)
    assert patched != data
    with pytest.raises(AsaError) as info:
        safe_load_pickle(patched, filename="router.pkl")
    assert info.value.code == "PICKLE_MALFORMED"


# -- npz ----------------------------------------------------------------------------------------


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _npz(compressed: bool = True, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    save: Any = np.savez_compressed if compressed else np.savez
    save(buf, **arrays)
    return buf.getvalue()


def test_damaged_deflate_member_is_a_coded_error() -> None:
    data = bytearray(_npz(**{"a": _unit(4096, 1), "global": _unit(4096, 2)}))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("a.npy")
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len  # the member's deflate stream
    data[start : start + 64] = b"\xff" * 64  # block type 3: invalid, zlib fails while inflating
    with pytest.raises(AsaError) as info:
        parse_steering_npz(bytes(data), ["a"])
    assert info.value.code == "NPZ_INVALID"


def test_lzma_member_is_refused_before_decompression() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_LZMA) as zf:
        for name, seed in (("a", 1), ("global", 2)):
            arr = io.BytesIO()
            np.save(arr, _unit(64, seed))
            zf.writestr(f"{name}.npy", arr.getvalue())
    with pytest.raises(AsaError) as info:
        parse_steering_npz(buf.getvalue(), ["a"])
    assert info.value.code == "NPZ_INVALID" and "compression method" in info.value.message


def test_deflate_bomb_is_refused_without_inflating_it() -> None:
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("a.npy", "w", force_zip64=True) as member,
    ):
        zeros = bytes(MiB)
        for _ in range(256):  # 256 MiB of zeros, about 256 KiB compressed
            member.write(zeros)
    data = buf.getvalue()
    assert len(data) < 2 * MiB
    out, peak = _measure(lambda: parse_steering_npz(data, ["a"]))
    assert isinstance(out, AsaError) and out.code == "NPZ_INVALID"
    assert peak < 16


def test_lying_member_size_is_caught_while_inflating() -> None:
    """A central directory that understates the size: reading stops at the cap."""
    big = np.zeros(C.MAX_HIDDEN_SIZE * 4, dtype=np.float32)  # 4x the largest vector
    data = _npz(a=big)
    cd = data.rindex(b"PK\x01\x02")
    size_at = cd + 24  # uncompressed size in the central directory header
    lied = data[:size_at] + struct.pack("<I", 1024) + data[size_at + 4 :]
    with pytest.raises(AsaError) as info:
        parse_steering_npz(lied, ["a"])
    assert info.value.code == "NPZ_INVALID"


# -- the parity self-check ------------------------------------------------------------------------


def _wide_legacy(directory: Path, hidden: int) -> None:
    rng = np.random.default_rng(0)
    scaler = StandardScaler()
    scaler.mean_ = rng.standard_normal(hidden)
    scaler.scale_ = np.abs(rng.standard_normal(hidden)) + 0.5
    scaler.var_ = scaler.scale_**2
    scaler.n_features_in_ = hidden
    scaler.n_samples_seen_ = np.int64(100)

    def logreg(seed: int) -> LogisticRegression:
        lr = LogisticRegression()
        r = np.random.default_rng(seed)
        lr.coef_ = r.standard_normal((1, hidden)) / np.sqrt(hidden)
        lr.intercept_ = np.zeros(1)
        lr.classes_ = np.array([0, 1])
        lr.n_features_in_ = hidden
        lr.n_iter_ = np.array([10], dtype=np.int32)
        return lr

    directory.mkdir()
    (directory / "config.json").write_text(
        json.dumps({"L_star": 1, "alpha": 4.0, "tau": 0.6, "beta": 0.3, "domains": ["a", "b"]})
    )
    buf = io.BytesIO()
    vectors: dict[str, Any] = {
        "a": _unit(hidden, 1),
        "b": _unit(hidden, 2),
        "global": _unit(hidden, 3),
    }
    np.savez(buf, **vectors)
    (directory / "steering_vectors.npz").write_bytes(buf.getvalue())
    (directory / "scaler.pkl").write_bytes(pickle.dumps(scaler, protocol=4))
    (directory / "router.pkl").write_bytes(pickle.dumps(logreg(4), protocol=4))
    (directory / "probes.pkl").write_bytes(
        pickle.dumps({"a": logreg(5), "b": logreg(6)}, protocol=4)
    )


def test_parity_check_memory_does_not_grow_with_samples_times_hidden(tmp_path: Path) -> None:
    """hidden 16384: the 4096-row parity sample alone would be 256 MiB of float32, its
    float64 copies twice that; in blocks the whole conversion stays far below."""
    from asa_format.converters.convert import convert_legacy

    _wide_legacy(tmp_path / "legacy", 16384)
    report, peak = _measure(lambda: convert_legacy(tmp_path / "legacy", tmp_path / "out"))
    assert not isinstance(report, AsaError), report
    assert report.parity.samples == 4096 and report.parity.ok
    assert peak < 128, f"peak {peak:.0f} MiB"


@pytest.mark.parametrize("version", ["1" * 5000 + ".0", "1.3\x1b[2J", "x" * 200])
def test_hostile_sklearn_version_is_a_coded_error(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int() of a 5000-digit version would raise ValueError past Python's digit limit."""
    import sklearn.base

    from asa_format.converters.safe_pickle import to_legacy_scaler

    monkeypatch.setattr(sklearn.base, "__version__", version)
    data = pickle.dumps(
        StandardScaler().fit(np.random.default_rng(0).standard_normal((10, 3))), protocol=4
    )
    assert version.encode() in data
    with pytest.raises(AsaError) as info:
        to_legacy_scaler(safe_load_pickle(data, filename="scaler.pkl"), filename="scaler.pkl")
    assert info.value.code == "LEGACY_CONTENT"
