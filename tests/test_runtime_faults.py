"""Runtime faults: a failing decision leaves the model as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from asa_format import load_bundle, save_bundle
from asa_format.errors import DecisionError
from asa_format.runtime import attach, resolve_layers
from asa_format.testing import make_test_contents
from tiny_models import build_model, no_hooks, token_batch

pytestmark = pytest.mark.runtime


def test_broken_decision_leaves_model_unaltered(tmp_path: Path) -> None:
    model = build_model("llama", seed=1)
    n_layers = len(resolve_layers(model))
    contents = make_test_contents(hidden_size=32, model_type="llama", num_layers=n_layers)
    bundle = load_bundle(save_bundle(contents, tmp_path / "b"))
    ids, mask = token_batch([[5, 6, 7], [8, 9]], side="left")
    with torch.no_grad():
        baseline = model(input_ids=ids, attention_mask=mask).logits.clone()

    class BrokenSession:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("session crashed")

    bundle._plan = None  # use the sessions, and break them
    bundle._sessions = {name: BrokenSession() for name in bundle._sessions}
    with pytest.raises(DecisionError) as info, attach(model, bundle):
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    assert info.value.code == "DECISION_FAILED" and "session crashed" in str(info.value)
    assert no_hooks(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, baseline)
