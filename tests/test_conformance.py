"""The conformance corpus (spec/conformance) and the "format v1" integrity guarantees.

Every valid case validates and loads; every invalid case is refused by both
``asa validate`` and ``load_bundle`` with the case's expected error code, and
(for static problems) before any onnxruntime session exists. Single-byte
flips, deleted, added and edited files are all detected with specific codes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

import make_cases  # spec/conformance, put on sys.path by conftest.py
from asa_format import constants as C
from asa_format import load_bundle, validate_bundle
from asa_format.cli import cli
from asa_format.errors import CODES, BundleError

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "spec" / "conformance"


def _cases(kind: str) -> list[str]:
    return sorted(p.name for p in (CORPUS / kind).iterdir() if p.is_dir())


VALID = _cases("valid")
INVALID = _cases("invalid")
RUNTIME = make_cases.runtime_case_names()


def _expected(kind: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / kind / name / "expected.json").read_text("utf-8"))
    return data


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every onnxruntime.InferenceSession created during the test."""
    import onnxruntime

    created: list[Any] = []
    real = onnxruntime.InferenceSession

    def recording(*args: Any, **kwargs: Any) -> Any:
        created.append(args[0] if args else kwargs.get("path_or_bytes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return created


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    # an uncaught exception would be result.exception other than SystemExit
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.stderr
    return result


def json_codes(output: str) -> list[str]:
    doc = json.loads(output)
    return [e["code"] for b in doc["results"] for e in b["problems"]]


def bounded(fn: Callable[[], Any], seconds: float = 120.0) -> Any:
    """Run ``fn`` in a daemon thread; fail instead of hanging (e.g. on a FIFO)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the reader blocked"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def check_refused(
    bundle: Path, code: str, stage: str, sessions: list[Any], allowed: list[str] | None = None
) -> None:
    """The shared assertions of an invalid case.

    ``allowed`` is the set of codes a conforming reader may report (expected.json's
    ``codes``); this reader collects every problem, so it reports exactly that set.
    """
    allowed_set = set(allowed or [code])
    result = bounded(lambda: run_cli("validate", "--json", str(bundle)))
    assert result.exit_code == 1, result.output
    codes = json_codes(result.stdout)
    assert set(codes) == allowed_set, codes
    with pytest.raises(BundleError) as info:
        bounded(lambda: load_bundle(bundle))
    assert info.value.code in allowed_set, [str(p) for p in info.value.problems]
    assert {p.code for p in info.value.problems} == allowed_set
    assert info.value.code == code  # this reader's check order
    text = bounded(lambda: run_cli("validate", str(bundle)))
    assert text.exit_code == 1
    assert text.stdout.startswith(f"FAIL  {bundle}  (")
    assert f"  {code:<28} " in text.stdout
    if stage == make_cases.STATIC:
        assert sessions == [], "an onnxruntime session was created for a statically invalid bundle"
    else:  # the problem is only visible once the graphs run: the case must get that far
        assert sessions, "a session-stage case was refused before any session existed"


# --------------------------------------------------------------------------
# the corpus


def test_corpus_is_complete() -> None:
    assert len(VALID) >= 10 and len(INVALID) >= 90
    generated = {c.name for c in make_cases.valid_cases()} | {
        c.name for c in make_cases.invalid_cases()
    }
    assert set(VALID) | set(INVALID) == generated
    for name in INVALID:
        exp = _expected("invalid", name)
        assert set(exp) == {"code", "codes", "description", "stage"}
        assert exp["code"] in exp["codes"] and exp["codes"] == sorted(set(exp["codes"]))
        assert all(c in CODES for c in exp["codes"]) and exp["description"]
        assert exp["stage"] in (make_cases.STATIC, make_cases.SESSION)
    for name in VALID:
        assert _expected("valid", name)["valid"] is True
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < 1 << 20


def _tree(root: Path) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for kind in ("valid", "invalid"):
        for dirpath, dirnames, filenames in os.walk(root / kind):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                if path.is_symlink():
                    out[rel] = ("link", os.readlink(path))
                elif path.is_file():
                    out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    make_cases.generate(tmp_path)
    committed, regenerated = _tree(CORPUS), _tree(tmp_path)
    differing = sorted(
        k for k in committed.keys() | regenerated.keys() if committed.get(k) != regenerated.get(k)
    )
    assert not differing, f"run spec/conformance/make_cases.py; differing: {differing[:10]}"


@pytest.mark.parametrize("name", VALID)
def test_valid_case(name: str, sessions: list[Any]) -> None:
    bundle = CORPUS / "valid" / name / "bundle"
    exp = _expected("valid", name)
    result = run_cli("validate", "--json", str(bundle))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    assert [w["code"] for w in doc["results"][0]["warnings"]] == exp["warnings"]
    loaded = load_bundle(bundle)  # one loader: every bundle kind, every intervention
    assert loaded.interventions and loaded.kinds == [
        iv.kind for iv in (loaded.manifest.interventions or loaded.interventions)
    ]
    if not loaded.has_asa:  # no router/probes: the decision function refuses with a specific code
        with pytest.raises(BundleError) as info:
            loaded.decide(np.ones((1, loaded.hidden_size), np.float32))
        assert info.value.code == "NOT_AN_ASA_BUNDLE"
        return
    assert loaded.decide(np.ones((3, loaded.hidden_size), np.float32)).gate.shape == (3,)
    assert sessions, (
        "the session recorder saw no session: the static-case assertion would be vacuous"
    )


@pytest.mark.parametrize("name", INVALID)
def test_invalid_case(name: str, sessions: list[Any]) -> None:
    exp = _expected("invalid", name)
    check_refused(
        CORPUS / "invalid" / name / "bundle", exp["code"], exp["stage"], sessions, exp["codes"]
    )


@pytest.mark.parametrize("name", RUNTIME)
def test_runtime_case(name: str, tmp_path: Path, sessions: list[Any]) -> None:
    bundle, code, _ = make_cases.build_runtime_case(name, tmp_path)
    check_refused(bundle, code, make_cases.STATIC, sessions)


def test_all_cases_in_one_subprocess() -> None:
    """The installed entry point: no traceback, exit 1, each bundle with its code."""
    paths = [str(CORPUS / "invalid" / n / "bundle") for n in INVALID]
    proc = subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "validate", "--json", *paths],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["summary"] == {"checked": len(paths), "ok": 0, "failed": len(paths)}
    for name, report in zip(INVALID, doc["results"], strict=True):
        assert _expected("invalid", name)["code"] in [e["code"] for e in report["problems"]], name


# --------------------------------------------------------------------------
# reports

REPORT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["asa_format_version", "command", "ok", "summary", "results"],
    "properties": {
        "asa_format_version": {"type": "string"},
        "command": {"const": "validate"},
        "ok": {"type": "boolean"},
        "summary": {
            "type": "object",
            "additionalProperties": False,
            "required": ["checked", "ok", "failed"],
            "properties": {
                k: {"type": "integer", "minimum": 0} for k in ("checked", "ok", "failed")
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "ok", "digest", "problems", "warnings"],
                "properties": {
                    "path": {"type": "string"},
                    "ok": {"type": "boolean"},
                    "digest": {
                        "oneOf": [
                            {"type": "null"},
                            {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                        ]
                    },
                    "problems": {"type": "array", "items": {"$ref": "#/$defs/problem"}},
                    "warnings": {"type": "array", "items": {"$ref": "#/$defs/problem"}},
                    "interventions": {  # a valid bundle: every intervention, in manifest order
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "kind", "blocks", "policy", "gate"],
                            "properties": {
                                "name": {"type": "string"},
                                "kind": {"enum": ["asa", "always", "condition"]},
                                "blocks": {"type": "array", "items": {"type": "integer"}},
                                "policy": {"type": "string"},
                                "coefficient": {"type": "number"},
                                "gate": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
    "$defs": {
        "problem": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "file", "message", "hint"],
            "properties": {
                "code": {"enum": sorted(CODES)},
                "file": {"type": ["string", "null"]},
                "message": {"type": "string", "minLength": 1},
                "hint": {"type": ["string", "null"]},
            },
        }
    },
}


def test_json_report_schema() -> None:
    paths = [
        CORPUS / "valid" / "minimal_two_domains" / "bundle",
        CORPUS / "valid" / "newer_minor_version" / "bundle",
        CORPUS / "invalid" / "file_hash_mismatch" / "bundle",
        CORPUS / "invalid" / "manifest_missing" / "bundle",
    ]
    result = run_cli("validate", "--json", *map(str, paths))
    assert result.exit_code == 1
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["ok"] is False
    assert doc["summary"] == {"checked": 4, "ok": 2, "failed": 2}
    assert [b["ok"] for b in doc["results"]] == [True, True, False, False]
    assert [b["path"] for b in doc["results"]] == list(map(str, paths))
    assert (
        doc["results"][0]["digest"]
        == "sha256:" + hashlib.sha256((paths[0] / C.MANIFEST_FILE).read_bytes()).hexdigest()
    )
    assert doc["results"][3]["digest"] is None
    assert doc["results"][2]["problems"][0]["file"] == C.ROUTER_FILE
    assert doc["results"][1]["warnings"] and not doc["results"][1]["problems"]


def test_text_report_lines() -> None:
    good = CORPUS / "valid" / "minimal_two_domains" / "bundle"
    bad = CORPUS / "invalid" / "file_hash_mismatch" / "bundle"
    newer = CORPUS / "valid" / "newer_minor_version" / "bundle"
    digest = "sha256:" + hashlib.sha256((good / C.MANIFEST_FILE).read_bytes()).hexdigest()

    ok = run_cli("validate", str(good))
    assert ok.exit_code == 0
    assert ok.stdout == f"ok    {good}  (llama, hidden 8, layer 1, 2 domains, {digest})\n"
    assert ok.stderr == ""

    fail = run_cli("validate", str(bad))
    assert fail.exit_code == 1
    assert fail.stderr == ""  # the report, failures included, goes to stdout
    lines = fail.stdout.splitlines()
    assert lines[0] == f"FAIL  {bad}  (1 problem)"
    assert lines[1].startswith(f"  {'FILE_HASH_MISMATCH':<28} router.onnx: has sha256 ")
    listed = json.loads((bad / C.MANIFEST_FILE).read_text())["files"]["router.onnx"]["sha256"]
    assert lines[1].endswith(f"the manifest says {listed}")
    assert lines[2] == f"  {'':<28} fix: the file was modified; restore it or rebuild the bundle"
    assert len(lines) == 3

    warn = run_cli("validate", str(newer))
    assert warn.exit_code == 0
    assert warn.stdout.startswith(f"ok    {newer}  (")
    warning_lines = warn.stdout.splitlines()[1:]
    assert len(warning_lines) == 2
    assert all(
        w.startswith("      warning: [MANIFEST_SCHEMA] manifest.json: $") for w in warning_lines
    )
    assert any("x_future_member" in w for w in warning_lines)

    both = run_cli("validate", str(good), str(bad))
    assert both.exit_code == 1
    assert both.stdout.splitlines()[-1] == "1 of 2 bundles valid"


# --------------------------------------------------------------------------
# format v1: every change to a valid bundle is detected


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(CORPUS / "valid" / "domain_without_probe" / "bundle", dest)
    return dest


# Codes a single-byte change of a file may produce. Non-manifest files are
# pinned by sha256 in the manifest; a changed manifest can fail anywhere from
# decoding to the cross-file checks (e.g. hidden size 8 -> 9).
HASHED_FILE_CODES = {"FILE_HASH_MISMATCH"}
MANIFEST_FLIP_CODES = {
    "MANIFEST_ENCODING", "MANIFEST_JSON", "MANIFEST_DUPLICATE_KEY", "MANIFEST_NONFINITE",
    "MANIFEST_SCHEMA", "FORMAT_UNKNOWN", "FORMAT_VERSION_UNSUPPORTED", "MANIFEST_SEMANTIC",
    "PATH_INVALID", "LAYER_OUT_OF_RANGE", "FILE_HASH_MISMATCH", "FILE_SIZE_MISMATCH",
    "FILE_MISSING", "FILE_UNLISTED", "SAFETENSORS_SHAPE", "SAFETENSORS_KEYS",
    "HIDDEN_SIZE_MISMATCH", "DOMAIN_MISMATCH",
}  # fmt: skip


def _flip_positions(bundle: Path, total: int = 320) -> Iterator[tuple[str, int, int]]:
    """Deterministic (file, offset, xor mask) samples over every file."""
    rng = np.random.default_rng(20240611)
    files = sorted(p.name for p in bundle.iterdir())
    sizes = {f: (bundle / f).stat().st_size for f in files}
    all_bytes = sum(sizes.values())
    for f in files:
        k = max(16, total * sizes[f] // all_bytes)
        offsets = {
            0,
            sizes[f] - 1,
            *rng.choice(sizes[f], size=min(k, sizes[f]), replace=False).tolist(),
        }
        for off in sorted(offsets):
            yield f, int(off), int(rng.integers(1, 256))


def test_single_byte_flips_are_detected(bundle_copy: Path) -> None:
    original_digest = validate_bundle(bundle_copy).digest
    manifest_rejected = manifest_flips = 0
    samples = list(_flip_positions(bundle_copy))
    assert len(samples) >= 300
    assert {f for f, _, _ in samples} == {p.name for p in bundle_copy.iterdir()}
    for name, offset, mask in samples:
        path = bundle_copy / name
        data = path.read_bytes()
        changed = bytearray(data)
        changed[offset] ^= mask
        path.write_bytes(bytes(changed))
        try:
            report = validate_bundle(bundle_copy)
            codes = [p.code for p in report.problems]
            where = f"{name}@{offset}^{mask:#04x}"
            if name == C.MANIFEST_FILE:
                manifest_flips += 1
                assert set(codes) <= MANIFEST_FLIP_CODES, (where, codes)
                # the manifest is pinned by the root digest: a pinned load always fails
                with pytest.raises(BundleError) as info:
                    load_bundle(bundle_copy, expected_digest=original_digest)
                assert info.value.code in MANIFEST_FLIP_CODES | {"DIGEST_MISMATCH"}
                assert report.digest != original_digest
                if codes:
                    manifest_rejected += 1
                    with pytest.raises(BundleError) as info:
                        load_bundle(bundle_copy)
                    assert info.value.code == codes[0]
                continue
            assert codes and set(codes) <= HASHED_FILE_CODES, (where, codes)
            with pytest.raises(BundleError) as info:
                load_bundle(bundle_copy)
            assert info.value.code == "FILE_HASH_MISMATCH"
            assert info.value.file == name
        finally:
            path.write_bytes(data)
    # most manifest bytes are structure, names or hashes: a flip there is refused outright
    assert manifest_flips >= 60 and manifest_rejected >= 0.7 * manifest_flips


def test_cli_exit_status_on_byte_flips(bundle_copy: Path) -> None:
    for name in sorted(p.name for p in bundle_copy.iterdir() if p.name != C.MANIFEST_FILE):
        path = bundle_copy / name
        data = path.read_bytes()
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x80]))
        result = run_cli("validate", "--json", str(bundle_copy))
        assert result.exit_code == 1
        assert json_codes(result.stdout) == ["FILE_HASH_MISMATCH"]
        path.write_bytes(data)
    assert run_cli("validate", str(bundle_copy)).exit_code == 0


@pytest.mark.parametrize(
    "name",
    [
        "manifest.json",
        "vectors.safetensors",
        "scaler.onnx",
        "router.onnx",
        "probe_0.onnx",
        "probe_2.onnx",
    ],
)
def test_deleting_a_file_is_detected(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    code = "MANIFEST_MISSING" if name == C.MANIFEST_FILE else "FILE_MISSING"
    result = run_cli("validate", "--json", str(bundle_copy))
    assert result.exit_code == 1 and json_codes(result.stdout) == [code]
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert info.value.code == code


@pytest.mark.parametrize(
    "extra", ["probe_1.onnx", "notes.txt", ".hidden", "vectors.safetensors.bak", "manifest.json~"]
)
def test_adding_a_file_is_detected(bundle_copy: Path, extra: str) -> None:
    shutil.copyfile(bundle_copy / C.ROUTER_FILE, bundle_copy / extra)
    result = run_cli("validate", "--json", str(bundle_copy))
    assert result.exit_code == 1 and json_codes(result.stdout) == ["FILE_UNLISTED"]
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert info.value.code == "FILE_UNLISTED" and info.value.file == extra


def test_signature_file_is_the_one_unlisted_exception(bundle_copy: Path) -> None:
    (bundle_copy / C.SIGNATURE_FILE).write_bytes(b"{}")
    assert run_cli("validate", str(bundle_copy)).exit_code == 0


def _edit(path: Path, fn: Callable[[dict[str, Any]], object]) -> None:
    doc = json.loads((path / C.MANIFEST_FILE).read_text("utf-8"))
    fn(doc)
    (path / C.MANIFEST_FILE).write_text(
        json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8"
    )


MANIFEST_EDITS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "hidden_size": (lambda d: d["model"].__setitem__("hidden_size", 9), "SAFETENSORS_SHAPE"),
    "rename_domain": (lambda d: d["domains"][0].__setitem__("name", "algebra"), "SAFETENSORS_KEYS"),
    "drop_last_domain": (
        lambda d: (d["domains"].pop(), d["files"].pop("probe_2.onnx")),
        "FILE_UNLISTED",
    ),
    "add_domain": (
        lambda d: d["domains"].append({"name": "new", "probe": None}),
        "SAFETENSORS_KEYS",
    ),
    "file_size": (lambda d: d["files"]["router.onnx"].__setitem__("size", 1), "FILE_SIZE_MISMATCH"),
    "file_sha256": (
        lambda d: d["files"]["scaler.onnx"].__setitem__("sha256", "0" * 64),
        "FILE_HASH_MISMATCH",
    ),
    "probe_removed": (lambda d: d["domains"][0].__setitem__("probe", None), "MANIFEST_SEMANTIC"),
    "unknown_member": (lambda d: d.__setitem__("comment", "hi"), "MANIFEST_SCHEMA"),
    "num_layers": (lambda d: d["model"].__setitem__("num_layers", 1), "LAYER_OUT_OF_RANGE"),
    "format_version": (
        lambda d: d.__setitem__("format_version", "3.1"),
        "FORMAT_VERSION_UNSUPPORTED",
    ),
    "path": (
        lambda d: d["files"].__setitem__("../x.onnx", d["files"].pop("router.onnx")),
        "PATH_INVALID",
    ),
}


@pytest.mark.parametrize("edit", sorted(MANIFEST_EDITS))
def test_editing_the_manifest_is_detected(
    bundle_copy: Path, edit: str, sessions: list[Any]
) -> None:
    fn, code = MANIFEST_EDITS[edit]
    _edit(bundle_copy, fn)
    result = run_cli("validate", "--json", str(bundle_copy))
    assert result.exit_code == 1 and json_codes(result.stdout)[0] == code
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert info.value.code == code
    assert sessions == []


def test_harmless_manifest_edit_changes_the_root_digest(bundle_copy: Path) -> None:
    """A manifest edit that stays valid (alpha) is caught by a pinned digest."""
    digest = load_bundle(bundle_copy).root_digest
    _edit(bundle_copy, lambda d: d["steering"].__setitem__("alpha", 5.0))
    assert load_bundle(bundle_copy).manifest.steering.alpha == 5.0
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy, expected_digest=digest)
    assert info.value.code == "DIGEST_MISMATCH"
