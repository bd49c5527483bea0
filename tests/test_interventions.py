"""Format 1.1: interventions round-trip through save_bundle / load_interventions."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import asa_format
from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import BundleError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.interventions import ConditionGate
from asa_format.format.manifest import ModelBinding, parse_manifest
from asa_format.testing import make_test_contents

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelBinding(hidden_size=8, id="org/tiny", type="llama", num_layers=4)


def _contents(card: bool = True, asa: bool = False) -> BundleContents:
    rng = np.random.default_rng(3)
    a = InterventionData(
        "a", {1: rng.standard_normal(8) * 5, 3: rng.standard_normal(8)}, coefficient=0.5
    )
    b = InterventionData(
        "b",
        {2: rng.standard_normal(8)},
        condition=ConditionGate((1, 2), "less_than", -0.1, "last"),
        conditions={1: rng.standard_normal(8), 2: rng.standard_normal(8)},
    )
    if asa:  # the asa part beside the other interventions: one contents type for every kind
        asa_part = make_test_contents(
            hidden_size=8, model_id="org/tiny", model_type="llama", num_layers=4
        )
        return dataclasses.replace(asa_part, interventions=[a, b], card=card)
    return BundleContents(model=MODEL, interventions=[a, b], card=card)


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    contents = _contents()
    path = asa_format.save_bundle(contents, tmp_path / "b")
    loaded = load_bundle(path)
    assert loaded.asa is None and loaded.manifest.format_version == "1.1"
    assert loaded.manifest.requires == ("card", "interventions")
    for src in contents.interventions:
        got = loaded[src.name]
        assert got.spec == src.entry()
        assert set(got.directions) == set(src.directions)
        for blk, v in src.directions.items():
            np.testing.assert_array_equal(got.directions[blk], np.asarray(v, np.float32))
        for blk, v in src.conditions.items():
            np.testing.assert_array_equal(got.conditions[blk], np.asarray(v, np.float32))
    assert loaded.kinds == ["always", "condition"] and not loaded.has_asa
    with pytest.raises(BundleError) as info:  # the decision function needs an asa part
        loaded.decide(np.zeros((1, 8), np.float32))
    assert info.value.code == "NOT_AN_ASA_BUNDLE"


def test_same_contents_give_identical_bytes(tmp_path: Path) -> None:
    a = asa_format.save_bundle(_contents(asa=True), tmp_path / "a")
    b = asa_format.save_bundle(_contents(asa=True), tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {C.CARD_FILE, C.INTERVENTIONS_FILE, C.SCALER_FILE, C.VECTORS_FILE} <= set(names)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()


def test_asa_and_always_in_one_bundle(tmp_path: Path) -> None:
    path = asa_format.save_bundle(_contents(asa=True), tmp_path / "b")
    loaded = load_bundle(path)
    assert [iv.kind for iv in loaded.interventions] == ["asa", "always", "condition"]
    assert loaded.asa is not None and loaded.asa.root_digest == loaded.root_digest
    assert loaded.asa.decide(np.ones((2, 8))).gate.shape == (2,)
    only = asa_format.load_bundle(path, asa_only=True)  # asked for: the asa part alone
    assert only.kinds == ["asa"] and only.root_digest == loaded.root_digest
    with pytest.raises(BundleError) as info:
        asa_format.load_bundle(asa_format.save_bundle(_contents(), tmp_path / "c"), asa_only=True)
    assert info.value.code == "NOT_AN_ASA_BUNDLE"


def test_a_1_0_bundle_is_one_asa_intervention(tmp_path: Path) -> None:
    path = asa_format.save_bundle(make_test_contents(hidden_size=8), tmp_path / "b")
    assert json.loads((path / C.MANIFEST_FILE).read_text())["format_version"] == "1.0"
    loaded = load_bundle(path)
    assert [(iv.name, iv.kind) for iv in loaded.interventions] == [("asa", "asa")]


def test_unknown_required_feature_is_refused_before_the_schema(tmp_path: Path) -> None:
    path = asa_format.save_bundle(_contents(card=False), tmp_path / "b")
    doc = json.loads((path / C.MANIFEST_FILE).read_text())
    doc["requires"].append("hologram")
    doc["format_version"] = "1.9"  # a newer minor version: unknown members would only warn
    doc["future"] = 1
    _, errors, _ = parse_manifest(json.dumps(doc).encode())
    assert [e.code for e in errors] == ["FORMAT_FEATURE_UNSUPPORTED"]
    assert "hologram" in errors[0].message


def test_a_1_0_reader_cannot_mistake_a_1_1_bundle(tmp_path: Path) -> None:
    """Reading a 1.1 bundle with 1.0's rules (unknown members ignored) still fails: the files differ."""
    path = asa_format.save_bundle(_contents(asa=True), tmp_path / "b")
    doc = json.loads((path / C.MANIFEST_FILE).read_text())
    for key in ("requires", "interventions"):
        doc.pop(key)  # what a 1.0 reader ignores
    doc["format_version"] = "1.0"
    _, errors, _ = parse_manifest(json.dumps(doc).encode())
    assert errors and {e.code for e in errors} == {"MANIFEST_SEMANTIC"}


