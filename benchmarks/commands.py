"""Section 4: the command-line tools as whole processes.

``asa validate`` on the benchmark bundle and ``asa-convert`` (parity
self-check included) on the equivalent legacy bundle, timed as separate
processes; the CPU time of ``asa validate`` on the README's example bundle
(``examples/asa_assets`` converted) against ``python -c "import numpy"``,
interleaved, 7 pairs; plus, in one more process, which heavy modules
``asa validate`` imported, and a ``python -X importtime`` breakdown of both
commands.
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

HEAVY_MODULES = (
    "torch",
    "transformers",
    "sklearn",
    "skl2onnx",
    "onnxruntime",
    "onnx",
    "ml_dtypes",
    "scipy",
)
FORBIDDEN = ("torch", "transformers", "sklearn", "onnx", "ml_dtypes", "onnxruntime")
CPU_PAIRS = 7
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "asa_assets"

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


def validate_cpu(bundle: Path, pairs: int = CPU_PAIRS) -> dict[str, Any]:
    """CPU time (user + system) of ``asa validate BUNDLE`` and of ``python -c "import numpy"``,
    as separate processes in alternation; the ratio of each pair and of the medians."""
    validate = [*cli_command("asa"), "validate", str(bundle)]
    numpy_only = [sys.executable, "-c", "import numpy"]
    run_process(validate)  # warm the page cache and the bytecode caches
    run_process(numpy_only)
    v_cpu, n_cpu, codes = [], [], []
    for _ in range(pairs):
        run = run_process(validate)
        v_cpu.append(run.cpu_s)
        codes.append(run.returncode)
        n_cpu.append(run_process(numpy_only).cpu_s)
    ratios = [v / n for v, n in zip(v_cpu, n_cpu, strict=True) if n > 0]
    v_med, n_med = summarize(v_cpu, "s")["median"], summarize(n_cpu, "s")["median"]
    return {
        "bundle": str(bundle),
        "pairs": pairs,
        "validate_cpu_s": summarize(v_cpu, "s"),
        "import_numpy_cpu_s": summarize(n_cpu, "s"),
        "pair_ratio": summarize(ratios, "x"),
        "ratio_of_medians": v_med / n_med if n_med else None,
        "exit_codes": sorted(set(codes)),
    }


def _example_bundle(work: Path) -> Path | None:
    """The README's example bundle: examples/asa_assets converted (None if that fails)."""
    dest = work / "example"
    cmd = [*cli_command("asa-convert"), str(EXAMPLE), str(dest), "--model-type", "lfm2"]
    run = run_process([*cmd, "--num-layers", "6", "--force"])
    return dest if run.returncode == 0 else None


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
    example = _example_bundle(work)
    return {
        "validate_cpu": None if example is None else validate_cpu(example),
        "validate_cpu_benchmark_bundle": validate_cpu(bundle, pairs=3 if settings.quick else 5),
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
