"""Section 2: ``model.generate`` with the bundle attached vs not attached.

A random-weight LFM2-shaped model (transformers ``Lfm2Config``, float32,
CPU) generates a fixed number of tokens greedily at batch 1. Attached and
detached runs alternate (attached, detached, attached, ...) so that drift of
the machine cancels; the overhead is the median of the per-pair ratios.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .settings import Settings
from .stats import summarize

__all__ = ["bootstrap_median_ci", "build_model", "run_generation"]


def bootstrap_median_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    """A 95% percentile-bootstrap interval of the median of ``values``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    medians = np.median(arr[rng.integers(0, arr.size, size=(resamples, arr.size))], axis=1)
    return [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]


def build_model(settings: Settings) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    kinds = ["conv", "full_attention"]
    config = transformers.Lfm2Config(
        vocab_size=settings.gen_vocab,
        hidden_size=settings.gen_hidden,
        intermediate_size=settings.gen_intermediate,
        num_hidden_layers=settings.gen_layers,
        num_attention_heads=settings.gen_heads,
        num_key_value_heads=settings.gen_kv_heads,
        max_position_embeddings=256,
        layer_types=[kinds[i % 2] for i in range(settings.gen_layers)],
        block_auto_adjust_ff_dim=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model: Any = transformers.Lfm2ForCausalLM(config)
    return model.float().eval()


def run_generation(settings: Settings, bundle_path: Path) -> dict[str, Any]:
    import torch

    from asa_format import load_bundle
    from asa_format.runtime import attach

    torch.set_num_threads(settings.gen_threads)
    model = build_model(settings)
    bundle = load_bundle(bundle_path)
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, settings.gen_vocab, (1, settings.gen_prompt_tokens), generator=gen)
    kwargs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "max_new_tokens": settings.gen_new_tokens,
        "min_new_tokens": settings.gen_new_tokens,
        "do_sample": False,
        "pad_token_id": 0,
    }

    def generate() -> tuple[float, Any]:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(**kwargs)
            return time.perf_counter() - t0, out

    attach_s: list[float] = []
    records: list[Any] = []

    def attached() -> tuple[float, Any]:
        t0 = time.perf_counter()
        handle = attach(model, bundle)
        attach_s.append(time.perf_counter() - t0)
        try:
            seconds, out = generate()
            records.append(handle.last)
        finally:
            handle.remove()
        return seconds, out

    attached()  # warm-up, both ways
    generate()
    on: list[float] = []
    off: list[float] = []
    same_tokens = True
    steered_differs = False
    baseline = None
    for i in range(settings.gen_pairs):
        if i % 2 == 0:  # ABBA order: neither configuration always runs first
            t_on, out_on = attached()
            t_off, out_off = generate()
        else:
            t_off, out_off = generate()
            t_on, out_on = attached()
        on.append(t_on)
        off.append(t_off)
        if baseline is None:
            baseline = out_off
        same_tokens = same_tokens and bool(torch.equal(out_off, baseline))
        steered_differs = steered_differs or not torch.equal(out_on, out_off)
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    last = records[-1] if records else None
    hook_share = _hook_time_share(model, bundle, generate, settings.gen_pairs)
    return {
        "model": {
            "config": "Lfm2Config",
            "hidden": settings.gen_hidden,
            "layers": settings.gen_layers,
            "intermediate": settings.gen_intermediate,
            "vocab": settings.gen_vocab,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "dtype": "float32",
        },
        "threads": torch.get_num_threads(),
        "prompt_tokens": settings.gen_prompt_tokens,
        "new_tokens": settings.gen_new_tokens,
        "pairs": settings.gen_pairs,
        "attached_s": summarize(on, "s"),
        "detached_s": summarize(off, "s"),
        "ratio_per_pair": summarize(ratios, "x"),
        "ratio": summarize(ratios, "x")["median"],
        "ratio_ci95": bootstrap_median_ci(ratios),
        "ratio_of_medians": summarize(on, "s")["median"] / summarize(off, "s")["median"],
        "attach_call_ms": summarize([s * 1e3 for s in attach_s], "ms"),
        "hook_time_share": hook_share,
        "decision": None if last is None else last.to_dict(),
        "steered_output_differs": steered_differs,
        "detached_deterministic": same_tokens,
    }


def _hook_time_share(model: Any, bundle: Any, generate: Any, repeats: int) -> dict[str, Any]:
    """Time spent inside the runtime's hooks, as a share of the steered generation.

    This measures the overhead directly (wall time inside the three hooks,
    decision included) instead of as a difference of two noisy totals.
    """
    from asa_format.runtime import attach
    from asa_format.runtime import steering as steering_module

    spent: list[float] = []
    original = {
        name: getattr(steering_module.Steerer, name)
        for name in ("pre_forward", "post_forward", "on_block")
    }

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - t0)

        return wrapper

    shares: list[float] = []
    per_generation_ms: list[float] = []
    try:
        for name, fn in original.items():
            setattr(steering_module.Steerer, name, timed(fn))
        for _ in range(max(repeats // 2, 3)):
            spent.clear()
            handle = attach(model, bundle)
            try:
                total, _ = generate()
            finally:
                handle.remove()
            inside = sum(spent)
            shares.append(inside / total)
            per_generation_ms.append(inside * 1e3)
    finally:
        for name, fn in original.items():
            setattr(steering_module.Steerer, name, fn)
    return {
        "share": summarize(shares, "x"),
        "in_hooks_ms_per_generation": summarize(per_generation_ms, "ms"),
        "ratio_estimate": 1.0 + summarize(shares, "x")["median"],
    }
