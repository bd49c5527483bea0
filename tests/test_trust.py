"""Pinned digests and trusted keys refuse substituted or unsigned bundles before any hook."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from asa_format import constants as C
from asa_format import load_bundle, save_bundle
from asa_format.errors import AsaError, BundleError
from asa_format.runtime import attach, resolve_layers
from asa_format.signing import load_private_key, sign_bundle
from asa_format.testing import make_test_contents
from tiny_models import build_model, no_hooks

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model("llama", seed=2)


@pytest.fixture
def world(tmp_path: Path, model: Any, keys: dict[str, tuple[Path, Path]]) -> dict[str, Any]:
    n = len(resolve_layers(model))
    good = save_bundle(
        make_test_contents(hidden_size=32, model_type="llama", num_layers=n, seed=1),
        tmp_path / "good",
    )
    other = save_bundle(
        make_test_contents(hidden_size=32, model_type="llama", num_layers=n, seed=2),
        tmp_path / "other",
    )
    sign_bundle(good, load_private_key(keys["publisher"][0]))
    sign_bundle(other, load_private_key(keys["mallory"][0]))
    return {
        "good": good,
        "other": other,
        "keys": keys,
        "digest": load_bundle(good).root_digest,
        "tmp": tmp_path,
    }


def _cases(world: dict[str, Any]) -> dict[str, Path]:
    tmp: Path = world["tmp"]
    unsigned = tmp / "unsigned"
    shutil.copytree(world["good"], unsigned)
    (unsigned / C.SIGNATURE_FILE).unlink()
    substituted = tmp / "substituted"  # the other bundle, carrying the publisher's signature
    shutil.copytree(world["other"], substituted)
    shutil.copyfile(world["good"] / C.SIGNATURE_FILE, substituted / C.SIGNATURE_FILE)
    return {"unsigned": unsigned, "wrongly_signed": world["other"], "substituted": substituted}


EXPECTED = {
    "unsigned": "SIGNATURE_MISSING",
    "wrongly_signed": "SIGNATURE_UNTRUSTED_KEY",
    "substituted": "SIGNATURE_FILE_MODIFIED",
}


def test_trusted_bundle_loads_and_attaches(world: dict[str, Any], model: Any) -> None:
    pub = world["keys"]["publisher"][1]
    bundle = load_bundle(world["good"], trusted_keys=[pub], expected_digest=world["digest"])
    assert bundle.root_digest == world["digest"]
    with attach(
        model, world["good"], trusted_keys=[pub], expected_digest=world["digest"]
    ) as handle:
        assert handle.active
    assert no_hooks(model)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_trusted_keys_refuse(case: str, world: dict[str, Any], model: Any) -> None:
    path = _cases(world)[case]
    pub = world["keys"]["publisher"][1]
    with pytest.raises(BundleError) as info:
        load_bundle(path, trusted_keys=[pub])
    assert info.value.code == EXPECTED[case]
    with pytest.raises(AsaError) as info2:
        attach(model, path, trusted_keys=[pub])
    assert info2.value.code == EXPECTED[case]
    assert no_hooks(model)


@pytest.mark.parametrize("case", ["wrongly_signed", "substituted"])
def test_pinned_digest_refuses_substitutes(case: str, world: dict[str, Any], model: Any) -> None:
    path = _cases(world)[case]
    with pytest.raises(BundleError) as info:
        load_bundle(path, expected_digest=world["digest"])
    assert info.value.code == "DIGEST_MISMATCH"
    with pytest.raises(AsaError) as info2:
        attach(model, path, expected_digest=world["digest"])
    assert info2.value.code == "DIGEST_MISMATCH"
    assert no_hooks(model)


def test_pinned_digest_on_loaded_bundle(world: dict[str, Any], model: Any) -> None:
    other = load_bundle(world["other"])
    with pytest.raises(AsaError) as info:
        attach(model, other, expected_digest=world["digest"])
    assert info.value.code == "DIGEST_MISMATCH"
    assert no_hooks(model)
