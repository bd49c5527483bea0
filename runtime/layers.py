"""Find the list of text decoder blocks of a causal language model.

Resolution order:

1. an explicit ``layers_path`` (dotted attribute path, e.g. ``"model.layers"``);
2. the known paths of common architectures (:data:`KNOWN_LAYER_PATHS`);
3. a structural fallback: among the ``nn.ModuleList`` objects of the model,
   the block list that sits on the path from the input embeddings
   (``get_input_embeddings()``) to the LM head (``get_output_embeddings()``),
   i.e. the list sharing the longest module-path prefix with the input
   embeddings; vision, audio and other non-text towers are never chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from asa_format.errors import RuntimeCompatError

__all__ = ["KNOWN_LAYER_PATHS", "ResolvedLayers", "resolve_layers"]

logger = logging.getLogger("asa_format.runtime")

KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2, Mistral, Gemma, Phi, LFM2, ...
    "model.model.layers",
    "transformer.h",  # GPT-2, Falcon, Bloom, GPT-J
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "transformer.layers",
    "model.language_model.layers",  # Gemma3, Llava, Qwen2-VL, Mistral3 (transformers 5)
    "language_model.model.layers",  # multimodal wrappers (older layout)
    "model.language_model.model.layers",
    "language_model.layers",
    "model.text_model.layers",
    "backbone.layers",  # Mamba-style
    "layers",
    "h",
)

# Path components that mark a non-text tower; never chosen by the fallback.
_NON_TEXT_MARKERS = (
    "vision", "visual", "image", "audio", "speech", "video", "patch", "vit", "mm_projector",
    "multi_modal_projector", "encoder",
)


@dataclass(frozen=True)
class ResolvedLayers:
    """The decoder block list of a model and how it was found."""

    path: str  # dotted attribute path from the model
    layers: nn.ModuleList
    source: str  # "override", "known" or "structural"

    def __len__(self) -> int:
        return len(self.layers)


def _get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        if not part:
            raise AttributeError(path)
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential)):
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def _is_block_list(obj: Any) -> bool:
    return isinstance(obj, nn.ModuleList) and len(obj) > 0


def _module_name(model: nn.Module, target: Any) -> str | None:
    if target is None:
        return None
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _is_non_text(name: str) -> bool:
    parts = name.lower().split(".")
    return any(marker in part for part in parts for marker in _NON_TEXT_MARKERS)


def _embedding(model: nn.Module, getter: str) -> Any:
    fn = getattr(model, getter, None)
    if fn is None:
        return None
    try:
        return fn()
    except (NotImplementedError, AttributeError, TypeError):
        return None


def _structural(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """Pick the block list on the path from the input embeddings to the LM head."""
    emb_name = _module_name(model, _embedding(model, "get_input_embeddings"))
    if not emb_name:
        return None
    head_name = _module_name(model, _embedding(model, "get_output_embeddings"))
    emb_parts = emb_name.split(".")
    lists = [(n, m) for n, m in model.named_modules() if n and _is_block_list(m)]
    # Keep only outermost lists: block lists nested inside another list (MoE experts, ...)
    # are parts of a block, not the block list.
    outer = [
        (n, m) for n, m in lists
        if not any(n != o and n.startswith(o + ".") for o, _ in lists)
    ]
    best: tuple[tuple[int, int, int], str, nn.ModuleList] | None = None
    for name, mod in outer:
        if _is_non_text(name) and not _is_non_text(emb_name):
            continue
        parts = name.split(".")
        if head_name is not None and name.startswith(head_name + "."):
            continue
        score = (_common_prefix(parts, emb_parts), -len(parts), len(mod))
        if best is None or score > best[0]:
            best = (score, name, mod)
    if best is None or best[0][0] < min(1, len(emb_parts) - 1):
        # The list must share the embeddings' top-level module, if they have one.
        return None
    return best[1], best[2]


def resolve_layers(model: nn.Module, layers_path: str | None = None) -> ResolvedLayers:
    """Return the ``nn.ModuleList`` of text decoder blocks of ``model``.

    Raises :class:`RuntimeCompatError` (code ``LAYERS_NOT_FOUND``) saying what
    was tried and how to pass ``layers_path`` explicitly.
    """
    if layers_path is not None:
        try:
            obj = _get_path(model, layers_path)
        except (AttributeError, IndexError) as exc:
            raise RuntimeCompatError(
                f"layers_path {layers_path!r} does not exist on {type(model).__name__}",
                code="LAYERS_NOT_FOUND",
                hint="give the dotted attribute path of the nn.ModuleList of decoder blocks, "
                "e.g. 'model.layers'",
            ) from exc
        if not _is_block_list(obj):
            raise RuntimeCompatError(
                f"layers_path {layers_path!r} is a {type(obj).__name__}, not a non-empty "
                "nn.ModuleList of decoder blocks",
                code="LAYERS_NOT_FOUND",
                hint="point layers_path at the nn.ModuleList holding the decoder blocks",
            )
        return ResolvedLayers(layers_path, obj, "override")

    for path in KNOWN_LAYER_PATHS:
        try:
            obj = _get_path(model, path)
        except (AttributeError, IndexError):
            continue
        if _is_block_list(obj):
            logger.debug("decoder blocks found at known path %r", path)
            return ResolvedLayers(path, obj, "known")

    found = _structural(model)
    if found is not None:
        logger.debug("decoder blocks found structurally at %r", found[0])
        return ResolvedLayers(found[0], found[1], "structural")

    raise RuntimeCompatError(
        f"could not find the decoder block list of {type(model).__name__}: tried the known "
        f"paths {', '.join(KNOWN_LAYER_PATHS)} and the nn.ModuleList between the input "
        "embeddings and the LM head",
        code="LAYERS_NOT_FOUND",
        hint="pass layers_path='a.b.c' (the dotted path of the nn.ModuleList of decoder blocks; "
        "the CLI takes --layers-path)",
    )
