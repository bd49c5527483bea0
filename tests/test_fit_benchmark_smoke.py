"""Smoke test of ``python -m benchmarks fit --quick``: every measurement is made and reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.runtime, pytest.mark.convert]  # it runs torch and fits

ROOT = Path(__file__).resolve().parent.parent


def test_quick_fit_benchmark(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "fit", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((tmp_path / "fit.json").read_text(encoding="utf-8"))
    assert doc["quick"] is True
    for dtype in ("float32", "float16"):
        ex = doc["extraction"][dtype]
        assert ex["prompts"] == 256
        for method in ("one at a time", "equal-length batches of 8", "padded batches of 8"):
            assert ex["prompts_per_s"][method]["median"] > 0
        assert ex["details"]["equal-length batches of 8"]["batched_prompts"] > 0
        assert ex["details"]["one at a time"]["forward_passes"] == 256
    assert doc["fit_in_process"]["wall_s"]["median"] > 0 and doc["fit_in_process"]["same_digest"]
    assert doc["fit_command"]["wall_s"]["median"] > 0
    md = (tmp_path / "fit.md").read_text(encoding="utf-8")
    assert "## Hidden-state extraction" in md and "## Whole fit" in md
