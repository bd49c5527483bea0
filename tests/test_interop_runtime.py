"""Imported vectors steer a tiny model exactly as their own libraries do.

steering-vectors runs here; repeng needs numpy<2 and runs in its own
environment (``.ci/interop.sh``), where this same file is collected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import asa_format
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.interventions import ConditionGate, condition_fires, condition_similarity
from asa_format.format.manifest import ModelBinding
from asa_format.interop import ImportBinding, from_repeng, from_steering_vectors, import_file
from asa_format.interop.export import export_gguf
from asa_format.runtime import attach
from tiny_models import build_model

H = 32  # tiny llama: hidden 32, 3 blocks
IDS = torch.tensor([[1, 5, 9, 14, 22, 3, 7], [1, 40, 41, 42, 43, 44, 45]])
ONE = IDS[:1]


def _logits(model: Any, ids: torch.Tensor = IDS, **kw: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def _directions(seed: int, blocks: tuple[int, ...] = (1, 2)) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: (rng.standard_normal(H) * 2).astype(np.float32) for b in blocks}


def _generate(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=IDS[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)


def test_steering_vectors_object_steers_identically(tmp_path: Path) -> None:
    sv_lib = pytest.importorskip("steering_vectors")
    model = build_model("llama")
    base = _logits(model)
    acts = {b: torch.from_numpy(v) for b, v in _directions(1).items()}
    sv = sv_lib.SteeringVector(layer_activations=acts, layer_type="decoder_block")
    for multiplier in (1.0, -2.0):
        with sv.apply(model, multiplier=multiplier):
            want = _logits(model)
            want_gen = _generate(model)
        path = asa_format.save_bundle(
            from_steering_vectors(sv, ImportBinding(model_type="llama"), multiplier=multiplier),
            tmp_path / f"sv{multiplier}",
        )
        with attach(model, path):
            got = _logits(model)
            got_gen = _generate(model)
        assert not torch.equal(want, base)
        assert torch.equal(got, want), float((got - want).abs().max())
        assert torch.equal(got_gen, want_gen)
    assert torch.equal(_logits(model), base), "removing the handle restores the model"


def test_repeng_vector_and_its_gguf_steer_identically(tmp_path: Path) -> None:
    repeng = pytest.importorskip("repeng", reason="repeng needs numpy<2: run .ci/interop.sh")
    # batch of one: repeng 0.4 reshapes transformers 5's [1, S] position_ids to the batch and fails for B > 1
    model = build_model("llama")
    base = _logits(model, ONE)
    cv = repeng.ControlVector(model_type="llama", directions=_directions(2))
    cm = repeng.ControlModel(model, [1, 2])
    cm.set_control(cv, coeff=1.5)
    want = _logits(cm, ONE)
    cm.reset()
    model = cm.unwrap()
    assert torch.equal(_logits(model, ONE), base)
    path = asa_format.save_bundle(
        from_repeng(cv, ImportBinding(num_layers=3), coefficient=1.5), tmp_path / "r"
    )
    with attach(model, path):
        assert torch.equal(_logits(model, ONE), want)
    # repeng's own GGUF export, imported by `asa import`, and our export read back by repeng
    cv.export_gguf(str(tmp_path / "cv.gguf"))
    imported = import_file(
        tmp_path / "cv.gguf", tmp_path / "g", ImportBinding(num_layers=3), coefficient=1.5
    )
    with attach(model, imported):
        assert torch.equal(_logits(model, ONE), want)
    export_gguf(path, tmp_path / "back.gguf")  # coefficient 1.5 folded in
    back = repeng.ControlVector.import_gguf(str(tmp_path / "back.gguf"))
    assert back.model_type == "llama" and sorted(back.directions) == [1, 2]
    cm = repeng.ControlModel(model, [1, 2])
    cm.set_control(back, coeff=1.0)
    assert torch.equal(_logits(cm, ONE), want)
    cm.unwrap()


def test_several_interventions_add_up_and_respect_padding(tmp_path: Path) -> None:
    model = build_model("llama")
    a, b = _directions(3), _directions(4, (2,))
    contents = BundleContents(
        model=ModelBinding(hidden_size=H, type="llama", num_layers=3),
        interventions=[InterventionData("a", a), InterventionData("b", b, coefficient=0.5)],
    )
    path = asa_format.save_bundle(contents, tmp_path / "b")
    ids = IDS.clone()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on row 1
    hidden: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Any:
        def hook(_m: Any, _i: Any, out: Any) -> None:
            hidden[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return hook

    h = model.model.layers[2].register_forward_hook(grab("plain"))
    _logits(model, ids, attention_mask=mask)
    h.remove()
    with attach(model, path):
        # a probe registered after the intervention hooks sees the steered output of block 2
        h = model.model.layers[2].register_forward_hook(grab("steered"))
        _logits(model, ids, attention_mask=mask)
        h.remove()
    diff = hidden["steered"] - hidden["plain"]
    assert torch.count_nonzero(diff[1, :3]) == 0, "padding positions are not steered"
    # block 2's own delta plus what block 1's delta changed: at least the direct part is present
    direct = torch.from_numpy(a[2] + np.float32(0.5) * b[2])
    assert float((diff[0] - direct).abs().max()) > 0  # block 1 also changed the input of block 2
    # with block 1 removed, the change at block 2 is exactly the two deltas, summed in float32
    # and added once (spec 14.1)
    only2 = BundleContents(
        model=contents.model,
        interventions=[InterventionData("a", {2: a[2]}), InterventionData("b", b, coefficient=0.5)],
    )
    with attach(model, asa_format.save_bundle(only2, tmp_path / "c")):
        h = model.model.layers[2].register_forward_hook(grab("steered2"))
        _logits(model, ids, attention_mask=mask)
        h.remove()
    d2 = hidden["steered2"] - hidden["plain"]
    expected = hidden["plain"][0] + torch.from_numpy(
        (a[2] + (b[2] * np.float32(0.5)).astype(np.float32)).astype(np.float32)
    )
    assert torch.equal(hidden["steered2"][0], expected)
    assert torch.count_nonzero(d2[1, :3]) == 0


def test_condition_intervention_steers_only_matching_rows(tmp_path: Path) -> None:
    model = build_model("llama")
    plain: dict[str, torch.Tensor] = {}
    h = model.model.layers[1].register_forward_hook(
        lambda _m, _i, o: plain.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    base = _logits(model)
    h.remove()
    rows = plain["h"].double().mean(dim=1).numpy()
    cond = rows[0] - rows[1]  # row 0 is more similar to this than row 1
    sims = [condition_similarity(r, cond) for r in rows]
    threshold = float(np.mean(sims))
    gate = ConditionGate((1,), "greater_than", threshold, "mean")
    iv = InterventionData(
        "c",
        _directions(5, (2,)),
        coefficient=3.0,
        condition=gate,
        conditions={1: cond.astype(np.float32)},
    )
    path = asa_format.save_bundle(
        BundleContents(model=ModelBinding(hidden_size=H), interventions=[iv]), tmp_path / "c"
    )
    with attach(model, path) as handle:
        got = _logits(model)
        assert (
            handle.condition_decisions
            == {"c": [condition_fires([s], gate) for s in sims]}
            == {"c": [True, False]}
        )
    assert not torch.equal(got[0], base[0])
    assert torch.equal(got[1], base[1]), "a row whose condition does not hold is bit-identical"


def test_model_mismatch_is_refused_before_any_hook(tmp_path: Path) -> None:
    model = build_model("llama")
    contents = BundleContents(
        model=ModelBinding(hidden_size=H, num_layers=5),
        interventions=[InterventionData("a", _directions(6))],
    )
    path = asa_format.save_bundle(contents, tmp_path / "b")
    with pytest.raises(asa_format.AsaError) as info:
        attach(model, path)
    assert info.value.code == "MODEL_LAYER_COUNT"
    assert not model.model.layers[1]._forward_hooks


@pytest.mark.parametrize("key", ["cache", "past_key_values", "kv_cache_of_a_future_release"])
def test_prefill_and_decode_steps_are_told_apart(key: str) -> None:
    """By what the call carries (a cache and its length), whatever the keyword."""
    from transformers import DynamicCache

    from asa_format.runtime.classify import PassKind, classify
    from asa_format.runtime.evidence import gather

    model = build_model("llama")
    cache = DynamicCache(config=model.config)
    prompt = IDS[:1]
    n = prompt.shape[1]
    empty = gather(None, (), {key: cache})
    assert classify(empty, batch=1, query=n, known_cache=False).kind is PassKind.PREFILL
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).past_key_values  # the filled cache
    info = classify(gather(None, (), {key: cache}), batch=1, query=1, known_cache=True)
    assert info.kind is PassKind.DECODE and info.past == n
    unknown = gather(None, (), {key: object()})  # a cache this runtime cannot read
    assert classify(unknown, batch=1, query=1, known_cache=False).kind is PassKind.SKIP
