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

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .stats import summarize

__all__ = ["python_lane", "run_lone_row", "run_mixed_hooks"]

ROWS = 64
PROMPT = 6


class _Sandwich:
    """Accumulates the time between an 'enter' hook and a 'leave' hook on each module."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.cpu = 0.0  # the calling thread's CPU time (time the scheduler took away excluded)
        self._t0: dict[int, tuple[float, float]] = {}
        self.handles: list[Any] = []

    def enter(self, key: int) -> Callable[..., None]:
        def hook(*_: Any, **__: Any) -> None:
            self._t0[key] = (time.perf_counter(), time.thread_time())

        return hook

    def leave(self, key: int) -> Callable[..., None]:
        def hook(*_: Any, **__: Any) -> None:
            t0 = self._t0.pop(key, None)
            if t0 is not None:
                self.spent += time.perf_counter() - t0[0]
                self.cpu += time.thread_time() - t0[1]

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


def _bundles(work: Path, hidden: int, prefix: str = "mixed-hooks") -> dict[str, Any]:
    from asa_format import load_bundle
    from asa_format.testing import make_test_bundle

    out = {}
    for name, layer, seed in (("a", 1, 0), ("b", 1, 1), ("c", 2, 2)):
        path = make_test_bundle(
            work / f"{prefix}-{name}",
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


@contextlib.contextmanager
def python_lane(plan: Any, on: bool = True) -> Iterator[None]:
    """With ``on``, the plan's one-row decisions in Python (its C lane switched off)."""
    lane = plan._lane
    if on:
        plan._lane = None
    try:
        yield
    finally:
        plan._lane = lane


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

    cpu: dict[str, list[float]] = {}

    def forward(selection: list[str]) -> float:
        timer.spent = timer.cpu = 0.0
        with handle.select(selection), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        cpu.setdefault(_way(selection), []).append(timer.cpu * 1e6)
        return timer.spent

    def _way(selection: list[str]) -> str:
        return "uniform" if len(set(selection)) == 1 else "mixed"

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
                cpu.clear()
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
            res["cpu"] = {w: summarize(ts, "us") for w, ts in cpu.items()}
            res["cpu_mixed_over_uniform"] = (
                res["cpu"]["mixed"]["median"] / res["cpu"]["uniform"]["median"]
            )
            out[condition] = res
        last = handle.last
        out["decided_every_prefill"] = last is not None and last is not before
        out["bundles_in_last_record"] = sorted({b for b in (last.bundles if last else []) if b})
    finally:
        handle.remove()
        timer.remove()
    return out


def run_lone_row(work: Path, quick: bool) -> dict[str, Any]:
    """The decision of a prompt alone (batch 1) inside a real forward pass.

    The same model, one bundle on block 1, prefills of one prompt of ``PROMPT`` tokens.
    Timed inside the runtime's own hook: the row's gather (``steering._host_view``) and its
    decision (``steering.decide_host_row``), wrapped for the measurement. In other forward
    passes, alternating with those, the runtime is detached and a hook on the same block
    times one 2048-element NumPy operation: the floor of any array operation at that point
    (the layer's own work has just evicted the caches).
    """
    import numpy as np
    import torch

    from asa_format.runtime import attach, steering

    hidden = 64 if quick else 2048
    model = _model(hidden)
    bundle = _bundles(work, hidden, "lone-row")["a"]
    ids = torch.randint(3, 128, (1, PROMPT))
    mask = torch.ones_like(ids)
    spent = {"gather": 0.0, "decision": 0.0, "lane": 0.0}
    real_row, real_decide = steering._host_view, steering.decide_host_row

    def timed_row(*args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_row(*args)
        finally:
            spent["gather"] += time.perf_counter() - t0

    def timed_decide(*args: Any) -> Any:
        t0 = time.perf_counter()
        got = real_decide(*args)
        spent["decision"] += time.perf_counter() - t0
        spent["lane"] += got is not None
        return got

    row = np.ones(hidden, dtype=np.float32)
    floor: list[float] = []

    def floor_hook(*_: Any) -> None:
        t0 = time.perf_counter()
        np.add(row, 1.0)
        floor.append(time.perf_counter() - t0)

    rounds, per_round = (2, 2) if quick else (10, 20)
    gathers: list[float] = []
    decisions: list[float] = []
    python_times: list[float] = []  # gather + decision with the plan's C lane switched off
    lane = 0
    plan = bundle._plan
    c_lane = plan._lane
    handle = attach(model, bundle)
    steering._host_view, steering.decide_host_row = timed_row, timed_decide  # type: ignore[assignment]
    try:
        with torch.no_grad():
            for _ in range(2):  # warm
                model(input_ids=ids, attention_mask=mask)
            spent["lane"] = 0.0
            for _ in range(rounds):
                for _ in range(per_round):
                    spent["gather"] = spent["decision"] = 0.0
                    model(input_ids=ids, attention_mask=mask)
                    gathers.append(spent["gather"] * 1e6)
                    decisions.append(spent["decision"] * 1e6)
                if c_lane is not None:
                    counted = spent["lane"]  # decided_by_the_lane counts the C lane's prefills
                    with python_lane(plan):
                        for _ in range(per_round):
                            spent["gather"] = spent["decision"] = 0.0
                            model(input_ids=ids, attention_mask=mask)
                            python_times.append((spent["gather"] + spent["decision"]) * 1e6)
                    spent["lane"] = counted
                last = handle.last
                lane += int(last is not None and last.rows[0] is not None)
                handle.remove()
                floor_handle = model.model.layers[1].register_forward_hook(floor_hook)
                for _ in range(per_round):
                    model(input_ids=ids, attention_mask=mask)
                floor_handle.remove()
                handle = attach(model, bundle)
    finally:
        steering._host_view, steering.decide_host_row = real_row, real_decide
        handle.remove()
    both = [g + d for g, d in zip(gathers, decisions, strict=True)]
    return {
        "hidden": hidden,
        "prompt_tokens": PROMPT,
        "torch_threads": torch.get_num_threads(),
        "gather_us": summarize(gathers, "us"),
        "decision_us": summarize(decisions, "us"),
        "in_hook_us": summarize(both, "us"),
        "numpy_op_floor_us": summarize([t * 1e6 for t in floor], "us"),
        "lane": "C" if c_lane is not None else "Python",
        "python_lane_us": summarize(python_times, "us") if python_times else None,
        "decided_rounds": lane,
        "rounds": rounds,
        "prefills": len(decisions),
        "decided_by_the_lane": int(spent["lane"]),
    }
