"""Bundle signing: format, failure codes, CLI, and interoperability with OpenSSF model_signing.

The real ``model_signing`` CLI runs as a subprocess with key-based signing
(offline); proxies point to a closed local port so any network attempt fails
the test instead of reaching out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from asa_format import constants as C
from asa_format.cli.sign import sign_command, verify_command
from asa_format.errors import AsaError, BundleError, SignatureError, UsageError
from asa_format.format.digest import root_digest
from asa_format.signing import (
    DSSE_PAYLOAD_TYPE,
    PREDICATE_TYPE,
    SIGSTORE_BUNDLE_MEDIA_TYPE,
    build_statement,
    dsse_pae,
    hash_bundle_files,
    load_private_key,
    public_key_hint,
    root_digest_of_dir,
    sign_bundle,
    verify_bundle,
    verify_bundle_signature,
)

# --------------------------------------------------------------------- fixtures


def make_bundle(directory: Path, seed: int = 0) -> Path:
    """A valid bundle (asa_format.testing), seeded: two seeds give two different bundles."""
    from asa_format.testing import make_test_bundle

    return make_test_bundle(directory, seed=seed)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


_OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
}


def model_signing(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **_OFFLINE_ENV}
    return subprocess.run(
        [sys.executable, "-m", "model_signing", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def ms_sign(bundle: Path, private_key: Path, signature: Path) -> None:
    result = model_signing(
        "sign", "key", bundle, "--private_key", private_key, "--signature", signature
    )
    assert result.returncode == 0, result.stderr
    assert signature.is_file()


def ms_verify(bundle: Path, public_key: Path, signature: Path) -> subprocess.CompletedProcess[str]:
    return model_signing(
        "verify", "key", bundle, "--signature", signature, "--public_key", public_key
    )


def verify_code(bundle: Path, public_key: Path, signature: Path | None = None) -> str:
    with pytest.raises(BundleError) as info:
        verify_bundle_signature(bundle, [public_key], signature_path=signature)
    return info.value.code


def load_signature(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    document = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    return document, statement


def write_signed_statement(
    path: Path, statement: dict[str, Any], private_key: Path, *, hint: bool = True
) -> None:
    """Sign an arbitrary statement the way model_signing does (to craft edge cases)."""
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    payload = json.dumps(statement).encode()
    sig = key.sign(dsse_pae(DSSE_PAYLOAD_TYPE, payload), ec.ECDSA(_hash_for(key)))
    material: dict[str, Any] = {"publicKey": {}, "tlogEntries": []}
    if hint:
        material["publicKey"]["hint"] = public_key_hint(key.public_key())
    document = {
        "mediaType": SIGSTORE_BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": DSSE_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    path.write_text(json.dumps(document))


def _hash_for(key: ec.EllipticCurvePrivateKey) -> Any:
    from cryptography.hazmat.primitives import hashes

    return {256: hashes.SHA256(), 384: hashes.SHA384()}[key.curve.key_size]


# ------------------------------------------------------------ interoperability


@pytest.mark.parametrize("key_name", ["alice", "p384"])
@pytest.mark.interop
def test_asa_sign_then_model_signing_verify(
    bundle: Path, keys: dict[str, tuple[Path, Path]], key_name: str
) -> None:
    private, public = keys[key_name]
    path = sign_bundle(bundle, load_private_key(private))
    assert path == bundle / C.SIGNATURE_FILE
    result = ms_verify(bundle, public, path)
    assert result.returncode == 0, result.stderr
    assert "Verification succeeded" in result.stdout
    verified = verify_bundle_signature(bundle, [public])
    assert verified.root_digest == root_digest((bundle / C.MANIFEST_FILE).read_bytes())


@pytest.mark.parametrize("key_name", ["alice", "p384"])
@pytest.mark.interop
def test_model_signing_sign_then_asa_verify(
    bundle: Path, keys: dict[str, tuple[Path, Path]], key_name: str
) -> None:
    private, public = keys[key_name]
    ms_sign(bundle, private, bundle / C.SIGNATURE_FILE)
    verified = verify_bundle_signature(bundle, [public])
    assert verified.material == "publicKey"
    assert verified.key_hint == hashlib.sha256(public.read_bytes()).hexdigest()
    assert verified.root_digest == root_digest_of_dir(bundle)
    assert dict(verified.files) == hash_bundle_files(bundle)
    assert C.SIGNATURE_FILE not in dict(verified.files)
    result = CliRunner().invoke(verify_command, [str(bundle), "--public-key", str(public)])
    assert result.exit_code == 0, result.output


@pytest.mark.interop
def test_signature_outside_bundle_interoperates(
    bundle: Path, tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    private, public = keys["alice"]
    ours = sign_bundle(bundle, load_private_key(private), signature_path=tmp_path / "ours.sig")
    assert not (bundle / C.SIGNATURE_FILE).exists()
    assert ms_verify(bundle, public, ours).returncode == 0
    theirs = tmp_path / "theirs.sig"
    ms_sign(bundle, private, theirs)
    assert verify_bundle_signature(bundle, [public], signature_path=theirs).files


# One tampering of the bundle after signing, and the code our verifier must give.
def _modify(b: Path, other: Path) -> None:
    (b / C.ROUTER_FILE).write_bytes(b"tampered")


def _extra(b: Path, other: Path) -> None:
    (b / "extra.bin").write_bytes(b"x")


def _missing(b: Path, other: Path) -> None:
    (b / C.PROBE_FILE_TEMPLATE.format(index=0)).unlink()


def _other_bundle(b: Path, other: Path) -> None:
    # move the signature onto another, intact bundle
    os.replace(b / C.SIGNATURE_FILE, other / C.SIGNATURE_FILE)


TAMPERINGS: dict[str, tuple[Callable[[Path, Path], None], str | None, str, str]] = {
    # name: (tampering, the bundle's own finding (None: intact), the signature's finding,
    #        file the signature reports first)
    "modified": (_modify, "FILE_SIZE_MISMATCH", "SIGNATURE_FILE_MODIFIED", C.ROUTER_FILE),
    "extra": (_extra, "FILE_UNLISTED", "SIGNATURE_FILE_EXTRA", "extra.bin"),
    "missing": (
        _missing,
        "FILE_MISSING",
        "SIGNATURE_FILE_MISSING",
        C.PROBE_FILE_TEMPLATE.format(index=0),
    ),
    "other_bundle": (_other_bundle, None, "SIGNATURE_FILE_MODIFIED", C.MANIFEST_FILE),
}


@pytest.mark.parametrize("signer", ["asa", "model_signing"])
@pytest.mark.parametrize("case", sorted(TAMPERINGS))
@pytest.mark.interop
def test_tampering_fails_in_both_verifiers(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], signer: str, case: str
) -> None:
    private, public = keys["alice"]
    signed = make_bundle(tmp_path / "signed", seed=1)
    other = make_bundle(tmp_path / "other", seed=2)
    if signer == "asa":
        sign_bundle(signed, load_private_key(private))
    else:
        ms_sign(signed, private, signed / C.SIGNATURE_FILE)
    tamper, own, code, first_file = TAMPERINGS[case]
    tamper(signed, other)
    target = other if case == "other_bundle" else signed

    outcome = verify_bundle(target, [public])
    assert not outcome.ok and outcome.signature is None
    assert outcome.signature_problems[0].code == code
    assert outcome.signature_problems[0].file == first_file
    assert [p.code for p in outcome.integrity] == ([own] if own else [])
    with pytest.raises(SignatureError) as info:
        verify_bundle_signature(target, [public])
    codes = [p.code for p in info.value.problems]
    if own is None:  # an intact bundle: the signature's own finding comes first
        assert info.value.code == code and "another bundle" in info.value.message
    else:  # the bundle's own check comes first, then the signature's finding
        assert info.value.code == "SIGNATURE_BUNDLE_INVALID"
        assert codes[1:] == [own, code] and "the signature also fails" in info.value.message

    result = ms_verify(target, public, target / C.SIGNATURE_FILE)
    assert result.returncode == 1
    assert "Verification failed" in result.stderr


@pytest.mark.parametrize("signer", ["asa", "model_signing"])
@pytest.mark.interop
def test_wrong_key_fails_in_both_verifiers(
    bundle: Path, keys: dict[str, tuple[Path, Path]], signer: str
) -> None:
    private, _ = keys["alice"]
    _, wrong_public = keys["mallory"]
    signature = bundle / C.SIGNATURE_FILE
    if signer == "asa":
        sign_bundle(bundle, load_private_key(private))
    else:
        ms_sign(bundle, private, signature)
    assert verify_code(bundle, wrong_public) == "SIGNATURE_UNTRUSTED_KEY"
    assert ms_verify(bundle, wrong_public, signature).returncode == 1


def test_several_trusted_keys_pick_the_signer(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    sign_bundle(bundle, load_private_key(keys["p384"][0]))
    trusted = [keys["mallory"][1], keys["alice"][1], keys["p384"][1]]
    verified = verify_bundle_signature(bundle, trusted)
    assert verified.key_hint == hashlib.sha256(keys["p384"][1].read_bytes()).hexdigest()
    key_object = serialization.load_pem_public_key(keys["p384"][1].read_bytes())
    assert isinstance(key_object, ec.EllipticCurvePublicKey)
    assert verify_bundle_signature(bundle, [key_object]).key_hint == verified.key_hint


# ------------------------------------------------------- signature corruption


@pytest.mark.interop
def test_corrupt_signature_bytes_is_invalid(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    private, public = keys["alice"]
    path = sign_bundle(bundle, load_private_key(private))
    document, _ = load_signature(path)
    raw = bytearray(base64.b64decode(document["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    document["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(document))
    assert verify_code(bundle, public) == "SIGNATURE_INVALID"
    assert ms_verify(bundle, public, path).returncode == 1


def test_altered_statement_is_invalid(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    private, public = keys["alice"]
    path = sign_bundle(bundle, load_private_key(private))
    (bundle / C.ROUTER_FILE).write_bytes(b"tampered")
    document, statement = load_signature(path)
    # re-point the statement at the tampered file without re-signing it
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == C.ROUTER_FILE:
            resource["digest"] = hashlib.sha256(b"tampered").hexdigest()
    document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(document))
    outcome = verify_bundle(bundle, [public])
    assert [p.code for p in outcome.signature_problems] == ["SIGNATURE_INVALID"]
    assert [p.code for p in outcome.integrity] == ["FILE_SIZE_MISMATCH"]
    assert verify_code(bundle, public) == "SIGNATURE_BUNDLE_INVALID"


def test_signature_without_key_hint(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    private, public = keys["alice"]
    statement = build_statement("bundle", hash_bundle_files(bundle))
    write_signed_statement(bundle / C.SIGNATURE_FILE, statement, private, hint=False)
    assert verify_bundle_signature(bundle, [keys["mallory"][1], public]).files
    # without a hint, a wrong key cannot be told from a corrupt signature
    assert verify_code(bundle, keys["mallory"][1]) == "SIGNATURE_INVALID"


def test_missing_signature(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    assert verify_code(bundle, keys["alice"][1]) == "SIGNATURE_MISSING"


def _mutate_document(mutation: str, document: dict[str, Any]) -> None:
    envelope = document["dsseEnvelope"]
    if mutation == "media_type":
        document["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1"
    elif mutation == "no_envelope":
        del document["dsseEnvelope"]
    elif mutation == "payload_type":
        envelope["payloadType"] = "text/plain"
    elif mutation == "bad_base64":
        envelope["payload"] = "%%% not base64 %%%"
    elif mutation == "two_signatures":
        envelope["signatures"] = envelope["signatures"] * 2
    elif mutation == "certificate":
        document["verificationMaterial"] = {"certificate": {"rawBytes": "AAAA"}}
    elif mutation == "sig_type":
        envelope["signatures"][0]["sig"] = 42
    else:  # pragma: no cover - test table error
        raise AssertionError(mutation)


@pytest.mark.parametrize(
    "mutation",
    [
        "media_type",
        "no_envelope",
        "payload_type",
        "bad_base64",
        "two_signatures",
        "certificate",
        "sig_type",
    ],
)
def test_malformed_signature_document(
    bundle: Path, keys: dict[str, tuple[Path, Path]], mutation: str
) -> None:
    private, public = keys["alice"]
    path = sign_bundle(bundle, load_private_key(private))
    document, _ = load_signature(path)
    _mutate_document(mutation, document)
    path.write_text(json.dumps(document))
    assert verify_code(bundle, public) == "SIGNATURE_FORMAT"


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[1, 2]", b'{"mediaType": 1, "mediaType": 2}', b"\xff\xfe"],
)
def test_unparsable_signature_file(
    bundle: Path, keys: dict[str, tuple[Path, Path]], content: bytes
) -> None:
    (bundle / C.SIGNATURE_FILE).write_bytes(content)
    assert verify_code(bundle, keys["alice"][1]) == "SIGNATURE_FORMAT"


def _edit_statement(edit: str, statement: dict[str, Any]) -> None:
    resources = statement["predicate"]["resources"]
    if edit == "dotdot_name":
        resources[0]["name"] = "../" + resources[0]["name"]
    elif edit == "duplicate":
        resources.append(dict(resources[0]))
    elif edit == "subject_digest":
        statement["subject"][0]["digest"]["sha256"] = "0" * 64
    elif edit == "predicate_type":
        statement["predicateType"] = "https://model_signing/Digests/v0.1"
    elif edit == "shards":
        statement["predicate"]["serialization"]["method"] = "shards"
    elif edit == "blake3":
        statement["predicate"]["serialization"]["hash_type"] = "blake3"
    elif edit == "upper_hex":
        resources[0]["digest"] = resources[0]["digest"].upper()
    else:  # pragma: no cover - test table error
        raise AssertionError(edit)
    if edit not in ("subject_digest",):
        ordered = [bytes.fromhex(r["digest"]) for r in resources]
        statement["subject"][0]["digest"]["sha256"] = hashlib.sha256(b"".join(ordered)).hexdigest()


@pytest.mark.parametrize(
    "edit",
    [
        "dotdot_name",
        "duplicate",
        "subject_digest",
        "predicate_type",
        "shards",
        "blake3",
        "upper_hex",
    ],
)
def test_validly_signed_but_malformed_statement(
    bundle: Path, keys: dict[str, tuple[Path, Path]], edit: str
) -> None:
    private, public = keys["alice"]
    statement = build_statement("bundle", hash_bundle_files(bundle))
    _edit_statement(edit, statement)
    write_signed_statement(bundle / C.SIGNATURE_FILE, statement, private)
    assert verify_code(bundle, public) == "SIGNATURE_FORMAT"


# ------------------------------------------------------------ statement format


def test_statement_layout_and_determinism(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    private, public = keys["alice"]
    path = sign_bundle(bundle, load_private_key(private))
    first = path.read_bytes()
    assert sign_bundle(bundle, load_private_key(private)) == path
    assert path.read_bytes() == first  # deterministic ECDSA (RFC 6979)

    document, statement = load_signature(path)
    assert document["mediaType"] == SIGSTORE_BUNDLE_MEDIA_TYPE
    assert document["verificationMaterial"]["publicKey"]["hint"] == (
        hashlib.sha256(public.read_bytes()).hexdigest()
    )
    assert document["dsseEnvelope"]["payloadType"] == DSSE_PAYLOAD_TYPE
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["predicate"]["serialization"] == {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": [C.SIGNATURE_FILE],
    }
    resources = statement["predicate"]["resources"]
    names = [r["name"] for r in resources]
    assert names == sorted(p.name for p in bundle.iterdir() if p.name != C.SIGNATURE_FILE)
    for resource in resources:
        data = (bundle / resource["name"]).read_bytes()
        assert resource == {
            "name": resource["name"],
            "algorithm": "sha256",
            "digest": hashlib.sha256(data).hexdigest(),
        }
    concatenated = b"".join(bytes.fromhex(r["digest"]) for r in resources)
    assert statement["subject"] == [
        {"name": "bundle", "digest": {"sha256": hashlib.sha256(concatenated).hexdigest()}}
    ]


def test_root_digest_of_dir(bundle: Path) -> None:
    expected = "sha256:" + hashlib.sha256((bundle / C.MANIFEST_FILE).read_bytes()).hexdigest()
    assert root_digest_of_dir(bundle) == expected
    (bundle / C.MANIFEST_FILE).unlink()
    with pytest.raises(BundleError) as info:
        root_digest_of_dir(bundle)
    assert info.value.code == "MANIFEST_MISSING"


def test_signed_manifest_digest_is_root_digest(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    sign_bundle(bundle, load_private_key(keys["alice"][0]))
    _, statement = load_signature(bundle / C.SIGNATURE_FILE)
    by_name = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    assert "sha256:" + by_name[C.MANIFEST_FILE] == root_digest_of_dir(bundle)


# ------------------------------------------------------------- paths and keys


def test_symlinks_are_refused(
    bundle: Path, tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    private, public = keys["alice"]
    sign_bundle(bundle, load_private_key(private))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    (bundle / "link.bin").symlink_to(outside)
    signature = (bundle / C.SIGNATURE_FILE).read_bytes()
    for action in (
        lambda: sign_bundle(bundle, load_private_key(private)),
        lambda: verify_bundle_signature(bundle, [public]),
    ):
        with pytest.raises(SignatureError) as info:
            action()
        assert info.value.code == "SIGNATURE_BUNDLE_INVALID"
        assert ("PATH_SYMLINK", "link.bin") in [(p.code, p.file) for p in info.value.problems]
    assert (bundle / C.SIGNATURE_FILE).read_bytes() == signature  # nothing was re-signed


@pytest.mark.interop
def test_subdirectory_files_are_covered(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    """model_signing covers a subdirectory; a bundle is flat, so asa neither signs nor trusts it."""
    private, public = keys["alice"]
    (bundle / "sub").mkdir()
    (bundle / "sub" / "note.txt").write_bytes(b"n")
    with pytest.raises(SignatureError) as info:
        sign_bundle(bundle, load_private_key(private))
    assert info.value.code == "SIGNATURE_BUNDLE_INVALID"
    assert ("PATH_NOT_REGULAR", "sub") in [(p.code, p.file) for p in info.value.problems]
    assert not (bundle / C.SIGNATURE_FILE).exists()

    ms_sign(bundle, private, bundle / C.SIGNATURE_FILE)
    assert ms_verify(bundle, public, bundle / C.SIGNATURE_FILE).returncode == 0
    outcome = verify_bundle(bundle, [public])
    assert outcome.signature is not None and "sub/note.txt" in dict(outcome.signature.files)
    assert [p.code for p in outcome.integrity] == ["PATH_NOT_REGULAR"] and not outcome.ok
    assert verify_code(bundle, public) == "SIGNATURE_BUNDLE_INVALID"
    (bundle / "sub" / "note.txt").write_bytes(b"changed")
    outcome = verify_bundle(bundle, [public])
    assert [p.code for p in outcome.signature_problems] == ["SIGNATURE_FILE_MODIFIED"]


def test_signature_inside_bundle_must_be_model_sig(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    with pytest.raises(UsageError):
        sign_bundle(bundle, load_private_key(keys["alice"][0]), signature_path=bundle / "other.sig")
    assert not (bundle / "other.sig").exists()


def test_missing_bundle_and_manifest(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    with pytest.raises(BundleError) as info:
        sign_bundle(tmp_path / "nope", load_private_key(keys["alice"][0]))
    assert info.value.code == "BUNDLE_NOT_FOUND"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError) as info:
        sign_bundle(empty, load_private_key(keys["alice"][0]))
    assert info.value.code == "SIGNATURE_BUNDLE_INVALID"
    assert [p.code for p in info.value.problems] == ["SIGNATURE_BUNDLE_INVALID", "MANIFEST_MISSING"]
    assert list(empty.iterdir()) == []


def test_encrypted_private_key(bundle: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    with pytest.raises(AsaError) as info:
        sign_bundle(bundle, load_private_key(pem))
    assert info.value.code == "SIGNATURE_KEY_INVALID"
    sign_bundle(bundle, load_private_key(pem, password=b"s3cret"))
    assert verify_bundle_signature(bundle, [key.public_key()]).files


def test_unsupported_keys(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_pem = ed.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(AsaError) as info:
        sign_bundle(bundle, load_private_key(ed_pem))
    assert info.value.code == "SIGNATURE_KEY_INVALID"
    sign_bundle(bundle, load_private_key(keys["alice"][0]))
    for bad in (b"garbage", bundle / "no-such.pub"):
        with pytest.raises(AsaError) as info:
            verify_bundle_signature(bundle, [bad])
        assert info.value.code == "SIGNATURE_KEY_INVALID"
    with pytest.raises(UsageError):
        verify_bundle_signature(bundle, [])


# ---------------------------------------------------------------------- CLI


def test_cli_sign_and_verify(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    private, public = keys["alice"]
    runner = CliRunner()
    signed = runner.invoke(sign_command, [str(bundle), "--private-key", str(private)])
    assert signed.exit_code == 0, signed.output
    assert (bundle / C.SIGNATURE_FILE).is_file()
    assert root_digest_of_dir(bundle) in signed.stdout

    ok = runner.invoke(verify_command, [str(bundle), "--public-key", str(public), "--json"])
    assert ok.exit_code == 0, ok.output
    envelope = json.loads(ok.stdout)
    assert envelope["ok"] is True and envelope["command"] == "verify"
    report = envelope["results"][0]
    assert report["ok"] is True
    assert report["root_digest"] == root_digest_of_dir(bundle)
    assert [f["name"] for f in report["files"]] == sorted(
        p.name for p in bundle.iterdir() if p.name != C.SIGNATURE_FILE
    )

    (bundle / C.VECTORS_FILE).write_bytes(b"tampered")
    bad = runner.invoke(verify_command, [str(bundle), "--public-key", str(public), "--json"])
    assert bad.exit_code == 1
    failure = json.loads(bad.stdout)
    assert failure["ok"] is False
    problems = [(p["code"], p["file"]) for p in failure["results"][0]["problems"]]
    assert problems == [
        ("SIGNATURE_BUNDLE_INVALID", None),
        ("FILE_SIZE_MISMATCH", C.VECTORS_FILE),
        ("SIGNATURE_FILE_MODIFIED", C.VECTORS_FILE),
    ]
    assert failure["results"][0]["checks"] == {
        "integrity": {"ok": False, "codes": ["FILE_SIZE_MISMATCH"]},
        "signature": {"ok": False, "codes": ["SIGNATURE_FILE_MODIFIED"]},
    }

    human = runner.invoke(verify_command, [str(bundle), "--public-key", str(public)])
    assert human.exit_code == 1
    assert human.stderr == ""  # the report, failures included, is on stdout
    assert "SIGNATURE_FILE_MODIFIED" in human.stdout and "vectors.safetensors:" in human.stdout
    assert "the signature also fails" in human.stdout


def test_cli_usage_errors(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    runner = CliRunner()
    assert runner.invoke(verify_command, [str(bundle)]).exit_code == 2  # no --public-key
    garbage = bundle.parent / "garbage.pem"
    garbage.write_bytes(b"not a key")
    sign_bundle(bundle, load_private_key(keys["alice"][0]))
    result = runner.invoke(verify_command, [str(bundle), "--public-key", str(garbage)])
    assert result.exit_code == 2
    assert "SIGNATURE_KEY_INVALID" in result.stderr
    result = runner.invoke(sign_command, [str(bundle), "--private-key", str(garbage)])
    assert result.exit_code == 2
    result = runner.invoke(
        sign_command,
        [str(bundle), "--private-key", str(keys["alice"][0]), "--signature", str(bundle / "x")],
    )
    assert result.exit_code == 2
    missing = runner.invoke(
        verify_command, [str(bundle.parent / "nope"), "--public-key", str(keys["alice"][1])]
    )
    assert missing.exit_code == 1
    assert "BUNDLE_NOT_FOUND" in missing.stdout


def test_cli_untrusted_key_exit_code(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    sign_bundle(bundle, load_private_key(keys["alice"][0]))
    result = CliRunner().invoke(
        verify_command, [str(bundle), "--public-key", str(keys["mallory"][1])]
    )
    assert result.exit_code == 1
    assert "SIGNATURE_UNTRUSTED_KEY" in result.stdout


def test_signing_module_imports_no_heavy_dependency() -> None:
    code = (
        "import sys, asa_format.signing, asa_format.cli.sign; "
        "bad = [m for m in ('model_signing', 'sigstore', 'torch', 'sklearn') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


@pytest.mark.interop
def test_copy_of_signed_bundle_verifies_elsewhere(
    bundle: Path, tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    sign_bundle(bundle, load_private_key(keys["alice"][0]))
    copy = tmp_path / "renamed"
    shutil.copytree(bundle, copy)
    assert verify_bundle_signature(copy, [keys["alice"][1]]).subject_name == "bundle"
    assert ms_verify(copy, keys["alice"][1], copy / C.SIGNATURE_FILE).returncode == 0


@pytest.mark.interop
def test_real_bundle_signed_by_model_signing_then_pinned_load(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    from asa_format.bundle import load_bundle
    from asa_format.testing import make_test_bundle

    private, public = keys["alice"]
    path = make_test_bundle(tmp_path / "real")
    ms_sign(path, private, path / C.SIGNATURE_FILE)
    verified = verify_bundle_signature(path, [public])
    assert {n for n, _ in verified.files} == {
        p.name for p in path.iterdir() if p.name != C.SIGNATURE_FILE
    }
    loaded = load_bundle(path, expected_digest=verified.root_digest, trusted_keys=[public])
    assert loaded.root_digest == verified.root_digest
    with pytest.raises(SignatureError) as info:
        load_bundle(path, trusted_keys=[keys["mallory"][1]])
    assert info.value.code == "SIGNATURE_UNTRUSTED_KEY"


def test_cli_sign_with_password_from_environment(bundle: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = tmp_path / "enc.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    runner = CliRunner()
    args = [str(bundle), "--private-key", str(private), "--password-env", "ASA_TEST_PW"]
    assert runner.invoke(sign_command, args, env={"ASA_TEST_PW": None}).exit_code == 2
    assert runner.invoke(sign_command, args, env={"ASA_TEST_PW": "wrong"}).exit_code == 2
    result = runner.invoke(sign_command, args, env={"ASA_TEST_PW": "pw"})
    assert result.exit_code == 0, result.output
    assert verify_bundle_signature(bundle, [key.public_key()]).files


def test_deprecated_key_arguments_still_work_and_warn(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    private, public = keys["alice"]
    with pytest.warns(DeprecationWarning, match="load_private_key"):
        sign_bundle(bundle, private)  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning, match="trusted_keys"):
        verified = verify_bundle_signature(bundle, public_keys=[public])
    assert verified.files
    assert verify_bundle_signature(bundle, trusted_keys=[public]).files


def test_a_key_of_the_wrong_type_is_a_clean_error(bundle: Path) -> None:
    with pytest.raises(SignatureError) as info:
        verify_bundle_signature(bundle, trusted_keys=[12345])  # type: ignore[list-item]
    assert info.value.code == "SIGNATURE_KEY_INVALID" and "int" in info.value.message
