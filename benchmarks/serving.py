"""``python -m benchmarks serving``: decision costs as a server sees them.

Three measurements, on the benchmark's published-size bundle (hidden 2048,
4 domains) unless stated:

1. ``in_hook``: the decision inside a forward hook, right after a torch
   matrix product on 2 threads (torch's pool is live), at batch 1, 8, 64 and
   256: ``Bundle.decide`` on the rows copied to NumPy (the runtime's path)
   and ``TorchDecider.decide`` on the tensor (no copy, records not built);
2. ``busy``: ``Bundle.decide`` at batch 64 right after another BLAS user ran
   in the process (NumPy's 2-thread OpenBLAS product; a 2-thread torch
   product), against the legacy scikit-learn hook in the same conditions,
   and against the fused product without the single-thread row blocks;
3. ``mixed``: ``runtime.flat.steer_flat`` on a vLLM-shaped batch of 64
   sequences (a prefill chunk of 8 tokens ending each prompt, or one decode
   token each) with 1, 2 or 4 bundles chosen per sequence;
4. ``mixed_hooks``: the runtime's hook cost per prefill of 64 prompts, all
   rows on one bundle against rows spread over three bundles on two blocks,
   idle and with both cores busy (``benchmarks.mixed_hooks``).

The in-hook section also times the floor of any work done there: a no-op
Python call and one 2048-element NumPy operation right after the same torch
product (the product evicts caches and translation buffers; on a virtual
machine the first NumPy call afterwards costs tens of microseconds).

Writes ``serving.json`` and ``serving.md`` to the output folder.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .machine import machine_info
from .mixed_hooks import python_lane
from .output import add_output_options, output_dir
from .stats import summarize

__all__ = ["main", "run_serving"]

BATCHES = (1, 8, 64, 256)
PROMPT_TOKENS = 6  # the hook's hidden states: [N, 6, H], decided at the last position
NOT_MEASURED_GPU = "not measured (no GPU lent)"
PER_ROW_GROWTH_MAX = (
    1.10  # per-row cost at a batch may exceed the previous batch's by this factor (noise)
)


def _time(fn: Callable[[], Any], pre: Callable[[], Any], calls: int) -> list[float]:
    out = []
    gc_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(calls):
            pre()
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    finally:
        if gc_on:
            gc.enable()
    return out


def _us(ts: list[float], rows: int = 1) -> dict[str, Any]:
    return summarize([t * 1e6 / rows for t in ts], "us")


def _runtime_path(entry: Any, hidden: Any, fallbacks: list[int]) -> Callable[[], Any]:
    """The runtime's decision of a CPU prefill at one block, from the hook's hidden states
    ``[N, T, H]`` (every row decided at its last position) to each row's float32 delta and
    gate: a lone row by the one-row lane (``decide_host_row``), more rows by the batch path
    (``_host_rows``, ``TorchDecider.decide_host``, the delta table's gather)."""
    from asa_format.runtime.steering import _host_rows, _host_view, decide_host_row

    n, t = int(hidden.shape[0]), int(hidden.shape[1])
    positions = [t - 1] * n
    decider, table = entry.decider, entry.host_table()

    def batch() -> Any:
        got = decider.decide_host(_host_rows(hidden, positions))
        return table[got.domain_index, got.gate.astype(np.intp) + 1], got.gate != 0

    def lone() -> Any:
        got = decide_host_row(entry, *_host_view(hidden, 0, t - 1))
        if got is None:  # near a boundary: the runtime's batch path decides it
            fallbacks[0] += 1
            return batch()
        return got

    return lone if n == 1 else batch


def _in_hook(
    bundle: Any, entry: Any, decider: Any, ops_decider: Any, pool: np.ndarray, quick: bool
) -> dict[str, Any]:
    import torch

    a = torch.randn(64, pool.shape[1])
    w = torch.randn(pool.shape[1], pool.shape[1])

    def hook_matmul() -> None:
        torch.mm(a, w)

    out: dict[str, Any] = {}
    fallbacks = [0]
    plan = entry.decider.plan
    out["lane"] = "C" if plan._lane is not None else "Python"
    row = np.ascontiguousarray(pool[:1])
    floor_ts: list[float] = []
    for n in BATCHES:
        rows = torch.from_numpy(np.ascontiguousarray(np.resize(pool, (n, pool.shape[1]))))
        hidden = rows[:, None, :].expand(n, PROMPT_TOKENS, pool.shape[1]).contiguous()
        calls = (20 if quick else 300) if n <= 64 else (10 if quick else 120)
        runtime_path = _runtime_path(entry, hidden, fallbacks)

        def numpy_path(rows: Any = rows) -> Any:
            return bundle.decide(rows.to(torch.float32).cpu().numpy())  # the runtime's host copy

        def torch_path(rows: Any = rows) -> Any:
            return decider.decide(rows)  # records are not built in the hook

        def torch_ops_path(rows: Any = rows) -> Any:
            return ops_decider.decide(rows)

        paths: dict[str, tuple[Callable[[], Any], int]] = {
            "runtime": (runtime_path, calls),
            "numpy": (numpy_path, calls),
            "torch": (torch_path, calls),
            "torch_ops": (torch_ops_path, max(4, calls // 8)),  # slow on a busy CPU: fewer calls
        }
        if n == 1:  # the floor, in the same rounds: one 2048-element NumPy operation
            paths["floor"] = (lambda: np.add(row, 1.0), calls)
            paths["python_lane"] = (runtime_path, calls)  # the same, the C lane switched off
        res: dict[str, Any] = {name: [] for name in paths}
        for fn, _ in paths.values():
            fn()  # warm
        rounds = 4 if n > 1 else 8
        for _ in range(rounds):  # alternate the paths in rounds
            for name, (fn, k) in paths.items():
                with python_lane(plan, name == "python_lane"):
                    res[name] += _time(fn, hook_matmul, max(1, k // rounds))
        if n == 1:
            floor_ts = res.pop("floor")
            out["python_lane_1"] = _us(res.pop("python_lane"))
        res = {name: {"call_us": _us(ts), "per_row_us": _us(ts, n)} for name, ts in res.items()}
        out[str(n)] = res
    floor_calls = 20 if quick else 300

    def nothing() -> None:
        return None

    out["floor"] = {
        "python_call_us": _us(_time(nothing, hook_matmul, floor_calls)),
        "numpy_op_us": _us(floor_ts),
    }
    out["lone_row_fallbacks"] = fallbacks[0]
    return out


def _busy(bundle: Any, legacy: Any, pool: np.ndarray, quick: bool) -> dict[str, Any]:
    import torch

    from asa_format.graphs import fastpath

    h64 = np.ascontiguousarray(np.resize(pool, (64, pool.shape[1])))
    na = np.random.default_rng(0).standard_normal((256, 1024))
    nb = np.random.default_rng(1).standard_normal((1024, 1024))
    ta, tb = torch.randn(256, 2048), torch.randn(2048, 2048)
    conditions: dict[str, Callable[[], Any]] = {
        "alone": lambda: None,
        "after_numpy_blas": lambda: na @ nb,
        "after_torch": lambda: torch.mm(ta, tb),
    }

    def unblocked() -> Any:
        saved = fastpath.SINGLE_THREAD_MNK
        fastpath.SINGLE_THREAD_MNK = 1 << 62  # one multi-threaded product, as before the row blocks
        try:
            return bundle.decide(h64)
        finally:
            fastpath.SINGLE_THREAD_MNK = saved

    methods: dict[str, tuple[Callable[[], Any], int]] = {
        "ours": (lambda: bundle.decide(h64), 10 if quick else 200),
        "ours_unblocked": (unblocked, 5 if quick else 60),
        "legacy": (lambda: legacy.batch(h64), 2 if quick else 20),
    }
    out: dict[str, Any] = {}
    for cname, pre in conditions.items():
        res: dict[str, Any] = {}
        for mname, (fn, calls) in methods.items():
            fn()
            res[mname] = _us(_time(fn, pre, calls))
        res["legacy_over_ours"] = res["legacy"]["median"] / res["ours"]["median"]
        out[cname] = res
    return out


def _mixed(work: Path, hidden: int, quick: bool) -> dict[str, Any]:
    import torch

    import asa_format
    from asa_format import constants as C
    from asa_format.runtime.flat import steer_flat
    from asa_format.testing import make_test_contents

    bundles = []
    for k in range(4):
        contents = make_test_contents(
            hidden_size=hidden,
            domains=("a", "b", "c", "d"),
            policy=C.POLICY_GENERATED_TOKENS,
            probe_scale=2.0,
            seed=k,
        )
        bundles.append(asa_format.load_bundle(asa_format.save_bundle(contents, work / f"mixed{k}")))
    registry = {b.root_digest: b for b in bundles}
    digests = list(registry)
    seqs, chunk = 64, 8
    rng = np.random.default_rng(3)
    prefill = torch.from_numpy(rng.standard_normal((seqs * chunk, hidden)).astype(np.float32)).to(
        torch.bfloat16
    )
    decode = prefill[:seqs].clone()
    ids = [f"r{i}" for i in range(seqs)]
    calls = 5 if quick else 60
    runs: dict[int, tuple[Callable[[], Any], Callable[[], Any]]] = {}
    for k in (1, 2, 4):
        selections = [digests[i % k] for i in range(seqs)]

        def run_prefill(selections: list[str] = selections) -> dict[str, Any]:
            state: dict[str, Any] = {}
            steer_flat(
                prefill,
                np.arange(seqs + 1) * chunk,
                [24] * seqs,
                [32] * seqs,
                selections,
                registry,
                None,
                state,
                ids,
            )
            return state

        state = run_prefill()

        def run_decode(selections: list[str] = selections, state: dict[str, Any] = state) -> None:
            steer_flat(
                decode,
                np.arange(seqs + 1),
                [40] * seqs,
                [32] * seqs,
                selections,
                registry,
                None,
                state,
                ids,
            )

        run_decode()
        runs[k] = (run_prefill, run_decode)
    times: dict[int, tuple[list[float], list[float]]] = {k: ([], []) for k in runs}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the simulation's own cost, not waits for a busy pool
    try:
        for _ in range(5):  # alternate the bundle counts in rounds
            for k, (pre_fn, dec_fn) in runs.items():
                times[k][0].extend(_time(pre_fn, lambda: None, max(1, calls // 5)))
                times[k][1].extend(_time(dec_fn, lambda: None, max(1, calls // 5)))
    finally:
        torch.set_num_threads(threads)
    out = {str(k): {"prefill_us": _us(p), "decode_us": _us(d)} for k, (p, d) in times.items()}
    return {
        "sequences": seqs,
        "chunk": chunk,
        "hidden": hidden,
        "dtype": "bfloat16",
        "torch_threads": 1,
        "bundles": out,
    }


def run_serving(quick: bool, work: Path) -> dict[str, Any]:
    import torch

    from asa_format import load_bundle
    from asa_format.runtime.program import Program
    from asa_format.runtime.steering import Entry
    from asa_format.runtime.torch_decide import TorchDecider

    from .decision import LegacyHook
    from .fixtures import TAU, fit_pipeline, write_bundle, write_legacy

    torch.set_num_threads(2)
    hidden = 64 if quick else 2048
    pipe = fit_pipeline(hidden, 4, 40 if quick else 120, 256)
    bundle = load_bundle(write_bundle(pipe, work / "bundle", 1, 2))
    legacy = LegacyHook(write_legacy(pipe, work / "legacy", 1), TAU)
    decider = TorchDecider.for_bundle(bundle)
    ops_decider = TorchDecider.for_bundle(bundle, host_numpy=False)
    if decider is None or ops_decider is None:
        raise RuntimeError("the torch decision was not proven on the benchmark bundle")
    entry = Entry(
        name="bench", bundle=bundle, program=Program(bundle), hidden_size=hidden, decider=decider
    )
    doc: dict[str, Any] = {
        "machine": machine_info(),
        "quick": quick,
        "hidden": hidden,
        "domains": 4,
        "torch_threads": torch.get_num_threads(),
        "backend": bundle.decision_backend,
        "gpu": NOT_MEASURED_GPU,
    }
    start = time.perf_counter()
    doc["in_hook"] = _in_hook(bundle, entry, decider, ops_decider, pipe.held_out, quick)
    doc["busy"] = _busy(bundle, legacy, pipe.held_out, quick)
    doc["mixed"] = _mixed(work, hidden, quick)
    from .mixed_hooks import run_lone_row, run_mixed_hooks

    doc["mixed_hooks"] = run_mixed_hooks(work, quick)
    doc["lone_row"] = run_lone_row(work, quick)
    doc["elapsed_s"] = time.perf_counter() - start
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    doc["targets"] = _targets(doc)
    return doc


def _targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for cond in ("after_numpy_blas", "after_torch"):
        ratio = doc["busy"][cond]["legacy_over_ours"]
        out.append(
            {
                "name": f"batch 64, {cond}: legacy / ours",
                "value": ratio,
                "display": f"{ratio:.0f}x",
                "target": ">= 50x",
                "met": ratio >= 50.0,
            }
        )
    floor = doc["in_hook"]["floor"]["numpy_op_us"]["median"]
    one = doc["in_hook"]["1"]["runtime"]["per_row_us"]["median"]
    out.append(
        {
            "name": "in-hook decision at batch 1 (the runtime: gather + one-row lane), after a 2-thread torch product",
            "value": one,
            "display": f"{one:.0f} us (floor: one NumPy op {floor:.0f} us, ratio {one / floor:.1f})",
            "target": "<= 60 us",
            "met": one <= 60.0,
        }
    )
    lone = doc["lone_row"]
    real = lone["in_hook_us"]["median"]
    real_floor = lone["numpy_op_floor_us"]["median"]
    out.append(
        {
            "name": "in-hook decision at batch 1, inside a real forward pass (Llama, 2 torch threads)",
            "value": real,
            "display": f"{real:.0f} us (floor: one NumPy op in the same hook {real_floor:.0f} us, ratio {real / real_floor:.1f})",
            "target": "<= 60 us",
            "met": real <= 60.0,
        }
    )
    for cond in ("idle", "busy"):
        for key, what in (
            ("mixed_over_uniform", "wall time"),
            ("cpu_mixed_over_uniform", "CPU time"),
        ):
            ratio = doc["mixed_hooks"][cond][key]
            out.append(
                {
                    "name": f"hook cost, 64 rows on 3 bundles / on 1 bundle ({cond}, {what})",
                    "value": ratio,
                    "display": f"{ratio:.2f}x",
                    "target": "<= 1.5x",
                    "met": ratio <= 1.5,
                }
            )
    for path in ("runtime", "torch"):
        per_row = [doc["in_hook"][str(n)][path]["per_row_us"]["median"] for n in BATCHES]
        growth = max(b / a for a, b in itertools.pairwise(per_row))
        out.append(
            {
                "name": f"in-hook per-row cost ({path}) does not grow with batch size",
                "value": growth,
                "display": " / ".join(f"{v:.1f}" for v in per_row)
                + f" us (largest step x{growth:.2f})",
                "target": f"each step <= x{PER_ROW_GROWTH_MAX:.2f}",
                "met": growth <= PER_ROW_GROWTH_MAX,
            }
        )
    return out


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"Bundle: hidden {doc['hidden']}, {doc['domains']} domains, decision backend {doc['backend']}; torch {doc['torch_threads']} threads; "
        f"CPU {m['cpu_model']} ({m['cores_available']} cores available); load average at start "
        f"{' / '.join(f'{x:.2f}' for x in m.get('load_average_start') or [])}; {'quick (smoke test)' if doc['quick'] else 'full'} run, "
        f"{doc['elapsed_s']:.0f} s. GPU figures: {doc['gpu']}.",
        "",
        "## Targets",
        "",
        "| measurement | value | target | status |",
        "| --- | --- | --- | --- |",
    ]
    for t in doc["targets"]:
        lines.append(
            f"| {t['name']} | {t['display']} | {t['target']} | {'met' if t['met'] else '**missed**'} |"
        )
    lines += [
        "",
        "## In-hook decision cost (after a 2-thread torch matmul), CPU",
        "",
        "| batch | the runtime's host decision: µs per call | µs per row | `Bundle.decide` on a host copy: µs per call | µs per row | `TorchDecider` (CPU rows in place): µs per call | µs per row | `TorchDecider`, torch ops: µs per call | µs per row |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in BATCHES:
        r = doc["in_hook"][str(n)]
        lines.append(
            f"| {n} | "
            + " | ".join(
                f"{r[k]['call_us']['median']:.0f} | {r[k]['per_row_us']['median']:.1f}"
                for k in ("runtime", "numpy", "torch", "torch_ops")
            )
            + " |"
        )
    fl = doc["in_hook"]["floor"]
    lines += [
        "",
        f"Floor after the same product (the NumPy operation timed in the batch-1 rounds): a no-op Python call {fl['python_call_us']['median']:.1f} µs, one "
        f"2048-element NumPy operation {fl['numpy_op_us']['median']:.1f} µs (medians).",
    ]
    lone = doc["lone_row"]
    lines += [
        "",
        "The runtime's host decision takes the hook's hidden states `[N, 6, H]` to each row's float32 delta and gate: "
        "a lone row through the one-row lane (`steering._host_view`, `steering.decide_host_row`: "
        f"here the {doc['in_hook']['lane']} lane, `FastPlan.decide_gated`), more rows through the batch path (`_host_rows`, "
        "`TorchDecider.decide_host`, the delta table's gather). Rows the lane declined (near a boundary): "
        f"{doc['in_hook']['lone_row_fallbacks']}."
        + (
            f" The same at batch 1 with the C lane switched off (the Python lane, in the same rounds): "
            f"{doc['in_hook']['python_lane_1']['median']:.0f} µs per call."
            if doc["in_hook"].get("python_lane_1")
            else ""
        ),
        "",
        f"Inside a real forward pass (random-weight Llama, hidden {lone['hidden']}, a prompt of {lone['prompt_tokens']} "
        f"tokens alone, {lone['torch_threads']} torch threads; {lone['prefills']} prefills, {lone['decided_by_the_lane']} "
        "decided by the lane): the row's gather "
        f"{lone['gather_us']['median']:.1f} µs, its decision {lone['decision_us']['median']:.1f} µs, together "
        f"{lone['in_hook_us']['median']:.1f} µs (p10 {lone['in_hook_us']['p10']:.1f}, p90 {lone['in_hook_us']['p90']:.1f}); "
        f"one {lone['hidden']}-element NumPy operation in a hook at the same block: {lone['numpy_op_floor_us']['median']:.1f} µs."
        + (
            f" With the C lane switched off (the Python lane, in alternate prefills of the same rounds): "
            f"{lone['python_lane_us']['median']:.1f} µs (p10 {lone['python_lane_us']['p10']:.1f}, p90 {lone['python_lane_us']['p90']:.1f})."
            if lone.get("python_lane_us")
            else ""
        ),
    ]
    lines += [
        "",
        "Medians. The torch-ops column is the accelerator path run on the CPU: each operation above torch's "
        "parallel grain enters its thread pool, which on a busy CPU can wait milliseconds; on the CPU the "
        "decider therefore uses the NumPy plan on the rows in place (middle column).",
    ]
    lines += [
        "",
        f"On a GPU (no host copy, no synchronisation): {doc['gpu']}.",
        "",
        "## Batch 64 in a busy process (median µs per call)",
        "",
        "| condition | `Bundle.decide` | same, one multi-threaded product | legacy scikit-learn | legacy / ours |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cond, label in (
        ("alone", "alone"),
        ("after_numpy_blas", "after NumPy's 2-thread BLAS product"),
        ("after_torch", "after a 2-thread torch product"),
    ):
        r = doc["busy"][cond]
        lines.append(
            f"| {label} | {r['ours']['median']:.0f} | {r['ours_unblocked']['median']:.0f} | {r['legacy']['median']:.0f} | {r['legacy_over_ours']:.0f}x |"
        )
    mx = doc["mixed"]
    lines += [
        "",
        f"## Mixed-bundle batches (`runtime.flat.steer_flat`, {mx['sequences']} sequences, hidden {mx['hidden']}, {mx['dtype']}, CPU, "
        f"{mx['torch_threads']} torch thread)",
        "",
        f"| bundles in the batch | prefill step ({mx['chunk']} tokens per sequence, 64 decisions): µs | decode step (1 token per sequence): µs |",
        "| --- | --- | --- |",
    ]
    for k, r in mx["bundles"].items():
        lines.append(f"| {k} | {r['prefill_us']['median']:.0f} | {r['decode_us']['median']:.0f} |")
    mh = doc["mixed_hooks"]
    lines += [
        "",
        f"## Mixed batches through `attach` (hook time per prefill of {mh['rows']} prompts x "
        f"{mh['prompt_tokens']} tokens, Llama with hidden {mh['hidden']}, 3 blocks)",
        "",
        "| machine | all rows on one bundle: µs (p10 .. p90) | rows on 3 bundles, 2 blocks: µs (p10 .. p90) | mixed / uniform | the same in the hooks' CPU time: µs, µs, ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cond, label in (("idle", "idle"), ("busy", "both cores busy (2 spinning processes)")):
        r = mh[cond]
        u, m = r["uniform"], r["mixed"]
        cu, cm = r["cpu"]["uniform"], r["cpu"]["mixed"]
        lines.append(
            f"| {label} | {u['median']:.0f} ({u['p10']:.0f} .. {u['p90']:.0f}) | "
            f"{m['median']:.0f} ({m['p10']:.0f} .. {m['p90']:.0f}) | {r['mixed_over_uniform']:.2f}x | "
            f"{cu['median']:.0f}, {cm['median']:.0f}, {r['cpu_mixed_over_uniform']:.2f}x |"
        )
    lines += [
        "",
        "Wall time counts the time the scheduler gives the spinning processes while a hook runs; CPU time "
        "(`time.thread_time`, the hooks' own thread: on the CPU they never enter torch's thread pool) "
        "counts the work the hooks do.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks serving", description="Decision costs as a server sees them."
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and few calls (smoke test); numbers are meaningless",
    )
    add_output_options(p, "serving.json and serving.md")
    args = p.parse_args(argv)
    out = output_dir(p, args, "serving")
    with tempfile.TemporaryDirectory(prefix="asa-bench-serving-") as tmp:
        doc = run_serving(args.quick, Path(tmp))
    (out / "serving.json").write_text(
        json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "serving.md").write_text(markdown(doc), encoding="utf-8")
    print(f"[benchmarks] wrote {out / 'serving.json'} and {out / 'serving.md'}", file=sys.stderr)
    for t in doc["targets"]:
        print(
            f"[benchmarks]   [{'met' if t['met'] else 'MISSED':6}] {t['name']}: {t['display']} (target {t['target']})",
            file=sys.stderr,
        )
    return 0
