"""Several bundles on one handle, chosen per row: a mixed batch equals per-row runs."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import UsageError
from asa_format.runtime import attach, resolve_layers
from asa_format.testing import make_test_bundle
from tiny_models import build_model, first_tensor, token_batch

pytestmark = pytest.mark.runtime

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20, 21, 22]]
SELECTION: list[str | None] = ["up", None, "down", "late"]


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model("llama", seed=12)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multi")

    def make(name: str, layer: int, gate: int, policy: str, alpha: float) -> Any:
        return load_bundle(
            make_test_bundle(
                root / name,
                hidden_size=32,
                layer=layer,
                num_layers=3,
                model_type="llama",
                alpha=alpha,
                policy=policy,
                probe_scale=0.0,
                probe_bias=20.0 * gate,
                route_to="search",
            )
        )

    return {
        "up": make("up", 1, 1, C.POLICY_GENERATED_TOKENS, 3.0),
        "down": make("down", 1, -1, C.POLICY_ALL_TOKENS, 2.0),
        "late": make("late", 2, 1, C.POLICY_PREFILL_LAST_TOKEN, 4.0),  # another block
    }


def _generate(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
        )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, dim=1)


def _alone(model: Any, bundles: dict[str, Any], row: list[int], name: str | None) -> Any:
    ids, mask = token_batch([row])
    if name is None:
        return _generate(model, ids, mask)
    with attach(model, bundles[name]):
        return _generate(model, ids, mask)


def test_mixed_batch_equals_each_row_alone(model: Any, bundles: dict[str, Any]) -> None:
    expected = [
        _alone(model, bundles, row, name) for row, name in zip(PROMPTS, SELECTION, strict=True)
    ]
    ids, mask = token_batch(PROMPTS, side="left")
    with attach(model, bundles=bundles) as handle:
        with handle.select(SELECTION):
            tokens, logits = _generate(model, ids, mask)
        record = handle.last
    assert record is not None and record.bundles == SELECTION
    assert record.gates == [1, 0, -1, 1]
    for i, (exp_tokens, exp_logits) in enumerate(expected):
        assert torch.equal(tokens[i], exp_tokens[0]), f"row {i}"
        torch.testing.assert_close(logits[i], exp_logits[0], atol=1e-4, rtol=0)


def test_no_selection_means_the_default(model: Any, bundles: dict[str, Any]) -> None:
    ids, mask = token_batch(PROMPTS[:2], side="left")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    with attach(model, bundles=bundles) as handle, torch.no_grad():
        unsteered = model(input_ids=ids, attention_mask=mask).logits  # default=None: nothing
        assert torch.equal(unsteered, plain)
        assert handle.last is not None and handle.last.gates == [0, 0]
    with attach(model, bundles=bundles, default="up") as handle, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        assert handle.last is not None and handle.last.bundles == ["up", "up"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_rows_in_one_forward_with_padding(
    model: Any, bundles: dict[str, Any], side: str
) -> None:
    ids, mask = token_batch(PROMPTS, side=side)
    block = resolve_layers(model).layers[1]
    raw: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    h1 = block.register_forward_hook(lambda m, a, o: raw.append(first_tensor(o)))
    try:
        with attach(model, bundles=bundles) as handle:
            raw.clear()  # attach probes the block's output layout with one short forward
            h2 = block.register_forward_hook(lambda m, a, o: steered.append(first_tensor(o)))
            with handle.select(SELECTION), torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
            h2.remove()
    finally:
        h1.remove()
    diff = steered[0] - raw[0]
    real = mask.bool()
    lengths = [len(p) for p in PROMPTS]
    for i, name in enumerate(SELECTION):
        last = ids.shape[1] - 1 if side == "left" else lengths[i] - 1
        changed = diff[i].abs().sum(-1) > 0
        if name in (None, "late"):  # no bundle, or a bundle on another block
            assert not changed.any()
            continue
        bundle = bundles[name]
        gate = 1 if name == "up" else -1
        v = torch.from_numpy(np.array(bundle.steering_vector("search"), dtype=np.float32))
        delta = v * float(np.float32(gate * bundle.manifest.steering.alpha))
        want = real[i] if name == "down" else torch.arange(ids.shape[1]) == last
        assert torch.equal(changed, want), f"row {i}"
        torch.testing.assert_close(diff[i, last], delta, atol=1e-5, rtol=0)


def test_selection_is_per_thread_and_per_generation(model: Any, bundles: dict[str, Any]) -> None:
    names: list[str | None] = ["up", "down", "late", None] * 2
    expected = {n: _alone(model, bundles, PROMPTS[0], n)[0] for n in set(names)}
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(names))
    with attach(model, bundles=bundles) as handle:

        def work(k: int, name: str | None) -> None:
            try:
                ids, mask = token_batch([PROMPTS[0]])
                start.wait()
                for _ in range(3):
                    with handle.select(name):
                        tokens, _ = _generate(model, ids, mask)
                    results.setdefault(k, []).append(tokens)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k, n)) for k, n in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(handle.records) == 3 * len(names)
    for k, name in enumerate(names):
        for tokens in results[k]:
            assert torch.equal(tokens, expected[name]), f"thread {k} ({name})"


def test_bad_selection_is_refused(model: Any, bundles: dict[str, Any]) -> None:
    ids, mask = token_batch(PROMPTS[:3])
    with attach(model, bundles=bundles) as handle:
        with pytest.raises(UsageError, match="no bundle named 'nope'"):
            with handle.select(["up", "nope"]):
                pass
        with handle.select(["up", "down"]), pytest.raises(UsageError, match="2 entries"):
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
    with pytest.raises(UsageError):
        attach(model, bundles["up"], bundles=bundles)


def test_device_decisions_are_chosen_on_load_and_equal_host_ones(
    model: Any, bundles: dict[str, Any]
) -> None:
    """The torch evaluation is used when proven on load; it steers exactly as bundle.decide."""
    ids, mask = token_batch(PROMPTS, side="left")
    outputs = {}
    for device_decisions in (True, False):
        with attach(model, bundles=bundles, device_decisions=device_decisions) as handle:
            deciders = {n: e.decider for n, e in handle._steerer.entries.items()}
            assert all((d is not None) == device_decisions for d in deciders.values())
            with handle.select(SELECTION):
                tokens, logits = _generate(model, ids, mask)
            outputs[device_decisions] = (tokens, logits, handle.last)
    on, off = outputs[True], outputs[False]
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1])
    assert on[2] is not None and off[2] is not None
    assert on[2].gates == off[2].gates and on[2].domains == off[2].domains
    np.testing.assert_allclose(
        [p for p in on[2].probabilities if p == p],
        [p for p in off[2].probabilities if p == p],
        rtol=0,
        atol=1e-12,
    )
