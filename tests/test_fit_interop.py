"""``asa fit --kind always --method pca_center`` against repeng's own ``ControlVector.train``.

repeng 0.4 needs numpy<2, so this runs in its own virtualenv (``.ci/interop.sh``).
repeng reads block ``b`` as ``hidden_states[b + 1]``, which for the last
block is the output after the model's final norm; the comparison therefore
uses the blocks before the last one, where both read the block's output.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from asa_format import load_bundle
from asa_format.converters import fit

pytestmark = [pytest.mark.runtime]

ROOT = Path(__file__).resolve().parents[1]

PAIRS = [
    ("please call the tool for the weather in paris", "tell me a joke about cats"),
    ("search for the weather today please", "hello world how are you today"),
    ("call the calculator tool for me now", "tell me a joke about the weather"),
    ("add a meeting today please call the tool", "what is a cat"),
    ("what is the weather in paris today", "you are a helpful assistant"),
    ("call the translate tool for me please", "tell me about cats today"),
    ("search for a meeting time today", "hello world"),
    ("how much time is the meeting today", "a joke about the world please"),
]


def _tiny_model(directory: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", ROOT / "examples" / "make_tiny_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.make_tiny_model(directory))


def test_repeng_pca_center_matches_asa_fit(tmp_path: Path) -> None:
    repeng = pytest.importorskip("repeng", reason="repeng needs numpy<2: run .ci/interop.sh")
    torch.set_num_threads(1)
    model_dir = _tiny_model(tmp_path / "tiny")
    blocks = [1, 2, 3, 4]  # the tiny model has 6 blocks; not the last (see the module docstring)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"positive": p, "negative": n}) for p, n in PAIRS) + "\n")
    fit(
        model_dir,
        data,
        tmp_path / "bundle",
        kind="always",
        method="pca_center",
        blocks=blocks,
        threads=1,
    )
    ours = load_bundle(tmp_path / "bundle")["always"]

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    dataset = [repeng.DatasetEntry(positive=p, negative=n) for p, n in PAIRS]
    # batch_size=1: no padding, the hidden states of one prompt at a time, as asa fit reads them
    theirs = repeng.ControlVector.train(
        model, tokenizer, dataset, hidden_layers=blocks, method="pca_center", batch_size=1
    )
    assert sorted(theirs.directions) == blocks == list(ours.spec.blocks)
    for b in blocks:
        a = ours.directions[b].astype(np.float64)
        r = np.asarray(theirs.directions[b], dtype=np.float64)
        cos = float(a @ r / (np.linalg.norm(a) * np.linalg.norm(r)))
        assert cos >= 0.999, (b, cos)  # same sign too: both orient positives above negatives
