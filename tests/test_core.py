"""Core library: manifest round trip, writer, loader, decision function."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import asa_format
from asa_format import constants as C
from asa_format.bundle import load_bundle, mix_vectors
from asa_format.errors import AsaError, BundleError, DecisionError, DigestMismatchError
from asa_format.format.manifest import Manifest, parse_manifest
from asa_format.format.safetensors import parse_vectors, serialize_vectors
from asa_format.gating import gates
from asa_format.storage import writer
from asa_format.testing import make_test_bundle, make_test_contents


def _hashes(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_manifest_round_trip_is_canonical(tmp_path: Path) -> None:
    bundle = make_test_bundle(tmp_path / "b")
    data = (bundle / C.MANIFEST_FILE).read_bytes()
    manifest, errors, warnings = parse_manifest(data)
    assert manifest is not None and not errors and not warnings
    assert manifest.to_bytes() == data
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    text = data.decode()
    assert text.endswith("}\n") and '\n  "domains"' in text
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_writer_is_deterministic(tmp_path: Path) -> None:
    a = make_test_bundle(tmp_path / "a", seed=3)
    b = make_test_bundle(tmp_path / "b", seed=3)
    assert _hashes(a) == _hashes(b)
    c = make_test_bundle(tmp_path / "c", seed=4)
    assert _hashes(a) != _hashes(c)


def test_writer_refuses_existing_destination_without_force(tmp_path: Path) -> None:
    dest = make_test_bundle(tmp_path / "b", seed=1)
    before = _hashes(dest)
    with pytest.raises(AsaError) as info:
        make_test_bundle(dest.parent / "b", seed=2)
    assert info.value.code == "DESTINATION_EXISTS"
    assert _hashes(dest) == before
    asa_format.save_bundle(make_test_contents(seed=2), dest, force=True)
    assert _hashes(dest) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "no temporary directory is left"


def test_writer_fault_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def crash(name: str) -> None:
        calls.append(name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_after_file_written", crash)
    with pytest.raises(AsaError) as info:
        asa_format.save_bundle(make_test_contents(), tmp_path / "out")
    assert info.value.code == "IO_ERROR"
    assert "No space left" in str(info.value)
    assert calls and not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_interrupt_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_after_file_written", interrupt)
    with pytest.raises(KeyboardInterrupt):
        asa_format.save_bundle(make_test_contents(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_load_and_decide_matches_numpy_reference(tmp_path: Path) -> None:
    contents = make_test_contents(
        hidden_size=24, domains=("a", "b", "c", "d"), missing_probes=("c",), seed=7
    )
    bundle = load_bundle(asa_format.save_bundle(contents, tmp_path / "b"))
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((300, 24)).astype(np.float32)
    batch = bundle.decide(hidden)
    assert len(batch) == 300
    # reference from the graph initializers
    import onnx
    from onnx import numpy_helper

    def inits(data: bytes) -> dict[str, np.ndarray]:
        m = onnx.load_from_string(data)
        return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}

    s = inits(contents.scaler)
    x = ((hidden - s["mean"]) / s["scale"]).astype(np.float32).astype(np.float64)
    r = inits(contents.router)
    idx = np.argmax(x @ r["W"] + r["b"], axis=1)
    np.testing.assert_array_equal(batch.domain_index, idx)
    for i in range(300):
        name = bundle.domains[idx[i]]
        if name == "c":
            assert batch.probability[i] == 0.5
        else:
            p = inits(contents.probes[name])
            z = float(x[i] @ p["w"][:, 0] + p["b"][0])
            assert batch.probability[i] == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-12)
    np.testing.assert_array_equal(batch.gate, gates(batch.probability, 0.6))
    assert {d.domain for d in batch} <= set(bundle.domains)
    # one row alone decides like inside a batch
    single = bundle.decide(hidden[5])
    assert single[0] == batch[5]


def test_gate_rule_boundaries() -> None:
    p = np.array([0.0, 0.4, 0.4000001, 0.5, 0.59, 0.6, 1.0])
    assert gates(p, 0.6).tolist() == [-1, -1, 0, 0, 0, 1, 1]
    assert gates(np.array([0.5]), 0.5).tolist() == [1]  # p >= tau is checked first
    assert gates(np.array([0.5, 0.99]), 1.0).tolist() == [0, 0]


def test_steering_vector_mixing(tmp_path: Path) -> None:
    bundle = load_bundle(make_test_bundle(tmp_path / "b", beta=0.25))
    v = bundle.steering_vector("search")
    expected = 0.75 * bundle.vectors["search"].astype(np.float64) + 0.25 * bundle.vectors["global"]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(v, expected, atol=2e-7)
    assert v.dtype == np.float32 and not v.flags.writeable
    assert bundle.steering_vector(1) is v
    np.testing.assert_array_equal(
        mix_vectors(bundle.vectors["math"], bundle.vectors["global"], 0.25),
        bundle.steering_vector("math"),
    )
    pure = mix_vectors(bundle.vectors["math"], bundle.vectors["global"], 0.0)
    np.testing.assert_allclose(pure, bundle.vectors["math"], atol=1e-7)
    with pytest.raises(DecisionError) as info:
        bundle.steering_vector("nope")
    assert info.value.code == "DECISION_INPUT"


def test_decide_rejects_bad_input(tmp_path: Path) -> None:
    bundle = load_bundle(make_test_bundle(tmp_path / "b", hidden_size=16))
    for bad in (
        np.zeros((2, 15)),
        np.zeros((2, 2, 16)),
        np.full((1, 16), np.nan),
        np.array([["a"] * 16]),
    ):
        with pytest.raises(DecisionError) as info:
            bundle.decide(bad)
        assert info.value.code == "DECISION_INPUT"
    assert len(bundle.decide(np.zeros((0, 16)))) == 0


def test_expected_digest(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    digest = "sha256:" + hashlib.sha256((path / C.MANIFEST_FILE).read_bytes()).hexdigest()
    assert load_bundle(path, expected_digest=digest).root_digest == digest
    other = make_test_bundle(tmp_path / "c", seed=9)
    with pytest.raises(DigestMismatchError) as info:
        load_bundle(other, expected_digest=digest)
    assert info.value.code == "DIGEST_MISMATCH"


def test_verify_false_still_checks_profiles(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    (path / C.ROUTER_FILE).write_bytes(b"\x00garbage")
    load_error = pytest.raises(BundleError)
    with load_error as info:
        load_bundle(path)
    assert info.value.code == "FILE_SIZE_MISMATCH"
    with pytest.raises(BundleError) as info2:
        load_bundle(path, verify=False)
    assert info2.value.code == "ONNX_PARSE"


def test_all_problems_are_collected(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    (path / C.SCALER_FILE).write_bytes((path / C.SCALER_FILE).read_bytes() + b"x")
    (path / "notes.txt").write_text("hi")
    os.remove(path / "probe_1.onnx")
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    codes = sorted(p.code for p in info.value.problems)
    assert codes == ["FILE_MISSING", "FILE_SIZE_MISMATCH", "FILE_UNLISTED"]


@pytest.mark.interop
def test_safetensors_writer_is_readable_by_safetensors_library() -> None:
    from safetensors.numpy import load

    rng = np.random.default_rng(0)
    vecs = {
        name: (v / np.linalg.norm(v)).astype(np.float32)
        for name, v in (
            ("b", rng.standard_normal(8)),
            ("a", rng.standard_normal(8)),
            ("global", rng.standard_normal(8)),
        )
    }
    data = serialize_vectors(vecs)
    loaded = load(data)
    assert set(loaded) == set(vecs)
    for k in vecs:
        np.testing.assert_array_equal(loaded[k], vecs[k])
    parsed, problems = parse_vectors(data, hidden_size=8, names=["a", "b"])
    assert not problems and set(parsed) == {"a", "b", "global"}
    assert (len(data) - 8) % 4 == 0 and int.from_bytes(data[:8], "little") % 8 == 0


def test_newer_minor_version_is_read_with_warning(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    doc = json.loads((path / C.MANIFEST_FILE).read_text())
    doc["format_version"] = "1.9"
    doc["future_member"] = {"x": 1}
    doc["steering"]["future_knob"] = 2
    manifest, errors, warnings = parse_manifest(json.dumps(doc).encode())
    assert manifest is not None and not errors
    assert len(warnings) == 2 and all("newer minor" in w.message for w in warnings)
    doc["format_version"] = "1.0"
    manifest, errors, _ = parse_manifest(json.dumps(doc).encode())
    assert manifest is None and {e.code for e in errors} == {"MANIFEST_SCHEMA"}
    doc["format_version"] = "2.0"
    _, errors, _ = parse_manifest(json.dumps(doc).encode())
    assert [e.code for e in errors] == ["FORMAT_VERSION_UNSUPPORTED"]


def test_fast_path_matches_onnxruntime(tmp_path: Path) -> None:
    contents = make_test_contents(
        hidden_size=32,
        domains=("a", "b", "c", "d", "e"),
        missing_probes=("b",),
        probe_scale=4.0,
        seed=11,
    )
    path = asa_format.save_bundle(contents, tmp_path / "b")
    fast = load_bundle(path)
    slow = load_bundle(path, fast=False)
    assert fast.decision_backend == "numpy" and slow.decision_backend == "onnxruntime"
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 257):
        hidden = rng.standard_normal((n, 32)) * rng.uniform(0.1, 5.0)
        a, b = fast.decide(hidden), slow.decide(hidden)
        np.testing.assert_array_equal(a.domain_index, b.domain_index)
        np.testing.assert_array_equal(a.gate, b.gate)
        np.testing.assert_allclose(a.probability, b.probability, rtol=0, atol=1e-12)
    assert fast._single_row, "one prompt is decided with plain floats after the matrix product"
    rows = rng.standard_normal((64, 32)) * 3.0
    reference = slow.decide(rows)
    for i in range(64):
        one = fast.decide(rows[i])[0]
        assert (one.domain_index, one.gate) == (reference[i].domain_index, reference[i].gate)
        assert one.probability == pytest.approx(reference[i].probability, abs=1e-12)


def test_fast_path_falls_back_on_unsupported_graph(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    contents = make_test_contents(hidden_size=8)
    model = onnx.load_from_string(contents.router)
    # route through an allowlisted operator the NumPy evaluator does not implement
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "p0"
    model.graph.node.append(helper.make_node("Clip", ["p0"], [C.CLASSIFIER_PROBABILITIES]))
    contents.router = model.SerializeToString(deterministic=True)
    bundle = load_bundle(asa_format.save_bundle(contents, tmp_path / "b"))
    assert bundle.decision_backend == "onnxruntime"
    assert len(bundle.decide(np.zeros((3, 8)))) == 3
