"""Compatibility checks between a bundle's model binding and a loaded model.

All checks run before any hook is registered. Hidden size, layer index and
layer count mismatches are always errors; model type and model id mismatches
are errors unless ``strict_model_match=False`` (then warnings). A model
loaded from a local directory whose config matches the binding (model type,
layer count and hidden size, all recorded in the bundle) is accepted despite
a different id: the id mismatch is then a :class:`BindingNote`. A value that
is unknown on either side cannot be compared: that is logged at debug level.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

from asa_format.errors import ErrorCode, RuntimeCompatError
from asa_format.runtime._types import BundleLike
from asa_format.runtime.layers import ResolvedLayers
from asa_format.runtime.notes import BindingNote

__all__ = [
    "check_compatibility",
    "model_hidden_size",
    "model_id",
    "model_types",
    "same_model_id",
]

logger = logging.getLogger("asa_format.runtime")


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            return getter()
        except (TypeError, ValueError, AttributeError):
            pass
    return getattr(config, "text_config", None) or config


def model_hidden_size(model: Any) -> int | None:
    """The hidden size of the text decoder (``config.hidden_size``, or the text config's)."""
    config = getattr(model, "config", None)
    for cfg in (_text_config(config), config) if config is not None else ():
        value = getattr(cfg, "hidden_size", None)
        if isinstance(value, int):
            return value
    emb = getattr(model, "get_input_embeddings", None)
    if callable(emb):
        try:
            dim = getattr(emb(), "embedding_dim", None)
        except (NotImplementedError, AttributeError):
            dim = None
        if isinstance(dim, int):
            return dim
    return None


def model_types(model: Any) -> list[str]:
    """``config.model_type`` and, for multimodal models, the text config's type."""
    config = getattr(model, "config", None)
    out: list[str] = []
    for cfg in (config, _text_config(config)) if config is not None else ():
        value = getattr(cfg, "model_type", None)
        if isinstance(value, str) and value and value not in out:
            out.append(value)
    return out


def model_id(model: Any) -> str | None:
    """The id or path the model was loaded from (``config._name_or_path``), if any."""
    config = getattr(model, "config", None)
    for value in (getattr(config, "_name_or_path", None), getattr(model, "name_or_path", None)):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


_HF_CACHE_DIR = re.compile(r"models--([^/\\]+)--([^/\\]+)")


def _id_names(value: str) -> tuple[str, str]:
    """(normalised full id, last path component) of a hub id or a local path."""
    text = value.replace("\\", "/").rstrip("/")
    cached = _HF_CACHE_DIR.search(text)
    if cached:  # .../models--org--name/snapshots/<rev>
        text = f"{cached.group(1)}/{cached.group(2)}"
    return text.lower(), text.rsplit("/", 1)[-1].lower()


def same_model_id(a: str, b: str) -> bool:
    """Whether two model ids name the same model.

    Equal ids match, and so do a local path and a hub id whose last
    components are equal (``/models/Qwen2.5-0.5B`` vs ``Qwen/Qwen2.5-0.5B``).
    """
    full_a, last_a = _id_names(a)
    full_b, last_b = _id_names(b)
    return full_a == full_b or (bool(last_a) and last_a == last_b)


def _mismatch(message: str, code: ErrorCode, hint: str, strict: bool) -> None:
    if strict:
        raise RuntimeCompatError(message, code=code, hint=hint)
    warnings.warn(f"[{code}] {message}", RuntimeWarning, stacklevel=4)
    logger.warning("[%s] %s", code, message)


def check_compatibility(
    model: Any, bundle: BundleLike, layers: ResolvedLayers, *, strict_model_match: bool = True
) -> None:
    """Raise :class:`RuntimeCompatError` if ``bundle`` cannot steer ``model``."""
    binding = bundle.manifest.model
    blocks = getattr(bundle, "blocks", None)  # every block a bundle reads or steers
    layer_index = max(int(b) for b in blocks) if blocks else int(bundle.manifest.layer.index)

    hidden = model_hidden_size(model)
    if hidden is None:
        logger.debug("model hidden size unknown; checked at the first forward pass instead")
    elif hidden != int(binding.hidden_size):
        raise RuntimeCompatError(
            f"the model's hidden size is {hidden} but the bundle was made for hidden size "
            f"{binding.hidden_size}",
            code="MODEL_HIDDEN_SIZE",
            hint="use the bundle with the model it was fitted on",
        )

    n_layers = len(layers.layers)
    if not 0 <= layer_index < n_layers:
        raise RuntimeCompatError(
            f"the bundle steers layer {layer_index} but the model has {n_layers} decoder "
            f"blocks at {layers.path!r} (valid indices 0..{n_layers - 1})",
            code="LAYER_MISSING",
            hint="use the bundle with the model it was fitted on, or check layers_path",
        )

    if binding.num_layers is None:
        logger.debug("bundle does not record a layer count; layer count not compared")
    elif int(binding.num_layers) != n_layers:
        raise RuntimeCompatError(
            f"the model has {n_layers} decoder blocks at {layers.path!r} but the bundle was "
            f"made for a model with {binding.num_layers}",
            code="MODEL_LAYER_COUNT",
            hint="use the bundle with the model it was fitted on, or check layers_path",
        )

    types = model_types(model)
    if not binding.type or not types:
        logger.debug("model type not compared (bundle: %r, model: %r)", binding.type, types or None)
    elif binding.type not in types:
        _mismatch(
            f"the bundle is bound to model type {binding.type!r} but the model is "
            f"{' / '.join(repr(t) for t in types)}",
            "MODEL_TYPE_MISMATCH",
            "use the bundle with the model it was fitted on, or pass "
            "strict_model_match=False to only warn",
            strict_model_match,
        )

    mid = model_id(model)
    config_matches = (
        bool(binding.type)
        and binding.type in types
        and binding.num_layers is not None
        and int(binding.num_layers) == n_layers
        and hidden is not None
    )
    if not binding.id or not mid:
        logger.debug("model id not compared (bundle: %r, model: %r)", binding.id, mid)
    elif not same_model_id(binding.id, mid) and config_matches and os.path.isdir(mid):
        message = (
            f"the bundle is bound to model {binding.id!r}; the local model {mid!r} has the "
            f"bound type {binding.type!r}, {n_layers} layers and hidden size {hidden}, so it is accepted"
        )
        logger.info("[MODEL_ID_MISMATCH] %s", message)
        warnings.warn(f"[MODEL_ID_MISMATCH] {message}", BindingNote, stacklevel=3)
    elif not same_model_id(binding.id, mid):
        unrecorded = not binding.type or binding.num_layers is None
        _mismatch(
            f"the bundle is bound to model {binding.id!r} but the model was loaded from {mid!r}",
            "MODEL_ID_MISMATCH",
            "use the bundle with the model it was fitted on, or pass "
            "strict_model_match=False to only warn"
            + (
                "; a local copy is recognised by its config when the bundle records the model "
                "type and layer count (asa-convert --model-type ... --num-layers ...)"
                if unrecorded
                else ""
            ),
            strict_model_match,
        )
