"""The hidden state inside a block's output: splitting, layouts and the attach-time probe."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from asa_format.errors import CODES, RuntimeCompatError
from asa_format.runtime.block_output import (
    LAYOUT_MULTI_STREAM,
    LAYOUT_STANDARD,
    LAYOUT_UNKNOWN,
    PROBE_BATCH,
    PROBE_SEQUENCE,
    check_block_output,
    check_layout,
    classify_layout,
    probe_block_output,
    split_block_output,
)
from asa_format.runtime.layers import resolve_layers
from tiny_models import build_model

pytestmark = pytest.mark.runtime

H = 8


class _Pair(NamedTuple):
    hidden: torch.Tensor
    extra: int


def test_code_is_registered() -> None:
    assert "BLOCK_OUTPUT_LAYOUT" in CODES


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((2, 3, H), LAYOUT_STANDARD),
        ((2, 3, 4, H), LAYOUT_MULTI_STREAM),
        ((4, 2, 3, H), LAYOUT_MULTI_STREAM),  # streams first (AltUp)
        ((4, 5, 3, H), LAYOUT_UNKNOWN),
        ((3, 2, H), LAYOUT_UNKNOWN),  # sequence-first
        ((2, 3, H + 1), LAYOUT_UNKNOWN),
        ((6, H), LAYOUT_UNKNOWN),
        ((2, 3, 4, 5, H), LAYOUT_UNKNOWN),
    ],
)
def test_classify_layout(shape: tuple[int, ...], layout: str) -> None:
    assert classify_layout(shape, hidden_size=H, batch=2, sequence=3) == layout


def test_classify_layout_without_expectations_looks_at_rank_only() -> None:
    assert classify_layout((3, 2, 5)) == LAYOUT_STANDARD
    assert classify_layout((3, 2, 4, 5)) == LAYOUT_MULTI_STREAM
    assert classify_layout((5,)) == LAYOUT_UNKNOWN


@pytest.mark.parametrize(
    "output",
    [
        torch.randn(2, 3, H),
        (torch.randn(2, 3, H), "cache"),
        [torch.randn(2, 3, H), None],
        _Pair(torch.randn(2, 3, H), 7),
        OrderedDict(hidden_states=torch.randn(2, 3, H), other=1),
    ],
    ids=["tensor", "tuple", "list", "namedtuple", "mapping"],
)
def test_split_and_rebuild_keep_the_container(output: Any) -> None:
    split = split_block_output(output, hidden_size=H)
    assert split.layout == LAYOUT_STANDARD
    assert split.hidden.shape == (2, 3, H)
    new = torch.zeros(2, 3, H)
    rebuilt = split.rebuild(new)
    assert type(rebuilt) is type(output)
    again = split_block_output(rebuilt, hidden_size=H)
    assert again.hidden is new
    if isinstance(output, (tuple, list)) and not isinstance(output, torch.Tensor):
        assert list(rebuilt[1:]) == list(output[1:])
    if isinstance(output, OrderedDict):
        assert rebuilt["other"] == 1 and output["hidden_states"] is not new


def test_multi_stream_output_is_refused_with_the_stream_layout() -> None:
    with pytest.raises(RuntimeCompatError) as info:
        split_block_output(
            (torch.randn(2, 3, 4, H),), hidden_size=H, layers_path="model.layers", index=1
        )
    err = info.value
    assert err.code == "BLOCK_OUTPUT_LAYOUT"
    text = str(err)
    assert "model.layers.1" in text and "layers_path" in text
    assert "multi-stream" in text and "streams=4" in text and "[2, 3, 4, 8]" in text
    assert "no single hidden state" in text


def test_streams_first_layout_names_the_order() -> None:
    with pytest.raises(RuntimeCompatError) as info:
        check_layout((5, 2, 3, H), hidden_size=H, batch=2, sequence=3, layers_path="m.l", index=0)
    assert "streams=5" in str(info.value) and "[streams, batch, sequence, hidden]" in str(
        info.value
    )


@pytest.mark.parametrize("shape", [(6, H), (2, 3, H + 2), (2, 3, 4, 5, H)])
def test_other_layouts_are_refused_with_the_observed_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(RuntimeCompatError) as info:
        split_block_output(torch.randn(*shape), hidden_size=H, layers_path="x.blocks", index=0)
    assert info.value.code == "BLOCK_OUTPUT_LAYOUT"
    assert str(list(shape)) in str(info.value) and "x.blocks.0" in str(info.value)


def test_output_without_a_tensor_is_refused() -> None:
    for output in (None, (), ("text", torch.randn(2, 3, H)), {"a": 1}):
        with pytest.raises(RuntimeCompatError) as info:
            split_block_output(output, hidden_size=H)
        assert info.value.code == "BLOCK_OUTPUT_LAYOUT"


def test_check_layout_returns_standard() -> None:
    assert check_layout((2, 3, H), hidden_size=H, batch=2, sequence=3) == LAYOUT_STANDARD
    with pytest.raises(RuntimeCompatError):
        check_layout((3, 2, H), hidden_size=H, batch=2, sequence=3)


class _StreamBlock(nn.Module):
    """A block carrying ``streams`` residual streams, like DeepSeek-V4's hyper-connections."""

    def __init__(self, streams: int) -> None:
        super().__init__()
        self.proj = nn.Linear(H, H)
        self.streams = streams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(2).expand(-1, -1, self.streams, -1)
        return x + self.proj(x)


