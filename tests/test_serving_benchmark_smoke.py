"""Smoke test of ``python -m benchmarks serving --quick``: every measurement is made and reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime  # the serving benchmark runs torch

ROOT = Path(__file__).resolve().parent.parent


def test_quick_serving_run(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "serving", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((tmp_path / "serving.json").read_text(encoding="utf-8"))
    assert doc["quick"] is True and doc["backend"] == "numpy"
    for n in ("1", "8", "64", "256"):
        for path in ("runtime", "numpy", "torch"):
            assert doc["in_hook"][n][path]["call_us"]["median"] > 0
    lone = doc["lone_row"]  # a prompt alone inside a real forward: decided by the one-row lane
    assert (
        lone["decided_rounds"] == lone["rounds"] and lone["decided_by_the_lane"] == lone["prefills"]
    )
    assert lone["decision_us"]["median"] > 0 and lone["numpy_op_floor_us"]["median"] > 0
    for cond in ("alone", "after_numpy_blas", "after_torch"):
        assert doc["busy"][cond]["legacy"]["median"] > doc["busy"][cond]["ours"]["median"] > 0
    assert set(doc["mixed"]["bundles"]) == {"1", "2", "4"}
    assert doc["gpu"].startswith("not measured")
    names = [t["name"] for t in doc["targets"]]
    assert any("legacy / ours" in n for n in names) and any("per-row" in n for n in names)
    assert any("inside a real forward pass" in n for n in names)
    md = (tmp_path / "serving.md").read_text(encoding="utf-8")
    for heading in (
        "## Targets",
        "## In-hook decision cost",
        "## Batch 64 in a busy process",
        "## Mixed-bundle batches",
    ):
        assert heading in md
