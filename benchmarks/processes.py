"""Whole-process measurements: wall time and peak resident memory of a child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessRun", "cli_command", "import_times", "run_process"]

_MEASURE = Path(__file__).resolve().parent / "_measure.py"


@dataclass(frozen=True)
class ProcessRun:
    returncode: int
    wall_s: float
    peak_rss_mb: float  # ru_maxrss of this child alone
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # user + system CPU time of this child


def run_process(cmd: Sequence[str], env: dict[str, str] | None = None) -> ProcessRun:
    """Run ``cmd``; return its exit status, wall time and peak RSS (see ``_measure``)."""
    with tempfile.TemporaryDirectory(prefix="asa-bench-run-") as tmp:
        result = Path(tmp) / "result.json"
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            subprocess.run(
                [sys.executable, "-S", str(_MEASURE), str(result), *cmd],
                stdout=out,
                stderr=err,
                env=env,
                check=False,
            )
        stdout = out_path.read_text(encoding="utf-8", errors="replace")
        stderr = err_path.read_text(encoding="utf-8", errors="replace")
        try:
            data = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"measuring {list(cmd)} failed: {stderr[-2000:]}") from exc
    # Linux reports ru_maxrss in KiB
    return ProcessRun(
        int(data["exit"]),
        float(data["wall_s"]),
        data["maxrss_kib"] / 1024.0,
        stdout,
        stderr,
        float(data.get("cpu_s", 0.0)),
    )


def cli_command(name: str) -> list[str]:
    """The console script ``name`` next to this interpreter, else ``python -m`` of its module."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    module = {"asa": "asa_format.cli", "asa-convert": "asa_format.cli.convert"}[name]
    return [sys.executable, "-m", module]


def import_times(stderr: str, top: int = 8) -> list[dict[str, object]]:
    """Parse ``python -X importtime`` output: the top-level imports by cumulative time (ms)."""
    rows: list[dict[str, object]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3:
            continue
        try:
            cumulative = int(parts[1].strip())
        except ValueError:
            continue  # the header line
        name = parts[2].rstrip()
        if name.startswith(" ") and not name.startswith("  "):  # top level: one leading space
            rows.append({"module": name.strip(), "cumulative_ms": cumulative / 1000.0})
    rows.sort(key=lambda r: -float(r["cumulative_ms"]))  # type: ignore[arg-type]
    return rows[:top]
