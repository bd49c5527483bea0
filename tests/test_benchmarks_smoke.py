"""Smoke test of ``python -m benchmarks --quick``: every section is measured and reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the benchmarks fit scikit-learn pipelines and generate with torch models
pytestmark = [pytest.mark.runtime, pytest.mark.convert]

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("decision", "generation", "load", "cli", "scale")
HEADINGS = (
    "## Targets",
    "## 1. Decision latency and throughput",
    "## 2. Generation overhead",
    "## 3. Load time",
    "## 4. Command-line wall time",
    "## 5. Scale: validate time and memory vs bundle size",
)


def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert doc["errors"] == {}
    assert doc["settings"]["quick"] is True
    for section in SECTIONS:
        assert isinstance(doc[section], dict) and doc[section], section

    machine = doc["machine"]
    for key in ("cpu_model", "cores", "python", "date"):
        assert machine[key]
    assert set(machine["versions"]) >= {"numpy", "onnxruntime", "torch", "scikit-learn"}

    decision = doc["decision"]
    for path in ("ours", "ours_ort", "legacy", "floor"):
        assert decision["batch1_us"][path]["n"] > 0
        assert decision["batch1_us"][path]["median"] > 0
        assert decision["batch_rows_per_s"][path]["median"] > 0
    assert decision["backend"] == {"ours": "numpy", "ours_ort": "onnxruntime"}
    # every path decides the same thing on the benchmark inputs
    agreement = decision["agreement"]
    assert agreement["domain_ours_vs_legacy"] == 1.0
    assert agreement["gate_ours_vs_legacy"] == 1.0
    assert agreement["domain_floor_vs_legacy"] == 1.0
    assert agreement["gate_floor_vs_legacy"] == 1.0

    generation = doc["generation"]
    assert generation["attached_s"]["n"] == generation["detached_s"]["n"] == 1
    assert generation["decision"]["rows"], "the attached generation recorded no decision"

    assert doc["load"]["ms"]["load_bundle"]["median"] > 0
    cli = doc["cli"]
    assert cli["validate"]["exit_codes"] == [0]
    assert cli["convert"]["exit_codes"] == [0]
    assert cli["validate_imports"]["exit"] == 0
    assert cli["validate_imports"]["forbidden_imported"] == []

    scale = doc["scale"]
    assert [p["hidden"] for p in scale["points"]] == list(doc["settings"]["scale_hidden"])
    assert all(p["exit_codes"] == [0] and p["peak_rss_mb"]["median"] > 0 for p in scale["points"])

    names = [t["name"] for t in doc["targets"]]
    assert len(names) == len(set(names)) >= 12
    assert all(t["met"] in (True, False, None) for t in doc["targets"])

    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert heading in md, heading
    assert machine["cpu_model"] in md
    for t in doc["targets"]:
        assert t["name"] in md
