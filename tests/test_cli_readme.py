"""Every command and Python example of the README runs as written.

The quick-start section is run top to bottom from the repository root, as a
user following it would, with ``/tmp/`` mapped to a fresh directory; a
command's expected exit status is the ``# exit N`` comment on its line
(0 otherwise). The set-up command's ``asa`` part runs too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _section(start: str, end: str) -> str:
    return README[README.index(start) : README.index(end)]


def _steps() -> list[tuple[str, str]]:
    """(language, code) of every bash line and python block of the quick start, in order."""
    steps: list[tuple[str, str]] = []
    for lang, body in BLOCK.findall(_section("## Quick start", "## Performance")):
        if lang == "bash":
            steps += [
                ("bash", line)
                for line in body.splitlines()
                if line.strip() and not line.startswith("#")
            ]
        elif lang == "python":
            steps.append(("python", body))
    return steps


def _env(tmp: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HOME": str(tmp),
    }


def _run(lang: str, code: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    code = code.replace("/tmp/", f"{tmp}/")
    argv = ["bash", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, env=_env(tmp), timeout=600, check=False
    )


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    steps = _steps()
    assert (
        sum(lang == "bash" for lang, _ in steps) >= 10
        and sum(lang == "python" for lang, _ in steps) >= 4
    )
    for lang, code in steps:
        expected = re.search(r"# exit (\d+)", code) if lang == "bash" else None
        result = _run(lang, code, tmp_path)
        assert result.returncode == (int(expected.group(1)) if expected else 0), (
            code,
            result.stdout[-2000:],
            result.stderr[-2000:],
        )
        assert "Traceback" not in result.stderr, (code, result.stderr[-2000:])
    assert (tmp_path / "asa-example" / "model.sig").is_file()
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "draft\n"


def test_the_set_up_commands_asa_part_runs(tmp_path: Path) -> None:
    blocks = BLOCK.findall(_section("## Set-up on a fresh machine", "## Install"))
    main_job = blocks[0][1].strip()
    parts = [p for p in main_job.split(" && ") if p.startswith(("asa ", "asa-convert "))]
    assert len(parts) == 3
    result = _run("bash", " && ".join(parts), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "parity       4096 samples against the legacy estimators' own float64 arithmetic: "
        "domain agreement 100.00%, gate agreement 100.00%"
    ) in result.stdout
    assert "digest       sha256:" in result.stdout
