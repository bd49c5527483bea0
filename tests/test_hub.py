"""Hub references ``org/name@revision`` resolved from a prepared local hub cache (no network)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import huggingface_hub.constants as hub_constants  # the hub extra: conftest marks this module "interop"
import numpy as np
import pytest

import asa_format
from asa_format import load_bundle
from asa_format.errors import AsaError, BundleError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.manifest import ModelBinding
from asa_format.testing import make_test_contents

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(tmp: Path, bundle: Path, repo: str = "org/steer", commit: str = COMMIT) -> Path:
    """Lay out ``bundle`` the way huggingface_hub caches a snapshot (symlinks into blobs/)."""
    cache = tmp / "hub-cache"
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(bundle.iterdir()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (snap / ".gitattributes").write_text("*.onnx filter=lfs\n")  # not a bundle file: skipped
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def no_network(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the test touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path


def test_load_bundle_from_a_pinned_hub_reference(offline: Path) -> None:
    local = asa_format.save_bundle(make_test_contents(hidden_size=8), offline / "b")
    digest = asa_format.load_bundle(local).root_digest
    _cache(offline, local)
    loaded = asa_format.load_bundle(f"org/steer@{COMMIT}", expected_digest=digest)
    assert loaded.root_digest == digest and loaded.path is None
    assert loaded.decide(np.ones((2, 8))).gate.shape == (2,)
    with pytest.raises(BundleError) as info:
        asa_format.load_bundle(f"org/steer@{COMMIT}", expected_digest="sha256:" + "0" * 64)
    assert info.value.code == "DIGEST_MISMATCH"


def test_moving_revisions_need_a_digest(offline: Path) -> None:
    local = asa_format.save_bundle(make_test_contents(hidden_size=8), offline / "b")
    _cache(offline, local)
    with pytest.raises(AsaError) as info:
        asa_format.load_bundle("org/steer@main")
    assert info.value.code == "HUB_REFERENCE" and "commit" in info.value.message
    digest = asa_format.load_bundle(local).root_digest
    assert asa_format.load_bundle("org/steer@main", expected_digest=digest).root_digest == digest


def test_interventions_bundle_and_tampered_blob(offline: Path) -> None:
    contents = BundleContents(
        model=ModelBinding(hidden_size=8, type="llama"),
        interventions=[InterventionData("a", {1: np.arange(8.0)})],
    )
    local = asa_format.save_bundle(contents, offline / "b")
    cache = _cache(offline, local)
    loaded = load_bundle(f"org/steer@{COMMIT}")
    np.testing.assert_array_equal(loaded["a"].directions[1], np.arange(8.0, dtype=np.float32))
    assert loaded.card is not None and "library_name: asa-format" in loaded.card
    blob = next(
        p
        for p in (cache / "models--org--steer" / "blobs").iterdir()
        if p.read_bytes() == (local / "interventions.safetensors").read_bytes()
    )
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(BundleError) as info:
        load_bundle(f"org/steer@{COMMIT}")
    assert info.value.code == "FILE_HASH_MISMATCH"


def test_unknown_repository_and_escaping_links(offline: Path) -> None:
    with pytest.raises(AsaError) as info:
        asa_format.load_bundle(f"org/absent@{COMMIT}")
    assert info.value.code == "HUB_REFERENCE"
    local = asa_format.save_bundle(make_test_contents(hidden_size=8), offline / "b")
    cache = _cache(offline, local)
    snap = cache / "models--org--steer" / "snapshots" / COMMIT
    outside = offline / "outside.onnx"
    outside.write_bytes((local / "router.onnx").read_bytes())
    (snap / "router.onnx").unlink()
    os.symlink(outside, snap / "router.onnx")
    with pytest.raises(AsaError) as info:
        asa_format.load_bundle(f"org/steer@{COMMIT}")
    assert info.value.code == "HUB_REFERENCE" and "outside" in info.value.message


def test_signature_is_checked_after_download(offline: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from asa_format.signing import load_private_key, sign_bundle

    def pair(name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        priv, pub = offline / f"{name}.pem", offline / f"{name}.pub.pem"
        priv.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return priv, pub

    contents = BundleContents(
        model=ModelBinding(hidden_size=8), interventions=[InterventionData("a", {1: np.ones(8)})]
    )
    local = asa_format.save_bundle(contents, offline / "b")
    (publisher, publisher_pub), (_, mallory_pub) = pair("publisher"), pair("mallory")
    sign_bundle(local, load_private_key(publisher))
    _cache(offline, local)
    ref = f"org/steer@{COMMIT}"
    assert load_bundle(ref, trusted_keys=[publisher_pub]).interventions[0].name == "a"
    with pytest.raises(BundleError) as info:
        load_bundle(ref, trusted_keys=[mallory_pub])
    assert info.value.code.startswith("SIGNATURE_")


def test_attach_takes_a_pinned_hub_reference(offline: Path) -> None:
    import torch

    from asa_format.runtime import attach
    from tiny_models import build_model

    model = build_model("llama")
    local = asa_format.save_bundle(
        make_test_contents(hidden_size=32, model_type="llama", num_layers=3, layer=1, seed=5),
        offline / "b",
    )
    _cache(offline, local)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with attach(model, local) as handle:
            want = model(input_ids=ids).logits
        with attach(
            model, f"org/steer@{COMMIT}", expected_digest=asa_format.load_bundle(local).root_digest
        ) as handle:
            got = model(input_ids=ids).logits
    assert handle.bundle.root_digest == asa_format.load_bundle(local).root_digest
    assert handle.last is not None  # the pass was decided
    assert torch.equal(got, want)  # the same steering as the local copy
    assert base.shape == got.shape
