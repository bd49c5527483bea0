"""``asa fit --kind always|condition`` against references computed here.

The hidden states are read in this file with its own hooks; the directions
(mean difference, the first principal component of pair-centred states by
NumPy's SVD) and the condition gate (the format's own rule,
``asa_format.format.interventions.condition_fires``) are recomputed from them.
repeng's ``ControlVector.train`` is compared in ``test_fit_interop.py``.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from asa_format import load_bundle
from asa_format.converters import fit
from asa_format.format.interventions import condition_fires, condition_similarity

pytestmark = [pytest.mark.runtime, pytest.mark.convert]

ROOT = Path(__file__).resolve().parents[1]

POSITIVE = [
    "please call the tool for the weather in paris",
    "search for the weather today please",
    "call the calculator tool for me",
    "add a meeting today please call the tool",
]
NEGATIVE = [
    "tell me a joke about cats",
    "hello world how are you today",
    "tell me a joke about the weather",
    "what is a cat",
]


def make_tiny_model(directory: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", ROOT / "examples" / "make_tiny_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.make_tiny_model(directory))


def pairs(seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for split, n in (("train", 24), ("valid", 16), ("test", 16)):
        for i in range(n):
            tail = rng.choice(["today", "please", "now"])
            out.append(
                {
                    "id": f"{split}{i}",
                    "positive": f"{rng.choice(POSITIVE)} {tail}",
                    "negative": f"{rng.choice(NEGATIVE)} {rng.choice(['today', 'please', 'now'])}",
                    "split": split,
                }
            )
    return out


def states(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(last, mean) per block: [blocks, rows, H], one forward pass per text."""
    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    last: list[list[np.ndarray]] = [[] for _ in model.model.layers]
    mean: list[list[np.ndarray]] = [[] for _ in model.model.layers]

    def keep(b: int) -> Any:
        def fn(module: Any, args: Any, out: Any) -> None:
            h = out[0] if isinstance(out, tuple) else out
            last[b].append(h[0, -1].float().numpy())
            mean[b].append(h[0].double().mean(0).numpy())

        return fn

    hooks = [blk.register_forward_hook(keep(b)) for b, blk in enumerate(model.model.layers)]
    try:
        for text in texts:
            with torch.no_grad():
                model(**tokenizer(text, return_tensors="pt"))
    finally:
        for h in hooks:
            h.remove()
    return np.array(last), np.array(mean)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("contrastive")
    model_dir = make_tiny_model(root / "tiny")
    rows = pairs()
    data = root / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    last_pos, _ = states(model_dir, [r["positive"] for r in train])
    last_neg, _ = states(model_dir, [r["negative"] for r in train])
    texts_valid = [t for r in valid for t in (r["positive"], r["negative"])]
    _, mean_valid = states(model_dir, texts_valid)
    return {
        "root": root,
        "model": model_dir,
        "data": data,
        "last_pos": last_pos,
        "last_neg": last_neg,
        "mean_valid": mean_valid,
        "valid_y": np.array([1, 0] * len(valid)),
    }


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_always_by_mean_difference(setup: dict[str, Any]) -> None:
    out = setup["root"] / "always"
    report = fit(
        setup["model"],
        setup["data"],
        out,
        kind="always",
        blocks=[1, 3, 5],
        coefficient=2.5,
        threads=1,
    )
    bundle = load_bundle(out)
    iv = bundle["always"]
    assert iv.kind == "always" and iv.spec.blocks == (1, 3, 5) and iv.spec.coefficient == 2.5
    for b in (1, 3, 5):
        want = setup["last_pos"][b].astype(np.float64).mean(0) - setup["last_neg"][b].astype(
            np.float64
        ).mean(0)
        got = iv.directions[b]
        assert _cos(got, want) >= 0.99999
        assert abs(float(np.linalg.norm(got)) / float(np.linalg.norm(want)) - 1) < 1e-5
    assert report.metadata["fit_split"] == "train" and report.metadata["method"] == "mean_diff"
    again = fit(
        setup["model"], setup["data"], setup["root"] / "always2", kind="always", blocks=[1, 3, 5],
        coefficient=2.5, threads=1, batch_size=1,
    )  # fmt: skip
    assert again.digest == report.digest


def test_always_by_pca_center(setup: dict[str, Any]) -> None:
    out = setup["root"] / "pca"
    fit(setup["model"], setup["data"], out, kind="always", method="pca_center", threads=1)
    iv = load_bundle(out)["always"]
    assert iv.spec.blocks == (1, 2, 3, 4, 5)  # every block but the first, as repeng's default
    for b in iv.spec.blocks:
        pos = setup["last_pos"][b].astype(np.float64)
        neg = setup["last_neg"][b].astype(np.float64)
        center = (pos + neg) / 2
        centred = np.concatenate([pos - center, neg - center])
        centred -= centred.mean(0)  # the centred pairs have mean zero already
        top = np.linalg.svd(centred, full_matrices=False)[2][0]
        if np.mean((pos - neg) @ top > 0) < 0.5:
            top = -top
        got = iv.directions[b]
        assert abs(float(np.linalg.norm(got)) - 1) < 1e-6
        assert _cos(got, top) >= 0.99999, b


def test_condition_gate_chosen_on_valid(setup: dict[str, Any]) -> None:
    out = setup["root"] / "cond"
    report = fit(setup["model"], setup["data"], out, kind="condition", threads=1)
    iv = load_bundle(out)["condition"]
    gate = iv.spec.condition
    assert gate is not None and gate.aggregate == "mean"
    (block,) = gate.blocks
    assert all(b >= block for b in iv.spec.blocks)
    vector = iv.conditions[block]
    sims = [condition_similarity(h, vector) for h in setup["mean_valid"][block]]
    fires = np.array([condition_fires([s], gate) for s in sims], dtype=int)
    y = setup["valid_y"]
    tp = int(((fires == 1) & (y == 1)).sum())
    f1 = 2 * tp / (int(fires.sum()) + int(y.sum()))
    assert abs(f1 - report.metadata["condition"]["valid"]["f1"]) < 1e-12
    # no threshold at this block does better on valid (brute force over every cut)
    values = sorted(set(sims))
    cuts = [
        values[0] - 1e-3,
        *((a + b) / 2 for a, b in itertools.pairwise(values)),
        values[-1] + 1e-3,
    ]
    best = 0.0
    for t in cuts:
        for pred in (np.array(sims) > t, np.array(sims) < t):
            tp = int((pred & (y == 1)).sum())
            best = max(best, 2 * tp / (int(pred.sum()) + int(y.sum())))
    assert f1 >= best - 1e-12
    # the condition vector is the unit mean difference of the train rows' mean states
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-6
    assert report.metadata["condition"]["test"] is not None


def test_labelled_prompts_fit_a_control_vector(setup: dict[str, Any]) -> None:
    out = setup["root"] / "labelled"
    report = fit(
        setup["model"], ROOT / "examples" / "fit_data", out, kind="always", blocks=[2], threads=1
    )
    assert (
        report.metadata["data"]["kind"] == "labelled"
        and report.metadata["rendering"]["mode"] == "chat"
    )
    assert load_bundle(out)["always"].spec.blocks == (2,)