class _ToyLM(nn.Module):
    def __init__(self, streams: int = 0, fail: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, H)
        self.layers = nn.ModuleList(
            _StreamBlock(streams) if streams else nn.Linear(H, H) for _ in range(3)
        )
        self.head = nn.Linear(H, 16)
        self.fail = fail
        self.calls = 0

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> torch.Tensor:
        self.calls += 1
        if self.fail:
            raise ValueError("needs pixel_values")
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        if x.dim() == 4:
            x = x.mean(2)
        return self.head(x)


def test_probe_standard_stops_early_and_leaves_no_hook() -> None:
    model = _ToyLM()
    ran: list[int] = []
    model.layers[2].register_forward_pre_hook(lambda m, a: ran.append(1))
    shape = probe_block_output(model, model.layers, 1)
    assert shape == (PROBE_BATCH, PROBE_SEQUENCE, H)
    assert ran == []  # the pass stopped after block 1
    assert all(not m._forward_hooks for m in model.layers[:2])
    assert check_block_output(model, model.layers, 1, hidden_size=H) == shape


def test_probe_refuses_multi_stream_before_any_hook() -> None:
    model = _ToyLM(streams=4)
    assert probe_block_output(model, model.layers, 0) == (PROBE_BATCH, PROBE_SEQUENCE, 4, H)
    with pytest.raises(RuntimeCompatError) as info:
        check_block_output(model, model.layers, 0, hidden_size=H)
    assert info.value.code == "BLOCK_OUTPUT_LAYOUT" and "streams=4" in str(info.value)
    assert all(not m._forward_hooks for m in model.modules())


def test_probe_failure_is_a_refusal_that_names_the_cause() -> None:
    model = _ToyLM(fail=True)
    with pytest.raises(RuntimeCompatError) as info:
        probe_block_output(model, model.layers, 0)
    assert info.value.code == "BLOCK_OUTPUT_LAYOUT" and "needs pixel_values" in str(info.value)
    assert all(not m._forward_hooks for m in model.modules())


def test_probe_of_a_block_off_the_forward_path() -> None:
    model = _ToyLM()
    stray = nn.ModuleList([nn.Linear(H, H)])
    with pytest.raises(RuntimeCompatError) as info:
        probe_block_output(model, stray, 0)
    assert "never ran" in str(info.value)
    with pytest.raises(RuntimeCompatError) as info2:
        probe_block_output(model, model.layers, 3)
    assert info2.value.code == "LAYER_MISSING"


def test_probe_on_a_real_model_keeps_mode_and_outputs() -> None:
    model = build_model("llama")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    layers = resolve_layers(model)
    shape = check_block_output(model, layers, 1, hidden_size=32)
    assert shape == (PROBE_BATCH, PROBE_SEQUENCE, 32)
    assert not model.training
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
