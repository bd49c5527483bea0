"""The runtime with a converted legacy bundle behaves like the legacy hook.

The legacy hook is reimplemented here from the legacy arrays: on the prefill
it decides on each row's last-token hidden state of block ``L_star`` and adds
``gate * alpha * float16(v)`` there (per row; the legacy row-0 defect is not
reproduced). The runtime, given the converted bundle, must take the same
decisions and add the same delta up to the float16 rounding of ``v``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asa_format import load_bundle
from asa_format.converters.convert import convert_legacy
from asa_format.converters.legacy import read_legacy_bundle
from asa_format.converters.semantics import legacy_decide, legacy_steering_vector
from asa_format.runtime import attach
from tiny_models import first_tensor, spread_llama, token_batch

pytestmark = pytest.mark.runtime

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file())
ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17], [18, 19]]


_CONVERTED: dict[str, Any] = {}


def _converted(case: str, factory: pytest.TempPathFactory) -> Any:
    """The converted bundle of a legacy fixture (converted once per test session)."""
    if case not in _CONVERTED:
        dest = factory.mktemp(case) / "bundle"
        convert_legacy(FIXTURES / case, dest, samples=64)
        _CONVERTED[case] = load_bundle(dest)
    return _CONVERTED[case]


class _LegacyHook:
    """The legacy forward hook on block L_star, from the legacy arrays."""

    def __init__(self, assets: Any) -> None:
        self.assets = assets
        self.decisions: list[tuple[str, float, int]] = []

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        hidden = first_tensor(output)
        if hidden.shape[1] == 1:  # decode step: untouched
            return None
        rows = hidden[:, -1].detach().float().numpy()
        index, prob, gate = legacy_decide(self.assets, rows)
        new = hidden.clone()
        for i in range(hidden.shape[0]):
            domain = self.assets.domains[int(index[i])]
            self.decisions.append((domain, float(prob[i]), int(gate[i])))
            if gate[i] != 0:
                v = legacy_steering_vector(self.assets, domain).astype(np.float16)
                delta = torch.from_numpy(v.astype(np.float32)) * float(gate[i] * self.assets.alpha)
                new[i, -1] += delta.to(hidden.dtype)
        return new if isinstance(output, torch.Tensor) else (new, *output[1:])


@pytest.mark.parametrize("case", CASES)
def test_runtime_matches_legacy_hook(case: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = read_legacy_bundle(FIXTURES / case)
    bundle = _converted(case, tmp_path_factory)
    model = spread_llama(assets.hidden_size, assets.layer + 1)
    block = model.model.layers[assets.layer]
    ids, mask = token_batch(ROWS, side="left")

    def run(
        hook_factory: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw: list[torch.Tensor] = []
        steered: list[torch.Tensor] = []
        h1 = block.register_forward_hook(lambda m, a, o: raw.append(first_tensor(o)))
        remove = hook_factory()
        raw.clear()  # attach probes the block's output layout with one short forward
        h2 = block.register_forward_hook(lambda m, a, o: steered.append(first_tensor(o)))
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
        finally:
            h2.remove()
            h1.remove()
            remove()
        return logits, raw[0], steered[0]

    legacy = _LegacyHook(assets)
    legacy_logits, raw_l, steered_l = run(lambda: block.register_forward_hook(legacy).remove)
    handles: list[Any] = []

    def attach_runtime() -> Any:
        handles.append(attach(model, bundle))
        return handles[0].remove

    logits, raw_r, steered_r = run(attach_runtime)

    assert torch.equal(raw_l, raw_r)
    record = handles[0].last
    assert record is not None
    assert [(d, g) for d, _, g in legacy.decisions] == list(
        zip(record.domains, record.gates, strict=True)
    )
    np.testing.assert_allclose(
        record.probabilities, [p for _, p, _ in legacy.decisions], rtol=0, atol=1e-6
    )
    # Same delta, up to the legacy float16 rounding of v (|v_i| <= 1: error <= 2**-11 * alpha).
    tol = assets.alpha * 2.0**-10
    torch.testing.assert_close(steered_r - raw_r, steered_l - raw_l, atol=tol, rtol=0)
    torch.testing.assert_close(logits, legacy_logits, atol=50 * tol, rtol=0)


class _LegacyGenerationHook(_LegacyHook):
    """The legacy hook as the pipeline uses it in generation: the first pass only."""

    def __init__(self, assets: Any) -> None:
        super().__init__(assets)
        self.calls = 0

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        self.calls += 1
        if self.calls > 1:  # later passes of the generation: untouched
            return None
        return super().__call__(module, args, output)


@pytest.mark.parametrize("case", CASES)
def test_runtime_generates_like_legacy_hook(
    case: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whole generations, one prompt at a time: the same tokens as the legacy hook."""
    assets = read_legacy_bundle(FIXTURES / case)
    bundle = _converted(case, tmp_path_factory)
    model = spread_llama(assets.hidden_size, assets.layer + 1)
    block = model.model.layers[assets.layer]
    gates = set()
    for row in ROWS:
        ids = torch.tensor([row])
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": 6,
            "min_new_tokens": 6,
            "do_sample": False,
            "pad_token_id": 0,
        }
        legacy = _LegacyGenerationHook(assets)
        hook = block.register_forward_hook(legacy)
        try:
            with torch.no_grad():
                expected = model.generate(**kwargs)
        finally:
            hook.remove()
        with attach(model, bundle) as handle, torch.no_grad():
            got = model.generate(**kwargs)
        assert legacy.calls == 6 and len(handle.records) == 1
        assert handle.last is not None and handle.last.gates == [legacy.decisions[0][2]]
        gates.add(legacy.decisions[0][2])
        assert torch.equal(got, expected), f"{case} {row}: {got.tolist()} != {expected.tolist()}"
