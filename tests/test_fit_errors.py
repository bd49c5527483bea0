"""``asa fit`` refuses bad input with a coded error and writes nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from asa_format.converters import fit
from asa_format.errors import AsaError, FitError, UsageError

pytestmark = [pytest.mark.runtime, pytest.mark.convert]

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "fit_data"
SPLITS = ("cal", "train", "valid", "test")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _make_tiny_model(directory: Path, dtype: str = "float32") -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", ROOT / "examples" / "make_tiny_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.make_tiny_model(directory, dtype=dtype))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    good = _make_tiny_model(root / "tiny")
    # the same model without a chat template
    plain = _make_tiny_model(root / "plain")
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    # weights that overflow float16 (finite in float32)
    huge = _make_tiny_model(root / "huge")
    weights = load_file(huge / "model.safetensors")
    name = next(k for k in weights if "embed" in k)
    weights[name] = weights[name] * 1e6
    save_file(weights, huge / "model.safetensors", metadata={"format": "pt"})
    return {"good": good, "plain": plain, "huge": huge}


def _rows() -> dict[str, list[dict[str, Any]]]:
    return {s: json.loads((DATA / f"{s}_data.json").read_text()) for s in SPLITS}


def _write(directory: Path, rows: dict[str, list[dict[str, Any]]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        (directory / f"{split}_data.json").write_text(json.dumps(items))
    return directory


def _missing_split(d: Path) -> Path:
    rows = _rows()
    del rows["test"]
    return _write(d, rows)


def _one_label(d: Path) -> Path:
    rows = _rows()
    rows["train"] = [r for r in rows["train"] if not (r["domain"] == "math" and r["label"] == 0)]
    return _write(d, rows)


def _one_domain(d: Path) -> Path:
    return _write(
        d, {s: [r for r in items if r["domain"] == "math"] for s, items in _rows().items()}
    )


def _empty_instruction(d: Path) -> Path:
    rows = _rows()
    rows["valid"][3]["instruction"] = "   "
    return _write(d, rows)


def _bad_label(d: Path) -> Path:
    rows = _rows()
    rows["cal"][0]["label"] = 2
    return _write(d, rows)


def _duplicate_id(d: Path) -> Path:
    rows = _rows()
    rows["test"][0]["id"] = rows["train"][0]["id"]
    return _write(d, rows)


def _no_split_field(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows()["train"]) + "\n")
    return path


DATA_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing split", _missing_split, "FIT_SPLIT_MISSING"),
    ("jsonl without split", _no_split_field, "FIT_SPLIT_MISSING"),
    ("domain with one label", _one_label, "FIT_DOMAIN_ONE_LABEL"),
    ("fewer than 2 domains", _one_domain, "FIT_TOO_FEW_DOMAINS"),
    ("empty instruction", _empty_instruction, "FIT_EMPTY_PROMPT"),
    ("label not 0 or 1", _bad_label, "FIT_DATA_INVALID"),
    ("duplicate id", _duplicate_id, "FIT_DATA_INVALID"),
]


def _nothing_written(parent: Path, before: set[str]) -> None:
    assert set(os.listdir(parent)) == before, "something was left next to the destination"


@pytest.mark.parametrize(("case", "make", "code"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_refused_with_its_code(
    models: dict[str, Path], tmp_path: Path, case: str, make: Callable[[Path], Path], code: str
) -> None:
    data = make(tmp_path / "data")
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(FitError) as info:
        fit(models["good"], data, out_parent / "bundle", alpha=1.0, beta=0.0, threads=1)
    assert info.value.code == code, (case, info.value)
    assert info.value.hint
    _nothing_written(out_parent, set())


def test_a_system_prompt_needs_a_chat_template(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FitError) as info:
        fit(
            models["plain"],
            DATA,
            tmp_path / "b",
            system="you are helpful",
            alpha=1.0,
            beta=0.0,
            threads=1,
        )
    assert info.value.code == "FIT_NO_CHAT_TEMPLATE"
    assert not (tmp_path / "b").exists() and os.listdir(tmp_path) == []


def test_a_dtype_the_model_cannot_run_in(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FitError) as info:
        fit(models["huge"], DATA, tmp_path / "b", dtype="float16", alpha=1.0, beta=0.0, threads=1)
    assert info.value.code == "FIT_DTYPE_UNSUPPORTED"
    assert "float16" in info.value.message
    assert os.listdir(tmp_path) == []


def test_alpha_and_beta_are_never_guessed(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        fit(models["good"], DATA, tmp_path / "b", threads=1)
    assert "trigger" in (info.value.hint or "")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"kind": "always", "tau": 0.6}, "tau"),
        ({"kind": "asa", "blocks": [1]}, "blocks"),
        ({"tau": 0.3}, "tau"),
        ({"beta": 1.5}, "beta"),
        ({"kind": "nothing"}, "kind"),
        ({"kind": "always", "method": "pca_center"}, "pca_center"),
    ],
)
def test_options_that_do_not_fit_are_refused(
    models: dict[str, Path], tmp_path: Path, kwargs: dict[str, Any], word: str
) -> None:
    with pytest.raises(AsaError) as info:
        fit(models["good"], DATA, tmp_path / "b", **kwargs, threads=1)
    assert word in str(info.value)
    assert os.listdir(tmp_path) == []


def test_an_existing_destination_is_not_touched(models: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "thesis"
    dest.mkdir()
    (dest / "draft.txt").write_text("draft")
    with pytest.raises(UsageError) as info:
        fit(models["good"], DATA, dest, alpha=1.0, beta=0.0, threads=1)
    assert info.value.code == "DESTINATION_EXISTS"
    with pytest.raises(UsageError) as info:
        fit(models["good"], DATA, dest, alpha=1.0, beta=0.0, threads=1, force=True)
    assert info.value.code == "DESTINATION_NOT_BUNDLE"
    assert os.listdir(dest) == ["draft.txt"] and sorted(os.listdir(tmp_path)) == ["thesis"]


def test_the_command_reports_the_code_and_exits_1(models: dict[str, Path], tmp_path: Path) -> None:
    data = _one_label(tmp_path / "data")
    result = subprocess.run(
        [
            sys.executable, "-m", "asa_format.cli", "fit", "--model", str(models["good"]),
            "--data", str(data), "--out", str(tmp_path / "b"), "--alpha", "1", "--beta", "0", "--json",
        ],
        capture_output=True, text=True, env=ENV, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["command"] == "fit" and doc["ok"] is False
    assert [p["code"] for p in doc["results"][0]["problems"]] == ["FIT_DOMAIN_ONE_LABEL"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()
    # a usage error: exit 2, one line on stderr, nothing on stdout
    usage = subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "fit", "--model", str(models["good"]), "--data", str(DATA),
         "--out", str(tmp_path / "b")],
        capture_output=True, text=True, env=ENV, timeout=300, check=False,
    )  # fmt: skip
    assert usage.returncode == 2 and usage.stdout == ""
    assert "trigger" in usage.stderr and "Traceback" not in usage.stderr
    assert not (tmp_path / "b").exists()
