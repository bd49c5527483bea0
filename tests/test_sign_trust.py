"""Trust what you sign: ``asa sign`` and ``asa verify`` check the bundle first.

A converted bundle (``asa-convert`` of the example legacy assets) is tampered
with the way an attacker would: one byte of ``vectors.safetensors`` flipped
(same size, so only the sha256 tells), an extra file, a rewritten manifest.
The commands run as a user types them (``python -m asa_format.cli``); the
OpenSSF ``model_signing`` CLI signs and verifies next to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import BundleError

pytestmark = [pytest.mark.convert, pytest.mark.interop]

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "asa_assets"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def asa(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asa_format.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )


def asa_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = asa(*args, "--json")
    return result.returncode, json.loads(result.stdout)


# model_signing runs offline: proxies point to a closed local port
_OFFLINE = {
    k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
}


def model_signing(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_signing", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **_OFFLINE, "NO_PROXY": "", "no_proxy": ""},
        timeout=120,
        check=False,
    )


def ms_sign(bundle: Path, private_key: Path, signature: Path) -> None:
    result = model_signing(
        "sign", "key", bundle, "--private_key", private_key, "--signature", signature
    )
    assert result.returncode == 0, result.stderr


def ms_verify(bundle: Path, public_key: Path, signature: Path) -> subprocess.CompletedProcess[str]:
    return model_signing(
        "verify", "key", bundle, "--signature", signature, "--public_key", public_key
    )


def tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from asa_format.converters.convert import convert_legacy

    out = tmp_path_factory.mktemp("converted") / "bundle"
    convert_legacy(ASSETS, out, samples=64)
    return out


@pytest.fixture
def bundle(converted: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "work" / "bundle"
    shutil.copytree(converted, copy)
    return copy


def flip_a_byte(bundle: Path) -> None:
    path = bundle / C.VECTORS_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last vector: same size, different sha256
    path.write_bytes(bytes(data))


def test_sign_refuses_a_tampered_bundle_and_writes_nothing(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    flip_a_byte(bundle)
    before, around = tree(bundle), sorted(p.name for p in bundle.parent.iterdir())
    code, doc = asa_json("sign", bundle, "--private-key", keys["alice"][0])
    assert code == 1
    problems = [(p["code"], p["file"]) for p in doc["results"][0]["problems"]]
    assert problems == [("SIGNATURE_BUNDLE_INVALID", None), ("FILE_HASH_MISMATCH", C.VECTORS_FILE)]
    assert "it was not signed" in doc["results"][0]["problems"][0]["message"]
    assert tree(bundle) == before and not (bundle / C.SIGNATURE_FILE).exists()
    assert sorted(p.name for p in bundle.parent.iterdir()) == around  # no temporary left
    text = asa("sign", bundle, "--private-key", keys["alice"][0])
    assert text.returncode == 1 and "FILE_HASH_MISMATCH" in text.stdout
    assert "Traceback" not in text.stderr


@pytest.mark.parametrize("signer", ["asa", "model_signing"])
def test_verify_fails_on_a_byte_flipped_after_signing(
    bundle: Path, keys: dict[str, tuple[Path, Path]], signer: str
) -> None:
    private, public = keys["alice"]
    if signer == "asa":
        assert asa("sign", bundle, "--private-key", private).returncode == 0
    else:
        ms_sign(bundle, private, bundle / C.SIGNATURE_FILE)
    flip_a_byte(bundle)
    code, doc = asa_json("verify", bundle, "--public-key", public)
    assert code == 1 and doc["ok"] is False
    result = doc["results"][0]
    assert result["checks"] == {
        "integrity": {"ok": False, "codes": ["FILE_HASH_MISMATCH"]},
        "signature": {"ok": False, "codes": ["SIGNATURE_FILE_MODIFIED"]},
    }
    assert result["problems"][0]["code"] == "SIGNATURE_BUNDLE_INVALID"


def test_a_valid_signature_over_a_tampered_bundle_is_not_trusted(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    """The signer signed what nobody checked: the signature holds, the bundle does not."""
    private, public = keys["alice"]
    flip_a_byte(bundle)
    ms_sign(bundle, private, bundle / C.SIGNATURE_FILE)
    assert ms_verify(bundle, public, bundle / C.SIGNATURE_FILE).returncode == 0  # bytes only

    code, doc = asa_json("verify", bundle, "--public-key", public)
    assert code == 1 and doc["ok"] is False
    result = doc["results"][0]
    assert result["checks"] == {
        "integrity": {"ok": False, "codes": ["FILE_HASH_MISMATCH"]},
        "signature": {"ok": True, "codes": []},
    }
    first = result["problems"][0]
    assert first["code"] == "SIGNATURE_BUNDLE_INVALID"
    assert "the signature itself verifies" in first["message"]
    text = asa("verify", bundle, "--public-key", public)
    assert text.returncode == 1 and "the signature itself verifies" in text.stdout
    with pytest.raises(BundleError) as info:
        load_bundle(bundle, trusted_keys=[public])
    assert info.value.code == "FILE_HASH_MISMATCH"


def test_an_extra_file_fails_verification(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    private, public = keys["alice"]
    assert asa("sign", bundle, "--private-key", private).returncode == 0
    (bundle / "notes.txt").write_text("added after signing")
    code, doc = asa_json("verify", bundle, "--public-key", public)
    assert code == 1
    assert doc["results"][0]["checks"] == {
        "integrity": {"ok": False, "codes": ["FILE_UNLISTED"]},
        "signature": {"ok": False, "codes": ["SIGNATURE_FILE_EXTRA"]},
    }


def _rewrite_manifest(bundle: Path, edit: Any) -> None:
    path = bundle / C.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_a_rewritten_manifest_fails_verification(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    private, public = keys["alice"]
    assert asa("sign", bundle, "--private-key", private).returncode == 0

    def stronger(manifest: dict[str, Any]) -> None:
        manifest["steering"]["alpha"] = manifest["steering"]["alpha"] * 4

    _rewrite_manifest(bundle, stronger)
    assert asa("validate", bundle).returncode == 0  # a valid bundle, just not the signed one
    code, doc = asa_json("verify", bundle, "--public-key", public)
    assert code == 1
    result = doc["results"][0]
    assert result["checks"] == {
        "integrity": {"ok": True, "codes": []},
        "signature": {"ok": False, "codes": ["SIGNATURE_FILE_MODIFIED"]},
    }
    assert result["problems"][0]["file"] == C.MANIFEST_FILE


def test_a_swapped_graph_with_a_rehashed_manifest_fails_verification(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    """The attacker keeps the bundle self-consistent (a probe replaced, the manifest re-pinned
    to it): the bundle's own checks pass, only the signature can tell."""
    private, public = keys["alice"]
    assert asa("sign", bundle, "--private-key", private).returncode == 0
    shutil.copyfile(bundle / "probe_0.onnx", bundle / "probe_1.onnx")
    data = (bundle / "probe_1.onnx").read_bytes()

    def repin(manifest: dict[str, Any]) -> None:
        manifest["files"]["probe_1.onnx"] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    _rewrite_manifest(bundle, repin)
    assert asa("validate", bundle).returncode == 0
    code, doc = asa_json("verify", bundle, "--public-key", public)
    assert code == 1
    result = doc["results"][0]
    assert result["checks"]["integrity"] == {"ok": True, "codes": []}
    assert [(p["code"], p["file"]) for p in result["problems"]] == [
        ("SIGNATURE_FILE_MODIFIED", C.MANIFEST_FILE),
        ("SIGNATURE_FILE_MODIFIED", "probe_1.onnx"),
    ]


