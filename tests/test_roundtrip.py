"""load -> save round trip: what load_bundle returns is what save_bundle takes, byte for byte."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from asa_format import (
    AsaError,
    BundleError,
    UsageError,
    load_bundle,
    read_bundle_contents,
    save_bundle,
)
from asa_format.format.contents import InterventionData
from asa_format.format.jsonio import dumps_canonical
from asa_format.testing import make_test_contents

CORPUS = Path(__file__).resolve().parents[1] / "spec" / "conformance" / "valid"
VALID = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
NEWER = "newer_minor_version"  # members a 1.0 writer does not know: refused
NEWER_CASES = [n for n in VALID if n == NEWER or n.startswith("newer_minor_unknown_in_")]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# format 1.1: bundles with an interventions list round-trip through the same contents type
V11 = [
    n
    for n in VALID
    if "interventions" in json.loads((CORPUS / n / "bundle" / "manifest.json").read_bytes())
    and not n.startswith("newer_minor")  # a newer minor version is loaded, never saved again
]


@pytest.mark.parametrize("name", [n for n in VALID if n not in NEWER_CASES and n not in V11])
def test_save_of_load_is_byte_identical(name: str, tmp_path: Path) -> None:
    source = CORPUS / name / "bundle"
    saved = save_bundle(load_bundle(source).to_contents(), tmp_path / "a")
    assert _files(saved) == _files(source)
    again = save_bundle(read_bundle_contents(source), tmp_path / "b")
    assert _files(again) == _files(source)


@pytest.mark.parametrize("name", V11)
def test_save_of_load_of_a_v11_bundle_is_byte_identical(name: str, tmp_path: Path) -> None:
    source = CORPUS / name / "bundle"
    saved = save_bundle(load_bundle(source).to_contents(), tmp_path / "a")
    assert _files(saved) == _files(source)
    again = save_bundle(read_bundle_contents(source), tmp_path / "b")  # one contents type
    assert _files(again) == _files(source)


def test_v11_edit_rerenders_the_card_and_keeps_a_hand_written_one(tmp_path: Path) -> None:
    source = CORPUS / "interventions_always_condition_card" / "bundle"
    contents = load_bundle(source).to_contents()
    contents.interventions = [
        dataclasses.replace(contents.interventions[0], coefficient=0.5),
        *contents.interventions[1:],
    ]
    edited = load_bundle(save_bundle(contents, tmp_path / "edited"))
    assert edited.interventions[0].spec.coefficient == 0.5
    assert edited.card is not None and "0.5" in edited.card
    assert edited.card != load_bundle(source).card
    hand = tmp_path / "hand"
    shutil.copytree(source, hand)
    own = "---\nlibrary_name: asa-format\n---\n# my own card\n"
    (hand / "README.md").write_text(own, encoding="utf-8")
    doc = json.loads((hand / "manifest.json").read_bytes())
    doc["files"]["README.md"] = {
        "sha256": hashlib.sha256(own.encode()).hexdigest(),
        "size": len(own.encode()),
    }
    (hand / "manifest.json").write_bytes(dumps_canonical(doc))
    again = save_bundle(load_bundle(hand).to_contents(), tmp_path / "again")
    assert _files(again) == _files(hand)


def test_a_v10_bundle_stays_v10_until_it_needs_v11(tmp_path: Path) -> None:
    contents = load_bundle(CORPUS / "minimal_two_domains" / "bundle").to_contents()
    assert contents.format_version == "1.0" and contents.has_asa and not contents.interventions
    v10 = load_bundle(save_bundle(contents, tmp_path / "v10"))
    assert v10.manifest.format_version == "1.0" and v10.kinds == ["asa"]
    extra = InterventionData("tone", {0: np.ones(contents.model.hidden_size, np.float32)})
    with pytest.raises(UsageError) as info:  # 1.0 cannot hold a second intervention
        save_bundle(dataclasses.replace(contents, interventions=[extra]), tmp_path / "no")
    assert "1.1" in info.value.message and not (tmp_path / "no").exists()
    upgraded = dataclasses.replace(contents, interventions=[extra], format_version=None)
    v11 = load_bundle(save_bundle(upgraded, tmp_path / "v11"))
    assert v11.manifest.format_version == "1.1" and v11.kinds == ["asa", "always"]


def test_a_newer_minor_version_is_not_saved_without_its_unknown_members(tmp_path: Path) -> None:
    bundle = load_bundle(CORPUS / NEWER / "bundle")
    with pytest.raises(UsageError) as info:
        bundle.to_contents()
    assert "1.7" in info.value.message
    with pytest.raises(UsageError):
        read_bundle_contents(CORPUS / NEWER / "bundle")


@pytest.mark.parametrize("name", NEWER_CASES)
def test_no_newer_minor_version_is_saved_again(name: str) -> None:
    """Loaded with their unknown members ignored (spec 9.2); saving would drop them."""
    with pytest.raises(UsageError) as info:
        load_bundle(CORPUS / name / "bundle").to_contents()
    assert "1.7" in info.value.message


def test_load_change_alpha_save(tmp_path: Path) -> None:
    source = save_bundle(make_test_contents(seed=3), tmp_path / "source")
    contents = load_bundle(source).to_contents()
    edited = dataclasses.replace(
        contents, steering=dataclasses.replace(contents.steering, alpha=-1.25)
    )
    out = load_bundle(save_bundle(edited, tmp_path / "edited"))
    assert out.manifest.steering.alpha == -1.25
    assert (out.path / "router.onnx").read_bytes() == (source / "router.onnx").read_bytes()
    assert out.root_digest != load_bundle(source).root_digest


def test_read_bundle_contents_refuses_an_invalid_bundle(tmp_path: Path) -> None:
    source = save_bundle(make_test_contents(), tmp_path / "b")
    (source / "router.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError) as info:
        read_bundle_contents(source)
    assert info.value.code == "FILE_SIZE_MISMATCH"


@pytest.mark.parametrize(
    ("vector", "code"),
    [
        (np.ones((2, 16), np.float32), "SAFETENSORS_SHAPE"),
        (np.array(["a"] * 16), "SAFETENSORS_DTYPE"),
    ],
)
def test_save_refuses_a_malformed_vector_with_an_asa_error(
    vector: np.ndarray, code: str, tmp_path: Path
) -> None:
    contents = make_test_contents()
    vectors = dict(contents.vectors)
    vectors["math"] = vector
    with pytest.raises(AsaError) as info:
        save_bundle(dataclasses.replace(contents, vectors=vectors), tmp_path / "out")
    assert info.value.code == code and info.value.file == "vectors.safetensors"
    assert not (tmp_path / "out").exists()
