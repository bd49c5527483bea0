"""Layer resolution and compatibility checks: every refusal happens before any hook."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from asa_format.errors import BundleError, RuntimeCompatError, UsageError
from asa_format.runtime import attach, resolve_layers, same_model_id
from asa_format.runtime.layers import _structural
from asa_format.testing import make_test_bundle
from tiny_models import AVAILABLE, NEEDS_GEMMA3, build_model, no_hooks, token_batch

pytestmark = pytest.mark.runtime


def bundle(tmp_path: Path, **kwargs: Any) -> Path:
    args: dict[str, Any] = {
        "hidden_size": 32,
        "layer": 1,
        "model_type": "llama",
        "num_layers": 3,
        "route_to": "search",
        "probe_bias": 20.0,
        "probe_scale": 0.0,
    }
    args.update(kwargs)
    return make_test_bundle(tmp_path / "bundle", **args)


@pytest.fixture(scope="module")
def llama() -> Any:
    return build_model("llama")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"hidden_size": 48}, "MODEL_HIDDEN_SIZE"),
        ({"layer": 5, "num_layers": None}, "LAYER_MISSING"),
        ({"num_layers": 4}, "MODEL_LAYER_COUNT"),
        ({"model_type": "qwen2"}, "MODEL_TYPE_MISMATCH"),
        ({"model_id": "org/some-other-model"}, "MODEL_ID_MISMATCH"),
    ],
)
def test_incompatible_bundle_refused_before_hooks(
    llama: Any, tmp_path: Path, kwargs: dict[str, Any], code: str
) -> None:
    llama.config._name_or_path = "/models/tiny-llama"
    try:
        with pytest.raises(RuntimeCompatError) as info:
            attach(llama, bundle(tmp_path, **kwargs))
    finally:
        llama.config._name_or_path = ""
    assert info.value.code == code
    assert info.value.hint
    assert no_hooks(llama)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"model_type": "qwen2"}, "MODEL_TYPE_MISMATCH"),
        ({"model_id": "org/other"}, "MODEL_ID_MISMATCH"),
    ],
)
def test_type_and_id_mismatch_only_warn_when_not_strict(
    llama: Any, tmp_path: Path, kwargs: dict[str, Any], code: str
) -> None:
    llama.config._name_or_path = "/models/tiny-llama"
    try:
        with pytest.warns(RuntimeWarning, match=code):
            handle = attach(llama, bundle(tmp_path, **kwargs), strict_model_match=False)
    finally:
        llama.config._name_or_path = ""
    with handle:
        ids, mask = token_batch([[5, 6, 7]])
        with torch.no_grad():
            llama(input_ids=ids, attention_mask=mask)
        assert handle.last is not None and handle.last.gates == [1]
    assert no_hooks(llama)


def test_unknown_ids_are_not_compared(
    llama: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The model was built from a config: it has no id, so the bundle's id cannot be checked.
    assert llama.config._name_or_path == ""
    with caplog.at_level(logging.DEBUG, logger="asa_format.runtime"):
        handle = attach(llama, bundle(tmp_path, model_id="org/tiny-llama", model_type=None))
    handle.remove()
    text = caplog.text
    assert "model id not compared" in text and "model type not compared" in text


def test_local_path_matches_hub_id(llama: Any, tmp_path: Path) -> None:
    llama.config._name_or_path = "/srv/models/Tiny-Llama"
    try:
        attach(llama, bundle(tmp_path, model_id="someorg/tiny-llama")).remove()
    finally:
        llama.config._name_or_path = ""
    assert no_hooks(llama)


def test_same_model_id() -> None:
    assert same_model_id("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")
    assert same_model_id("Qwen/Qwen2.5-0.5B-Instruct", "/models/Qwen2.5-0.5B-Instruct/")
    assert same_model_id(
        "LiquidAI/LFM2.5-1.2B-Instruct",
        "/root/.cache/huggingface/hub/models--LiquidAI--LFM2.5-1.2B-Instruct/snapshots/0a1b2c",
    )
    assert not same_model_id("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct")
    assert not same_model_id("Qwen/Qwen2.5-0.5B", "/models/Qwen2.5-0.5B-Instruct")


@pytest.mark.skipif("gemma3_vl" not in AVAILABLE, reason=NEEDS_GEMMA3)
def test_multimodal_binding_accepts_wrapper_or_text_type(tmp_path: Path) -> None:
    model = build_model("gemma3_vl")
    for i, model_type in enumerate(("gemma3", "gemma3_text")):
        path = make_test_bundle(
            tmp_path / str(i), hidden_size=32, layer=2, num_layers=3, model_type=model_type
        )
        attach(model, path).remove()
    with pytest.raises(RuntimeCompatError) as info:
        attach(model, make_test_bundle(tmp_path / "x", hidden_size=32, layer=2, model_type="llama"))
    assert info.value.code == "MODEL_TYPE_MISMATCH"
    assert no_hooks(model)


def test_tampered_bundle_refused_before_hooks(llama: Any, tmp_path: Path) -> None:
    path = bundle(tmp_path)
    vectors = path / "vectors.safetensors"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0x01
    vectors.write_bytes(bytes(data))
    with pytest.raises(BundleError) as info:
        attach(llama, path)
    assert info.value.code == "FILE_HASH_MISMATCH"
    assert no_hooks(llama)


def test_expected_digest_enforced(llama: Any, tmp_path: Path) -> None:
    with pytest.raises(BundleError) as info:
        attach(llama, bundle(tmp_path), expected_digest="sha256:" + "0" * 64)
    assert info.value.code == "DIGEST_MISMATCH"
    assert no_hooks(llama)


def test_layers_override_and_errors(llama: Any) -> None:
    resolved = resolve_layers(llama, "model.layers")
    assert resolved.source == "override" and resolved.layers is llama.model.layers
    for bad in ("model.nope", "model.embed_tokens", "model.layers.0"):
        with pytest.raises(RuntimeCompatError) as info:
            resolve_layers(llama, bad)
        assert info.value.code == "LAYERS_NOT_FOUND"
        assert "layers_path" in str(info.value)


class _Odd(nn.Module):
    """A model whose block lists sit at paths no known architecture uses."""

    def __init__(self) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(
            {"vision": nn.ModuleDict({"blocks": nn.ModuleList(nn.Linear(8, 8) for _ in range(5))})}
        )
        self.text = nn.Module()
        self.text.embedder = nn.Embedding(10, 8)
        self.text.stack = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.text.stack[0].experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(7))
        self.head = nn.Linear(8, 10)

    def get_input_embeddings(self) -> nn.Module:
        return self.embedder_module()

    def embedder_module(self) -> nn.Module:
        module = self.text.embedder
        assert isinstance(module, nn.Module)
        return module

    def get_output_embeddings(self) -> nn.Module:
        return self.head


def test_structural_fallback_picks_text_blocks() -> None:
    model = _Odd()
    resolved = resolve_layers(model)
    assert resolved.source == "structural"
    assert resolved.path == "text.stack" and resolved.layers is model.text.stack


@pytest.mark.skipif("gemma3_vl" not in AVAILABLE, reason=NEEDS_GEMMA3)
def test_structural_fallback_on_multimodal_model_avoids_vision_tower() -> None:
    model = build_model("gemma3_vl")
    found = _structural(model)
    assert found is not None
    assert found[0] == "model.language_model.layers"


def test_no_layers_found_explains_override() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UsageError) as info:
        attach(model, object())  # the bundle is checked first: a usage error
    assert info.value.code == "USAGE"
    with pytest.raises(RuntimeCompatError) as info2:
        resolve_layers(model)
    assert info2.value.code == "LAYERS_NOT_FOUND"
    assert "model.layers" in str(info2.value) and "layers_path" in str(info2.value)
