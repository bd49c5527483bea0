"""asa-convert: every legacy fixture converts exactly, safely, atomically, deterministically."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from asa_format import constants as C
from asa_format import load_bundle
from asa_format.cli.convert import convert_command
from asa_format.converters.convert import convert_legacy
from asa_format.converters.legacy import read_legacy_bundle
from asa_format.converters.semantics import legacy_decide
from asa_format.errors import AsaError, ConversionError, ParityError
from asa_format.storage import writer

pytestmark = pytest.mark.convert

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = sorted(p for p in (FIXTURES / "legacy").iterdir() if p.is_dir())
HOSTILE = FIXTURES / "hostile"
LEGACY_FILES = ("config.json", "steering_vectors.npz", "scaler.pkl", "router.pkl", "probes.pkl")


def _legacy_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in LEGACY_FILES:
        shutil.copyfile(src / name, dst / name)
    return dst


def _sha(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asa_format.cli.convert", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.mark.parametrize("case", LEGACY, ids=[p.name for p in LEGACY])
def test_fixture_converts_validates_and_matches(case: Path, tmp_path: Path) -> None:
    report = convert_legacy(case, tmp_path / "bundle", samples=2048)
    assert report.parity.ok
    # The reference is the arithmetic of the estimators as pickled: float32 coefficients
    # (scikit-learn >= 1.8 fitted on float32 data) compute in float32.
    coef_dtype = json.loads((case / "case.json").read_text())["coef_dtype"]
    assert report.parity.precision == coef_dtype
    assert report.parity.domain_agreement == 1.0 and report.parity.gate_agreement_elsewhere == 1.0
    limit = 1e-9 if coef_dtype == "float64" else 1e-5
    assert report.parity.max_probability_difference < limit
    assert sum(report.parity.gate_counts.values()) == 2048
    # the validator accepts it
    out = subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "validate", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    # the real scikit-learn decisions recorded when the fixture was written
    ref = np.load(case / "reference.npz", allow_pickle=False)
    bundle = load_bundle(tmp_path / "bundle")
    got = bundle.decide(ref["hidden"])
    np.testing.assert_array_equal(got.domain_index, ref["domain"])
    np.testing.assert_array_equal(got.gate, ref["gate"])
    np.testing.assert_allclose(got.probability, ref["probability"], rtol=0, atol=1e-6)
    # binding and provenance
    assets = read_legacy_bundle(case)
    m = bundle.manifest
    assert m.layer.index == assets.layer and m.domain_names == assets.domains
    assert m.model.hidden_size == assets.hidden_size and m.model.id == assets.model_id
    assert m.provenance is not None and m.provenance.source == "legacy-pickle"
    assert set(m.provenance.inputs) == set(LEGACY_FILES)
    assert (
        m.provenance.inputs["scaler.pkl"].sha256
        == hashlib.sha256((case / "scaler.pkl").read_bytes()).hexdigest()
    )
    assert m.provenance.metadata == assets.extra_config
    for i, name in enumerate(assets.domains):
        assert (m.domains[i].probe is None) == (name not in assets.probes)


def test_conversion_is_deterministic(tmp_path: Path) -> None:
    case = LEGACY[0]
    convert_legacy(case, tmp_path / "a", samples=64)
    convert_legacy(case, tmp_path / "b", samples=64)
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b")


def test_minimal_config_records_unknowns(tmp_path: Path) -> None:
    case = next(p for p in LEGACY if "minimal" in p.name)
    assert "model" not in json.loads((case / "config.json").read_text())
    report = convert_legacy(case, tmp_path / "b", samples=64)
    assert report.model["id"] is None and report.model["type"] is None
    assert report.unknown == ["model id", "model type", "layer count"]
    assert "not known" in report.text()
    report2 = convert_legacy(
        case, tmp_path / "c", samples=64, model_id="org/m", model_type="qwen2", num_layers=24
    )
    assert report2.unknown == [] and report2.model == {
        "id": "org/m",
        "type": "qwen2",
        "hidden_size": report.hidden_size,
        "num_layers": 24,
    }


def test_layer_beyond_layer_count_is_refused(tmp_path: Path) -> None:
    case = LEGACY[0]
    layer = read_legacy_bundle(case).layer
    with pytest.raises(AsaError) as info:
        convert_legacy(case, tmp_path / "b", num_layers=layer, samples=64)
    assert info.value.code == "LAYER_OUT_OF_RANGE"
    assert not (tmp_path / "b").exists()


def test_existing_destination_needs_force(tmp_path: Path) -> None:
    case = LEGACY[0]
    convert_legacy(case, tmp_path / "b", samples=64)
    before = _sha(tmp_path / "b")
    result = _cli(str(case), str(tmp_path / "b"))
    assert (
        result.returncode == 1
        and "DESTINATION_EXISTS" in result.stdout
        and "--force" in result.stdout
    )
    assert _sha(tmp_path / "b") == before
    result = _cli(str(LEGACY[1]), str(tmp_path / "b"), "--force", "--samples", "64")
    assert result.returncode == 0, result.stderr
    assert _sha(tmp_path / "b") != before


def test_fault_after_first_file_leaves_no_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []

    def crash(name: str) -> None:
        written.append(name)
        raise KeyboardInterrupt  # the process is being killed

    monkeypatch.setattr(writer, "_after_file_written", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_legacy(LEGACY[0], tmp_path / "out", samples=64)
    assert written == [C.PROBE_FILE_TEMPLATE.format(index=0)]
    assert list(tmp_path.iterdir()) == []


def test_killed_converter_process_leaves_no_destination(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from asa_format.storage import writer\n"
        "from asa_format.converters.convert import convert_legacy\n"
        "writer._after_file_written = lambda name: os.kill(os.getpid(), signal.SIGKILL)\n"
        "convert_legacy(sys.argv[1], sys.argv[2], samples=64)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(LEGACY[0]), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == -9
    assert not (tmp_path / "out").exists()
    # only a hidden temporary directory can remain after SIGKILL; it is never the destination
    assert all(p.name.startswith(".out.") for p in tmp_path.iterdir())


def test_parity_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from asa_format.converters import convert as convert_module

    def wrong(assets, hidden):  # type: ignore[no-untyped-def]
        index, prob, gate = legacy_decide(assets, hidden)
        return index, prob + 1e-6, gate

    monkeypatch.setattr(convert_module, "legacy_decide", wrong)
    with pytest.raises(ParityError) as info:
        convert_legacy(LEGACY[0], tmp_path / "out", samples=64)
    assert info.value.code == "PARITY_FAILED" and "max |dp|" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_report_and_json(tmp_path: Path) -> None:
    case = LEGACY[0]
    text = _cli(str(case), str(tmp_path / "a"), "--samples", "256")
    assert text.returncode == 0, text.stderr
    assert (
        "parity       256 samples against the legacy estimators' own float64 arithmetic: "
        "domain agreement 100.00%, gate agreement 100.00%"
    ) in text.stdout
    assert "digest       sha256:" in text.stdout and "files        " in text.stdout
    js = _cli(str(case), str(tmp_path / "b"), "--samples", "256", "--json")
    doc = json.loads(js.stdout)["results"][0]
    assert (
        doc["ok"] is True
        and doc["parity"]["ok"] is True
        and doc["parity"]["max_probability_difference"] < 1e-9
    )
    assert doc["files"].keys() >= {
        "manifest.json",
        "vectors.safetensors",
        "scaler.onnx",
        "router.onnx",
    }
    # `asa convert` is the same command
    same = subprocess.run(
        [
            sys.executable,
            "-m",
            "asa_format.cli",
            "convert",
            str(case),
            str(tmp_path / "c"),
            "--samples",
            "256",
        ],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0 and _sha(tmp_path / "a") == _sha(tmp_path / "c")


def test_missing_source_file(tmp_path: Path) -> None:
    src = _legacy_copy(LEGACY[0], tmp_path / "src")
    (src / "router.pkl").unlink()
    result = _cli(str(src), str(tmp_path / "out"))
    assert result.returncode == 1
    assert "LEGACY_MISSING_FILE" in result.stdout and "router.pkl" in result.stdout
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


HOSTILE_CASES = sorted(p for p in HOSTILE.glob("*.pkl"))


@pytest.mark.parametrize("target", ["probes.pkl", "router.pkl", "scaler.pkl"])
@pytest.mark.parametrize(
    "gadget",
    [
        p
        for p in HOSTILE_CASES
        if p.stem
        in {"builtins_eval", "inst_os_system", "posix_system", "subprocess_popen", "build_on_class"}
    ]
    or HOSTILE_CASES[:3],
    ids=lambda p: p.stem,
)
def test_hostile_pickle_is_refused_by_the_cli(gadget: Path, target: str, tmp_path: Path) -> None:
    expected = json.loads((HOSTILE / "expected.json").read_text())[gadget.stem]
    src = _legacy_copy(LEGACY[0], tmp_path / "src")
    shutil.copyfile(gadget, src / target)
    work = tmp_path / "cwd"
    work.mkdir()
    result = _cli(str(src), str(tmp_path / "out"), cwd=work)
    assert result.returncode == 1
    assert (
        expected["code"] in result.stdout and target in result.stdout and "offset" in result.stdout
    )
    assert "Traceback" not in result.stderr
    assert list(work.iterdir()) == [], "a gadget ran"
    assert not (tmp_path / "out").exists()


def test_every_hostile_pickle_is_refused_in_the_probes_slot(tmp_path: Path) -> None:
    expected = json.loads((HOSTILE / "expected.json").read_text())
    src = _legacy_copy(LEGACY[0], tmp_path / "src")
    for gadget in HOSTILE_CASES:
        shutil.copyfile(gadget, src / "probes.pkl")
        with pytest.raises(ConversionError) as info:
            convert_legacy(src, tmp_path / "out", samples=16)
        assert info.value.code == expected[gadget.stem]["code"], gadget.name
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_converter_disk_full_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_file", full)
    with pytest.raises(AsaError) as info:
        convert_legacy(LEGACY[0], tmp_path / "out", samples=16)
    assert info.value.code == "IO_ERROR"
    result = CliRunner().invoke(convert_command, [str(LEGACY[0]), str(tmp_path / "out2")])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_converted_bundle_survives_load_and_save_byte_for_byte(tmp_path: Path) -> None:
    converted = tmp_path / "converted"
    convert_legacy(LEGACY[0], converted, samples=16)
    saved = writer.save_bundle(load_bundle(converted).to_contents(), tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in converted.iterdir())
    for path in converted.iterdir():
        assert (saved / path.name).read_bytes() == path.read_bytes(), path.name
