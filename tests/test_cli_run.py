"""``asa run`` as a user meets it: a local tiny model, the example bundle.

The model is the one ``examples/make_tiny_model.py`` writes (the README's
recipe) and the bundle is ``examples/asa_assets`` converted with its model
type and layer count. Assertions do not depend on generated text.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from asa_format.cli.run import run_command
from asa_format.converters.convert import convert_legacy
from asa_format.testing import make_test_bundle

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "what is the weather in paris"


def run_result(stdout: str) -> dict[str, Any]:
    """The one result of ``asa run --json`` (the envelope every command prints)."""
    doc = json.loads(stdout)
    assert doc["command"] == "run" and doc["ok"] is True and len(doc["results"]) == 1
    result: dict[str, Any] = doc["results"][0]
    return result


def _make_tiny_model() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", ROOT / "examples" / "make_tiny_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_tiny_model().make_tiny_model(
        tmp_path_factory.mktemp("m") / "tiny-lfm2", dtype="bfloat16"
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("b") / "asa-example"
    convert_legacy(
        ROOT / "examples" / "asa_assets", out, model_type="lfm2", num_layers=6, samples=64
    )
    return out


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(run_command, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_bundle_is_positional_like_every_other_command(model_dir: Path, bundle: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "asa_format.cli",
            "run",
            str(bundle),
            "--model",
            str(model_dir),
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert run_result(result.stdout)["layer"] == 4
    code, out, _ = run(
        "--bundle",
        str(bundle),
        "--model",
        str(model_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "1",
        "--json",
    )
    assert code == 0 and run_result(out)["layer"] == 4
    code, _, err = run(
        str(bundle), "--bundle", str(model_dir), "--model", str(model_dir), "--prompt", PROMPT
    )
    assert code == 2 and "different bundles" in err


def test_a_matching_local_model_is_accepted_with_a_note(model_dir: Path, bundle: Path) -> None:
    # the bundle is bound to LiquidAI/LFM2.5-1.2B-Instruct; the local copy matches its config
    code, out, err = run(
        str(bundle),
        "--model",
        str(model_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "1",
        "--json",
    )
    assert code == 0, err
    assert run_result(out)["decision"]["domain"] in {
        "web_search",
        "calculator",
        "calendar",
        "translate",
    }
    assert "note: [MODEL_ID_MISMATCH]" in err and "LiquidAI/LFM2.5-1.2B-Instruct" in err
    assert "warning" not in err


def test_a_local_model_of_another_shape_is_refused_with_the_flag_in_the_hint(
    model_dir: Path, tmp_path: Path
) -> None:
    other = make_test_bundle(
        tmp_path / "b",
        hidden_size=48,
        layer=1,
        model_type="llama",
        model_id="org/other",
        num_layers=6,
    )
    code, _, err = run(str(other), "--model", str(model_dir), "--prompt", PROMPT)
    assert code == 1
    assert "MODEL_TYPE_MISMATCH" in err and "--no-strict" in err and "strict_model_match" not in err


def test_system_and_messages_reach_the_model(model_dir: Path, bundle: Path, tmp_path: Path) -> None:
    def tokens(*extra: str) -> int:
        code, out, err = run(
            str(bundle), "--model", str(model_dir), "--max-new-tokens", "1", "--json", *extra
        )
        assert code == 0, err
        return int(run_result(out)["input_tokens"])

    plain = tokens("--prompt", PROMPT)
    with_system = tokens("--prompt", PROMPT, "--system", "you are a helpful assistant")
    assert with_system > plain
    conversation = tmp_path / "messages.json"
    conversation.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "you are a helpful assistant"},
                    {"role": "user", "content": PROMPT},
                ],
                "tools": [
                    {"type": "function", "function": {"name": "web_search", "parameters": {}}}
                ],
            }
        )
    )
    with_tools = tokens("--messages", str(conversation))
    assert with_tools > with_system
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"role": "user", "content": PROMPT}]))
    assert tokens("--messages", str(listed)) == plain


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        ("{not json", (), "not valid JSON"),
        ('{"messages": "hello"}', (), "no list of chat messages"),
        ('[{"role": "assistant", "content": "hi"}]', (), "no user message"),
        (
            '[{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]',
            ("--system", "c"),
            "system prompt once",
        ),
    ],
)
def test_bad_messages_are_usage_errors(
    model_dir: Path, bundle: Path, tmp_path: Path, content: str, extra: tuple[str, ...], needle: str
) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    code, out, err = run(str(bundle), "--model", str(model_dir), "--messages", str(path), *extra)
    assert code == 2, err
    assert needle in err and "Traceback" not in err + out


def test_dtype_defaults_to_the_models_own(model_dir: Path, bundle: Path) -> None:
    code, out, err = run(
        str(bundle),
        "--model",
        str(model_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "1",
        "--json",
    )
    assert code == 0, err
    assert run_result(out)["dtype"] == "bfloat16"  # as saved; the old default forced float32
    code, out, err = run(
        str(bundle),
        "--model",
        str(model_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "1",
        "--json",
        "--dtype",
        "float32",
    )
    assert code == 0, err
    assert run_result(out)["dtype"] == "float32"
