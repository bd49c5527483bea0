"""``asa validate`` (and loading a bundle) needs only the core dependencies.

Each check runs in a fresh interpreter whose import system refuses torch,
transformers, scikit-learn and skl2onnx (a ``sys.meta_path`` finder that
raises ImportError), as if they were not installed. This works offline,
unlike building a throwaway virtual environment, and also proves that none
of those modules is imported along the way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "spec" / "conformance"
VALID = CORPUS / "valid" / "domain_without_probe" / "bundle"
INVALID = CORPUS / "invalid" / "onnx_external_data_traversal" / "bundle"
HEAVY = ("torch", "transformers", "sklearn", "skl2onnx")

PRELUDE = textwrap.dedent(
    """
    import importlib.abc, json, sys
    BLOCKED = set(sys.argv[1].split(","))
    ATTEMPTS = []

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                ATTEMPTS.append(name)
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, Blocker())
    OUT = sys.argv[2]
    sys.argv = sys.argv[2:]

    def finish(status):
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        extras = sorted(m for m in sys.modules if m.startswith(("asa_format.runtime", "asa_format.converters")))
        with open(OUT, "w") as fh:
            json.dump({"status": status, "loaded": loaded, "attempts": ATTEMPTS, "extras": extras}, fh)
    """
)

CLI = PRELUDE + textwrap.dedent(
    """
    from asa_format.cli import main
    try:
        main(sys.argv[1:])
        status = 0
    except SystemExit as exc:
        status = exc.code
    finish(status)
    """
)

LOAD = PRELUDE + textwrap.dedent(
    """
    import numpy as np
    from asa_format import load_bundle
    bundle = load_bundle(sys.argv[1])
    bundle.decide(np.ones((2, bundle.hidden_size), np.float32))
    bundle.steering_vector(0)
    finish(0)
    """
)


def _run(
    script: str, tmp_path: Path, *args: str
) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-c", script, ",".join(HEAVY), str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert out.exists(), proc.stderr
    result: dict[str, object] = json.loads(out.read_text())
    return result, proc


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["validate", str(VALID)], 0),
        (["validate", "--json", str(VALID), str(INVALID)], 1),
        (["inspect", str(VALID)], 0),
    ],
)
def test_cli_without_heavy_dependencies(tmp_path: Path, args: list[str], status: int) -> None:
    result, proc = _run(CLI, tmp_path, *args)
    assert result["status"] == status, proc.stderr
    assert result["loaded"] == [] and result["attempts"] == [], result
    assert result["extras"] == []
    assert "Traceback" not in proc.stderr
    if "--json" in args:
        doc = json.loads(proc.stdout)
        assert [b["ok"] for b in doc["results"]] == [True, False]


def test_load_and_decide_without_heavy_dependencies(tmp_path: Path) -> None:
    result, proc = _run(LOAD, tmp_path, str(VALID))
    assert result == {"status": 0, "loaded": [], "attempts": [], "extras": []}, proc.stderr


def test_the_blocker_blocks(tmp_path: Path) -> None:
    """The hook is effective: a command that needs torch fails to import it."""
    script = PRELUDE + textwrap.dedent(
        """
        try:
            import torch  # noqa: F401
            status = 0
        except ImportError:
            status = 1
        finish(status)
        """
    )
    result, _ = _run(script, tmp_path)
    assert result["status"] == 1 and result["attempts"] == ["torch"]
