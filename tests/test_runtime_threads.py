"""Eight threads generating with one attached model never see each other's decisions."""

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
from tiny_models import build_model, last_hidden_rows, no_hooks, separating_bundle, token_batch

pytestmark = pytest.mark.runtime

PROMPTS = {
    "search": [5, 6, 7, 8, 9],
    "math": [10, 11, 12, 13],
    "mixed": [5, 11, 7, 13, 20, 21],
    "short": [30, 31],
}
THREADS = 8
ROUNDS = 20


def _generate(model: Any, row: list[int]) -> tuple[list[int], np.ndarray]:
    ids, mask = token_batch([row])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
        )
    return out.sequences[0].tolist(), torch.stack(list(out.logits)).numpy()


def test_eight_threads_twenty_generations_each(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = build_model("llama", seed=3)
    layers = resolve_layers(model)
    centroids = {}
    for domain in ("search", "math"):
        ids, mask = token_batch([PROMPTS[domain]])
        centroids[domain] = last_hidden_rows(model, layers.layers[1], ids, mask)[0].astype(
            np.float64
        )
    bundle = load_bundle(
        separating_bundle(
            tmp_path / "b",
            centroids,
            layer=1,
            alpha=3.0,
            tau=0.7,
            policy=C.POLICY_ALL_TOKENS,
            model_type="llama",
            num_layers=len(layers),
        )
    )
    unsteered = {name: _generate(model, row) for name, row in PROMPTS.items()}

    # References: each prompt alone, steered, in this thread.
    with attach(model, bundle) as handle:
        alone: dict[str, tuple[list[int], np.ndarray, Any]] = {}
        for name, row in PROMPTS.items():
            tokens, logits = _generate(model, row)
            alone[name] = (tokens, logits, handle.last.rows[0])
    assert len({r[2].gate for r in alone.values()}) >= 2, "the mixture must exercise two gates"
    for name in ("search", "math"):  # steering changes the logits, so a mix-up would show
        assert not np.allclose(alone[name][1], unsteered[name][1])

    # Slow every forward a little so the threads interleave layer by layer.
    slow = layers.layers[0].register_forward_hook(lambda m, a, o: time.sleep(0.0005))
    seen: list[tuple[str, GenerationRecord]] = []
    results: list[tuple[str, str, list[int], np.ndarray]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    names = list(PROMPTS)
    barrier = threading.Barrier(THREADS)

    def on_decision(record: GenerationRecord) -> None:
        with lock:
            seen.append((threading.current_thread().name, record))

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(ROUNDS):
                name = names[(t + i) % len(names)]
                tokens, logits = _generate(model, PROMPTS[name])
                with lock:
                    results.append((threading.current_thread().name, name, tokens, logits))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        with attach(model, bundle, on_decision=on_decision) as handle:
            threads = [
                threading.Thread(target=worker, args=(t,), name=f"gen-{t}") for t in range(THREADS)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=300)
            records = list(handle.records)
    finally:
        slow.remove()
    assert not errors, errors
    assert len(results) == THREADS * ROUNDS
    for _, name, tokens, logits in results:
        assert tokens == alone[name][0], name
        np.testing.assert_allclose(logits, alone[name][1], rtol=1e-5, atol=1e-5)

    # every generation was recorded once, in its own thread, with its own decision
    assert len(seen) == THREADS * ROUNDS
    assert len(records) == THREADS * ROUNDS
    for thread_name, record in seen:
        assert record.thread == thread_name
    by_thread: dict[str, list[str]] = {}
    for thread_name, name, _, _ in results:
        by_thread.setdefault(thread_name, []).append(name)
    for thread_name, record in seen:
        name = by_thread[thread_name].pop(0)  # a thread's generations run in order
        assert record.domains == [alone[name][2].domain], (thread_name, name)
        assert record.gates == [alone[name][2].gate], (thread_name, name)
    assert no_hooks(model)
