"""Section 4: the command-line tools as whole processes.

``asa validate`` on the benchmark bundle and ``asa-convert`` (parity
self-check included) on the equivalent legacy bundle, timed as separate
processes; plus, in one more process, which heavy modules ``asa validate``
imported, and a ``python -X importtime`` breakdown of both commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .processes import cli_command, import_times, run_process
from .settings import Settings
from .stats import summarize

__all__ = ["HEAVY_MODULES", "run_commands", "validate_imports"]

HEAVY_MODULES = ("torch", "transformers", "sklearn", "skl2onnx", "onnxruntime", "onnx", "scipy")
FORBIDDEN = ("torch", "transformers", "sklearn")

_PROBE = """
import json, sys
from asa_format.cli import main
try:
    main(["validate", sys.argv[1]])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"exit": code, "modules": [m for m in %r if m in sys.modules]}))
"""


def validate_imports(bundle: Path) -> dict[str, Any]:
    """Which heavy modules ``asa validate`` imports (run in a fresh process)."""
    run = run_process([sys.executable, "-c", _PROBE % (HEAVY_MODULES,), str(bundle)])
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "{}"
    data = json.loads(last)
    imported = list(data.get("modules", []))
    return {
        "exit": data.get("exit"),
        "imported": imported,
        "forbidden_imported": [m for m in FORBIDDEN if m in imported],
    }


def _timed(cmd: list[str], repeats: int) -> tuple[list[float], list[float], list[int]]:
    walls, rss, codes = [], [], []
    for _ in range(repeats):
        run = run_process(cmd)
        walls.append(run.wall_s)
        rss.append(run.peak_rss_mb)
        codes.append(run.returncode)
    return walls, rss, codes


def run_commands(settings: Settings, bundle: Path, legacy_dir: Path, work: Path) -> dict[str, Any]:
    validate = [*cli_command("asa"), "validate", str(bundle)]
    convert = [*cli_command("asa-convert"), str(legacy_dir), str(work / "converted"), "--force"]
    run_process(validate)  # warm the page cache
    v_wall, v_rss, v_codes = _timed(validate, settings.repeats)
    c_wall, c_rss, c_codes = _timed(convert, settings.convert_repeats)
    baseline = _timed([sys.executable, "-c", "import asa_format.cli"], settings.repeats)
    py = [sys.executable, "-X", "importtime"]
    v_imp = run_process([*py, "-m", "asa_format.cli", "validate", str(bundle)])
    c_imp = run_process(
        [
            *py,
            "-m",
            "asa_format.cli.convert",
            str(legacy_dir),
            str(work / "converted-it"),
            "--force",
        ]
    )
    return {
        "validate": {
            "command": "asa validate BUNDLE",
            "wall_s": summarize(v_wall, "s"),
            "peak_rss_mb": summarize(v_rss, "MB"),
            "exit_codes": sorted(set(v_codes)),
        },
        "convert": {
            "command": "asa-convert LEGACY OUT --force",
            "wall_s": summarize(c_wall, "s"),
            "peak_rss_mb": summarize(c_rss, "MB"),
            "exit_codes": sorted(set(c_codes)),
        },
        "import_asa_format_cli": {
            "command": "python -c 'import asa_format.cli'",
            "wall_s": summarize(baseline[0], "s"),
            "peak_rss_mb": summarize(baseline[1], "MB"),
        },
        "validate_imports": validate_imports(bundle),
        "importtime_top": {
            "validate": import_times(v_imp.stderr),
            "convert": import_times(c_imp.stderr),
        },
    }