@pytest.mark.parametrize("signer", ["asa", "model_signing"])
def test_an_untouched_signed_bundle_verifies_with_the_digest_inspect_prints(
    bundle: Path, keys: dict[str, tuple[Path, Path]], signer: str
) -> None:
    private, public = keys["alice"]
    signed_digest = None
    if signer == "asa":
        code, signed = asa_json("sign", bundle, "--private-key", private)
        assert code == 0 and signed["ok"] is True
        assert signed["results"][0]["signature"] == str(bundle / C.SIGNATURE_FILE)
        signed_digest = signed["results"][0]["root_digest"]
    else:
        ms_sign(bundle, private, bundle / C.SIGNATURE_FILE)
    code, inspected = asa_json("inspect", bundle)
    assert code == 0
    digest = inspected["results"][0]["digest"]
    assert digest == "sha256:" + hashlib.sha256((bundle / C.MANIFEST_FILE).read_bytes()).hexdigest()
    code, doc = asa_json("verify", bundle, "--public-key", public)
    assert code == 0 and doc["ok"] is True
    result = doc["results"][0]
    assert result["root_digest"] == digest
    assert result["checks"] == {
        "integrity": {"ok": True, "codes": []},
        "signature": {"ok": True, "codes": []},
    }
    text = asa("verify", bundle, "--public-key", public)
    assert text.returncode == 0 and digest in text.stdout
    assert signed_digest in (digest, None)
    assert load_bundle(bundle, trusted_keys=[public]).root_digest == digest
