"""Hostile text and numbers, and hostile directory entries.

Strict JSON (depth, digits, lone surrogates, non-characters) for the
manifest, config.json and model.sig; safe printing of every string a bundle
brings; regular single-link files everywhere, model.sig included; asa verify
bounded like the reader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from asa_format import constants as C
from asa_format.converters.legacy import parse_legacy_config
from asa_format.errors import AsaError, BundleError
from asa_format.format.jsonio import loads_strict
from asa_format.format.manifest import parse_manifest
from asa_format.testing import make_test_bundle
from asa_format.validate import validate_bundle

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {"L_star": 1, "alpha": 4.0, "tau": 0.6, "beta": 0.3, "domains": ["a", "b"]}


def _manifest_with(path: Path, edit: str) -> Path:
    """Replace the manifest text by ``edit`` applied to it (raw JSON text)."""
    text = (path / C.MANIFEST_FILE).read_text(encoding="utf-8")
    (path / C.MANIFEST_FILE).write_text(edit.replace("@", text), encoding="utf-8")
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "asa_format.cli", *args], capture_output=True, text=True,
                          env=env, check=False, timeout=120, errors="surrogateescape")  # fmt: skip


def _set_model_id(path: Path, raw_json_string: str) -> None:
    """Put ``raw_json_string`` (JSON text, escapes allowed) as the model id; the manifest is re-hashed by nobody:
    the manifest is the root, so it stays self-consistent."""
    text = (path / C.MANIFEST_FILE).read_text(encoding="utf-8")
    doc = json.loads(text)
    doc["model"]["id"] = "PLACEHOLDER"
    text = json.dumps(doc, indent=2, sort_keys=True).replace('"PLACEHOLDER"', raw_json_string)
    (path / C.MANIFEST_FILE).write_text(text, encoding="utf-8")


# -- strict JSON --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"a": "\\ud800"}', "lone surrogate"),
        ('{"\\udc00": 1}', "lone surrogate"),
        ('["\\uffff"]', "non-character"),
        ('["\\ufdd0"]', "non-character"),
        ('["\\udbff\\udfff"]', "non-character"),  # U+10FFFF
        ("[" + "1" * 5000 + "]", "digits"),
        ("[" * 900 + "]" * 900, "nests"),
        ("[" * 100_000 + "]" * 100_000, "nests"),
        ("[1." + "0" * 5000 + "]", "characters"),
    ],
)
def test_strict_json_refuses_with_a_clear_reason(text: str, needle: str) -> None:
    with pytest.raises(json.JSONDecodeError) as info:
        loads_strict(text)
    assert needle in str(info.value)


def test_strict_json_keeps_valid_text() -> None:
    assert loads_strict('{"k": ["\\ud83d\\ude00", "é", 123456789012345678901234567890, 1.5]}') == {
        "k": ["\U0001f600", "é", 123456789012345678901234567890, 1.5]
    }


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ('"\\ud800"', "MANIFEST_ENCODING"),
        ('"x\\uffff"', "MANIFEST_ENCODING"),
        ("1" * 5000, "MANIFEST_JSON"),
        ("[" * 900 + "]" * 900, "MANIFEST_JSON"),
    ],
)
def test_manifest_text_and_numbers(raw: str, code: str, tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    _set_model_id(path, raw)
    _, errors, _ = parse_manifest((path / C.MANIFEST_FILE).read_bytes())
    assert [e.code for e in errors] == [code]
    assert [p.code for p in validate_bundle(path).problems] == [code]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({**CONFIG, "domains": ["a", "PLACE"]}).replace("PLACE", "\\ud800"),
        json.dumps({**CONFIG, "sklearn": "PLACE"}).replace('"PLACE"', "1" * 5000),
        json.dumps({**CONFIG, "extra": "PLACE"}).replace('"PLACE"', "[" * 900 + "]" * 900),
        json.dumps({**CONFIG, "L_star": "PLACE"}).replace('"PLACE"', "1" * 4301),
    ],
)
def test_legacy_config_refuses_with_a_coded_error(text: str) -> None:
    with pytest.raises(AsaError) as info:
        parse_legacy_config(text.encode("utf-8"))
    assert info.value.code == "LEGACY_CONFIG"


def test_legacy_config_still_reads_python_nan() -> None:
    config = parse_legacy_config(json.dumps({**CONFIG, "f1": float("nan")}).encode())
    assert config.extra["f1"] == "NaN"


# -- safe printing ---------------------------------------------------------------------------------


def test_a_bad_bundle_does_not_kill_a_multi_bundle_text_run(tmp_path: Path) -> None:
    good = make_test_bundle(tmp_path / "good")
    bad = make_test_bundle(tmp_path / "bad")
    _set_model_id(bad, '"\\ud800"')
    result = _cli("validate", str(bad), str(good))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "MANIFEST_ENCODING" in result.stdout and f"ok    {good}" in result.stdout
    assert "1 of 2 bundles valid" in result.stdout


def test_terminal_controls_from_a_bundle_are_escaped(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    _set_model_id(
        path, '"evil\\u009b2J\\u202egnp.exe"'
    )  # C1 CSI (clear screen), right-to-left override
    result = _cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "\x9b" not in result.stdout and "\u202e" not in result.stdout
    assert "evil\\x9b2J\\u202egnp.exe" in result.stdout
    shown = _cli("inspect", str(path))
    assert shown.returncode == 0 and "\x9b" not in shown.stdout and "\\x9b2J" in shown.stdout
    as_json = _cli("validate", "--json", str(path))
    assert as_json.stdout.isascii() and json.loads(as_json.stdout)["ok"] is True


def test_file_names_with_controls_and_undecodable_bytes_are_escaped(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    raw = os.fsencode(path) + b"/x\x1b[2J\xff"
    with open(raw, "wb") as handle:
        handle.write(b"x")
    result = _cli("validate", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "FILE_UNLISTED" in result.stdout and "x\\x1b[2J\\udcff" in result.stdout
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    as_json = _cli("validate", "--json", str(path))
    assert as_json.returncode == 1 and as_json.stdout.isascii()
    problem = json.loads(as_json.stdout)["results"][0]["problems"][0]
    assert problem["code"] == "FILE_UNLISTED" and "\x1b" in problem["file"]


# -- entries -------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_signature_is_refused_without_blocking(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    os.mkfifo(path / C.SIGNATURE_FILE)
    assert [p.code for p in validate_bundle(path).problems] == ["PATH_NOT_REGULAR"]


def test_hard_linked_signature_is_refused(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    (tmp_path / "elsewhere.sig").write_bytes(b"{}")
    os.link(tmp_path / "elsewhere.sig", path / C.SIGNATURE_FILE)
    assert [p.code for p in validate_bundle(path).problems] == ["PATH_HARDLINK"]


def test_oversized_signature_is_refused_unread(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b")
    with open(path / C.SIGNATURE_FILE, "wb") as handle:
        handle.truncate(C.MAX_SIGNATURE_BYTES + 1)  # sparse
    assert [p.code for p in validate_bundle(path).problems] == ["FILE_TOO_LARGE"]


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "k.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return d / "k.pem", d / "k.pub"


def _verify_code(path: Path, public: Path) -> str:
    """The code of the refusal; for a bundle that fails its own checks (checked before the
    signature: SIGNATURE_BUNDLE_INVALID), the code both the bundle check and the signature
    check give."""
    from asa_format.signing import verify_bundle, verify_bundle_signature

    with pytest.raises(BundleError) as info:  # SignatureError, or BundleError for entry rules
        verify_bundle_signature(path, [public])
    if info.value.code != "SIGNATURE_BUNDLE_INVALID":
        return info.value.code
    outcome = verify_bundle(path, [public])
    both = {p.code for p in outcome.integrity} & {p.code for p in outcome.signature_problems}
    assert len(both) == 1, (outcome.integrity, outcome.signature_problems)
    return both.pop()


def test_verify_refuses_deeply_nested_directories(
    tmp_path: Path, key_pair: tuple[Path, Path]
) -> None:
    from asa_format.signing import load_private_key, sign_bundle

    path = make_test_bundle(tmp_path / "b")
    sign_bundle(path, load_private_key(key_pair[0]))
    created: list[Path] = []  # os.makedirs recurses: build the chain one level at a time
    try:
        deep = path
        for _ in range(1000):
            deep = deep / "d"
            os.mkdir(deep)
            created.append(deep)
        assert _verify_code(path, key_pair[1]) == "PATH_NOT_REGULAR"
    finally:  # shutil.rmtree (pytest's clean-up) recurses: remove the chain deepest first
        for level in reversed(created):
            os.rmdir(level)


def test_verify_does_not_hash_past_the_size_cap(
    tmp_path: Path, key_pair: tuple[Path, Path]
) -> None:
    from asa_format.signing import load_private_key, sign_bundle

    path = make_test_bundle(tmp_path / "b")
    sign_bundle(path, load_private_key(key_pair[0]))
    with open(path / C.VECTORS_FILE, "r+b") as handle:
        handle.truncate(256 << 30)  # a 256 GiB sparse file
    assert _verify_code(path, key_pair[1]) == "FILE_TOO_LARGE"


def test_verify_refuses_a_hard_linked_file(tmp_path: Path, key_pair: tuple[Path, Path]) -> None:
    from asa_format.signing import load_private_key, sign_bundle

    path = make_test_bundle(tmp_path / "b")
    sign_bundle(path, load_private_key(key_pair[0]))
    os.link(path / C.ROUTER_FILE, tmp_path / "outside.onnx")
    assert _verify_code(path, key_pair[1]) == "PATH_HARDLINK"


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"mediaType": ' + "1" * 5000 + "}",
        '{"mediaType": "\\ud800"}',
    ],
)
def test_hostile_signature_json_is_a_format_error(
    payload: str, tmp_path: Path, key_pair: tuple[Path, Path]
) -> None:
    path = make_test_bundle(tmp_path / "b")
    (path / C.SIGNATURE_FILE).write_text(payload, encoding="utf-8")
    assert _verify_code(path, key_pair[1]) == "SIGNATURE_FORMAT"
