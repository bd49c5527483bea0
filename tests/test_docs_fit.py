"""Every command and Python example of ``docs/fit.md`` runs as written.

The page is run top to bottom from the repository root, as a user following
it would, with ``/tmp/`` mapped to a fresh directory; a command's expected
exit status is the ``# exit N`` comment on its line (0 otherwise). The
outputs the page shows are checked where they do not depend on library
versions: the fit's choices, the refusal, the identical second run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.runtime, pytest.mark.convert, pytest.mark.interop]  # asa export: gguf

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "fit.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _steps() -> list[tuple[str, str]]:
    steps: list[tuple[str, str]] = []
    for lang, body in BLOCK.findall(PAGE):
        if lang == "bash":
            steps += [
                ("bash", line)
                for line in body.splitlines()
                if line.strip() and not line.startswith("#")
            ]
        elif lang == "python":
            steps.append(("python", body))
    return steps


def test_the_page_runs_as_written(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HOME": str(tmp_path),
    }
    steps = _steps()
    assert sum(lang == "bash" for lang, _ in steps) >= 8 and any(
        lang == "python" for lang, _ in steps
    )
    outputs: list[str] = []
    for lang, code in steps:
        code = code.replace("/tmp/", f"{tmp_path}/")
        expected = re.search(r"# exit (\d+)", code) if lang == "bash" else None
        argv = ["bash", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        result = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900, check=False
        )
        assert result.returncode == (int(expected.group(1)) if expected else 0), (
            code,
            result.stdout[-2000:],
            result.stderr[-2000:],
        )
        assert "Traceback" not in result.stderr, (code, result.stderr[-2000:])
        outputs.append(result.stdout)
    text = "\n".join(outputs)
    # the choices the page shows (they do not depend on the hidden states' last bits)
    assert "5  1.0000  <- L*" in text and "tau          0.5 (first tau" in text
    assert "identical" in text
    assert "FIT_DATA_INVALID" in text and not (tmp_path / "asa-refused").exists()
    again = json.loads((tmp_path / "asa-fit-again.json").read_text())
    digest = again["results"][0]["digest"]
    assert f"digest       {digest}" in text  # the first run printed the same digest
    assert (tmp_path / "asa-control.gguf").is_file() and (
        tmp_path / "asa-cast" / "manifest.json"
    ).is_file()
