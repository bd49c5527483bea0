"""Decoder-block resolution across causal-LM families (a representative subset).

Each model is built tiny from its default transformers config by the same
generic shrinking the coverage benchmark uses (``benchmarks.tiny_configs``);
the full sweep over every causal-LM type is ``python -m
benchmarks.causal_lm_coverage``, not a test.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from asa_format.errors import RuntimeCompatError
from asa_format.runtime import attach
from asa_format.runtime.block_output import (
    PROBE_BATCH,
    PROBE_SEQUENCE,
    check_block_output,
)
from asa_format.runtime.layers import resolve_layers, text_layer_count, text_layer_counts
from asa_format.testing import make_test_bundle
from benchmarks.tiny_configs import tiny_config

pytestmark = pytest.mark.runtime


@functools.cache
def _model(model_type: str) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()


def _hidden(model: Any) -> int:
    return int(model.config.get_text_config().hidden_size)


# model type -> (expected path, expected source)
RESOLVED = {
    "llama": ("model.layers", "known"),
    "qwen2": ("model.layers", "known"),
    "gemma2": ("model.layers", "known"),
    "lfm2": ("model.layers", "known"),
    "gpt2": ("transformer.h", "known"),
    "falcon": ("transformer.h", "known"),
    "bloom": ("transformer.h", "known"),
    "mpt": ("transformer.blocks", "known"),
    "gpt_neox": ("gpt_neox.layers", "known"),
    "opt": ("model.decoder.layers", "known"),
    "bart": ("model.decoder.layers", "known"),
    "gemma3": ("model.language_model.layers", "known"),
    "bert": ("bert.encoder.layer", "structural"),
    "roberta": ("roberta.encoder.layer", "structural"),
    "electra": ("electra.encoder.layer", "structural"),
    "git": ("git.encoder.layer", "structural"),
}


@pytest.mark.parametrize("model_type", sorted(RESOLVED))
def test_resolves_text_decoder_blocks(model_type: str) -> None:
    model = _model(model_type)
    path, source = RESOLVED[model_type]
    resolved = resolve_layers(model)
    assert (resolved.path, resolved.source) == (path, source)
    expected = text_layer_count(model.config)
    assert expected is not None and expected >= 2
    assert len(resolved) == expected
    shape = check_block_output(model, resolved, 1, hidden_size=_hidden(model))
    assert shape == (PROBE_BATCH, PROBE_SEQUENCE, _hidden(model))


def test_bert_decoder_config_is_a_decoder() -> None:
    assert _model("bert").config.is_decoder


def test_git_vision_tower_has_as_many_layers_but_is_never_chosen() -> None:
    model = _model("git")
    vision = model.git.image_encoder.vision_model.encoder.layers
    assert len(vision) == len(resolve_layers(model))  # the length alone cannot decide
    assert resolve_layers(model).layers is model.git.encoder.layer


@pytest.mark.parametrize("model_type", ["bert", "git"])
def test_attach_steers_a_structurally_found_decoder(model_type: str, tmp_path: Path) -> None:
    model = _model(model_type)
    n_layers = len(resolve_layers(model))
    bundle = make_test_bundle(
        tmp_path / "b",
        hidden_size=_hidden(model),
        layer=1,
        alpha=3.0,
        tau=0.6,
        beta=0.25,
        route_to="search",
        probe_bias=20.0,
        probe_scale=0.0,
        model_type=str(model.config.model_type),
        num_layers=n_layers,
    )
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        handle = attach(model, bundle)
        try:
            steered = model(input_ids=ids).logits
        finally:
            handle.remove()
        again = model(input_ids=ids).logits
    assert handle.layer_path == RESOLVED[model_type][0] + ".1"
    assert not torch.equal(plain, steered)
    assert torch.equal(plain, again)


def test_deepseek_v4_multi_stream_residual_is_refused() -> None:
    model = _model("deepseek_v4")
    resolved = resolve_layers(model)
    assert resolved.path == "model.layers" and len(resolved) == text_layer_count(model.config)
    with pytest.raises(RuntimeCompatError) as info:
        check_block_output(model, resolved, 1, hidden_size=_hidden(model))
    err = info.value
    assert err.code == "BLOCK_OUTPUT_LAYOUT"
    streams = int(model.config.hc_mult)
    assert f"streams={streams}" in str(err) and "model.layers.1" in str(err)
    assert "layers_path" in str(err) and "multi-stream" in str(err)
    assert all(not m._forward_hooks for m in model.modules())


def test_xlnet_sequence_first_blocks_are_refused() -> None:
    model = _model("xlnet")
    resolved = resolve_layers(model)
    with pytest.raises(RuntimeCompatError) as info:
        check_block_output(model, resolved, 1, hidden_size=_hidden(model))
    assert info.value.code == "BLOCK_OUTPUT_LAYOUT"
    assert f"[{PROBE_SEQUENCE}, {PROBE_BATCH}, {_hidden(model)}]" in str(info.value)


def test_two_equal_stacks_are_refused_with_both_listed() -> None:
    model = _model("hrm_text")  # hierarchical: an H and an L stack of the same depth
    with pytest.raises(RuntimeCompatError) as info:
        resolve_layers(model)
    text = str(info.value)
    assert info.value.code == "LAYERS_NOT_FOUND"
    assert "'model.L_module.layers'" in text and "'model.H_module.layers'" in text
    assert "layers_path" in text and "refusing to guess" in text
    chosen = resolve_layers(model, "model.H_module.layers")
    assert chosen.source == "override"


# --- structural rules on hand-made models -----------------------------------------------------


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)


class _Toy(nn.Module):
    """A text stack with a config; extra lists are added by each test."""

    def __init__(self, layers: int, config_layers: int | None) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=config_layers)
        self.model = nn.Module()
        self.model.embed = nn.Embedding(10, 8)
        self.model.stack = nn.ModuleList(_Block() for _ in range(layers))
        self.lm_head = nn.Linear(8, 10)

    def get_input_embeddings(self) -> nn.Module:
        module = self.model.embed
        assert isinstance(module, nn.Module)
        return module

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def test_known_path_with_the_wrong_length_is_not_taken() -> None:
    model = _Toy(3, config_layers=3)
    model.model.layers = nn.ModuleList(_Block() for _ in range(2))  # a known path, wrong length
    resolved = resolve_layers(model)
    assert (resolved.path, resolved.source) == ("model.stack", "structural")
    model.config.num_hidden_layers = 2
    assert resolve_layers(model).path == "model.layers"


def test_length_filter_beats_prefix_and_lists_are_reported() -> None:
    model = _Toy(3, config_layers=4)
    with pytest.raises(RuntimeCompatError) as info:
        resolve_layers(model)
    text = str(info.value)
    assert "4 layers" in text and "'model.stack' (3)" in text and "layers_path" in text


def test_equal_candidates_are_refused() -> None:
    model = _Toy(2, config_layers=2)
    model.model.other = nn.ModuleList(_Block() for _ in range(2))
    with pytest.raises(RuntimeCompatError) as info:
        resolve_layers(model)
    assert "'model.stack' (2)" in str(info.value) and "'model.other' (2)" in str(info.value)
    assert "refusing to guess" in str(info.value)


def test_leaf_lists_lose_to_composite_blocks() -> None:
    model = _Toy(2, config_layers=2)
    model.model.norms = nn.ModuleList(nn.LayerNorm(8) for _ in range(2))  # per-layer norms
    assert resolve_layers(model).path == "model.stack"


def test_lists_inside_the_head_or_a_block_are_not_candidates() -> None:
    model = _Toy(2, config_layers=2)
    model.lm_head = nn.Sequential(nn.Linear(8, 8))
    model.lm_head.heads = nn.ModuleList(_Block() for _ in range(2))
    model.model.stack[0].experts = nn.ModuleList(_Block() for _ in range(2))
    model.get_output_embeddings = lambda: model.lm_head  # type: ignore[method-assign]
    assert resolve_layers(model).path == "model.stack"


def test_text_layer_counts_read_the_text_config() -> None:
    text = SimpleNamespace(num_hidden_layers=4, num_layers=2)
    config = SimpleNamespace(get_text_config=lambda: text, num_hidden_layers=99)
    assert text_layer_counts(config) == (4, 2)
    assert text_layer_count(config) == 4
    bart_like = SimpleNamespace(num_hidden_layers=6, decoder_layers=3, is_encoder_decoder=False)
    assert text_layer_count(bart_like) == 3
    assert text_layer_counts(None) == () and text_layer_count(SimpleNamespace()) is None
    assert text_layer_count(SimpleNamespace(n_layer=True)) is None  # a bool is no count
