"""Mixed batches against uniform ones: the runtime's hook cost per prefill, idle and busy.

A random-weight Llama (hidden 2048 in a full run, 3 decoder blocks) gets one
handle with three bundles: two on block 1, one on block 2. A prefill of 64
prompts is steered either entirely by the first bundle ("uniform") or with
its rows spread over the three ("mixed", two blocks decide). The time inside
the runtime's hooks is measured by timing hooks registered just before and
just after ``attach`` on the same modules (hooks run in registration order),
so the measurement does not depend on how the runtime organises its hooks.
Both ways are timed alternately, first on an idle machine, then while two
busy processes keep both cores occupied.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .stats import summarize

__all__ = ["run_mixed_hooks"]

ROWS = 64
PROMPT = 6


class _Sandwich:
    """Accumulates the time between an 'enter' hook and a 'leave' hook on each module."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._t0: dict[int, float] = {}
        self.handles: list[Any] = []

    def enter(self, key: int) -> Callable[..., None]:
        def hook(*_: Any, **__: Any) -> None:
            self._t0[key] = time.perf_counter()

        return hook

    def leave(self, key: int) -> Callable[..., None]:
        def hook(*_: Any, **__: Any) -> None:
            t0 = self._t0.pop(key, None)
            if t0 is not None:
                self.spent += time.perf_counter() - t0

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _model(hidden: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=3,
        intermediate_size=max(64, hidden // 8),
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=128,
        max_position_embeddings=64,
    )
    model: Any = LlamaForCausalLM(config)
    return model.eval()


def _bundles(work: Path, hidden: int) -> dict[str, Any]:
    from asa_format import load_bundle
    from asa_format.testing import make_test_bundle

    out = {}
    for name, layer, seed in (("a", 1, 0), ("b", 1, 1), ("c", 2, 2)):
        path = make_test_bundle(
            work / f"mixed-hooks-{name}",
            hidden_size=hidden,
            layer=layer,
            num_layers=3,
            model_type="llama",
            domains=("w", "x", "y", "z"),
            probe_scale=2.0,
            seed=seed,
        )
        out[name] = load_bundle(path)
    return out


def _busy(n: int) -> list[subprocess.Popen[bytes]]:
    code = "import time\nend = time.time() + 600\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def run_mixed_hooks(work: Path, quick: bool) -> dict[str, Any]:
    import torch

    from asa_format.runtime import attach

    hidden = 64 if quick else 2048
    model = _model(hidden)
    bundles = _bundles(work, hidden)
    blocks = model.model.layers
    timer = _Sandwich()
    sites = [(model, True), (blocks[1], False), (blocks[2], False)]
    for k, (module, top) in enumerate(sites):  # before the runtime's hooks
        if top:
            timer.handles.append(module.register_forward_pre_hook(timer.enter(2 * k)))
        timer.handles.append(module.register_forward_hook(timer.enter(2 * k + 1)))
    handle = attach(model, bundles=bundles, default="a")
    for k, (module, top) in enumerate(sites):  # after them
        if top:
            timer.handles.append(module.register_forward_pre_hook(timer.leave(2 * k)))
        timer.handles.append(module.register_forward_hook(timer.leave(2 * k + 1), always_call=True))
    ids = torch.randint(3, 128, (ROWS, PROMPT))
    mask = torch.ones_like(ids)
    ways = {
        "uniform": ["a"] * ROWS,
        "mixed": [("a", "b", "c")[i % 3] for i in range(ROWS)],
    }
    rounds, per_round = (2, 1) if quick else (10, 3)

    def forward(selection: list[str]) -> float:
        timer.spent = 0.0
        with handle.select(selection), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        return timer.spent

    out: dict[str, Any] = {"rows": ROWS, "prompt_tokens": PROMPT, "hidden": hidden, "blocks": 3}
    try:
        for way in ways.values():  # warm: bundles, deciders, tables
            forward(way)
        before = handle.last
        for condition in ("idle", "busy"):
            procs = _busy(2) if condition == "busy" else []
            try:
                if procs:
                    time.sleep(0.5)
                times: dict[str, list[float]] = {w: [] for w in ways}
                pairs = []
                for _ in range(rounds):
                    medians = {}
                    for w, selection in ways.items():
                        ts = [forward(selection) * 1e6 for _ in range(per_round)]
                        times[w] += ts
                        medians[w] = sorted(ts)[len(ts) // 2]
                    pairs.append(medians["mixed"] / medians["uniform"])
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            res: dict[str, Any] = {w: summarize(ts, "us") for w, ts in times.items()}
            res["mixed_over_uniform"] = res["mixed"]["median"] / res["uniform"]["median"]
            res["round_ratios"] = summarize(pairs, "x")  # per alternation round: mixed / uniform
            out[condition] = res
        last = handle.last
        out["decided_every_prefill"] = last is not None and last is not before
        out["bundles_in_last_record"] = sorted({b for b in (last.bundles if last else []) if b})
    finally:
        handle.remove()
        timer.remove()
    return out
