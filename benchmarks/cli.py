"""Command line of ``python -m benchmarks``: run every section, write JSON and Markdown."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .machine import machine_info
from .output import add_output_options, output_dir
from .settings import Settings, full_settings, quick_settings

__all__ = ["SECTIONS", "main", "run_all"]

SECTIONS = ("decision", "generation", "load", "cli", "scale")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark asa-format against the legacy pickle path. "
        "`python -m benchmarks serving [--quick] [--out DIR]` runs the serving benchmark alone; "
        "`python -m benchmarks fit [--quick] [--out DIR]` the asa fit benchmark; "
        "`python -m benchmarks vllm [--quick] [--out DIR]` the vLLM plugin benchmark (needs vLLM).",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes and few repeats (smoke test, < 60 s)"
    )
    add_output_options(p, "results.json and results.md")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats of whole-run measurements (generations, loads, processes)",
    )
    p.add_argument(
        "--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)"
    )
    return p


def _log(message: str) -> None:
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def run_all(settings: Settings, work: Path, only: list[str] | None = None) -> dict[str, Any]:
    from .commands import run_commands
    from .decision import run_decision
    from .fixtures import fit_pipeline, write_bundle, write_legacy
    from .generation import run_generation
    from .loading import run_load
    from .scale import run_scale
    from .targets import evaluate_targets

    start = time.perf_counter()
    doc: dict[str, Any] = {"machine": machine_info(), "settings": settings.to_dict(), "errors": {}}
    wanted = list(only or SECTIONS)
    _log(
        f"fitting the pipeline (hidden {settings.hidden}, {settings.domains} domains) and writing the bundles"
    )
    pipe = fit_pipeline(
        settings.hidden, settings.domains, settings.train_per_domain, settings.pool_rows
    )
    legacy_dir = write_legacy(pipe, work / "legacy", settings.layer)
    bundle = write_bundle(pipe, work / "bundle", settings.layer, settings.gen_layers)
    doc["fixture_s"] = time.perf_counter() - start
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("decision", lambda: run_decision(settings, pipe, bundle, legacy_dir)),
        ("load", lambda: run_load(settings, bundle, legacy_dir)),
        ("cli", lambda: run_commands(settings, bundle, legacy_dir, work)),
        ("scale", lambda: run_scale(settings, work)),
        ("generation", lambda: run_generation(settings, bundle)),  # last: imports torch
    ]
    timings: dict[str, float] = {}
    for name, step in steps:
        if name not in wanted:
            continue
        _log(f"section {name}")
        t0 = time.perf_counter()
        try:
            doc[name] = step()
        except Exception as exc:  # one failing section must not lose the others
            doc["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        timings[name] = time.perf_counter() - t0
    doc["section_s"] = timings
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    doc["elapsed_s"] = time.perf_counter() - start
    doc["targets"] = [t.to_dict() for t in evaluate_targets(doc)]
    return doc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serving"]:  # a sub-benchmark with its own options and output files
        from .serving import main as serving_main

        return serving_main(argv[1:])
    if argv[:1] == ["fit"]:  # asa fit: extraction throughput and whole-fit wall time
        from .fit import main as fit_main

        return fit_main(argv[1:])
    if argv[:1] == ["vllm"]:  # needs vLLM: the virtualenv of .ci/vllm.sh
        from .vllm_serving import main as vllm_main

        return vllm_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    out = output_dir(parser, args, "results")
    settings = quick_settings(args.repeats) if args.quick else full_settings(args.repeats)
    from .report import markdown

    with tempfile.TemporaryDirectory(prefix="asa-bench-") as tmp:
        doc = run_all(settings, Path(tmp), args.only)
    (out / "results.json").write_text(
        json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "results.md").write_text(markdown(doc), encoding="utf-8")
    _log(f"wrote {out / 'results.json'} and {out / 'results.md'} in {doc['elapsed_s']:.0f} s")
    for t in doc["targets"]:
        status = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        _log(f"  [{status:6}] {t['name']}: {t['display']} (target {t['target']})")
    return 1 if doc["errors"] else 0
