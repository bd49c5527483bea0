"""The runtime on tiny random-weight models of many architectures.

For each architecture and each forced gate (+1, -1, 0) the steered block's
output must change by exactly ``gate * alpha * v`` at each row's last real
token and nowhere else, and removing the hooks must restore bit-identical
outputs and leave no hook or attribute behind.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from asa_format import load_bundle
from asa_format.runtime import attach, resolve_layers
from asa_format.testing import make_test_bundle
from tiny_models import AVAILABLE, SPECS, build_model, first_tensor, token_batch

pytestmark = pytest.mark.runtime

ALPHA = 3.0
ROWS = [[5, 6, 7, 8, 9], [10, 11, 12]]

# gate -> (probe_bias, tau): p ~ 1, p ~ 0, p = 0.5 with tau = 1.0
GATES = {1: (20.0, 0.6), -1: (-20.0, 0.6), 0: (0.0, 1.0)}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("arch-bundles")

    @functools.cache
    def make(model_type: str, num_layers: int, gate: int) -> Path:
        bias, tau = GATES[gate]
        return make_test_bundle(
            root / f"{model_type}-{num_layers}-{gate}",
            hidden_size=32,
            layer=1,
            alpha=ALPHA,
            tau=tau,
            beta=0.25,
            route_to="search",
            probe_bias=bias,
            probe_scale=0.0,
            model_type=model_type,
            num_layers=num_layers,
        )

    return make


def hook_state(model: torch.nn.Module) -> dict[str, tuple[int, int, int]]:
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m.__dict__))
        for name, m in model.named_modules()
    }


@pytest.mark.parametrize("name", AVAILABLE)
def test_resolve_known_layers(name: str) -> None:
    model = build_model(name)
    resolved = resolve_layers(model)
    assert resolved.path == SPECS[name].layers_path
    assert len(resolved) == SPECS[name].num_layers


@pytest.mark.parametrize("gate", [1, -1, 0])
@pytest.mark.parametrize("name", AVAILABLE)
def test_exact_delta_and_clean_removal(name: str, gate: int, bundle_dir: Any) -> None:
    spec = SPECS[name]
    model = build_model(name)
    bundle = load_bundle(bundle_dir(spec.model_type, spec.num_layers, gate))
    block = resolve_layers(model).layers[1]
    ids, mask = token_batch(ROWS, side="left")
    with torch.no_grad():
        baseline = model(input_ids=ids, attention_mask=mask).logits
    before_hooks = hook_state(model)

    raw: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    h_raw = block.register_forward_hook(lambda m, a, o: raw.append(first_tensor(o)))
    handle = attach(model, bundle)
    raw.clear()  # attach probes the block's output layout with one short forward
    h_steered = block.register_forward_hook(lambda m, a, o: steered.append(first_tensor(o)))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        h_steered.remove()
        h_raw.remove()

    record = handle.last
    assert record is not None
    assert record.gates == [gate, gate]
    assert record.domains == ["search", "search"]
    assert record.positions == [4, 4]  # left padding: the last column is real for both rows

    v = torch.tensor(bundle.steering_vector("search"))
    diff = steered[0] - raw[0]
    where = torch.zeros(diff.shape[:2], dtype=torch.bool)
    if gate != 0:
        where[:, -1] = True
        torch.testing.assert_close(diff[where], (gate * ALPHA * v).expand(2, -1), atol=1e-5, rtol=0)
        assert not torch.allclose(logits, baseline)
    else:
        torch.testing.assert_close(logits, baseline, atol=0, rtol=0)
    # Nowhere else: bit-identical.
    assert torch.equal(steered[0][~where], raw[0][~where])

    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    assert hook_state(model) == before_hooks
    with torch.no_grad():
        restored = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(restored, baseline)
