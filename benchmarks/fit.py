"""``python -m benchmarks fit``: how fast ``asa fit`` extracts hidden states and fits.

On the example tiny model (``examples/make_tiny_model.py``: LFM2, hidden 48,
6 blocks, float32 and float16) and the example data set
(``examples/fit_data``: 256 prompts, ``examples/fit_system.txt``), with a
fixed torch thread count:

1. ``extraction``: prompts per second of ``extract_hidden_states`` one
   prompt at a time (``batch_size=1``), in equal-length batches of 8 (the
   default: the first batch is also run one prompt at a time and one row of
   every later batch, to check that batching changes nothing), and in padded
   batches of 8 (opt-in; the values change). Methods alternate in rounds so
   that drift of the machine affects them alike.
2. ``fit``: the wall time of the whole ``asa_format.converters.fit`` call
   (data checks, model load, extraction, protocol, export, self-check,
   atomic write) in this process, and of ``asa fit`` as a command
   (interpreter start and imports included).

Writes ``fit.json`` and ``fit.md`` to the output folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .machine import machine_info
from .output import add_output_options, output_dir
from .stats import summarize

__all__ = ["main", "run_fit_benchmark"]

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "fit_data"
SYSTEM_FILE = ROOT / "examples" / "fit_system.txt"
METHODS = ("one at a time", "equal-length batches of 8", "padded batches of 8")


def _log(message: str) -> None:
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def _tiny_model(directory: Path, dtype: str) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", ROOT / "examples" / "make_tiny_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.make_tiny_model(directory, dtype=dtype))


def _encoded(model_dir: Path, dtype: str) -> tuple[Any, list[list[int]]]:
    from asa_format.converters.fit_data import SPLITS, load_data
    from asa_format.converters.fit_model import Renderer, load_model

    loaded = load_model(model_dir, dtype)
    data = load_data(DATA)
    renderer = Renderer.for_instructions(loaded.tokenizer, SYSTEM_FILE.read_text(encoding="utf-8"))
    rows = [r for s in SPLITS for r in data.split_rows(s)]
    return loaded, renderer.encode_all([r.instruction for r in rows], [r.id for r in rows])


def _extraction(model_dir: Path, dtype: str, rounds: int) -> dict[str, Any]:
    from asa_format.converters.fit_hidden import extract_hidden_states

    loaded, encoded = _encoded(model_dir, dtype)
    settings: dict[str, tuple[int, bool]] = {  # (batch size, padded)
        METHODS[0]: (1, False),
        METHODS[1]: (8, False),
        METHODS[2]: (8, True),
    }
    extract_hidden_states(loaded, encoded[:8], batch_size=1)  # warm-up
    rates: dict[str, list[float]] = {m: [] for m in METHODS}
    details: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        order = METHODS if r % 2 == 0 else tuple(reversed(METHODS))
        for method in order:
            t0 = time.perf_counter()
            batch_size, padded = settings[method]
            _, report = extract_hidden_states(loaded, encoded, batch_size=batch_size, padded=padded)
            seconds = time.perf_counter() - t0
            rates[method].append(len(encoded) / seconds)
            details[method] = {
                "forward_passes": report.forward_passes,
                "batched_prompts": report.batched_prompts,
                "checked_rows": report.checked_rows,
                "fallback": report.fallback,
                "padded_max_abs_diff": report.padded_max_abs_diff,
            }
    lengths = sorted({len(e) for e in encoded})
    return {
        "dtype": dtype,
        "prompts": len(encoded),
        "token_lengths": {"distinct": len(lengths), "min": lengths[0], "max": lengths[-1]},
        "prompts_per_s": {m: summarize(rates[m], "prompts/s") for m in METHODS},
        "details": details,
        "speedup_equal_length": _ratio(rates[METHODS[1]], rates[METHODS[0]]),
        "speedup_padded": _ratio(rates[METHODS[2]], rates[METHODS[0]]),
    }


def _ratio(a: list[float], b: list[float]) -> float:
    import numpy as np

    return float(np.median(a) / np.median(b))


def _fit_in_process(model_dir: Path, work: Path, repeats: int, threads: int) -> dict[str, Any]:
    from asa_format.converters import fit

    times = []
    digests = set()
    system = SYSTEM_FILE.read_text(encoding="utf-8")
    for i in range(repeats):
        out = work / f"fit-{i}"
        t0 = time.perf_counter()
        report = fit(model_dir, DATA, out, system=system, alpha=4.0, beta=0.25, threads=threads)
        times.append(time.perf_counter() - t0)
        digests.add(report.digest)
    return {"wall_s": summarize(times, "s"), "same_digest": len(digests) == 1}


def _fit_command(model_dir: Path, work: Path, repeats: int, threads: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    times = []
    for i in range(repeats):
        out = work / f"cli-{i}"
        argv = [
            sys.executable, "-m", "asa_format.cli", "fit", "--model", str(model_dir), "--data", str(DATA),
            "--system-file", str(SYSTEM_FILE), "--out", str(out), "--alpha", "4", "--beta", "0.25",
            "--threads", str(threads),
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"asa fit failed: {proc.stderr[-2000:]}")
    return {"wall_s": summarize(times, "s")}


def run_fit_benchmark(quick: bool, work: Path, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    rounds = 1 if quick else 5
    repeats = 1 if quick else 3
    doc: dict[str, Any] = {
        "quick": quick,
        "machine": machine_info(),
        "settings": {"torch_threads": threads, "rounds": rounds, "fit_repeats": repeats},
        "extraction": {},
    }
    for dtype in ("float32", "float16"):
        model_dir = _tiny_model(work / f"tiny-{dtype}", dtype)
        _log(f"extraction, {dtype}")
        doc["extraction"][dtype] = _extraction(model_dir, dtype, rounds)
    model_dir = work / "tiny-float32"
    _log("whole fit, in process")
    doc["fit_in_process"] = _fit_in_process(model_dir, work, repeats, threads)
    _log("whole fit, as a command")
    doc["fit_command"] = _fit_command(model_dir, work, repeats, threads)
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    return doc


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# asa fit benchmark",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, torch threads "
        f"{doc['settings']['torch_threads']}; {'quick run (numbers meaningless)' if doc['quick'] else 'full run'}; "
        f"load average at the end {', '.join(f'{x:.2f}' for x in m.get('load_average_end', []))}.",
        "",
        "## Hidden-state extraction (example tiny model, 256 prompts of examples/fit_data)",
        "",
        "| dtype | method | prompts/s (median) | p10 .. p90 | forward passes | rows checked |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for dtype, ex in doc["extraction"].items():
        for method in METHODS:
            s = ex["prompts_per_s"][method]
            d = ex["details"][method]
            lines.append(
                f"| {dtype} | {method} | {s['median']:.1f} | {s['p10']:.1f} .. {s['p90']:.1f} | "
                f"{d['forward_passes']} | {d['checked_rows']} |"
            )
    lines.append("")
    for dtype, ex in doc["extraction"].items():
        padded = ex["details"][METHODS[2]]["padded_max_abs_diff"]
        lines.append(
            f"- {dtype}: equal-length batching {ex['speedup_equal_length']:.2f}x one at a time "
            f"({ex['token_lengths']['distinct']} distinct token lengths, {ex['token_lengths']['min']}-"
            f"{ex['token_lengths']['max']} tokens); padded batching {ex['speedup_padded']:.2f}x, "
            f"max |change| of a hidden state {padded:.3g}"
        )
    f = doc["fit_in_process"]["wall_s"]
    c = doc["fit_command"]["wall_s"]
    lines += [
        "",
        "## Whole fit (float32 tiny model, alpha and beta given)",
        "",
        "| what | wall time (median) | min .. max |",
        "| --- | --- | --- |",
        f"| `fit(...)` in process | {f['median']:.2f} s | {f['min']:.2f} .. {f['max']:.2f} s |",
        f"| `asa fit` command | {c['median']:.2f} s | {c['min']:.2f} .. {c['max']:.2f} s |",
        "",
        f"Every in-process run wrote the same root digest: {doc['fit_in_process']['same_digest']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks fit", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="one round (smoke test); numbers are meaningless"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    add_output_options(p, "fit.json and fit.md")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    out = output_dir(p, args, "fit")
    with tempfile.TemporaryDirectory(prefix="asa-bench-fit-") as tmp:
        doc = run_fit_benchmark(args.quick, Path(tmp), args.threads)
    (out / "fit.json").write_text(
        json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "fit.md").write_text(markdown(doc), encoding="utf-8")
    _log(f"wrote {out / 'fit.json'} and {out / 'fit.md'}")
    return 0
