"""One convention for every command, as the README states it.

Report on stdout (text or ``--json``), diagnostics on stderr; one JSON
envelope for validate, inspect, verify and convert with a result for every
path given; exit 0 ok, 1 a check failed, 2 usage or environment error, 130
on SIGINT, the same code for the same fault in every command; hints name
the interface the user is in; ``asa sign`` keeps an existing signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from asa_format import load_bundle
from asa_format.errors import AsaError

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "asa_assets"
GOOD = ROOT / "spec" / "conformance" / "valid" / "minimal_two_domains" / "bundle"
BAD = ROOT / "spec" / "conformance" / "invalid" / "file_hash_mismatch" / "bundle"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def asa(*args: str, module: str = "asa_format.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = d / "key.pem", d / "pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    import shutil

    bundle = tmp_path / "signed"
    shutil.copytree(GOOD, bundle)
    result = asa("sign", str(bundle), "--private-key", str(keys[0]))
    assert result.returncode == 0, result.stderr
    return bundle


# ---------------------------------------------------------------- reports


def test_validate_json_reports_every_path_missing_ones_included(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = asa("validate", "--json", str(GOOD), str(missing))
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert [r["path"] for r in doc["results"]] == [str(GOOD), str(missing)]
    assert [r["ok"] for r in doc["results"]] == [True, False]
    assert doc["results"][1]["problems"][0]["code"] == "BUNDLE_NOT_FOUND"
    assert doc["summary"] == {"checked": 2, "ok": 1, "failed": 1}


def test_text_report_goes_to_stdout(tmp_path: Path) -> None:
    result = asa("validate", str(GOOD), str(BAD), str(tmp_path / "missing"))
    assert result.returncode == 1
    assert result.stderr == ""
    out = result.stdout
    assert f"ok    {GOOD}" in out and f"FAIL  {BAD}" in out and "FILE_HASH_MISMATCH" in out
    assert "BUNDLE_NOT_FOUND" in out
    assert out.splitlines()[-1] == "1 of 3 bundles valid"


def _envelope_shape(doc: dict[str, Any], command: str) -> None:
    assert set(doc) == {"asa_format_version", "command", "ok", "summary", "results"}
    assert doc["command"] == command
    assert set(doc["summary"]) == {"checked", "ok", "failed"}
    for result in doc["results"]:
        assert {"path", "ok", "problems", "warnings"} <= set(result)
        for problem in result["problems"]:
            assert set(problem) == {"code", "file", "message", "hint"}


@pytest.mark.convert  # asa-convert is one of the commands
def test_one_envelope_for_validate_inspect_verify_and_convert(
    tmp_path: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    missing = str(tmp_path / "missing")
    runs = {
        "validate": asa("validate", "--json", str(GOOD), missing),
        "inspect": asa("inspect", "--json", str(GOOD), missing),
        "verify": asa("verify", "--json", missing, "--public-key", str(keys[1])),
        "convert": asa(
            str(tmp_path / "no-assets"),
            str(tmp_path / "out"),
            "--json",
            module="asa_format.cli.convert",
        ),
    }
    for command, result in runs.items():
        assert result.returncode == 1, (command, result.stderr)
        doc = json.loads(result.stdout)
        _envelope_shape(doc, command)
        assert doc["ok"] is False and doc["results"][-1]["ok"] is False
        assert doc["results"][-1]["problems"], command
    assert json.loads(runs["inspect"].stdout)["results"][0]["digest"].startswith("sha256:")
    good = asa("verify", "--json", str(signed), "--public-key", str(keys[1]))
    assert good.returncode == 0
    _envelope_shape(json.loads(good.stdout), "verify")
    converted = asa(
        str(ASSETS),
        str(tmp_path / "b"),
        "--json",
        "--samples",
        "64",
        module="asa_format.cli.convert",
    )
    assert converted.returncode == 0
    _envelope_shape(json.loads(converted.stdout), "convert")


# ---------------------------------------------------------------- exit codes


def test_the_same_fault_gives_the_same_exit_code_everywhere(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a bundle")
    missing = str(tmp_path / "missing")
    for target in (missing, str(a_file)):
        codes = {
            "validate": asa("validate", target).returncode,
            "inspect": asa("inspect", target).returncode,
            "verify": asa("verify", target, "--public-key", str(keys[1])).returncode,
        }
        assert set(codes.values()) == {1}, (target, codes)
    usage = {
        "validate": asa("validate", str(GOOD), "--no-such-flag").returncode,
        "inspect": asa("inspect").returncode,
        "verify": asa("verify", str(GOOD)).returncode,  # no --public-key
        "sign": asa("sign", str(GOOD)).returncode,  # no --private-key
        "convert": asa(str(ASSETS), module="asa_format.cli.convert").returncode,
        "run": asa("run", "--no-such-flag").returncode,
    }
    assert set(usage.values()) == {2}, usage
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    assert asa("verify", str(GOOD), "--public-key", str(garbage)).returncode == 2
    assert asa("sign", str(tmp_path), "--private-key", str(garbage)).returncode == 2


def test_sigint_exits_130_without_aborted() -> None:
    script = (
        "import sys\n"
        "import asa_format.validate as v\n"
        "def interrupted(path, **kw):\n"
        "    raise KeyboardInterrupt\n"
        "v.validate_bundle = interrupted\n"
        "from asa_format.cli import main\n"
        "main(['validate', sys.argv[1]])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(GOOD)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    assert result.returncode == 130
    assert "Aborted!" not in result.stderr and "Traceback" not in result.stderr
    assert "interrupted" in result.stderr


# ---------------------------------------------------------------- sign


def test_sign_keeps_an_existing_signature_without_force(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    sig = signed / "model.sig"
    before = hashlib.sha256(sig.read_bytes()).hexdigest()
    sig.write_bytes(sig.read_bytes() + b" ")  # a signature someone else made
    edited = sig.read_bytes()
    result = asa("sign", str(signed), "--private-key", str(keys[0]))
    assert result.returncode == 1
    assert "SIGNATURE_EXISTS" in result.stdout and "--force" in result.stdout  # the report
    assert sig.read_bytes() == edited
    result = asa("sign", str(signed), "--private-key", str(keys[0]), "--force")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(sig.read_bytes()).hexdigest() == before


# ---------------------------------------------------------------- hints


def test_python_hints_name_keywords_not_flags(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(AsaError) as info:
        load_bundle(signed, trusted_keys=[])
    assert "--public-key" not in str(info.value) and "trusted_keys" in (info.value.hint or "")
    (signed / "model.sig").unlink()
    with pytest.raises(AsaError) as info:
        load_bundle(signed, trusted_keys=[keys[1]])
    assert info.value.code == "SIGNATURE_MISSING"
    assert "--signature" not in (info.value.hint or "") and "signature_path" in (
        info.value.hint or ""
    )


def test_cli_hints_name_flags_not_keywords(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(GOOD, bundle)
    result = asa("verify", str(bundle), "--public-key", str(keys[1]))
    assert result.returncode == 1
    assert "--signature" in result.stdout and "signature_path" not in result.stdout


# ---------------------------------------------------------------- pre-commit


def test_pre_commit_hook_runs_asa_validate(tmp_path: Path) -> None:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert "- id: asa-validate" in text and "pass_filenames: false" in text
    entry = next(
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.strip().startswith("entry:")
    )
    assert entry == "asa validate"
    # pre-commit runs `entry` followed by the hook's args: the bundle directories
    assert asa(*entry.split()[1:], str(GOOD)).returncode == 0
    assert asa(*entry.split()[1:], str(GOOD), str(BAD)).returncode == 1


def test_an_unexpected_failure_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command runs under one last resort: a bug prints a line, never a traceback."""
    import click

    from asa_format.cli.support import run_main

    @click.command()
    def broken() -> None:
        raise RuntimeError("something nobody expected")

    with pytest.raises(SystemExit) as info:
        run_main(broken, [], "asa")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: RuntimeError: something nobody expected\n"
