"""Two threads generating with the same attached model never see each other's decisions."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asa_format import constants as C
from asa_format import load_bundle
from asa_format.runtime import GenerationRecord, attach, resolve_layers
from tiny_models import build_model, last_hidden_rows, separating_bundle, token_batch

pytestmark = pytest.mark.runtime

PROMPTS = {"search": [5, 6, 7, 8, 9], "math": [10, 11, 12, 13]}
ROUNDS = 3


def _generate(model: Any, row: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = token_batch([row])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
            pad_token_id=0, return_dict_in_generate=True, output_logits=True,
        )
    return out.sequences[0], torch.stack(list(out.logits))


def test_threads_are_isolated(tmp_path: Path) -> None:
    model = build_model("llama", seed=3)
    layers = resolve_layers(model)
    centroids = {}
    for domain, row in PROMPTS.items():
        ids, mask = token_batch([row])
        centroids[domain] = last_hidden_rows(model, layers.layers[1], ids, mask)[0].astype(np.float64)
    bundle = load_bundle(
        separating_bundle(tmp_path / "b", centroids, layer=1, alpha=3.0, tau=0.9,
                          policy=C.POLICY_ALL_TOKENS, model_type="llama", num_layers=3)
    )

    # References: each prompt alone, steered, in this thread.
    references = {}
    with attach(model, bundle) as handle:
        for domain, row in PROMPTS.items():
            references[domain] = _generate(model, row)
        assert [r.gates for r in handle.records] == [[1], [-1]]
    unsteered = {d: _generate(model, row) for d, row in PROMPTS.items()}
    for domain in PROMPTS:  # steering changes the logits, so a mix-up would show
        assert not torch.allclose(references[domain][1], unsteered[domain][1])

    # Slow down every forward a little so the two threads interleave layer by layer.
    slow = layers.layers[0].register_forward_hook(lambda m, a, o: time.sleep(0.002))
    seen: list[tuple[str, GenerationRecord]] = []
    lock = threading.Lock()

    def on_decision(record: GenerationRecord) -> None:
        with lock:
            seen.append((threading.current_thread().name, record))

    results: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {d: [] for d in PROMPTS}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(PROMPTS))

    def worker(domain: str) -> None:
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                results[domain].append(_generate(model, PROMPTS[domain]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        with attach(model, bundle, on_decision=on_decision):
            threads = [
                threading.Thread(target=worker, args=(d,), name=f"gen-{d}") for d in PROMPTS
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        slow.remove()
    assert not errors, errors

    for domain in PROMPTS:
        assert len(results[domain]) == ROUNDS
        for tokens, logits in results[domain]:
            assert torch.equal(tokens, references[domain][0])
            torch.testing.assert_close(logits, references[domain][1], atol=1e-5, rtol=1e-5)
    assert len(seen) == ROUNDS * len(PROMPTS)
    for thread_name, record in seen:
        domain = thread_name.removeprefix("gen-")
        assert record.thread == thread_name
        assert record.domains == [domain]
        assert record.gates == [1 if domain == "search" else -1]