def test_card_states_binding_and_file_digests_but_no_root_digest(tmp_path: Path) -> None:
    path = asa_format.save_bundle(_contents(asa=True), tmp_path / "b")
    card = (path / C.CARD_FILE).read_text("utf-8")
    front = card.split("---\n")[1]
    assert (
        "library_name: asa-format" in front
        and 'base_model: "org/tiny"' in front
        and "- asa-format" in front
    )
    loaded = load_bundle(path)
    assert loaded.card == card
    assert loaded.root_digest.split(":")[1] not in card
    manifest = loaded.manifest
    for name, entry in manifest.files.items():
        if name != C.CARD_FILE:
            assert entry.sha256 in card
    assert "blocks 1, 3" in card and "less than -0.1" in card


def test_writer_refuses_bad_names_and_shapes(tmp_path: Path) -> None:
    bad = BundleContents(model=MODEL, interventions=[InterventionData("a/b", {1: np.ones(8)})])
    with pytest.raises(BundleError) as info:
        asa_format.save_bundle(bad, tmp_path / "x")
    assert info.value.code == "MANIFEST_SCHEMA" and not (tmp_path / "x").exists()
    short = BundleContents(model=MODEL, interventions=[InterventionData("a", {1: np.ones(7)})])
    with pytest.raises(BundleError) as info:
        asa_format.save_bundle(short, tmp_path / "x")
    assert info.value.code == "HIDDEN_SIZE_MISMATCH"


def _make_cases() -> object:
    spec = importlib.util.spec_from_file_location(
        "asa_mc_iv", ROOT / "spec" / "conformance" / "make_cases.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_condition_decision_vectors_follow_the_spec_text() -> None:
    """Recompute every committed decision from the formula of SPEC 14.4, independently."""
    doc = json.loads((ROOT / "spec" / "conformance" / "condition_decisions.json").read_text())
    made = json.loads(json.dumps(_make_cases().condition_decision_vectors()))  # type: ignore[attr-defined]
    assert made["description"] == doc["description"] and len(made["cases"]) == len(doc["cases"])
    for committed, again in zip(doc["cases"], made["cases"], strict=True):
        # the similarity is a float64 dot product whose last bit follows the BLAS build
        assert again.pop("similarity") == pytest.approx(committed["similarity"], abs=1e-12)
        assert again == {k: v for k, v in committed.items() if k != "similarity"}
    fired = set()
    for case in doc["cases"]:
        rows = [h for h, r in zip(case["hidden"], case["real"], strict=True) if r] or case["hidden"]
        if case["aggregate"] == "mean":
            h = [math.fsum(col) / len(rows) for col in zip(*rows, strict=True)]
        else:
            h = rows[-1]
        c = case["condition"]
        nh, nc = math.sqrt(sum(x * x for x in h)), math.sqrt(sum(x * x for x in c))
        s = 0.0 if nh == 0 else sum(x * y for x, y in zip(h, c, strict=True)) / (nh * nc)
        assert s == pytest.approx(case["similarity"], abs=1e-12)
        fires = (
            s > case["threshold"] if case["comparator"] == "greater_than" else s < case["threshold"]
        )
        assert fires == case["fires"]
        fired.add(fires)
    assert fired == {True, False}
