"""``asa run`` on a tiny model and tokenizer saved to disk by the test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from asa_format.cli.run import run_command
from asa_format.testing import make_test_bundle
from tiny_models import save_tiny_model_and_tokenizer

pytestmark = pytest.mark.runtime

PROMPT = "what is the weather in paris"


def run_result(stdout: str) -> dict[str, Any]:
    """The one result of ``asa run --json`` (the envelope every command prints)."""
    doc = json.loads(stdout)
    assert doc["command"] == "run" and doc["ok"] is True and len(doc["results"]) == 1
    result: dict[str, Any] = doc["results"][0]
    return result


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_and_tokenizer("llama", tmp_path_factory.mktemp("m") / "tiny-llama")


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_bundle(
        tmp_path_factory.mktemp("b") / "bundle",
        hidden_size=32,
        layer=1,
        alpha=6.0,
        route_to="search",
        probe_bias=20.0,
        probe_scale=0.0,
        model_type="llama",
        model_id="someorg/tiny-llama",
        num_layers=3,
    )


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(run_command, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_run_json_compare(model_dir: Path, bundle_path: Path) -> None:
    code, out, err = _run(
        "--model",
        str(model_dir),
        "--bundle",
        str(bundle_path),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "5",
        "--compare",
        "--json",
    )
    assert code == 0, err
    payload = run_result(out)
    assert payload["decision"]["domain"] == "search"
    assert payload["decision"]["gate"] == 1
    assert payload["decision"]["probability"] > 0.99
    assert payload["layer"] == 1 and payload["layer_path"] == "model.layers.1"
    assert payload["policy"] == "prefill_last_token"
    assert isinstance(payload["steered"], str) and isinstance(payload["baseline"], str)
    assert payload["steered"] != payload["baseline"]  # alpha 6 on a tiny model changes the text


def test_run_text_output(model_dir: Path, bundle_path: Path) -> None:
    code, out, err = _run(
        "--model",
        str(model_dir),
        "--bundle",
        str(bundle_path),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "3",
        "--compare",
        "--policy",
        "all_tokens",
        "--dtype",
        "bfloat16",
    )
    assert code == 0, err
    assert "domain=search" in out and "gate=+1" in out and "all_tokens" in out
    assert out.index("--- baseline ---") < out.index("--- steered ---")


@pytest.mark.parametrize(
    "model", ["does/not/exist/here", "./missing-model", "nobody/no-such-model"]
)
def test_missing_model_is_a_clear_error(bundle_path: Path, tmp_path: Path, model: str) -> None:
    code, out, err = _run(
        "--model",
        str(tmp_path / model) if model.startswith("does") else model,
        "--bundle",
        str(bundle_path),
        "--prompt",
        PROMPT,
    )
    assert code == 1
    assert "MODEL_NOT_FOUND" in err
    assert "Traceback" not in err + out


def test_tampered_bundle_is_refused(model_dir: Path, bundle_path: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    router = copy / "router.onnx"
    data = bytearray(router.read_bytes())
    data[len(data) // 2] ^= 0xFF
    router.write_bytes(bytes(data))
    assert manifest  # the manifest is untouched; only the file changed
    code, out, err = _run("--model", str(model_dir), "--bundle", str(copy), "--prompt", PROMPT)
    assert code == 1
    assert "FILE_HASH_MISMATCH" in err
    assert "Traceback" not in err + out


def test_incompatible_bundle_is_refused(model_dir: Path, tmp_path: Path) -> None:
    other = make_test_bundle(tmp_path / "b", hidden_size=32, layer=1, model_type="gpt2")
    code, _, err = _run("--model", str(model_dir), "--bundle", str(other), "--prompt", PROMPT)
    assert code == 1 and "MODEL_TYPE_MISMATCH" in err
    code, out, err = _run(
        "--model",
        str(model_dir),
        "--bundle",
        str(other),
        "--prompt",
        PROMPT,
        "--no-strict",
        "--max-new-tokens",
        "2",
        "--json",
    )
    assert code == 0, err
    assert "warning: [MODEL_TYPE_MISMATCH]" in err
    assert run_result(out)["layer"] == 1
