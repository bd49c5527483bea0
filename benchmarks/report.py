"""``results.md``: the Markdown tables quoted by docs/performance.md."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown"]


def _status(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def _spread(s: dict[str, Any], fmt: str) -> tuple[str, str]:
    if not s or not s.get("n"):
        return "n/a", "n/a"
    return fmt.format(s["median"]), f"{fmt.format(s['p10'])} .. {fmt.format(s['p90'])}"


def _machine(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    v = m["versions"]
    lines = [
        f"- CPU: {m['cpu_model']}, {m['cores']} cores ({m['cores_available']} available), {m['memory_gib']} GiB RAM",
        f"- Python {m['python']}; numpy {v.get('numpy')}, onnxruntime {v.get('onnxruntime')}, onnx {v.get('onnx')}, "
        f"torch {v.get('torch')}, transformers {v.get('transformers')}, scikit-learn {v.get('scikit-learn')}, "
        f"skl2onnx {v.get('skl2onnx')}, asa-format {v.get('asa-format')}",
        f"- date {m['date']}; platform {m['platform']}; commit {m.get('git_commit')}",
        f"- load average (1/5/15 min) at start {_loads(m.get('load_average_start'))}, at end {_loads(m.get('load_average_end'))}",
        f"- mode: {'quick (tiny sizes, smoke test only)' if doc['settings']['quick'] else 'full'}; "
        f"repeats {doc['settings']['repeats']}; total {doc.get('elapsed_s', 0):.0f} s",
    ]
    return lines


def _loads(values: Any) -> str:
    return "n/a" if not values else " / ".join(f"{x:.2f}" for x in values)


def _targets(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| section | measurement | value | target | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in doc["targets"]:
        lines.append(
            f"| {t['section']} | {t['name']} | {t['display']} | {t['target']} | {_status(t['met'])} |"
        )
    return lines


def _decision(d: dict[str, Any]) -> list[str]:
    names = {
        "ours": f"`Bundle.decide` (default: {d['backend']['ours']})",
        "ours_ort": f"`Bundle.decide`, `fast=False` ({d['backend']['ours_ort']})",
        "legacy": "legacy scikit-learn, one call chain per row",
        "floor": "fused NumPy floor (by hand)",
    }
    lines = [
        f"Bundle: hidden {d['hidden']}, {d['domains']} domains, {d['bundle_bytes'] / 1e3:.0f} kB. "
        f"Batch 1: per-call latency over {d['batch1_us']['ours']['n']} calls per path; batch {d['batch']}: "
        f"{d['batch_rows_per_s']['ours']['n']} calls per path. Same held-out inputs for every path.",
        "",
        f"| path | batch 1 median (µs) | batch 1 p10 .. p90 (µs) | batch 1 min (µs) | batch {d['batch']} rows/s (median) | batch {d['batch']} rows/s p10 .. p90 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in names.items():
        m1, s1 = _spread(d["batch1_us"][key], "{:.1f}")
        mb, sb = _spread(d["batch_rows_per_s"][key], "{:,.0f}")
        lines.append(f"| {label} | {m1} | {s1} | {d['batch1_us'][key]['min']:.1f} | {mb} | {sb} |")
    blas1 = d.get("batch_rows_per_s_blas1") or {}
    if blas1:
        threads = (
            ", ".join(f"{t['api']} {t['threads']} threads" for t in d.get("blas_threads", []))
            or "unknown"
        )
        lines += [
            "",
            f"Batch {d['batch']} with the BLAS pool limited to one thread (default here: {threads}): rows/s "
            + ", ".join(
                f"{k} {blas1[k]['median']:,.0f}"
                for k in ("ours", "ours_ort", "legacy", "floor")
                if k in blas1
            )
            + (
                f"; ours / legacy {blas1['ours']['median'] / blas1['legacy']['median']:.0f}x."
                if "ours" in blas1 and "legacy" in blas1
                else "."
            ),
        ]
    r = d["ratios"]
    a = d["agreement"]
    p = d.get("protocol")
    if p:
        lines += [
            "",
            f"Interleaved protocol ({p['blocks']} blocks, each the median of its calls; ratio = median "
            "of the per-block ratios, min .. max): "
            + "; ".join(
                f"{label} {p[key]['median']:.1f}x ({p[key]['min']:.1f} .. {p[key]['max']:.1f})"
                for key, label in (
                    ("legacy_over_ours_batch1", "legacy / ours at batch 1"),
                    ("legacy_over_ours_batch", f"legacy / ours at batch {d['batch']}"),
                    ("legacy_over_ours_ort_batch1", "legacy / onnxruntime at batch 1"),
                    ("legacy_over_ours_ort_batch", f"legacy / onnxruntime at batch {d['batch']}"),
                    ("ours_over_floor_batch1", "ours / floor at batch 1"),
                    ("ours_over_floor_batch", f"ours / floor at batch {d['batch']}"),
                )
                if key in p
            )
            + ".",
        ]
    lines += [
        "",
        f"Ratios (medians): legacy / ours {r['legacy_over_ours_batch1']:.1f}x at batch 1; ours / floor "
        f"{r['ours_over_floor_batch1']:.2f}x; onnxruntime / ours {r['ours_ort_over_ours_batch1']:.2f}x; "
        f"rows/s at batch {d['batch']}: ours / legacy {r['ours_over_legacy_rows_per_s_batch']:.0f}x, "
        f"onnxruntime / legacy {r['ours_ort_over_legacy_rows_per_s_batch']:.0f}x, floor / ours "
        f"{r['floor_over_ours_rows_per_s_batch']:.2f}x.",
        "",
        f"Agreement on the {a['rows']} inputs ({a['domains_seen']} domains routed, legacy gates -1/0/+1: "
        f"{a['gate_counts']['-1']}/{a['gate_counts']['0']}/{a['gate_counts']['1']}): ours vs legacy domain "
        f"{a['domain_ours_vs_legacy']:.2%}, gate {a['gate_ours_vs_legacy']:.2%}, max |dp| {a['max_dp_ours_vs_legacy']:.1e}; "
        f"floor vs legacy domain {a['domain_floor_vs_legacy']:.2%}, gate {a['gate_floor_vs_legacy']:.2%}.",
    ]
    return lines


def _generation(g: dict[str, Any]) -> list[str]:
    m = g["model"]
    lines = [
        f"Random-weight `{m['config']}`: hidden {m['hidden']}, {m['layers']} layers, intermediate {m['intermediate']}, "
        f"vocab {m['vocab']}, {m['parameters'] / 1e6:.0f} M parameters, {m['dtype']}, CPU, {g['threads']} torch threads; "
        f"prompt {g['prompt_tokens']} tokens, {g['new_tokens']} new tokens, greedy, batch 1; {g['pairs']} interleaved pairs.",
        "",
        "| run | median (s) | p10 .. p90 (s) |",
        "| --- | --- | --- |",
    ]
    for key, label in (("attached_s", "bundle attached"), ("detached_s", "not attached")):
        med, sp = _spread(g[key], "{:.3f}")
        lines.append(f"| {label} | {med} | {sp} |")
    rp = g["ratio_per_pair"]
    att = g["attach_call_ms"]
    lines += [
        "",
        f"Attached / detached: median of paired ratios {g['ratio']:.3f} (p10 .. p90 {rp['p10']:.3f} .. {rp['p90']:.3f}; "
        f"95% bootstrap interval of the median {g['ratio_ci95'][0]:.3f} .. {g['ratio_ci95'][1]:.3f}); "
        f"ratio of medians {g['ratio_of_medians']:.3f}. `attach()` itself (not in the timed region): "
        f"{att['median']:.2f} ms median. Decision on the prompt: {_decision_text(g.get('decision'))}.",
    ]
    hs = g.get("hook_time_share")
    if hs:
        lines += [
            "",
            f"Measured directly: the runtime's hooks (decision included) take {hs['in_hooks_ms_per_generation']['median']:.2f} ms "
            f"per generation, {hs['share']['median'] * 100:.3f}% of the steered generation's wall time "
            f"(p10 .. p90 {hs['share']['p10'] * 100:.3f}% .. {hs['share']['p90'] * 100:.3f}%), i.e. a ratio of "
            f"{hs['ratio_estimate']:.4f}. The paired end-to-end ratio above cannot resolve differences below its "
            "noise on a shared 2-core machine; the direct measurement can.",
        ]
    return lines


def _decision_text(rec: Any) -> str:
    if not rec or not rec.get("rows"):
        return "none recorded"
    r = rec["rows"][0]
    return f"domain {r['domain']}, p = {r['probability']:.3f}, gate {r['gate']:+d} at layer {rec['layer']}"


def _load(d: dict[str, Any]) -> list[str]:
    labels = {
        "load_bundle": "`load_bundle(path)` (verify, fast path checked)",
        "load_bundle_fast_false": "`load_bundle(path, fast=False)`",
        "legacy_pickle_load": "legacy: `pickle.load` x3 + `np.load` (no checks)",
    }
    lines = [
        f"In process, after imports, {d['repeats']} repeats; bundle {d['bundle_bytes'] / 1e3:.0f} kB, legacy {d['legacy_bytes'] / 1e3:.0f} kB.",
        "",
        "| load | median (ms) | p10 .. p90 (ms) |",
        "| --- | --- | --- |",
    ]
    for key, label in labels.items():
        med, sp = _spread(d["ms"][key], "{:.1f}")
        lines.append(f"| {label} | {med} | {sp} |")
    return lines


def _cli(c: dict[str, Any]) -> list[str]:
    lines = [
        "| process | median wall (s) | p10 .. p90 (s) | peak RSS (MB) |",
        "| --- | --- | --- | --- |",
    ]
    for key in ("validate", "convert", "import_asa_format_cli"):
        e = c[key]
        med, sp = _spread(e["wall_s"], "{:.2f}")
        lines.append(f"| `{e['command']}` | {med} | {sp} | {e['peak_rss_mb']['median']:.0f} |")
    vi = c["validate_imports"]
    lines += [
        "",
        f"`asa validate` imported (of torch, transformers, sklearn, skl2onnx, onnxruntime, onnx, ml_dtypes, scipy): {', '.join(vi['imported']) or 'none'}.",
    ]
    for key, what in (
        ("validate_cpu", "the README's example bundle"),
        ("validate_cpu_benchmark_bundle", "the benchmark bundle"),
    ):
        cpu = c.get(key)
        if cpu:
            lines.append(
                f"CPU time of `asa validate` on {what}: {cpu['validate_cpu_s']['median']:.3f} s against "
                f"{cpu['import_numpy_cpu_s']['median']:.3f} s for `python -c 'import numpy'` "
                f"({cpu['pairs']} interleaved pairs): {cpu['pair_ratio']['median']:.2f}x (median of the "
                f"pair ratios, {cpu['pair_ratio']['min']:.2f} .. {cpu['pair_ratio']['max']:.2f}); ratio "
                f"of medians {cpu['ratio_of_medians']:.2f}x."
            )
    for key in ("validate", "convert"):
        top = c["importtime_top"][key][:5]
        if top:
            lines.append(
                f"Slowest top-level imports of `{key}` (`-X importtime`, cumulative): "
                + ", ".join(f"{t['module']} {t['cumulative_ms']:.0f} ms" for t in top)
                + "."
            )
    return lines


def _scale(s: dict[str, Any]) -> list[str]:
    b = s["baseline"]
    lines = [
        f"`asa validate` as a process, {s['domains']} domains; baseline = the same command on a tiny bundle "
        f"({b['wall_s']['median']:.2f} s, {b['peak_rss_mb']['median']:.0f} MB peak RSS).",
        "",
        "| hidden | bundle (MB) | process wall median (s) | p10 .. p90 (s) | in-process `validate_bundle` median (ms) | peak RSS (MB) | RSS above baseline (MB) | above baseline / bundle size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in s["points"]:
        med, sp = _spread(p["wall_s"], "{:.2f}")
        lines.append(
            f"| {p['hidden']} | {p['bundle_mb']:.1f} | {med} | {sp} | {p['in_process_s']['median'] * 1e3:.0f} | "
            f"{p['peak_rss_mb']['median']:.0f} | {p['rss_above_baseline_mb']:.0f} | {p['rss_above_baseline_per_bundle_mb']:.2f}x |"
        )
    te, re_ = s.get("time_growth_exponent"), s.get("rss_growth_exponent")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines += [
        "",
        f"Log-log slope over hidden {', '.join(map(str, s['growth_points']))} (1.00 = linear): in-process time {fmt(te)}, peak RSS above baseline {fmt(re_)}.",
    ]
    fit = s.get("rss_fit")
    if fit:
        lines.append(
            f"Linear fit over the same points: peak RSS = {fit['intercept_mb']:.0f} MB + {fit['mb_per_bundle_mb']:.2f} x bundle size "
            f"(baseline {b['peak_rss_mb']['median']:.0f} MB; the part of the intercept above the baseline does not grow with hidden size)."
        )
    return lines


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# asa-format benchmarks", "", *_machine(doc), ""]
    if doc["settings"]["quick"]:
        lines += [
            "> Quick run: tiny sizes for a smoke test; the numbers say nothing about the targets.",
            "",
        ]
    noisy = doc["machine"].get("load_average_start") or [0.0]
    if noisy[0] > (doc["machine"].get("cores_available") or 1) * 0.5:
        lines += [
            "> The machine was busy with other processes during this run (see the load average): timings are noisy.",
            "",
        ]
    lines += ["## Targets", "", *_targets(doc), ""]
    sections = [
        ("decision", "1. Decision latency and throughput", _decision),
        ("generation", "2. Generation overhead", _generation),
        ("load", "3. Load time", _load),
        ("cli", "4. Command-line wall time", _cli),
        ("scale", "5. Scale: validate time and memory vs bundle size", _scale),
    ]
    for key, title, fn in sections:
        lines += [f"## {title}", ""]
        if key in doc.get("errors", {}):
            lines += [f"Failed: `{doc['errors'][key]}`", ""]
        elif key in doc:
            lines += [*fn(doc[key]), ""]
    return "\n".join(lines).rstrip() + "\n"
