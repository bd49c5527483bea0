"""Find the list of text decoder blocks of a causal language model.

Resolution order:

1. an explicit ``layers_path`` (dotted attribute path, e.g. ``"model.layers"``);
2. the known paths of common architectures (:data:`KNOWN_LAYER_PATHS`), each
   accepted only when its length equals the text config's layer count (when
   the model has a config that states one);
3. a structural search: the ``nn.ModuleList`` whose length equals the text
   config's layer count (``num_hidden_layers`` / ``n_layer`` / ``num_layers`` /
   ``n_layers`` of ``config.get_text_config()``), that sits on the path from
   the input embeddings (``get_input_embeddings()``) to the LM head, i.e. the
   list sharing the longest module-path prefix with the input embeddings, and
   that is not part of a vision, audio or other non-text tower (judged on the
   part of its path below that shared prefix), nor of the LM head. Lists
   nested in another candidate (MoE experts, ...) are parts of a block.

When several lists remain equally plausible the model is refused
(``LAYERS_NOT_FOUND``) with the candidates listed: the caller names the right
one with ``layers_path``. Nothing is guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from asa_format.errors import RuntimeCompatError

__all__ = [
    "KNOWN_LAYER_PATHS",
    "LAYER_COUNT_KEYS",
    "ResolvedLayers",
    "resolve_layers",
    "text_layer_count",
    "text_layer_counts",
]

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

# Path components that mark a non-text tower; never chosen by the structural search.
_NON_TEXT_MARKERS = (
    "vision",
    "visual",
    "image",
    "audio",
    "speech",
    "video",
    "patch",
    "vit",
    "mm_projector",
    "multi_modal_projector",
    "perceiver",
    "resampler",
    "sound",
    "mel",
)

# Config attributes holding the layer count, in order of precedence. A config that holds
# both an encoder and a decoder (BART, ...) and builds a causal LM from the decoder states
# its decoder's count in ``decoder_layers``.
LAYER_COUNT_KEYS: tuple[str, ...] = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
)
_DECODER_COUNT_KEYS: tuple[str, ...] = ("decoder_layers", "num_decoder_layers")

_HINT = (
    "pass layers_path='a.b.c' (the dotted path of the nn.ModuleList of text decoder blocks; "
    "the CLI takes --layers-path)"
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


def _as_count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return int(value)


def text_layer_counts(config: Any) -> tuple[int, ...]:
    """The layer counts the text config of ``config`` states, most authoritative first.

    Reads ``num_hidden_layers`` / ``n_layer`` / ``num_layers`` / ``n_layers`` of
    ``config.get_text_config()`` (``decoder_layers`` first for a decoder built from
    an encoder-decoder config such as BART's). Most configs state one count; a few
    state two (LongCat-Flash: ``num_layers`` blocks of two sub-layers each, counted
    in ``num_hidden_layers``). Empty when the config states none.
    """
    if config is None:
        return ()
    text = config
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            text = getter()
        except (AttributeError, TypeError, ValueError):
            text = config
    keys = LAYER_COUNT_KEYS
    if not getattr(text, "is_encoder_decoder", False) and any(
        _as_count(getattr(text, k, None)) for k in _DECODER_COUNT_KEYS
    ):
        keys = _DECODER_COUNT_KEYS + LAYER_COUNT_KEYS
    counts: list[int] = []
    for key in keys:
        count = _as_count(getattr(text, key, None))
        if count is not None and count not in counts:
            counts.append(count)
    return tuple(counts)


def text_layer_count(config: Any) -> int | None:
    """The first (most authoritative) of :func:`text_layer_counts`, or None."""
    counts = text_layer_counts(config)
    return counts[0] if counts else None


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


def _is_non_text(parts: list[str]) -> bool:
    return any(marker in part.lower() for part in parts for marker in _NON_TEXT_MARKERS)


def _embedding(model: nn.Module, getter: str) -> Any:
    fn = getattr(model, getter, None)
    if fn is None:
        return None
    try:
        return fn()
    except (NotImplementedError, AttributeError, TypeError):
        return None


def _is_composite(layers: nn.ModuleList) -> bool:
    """A decoder block holds submodules (attention, MLP, norms); a leaf module is no block."""
    return any(next(block.children(), None) is not None for block in layers)


def _outermost(lists: list[tuple[str, nn.ModuleList]]) -> list[tuple[str, nn.ModuleList]]:
    return [(n, m) for n, m in lists if not any(n != o and n.startswith(o + ".") for o, _ in lists)]


@dataclass(frozen=True)
class _Search:
    """What the structural search saw: the chosen list, or why there is none."""

    found: tuple[str, nn.ModuleList] | None
    candidates: tuple[tuple[str, int], ...]  # equally plausible (path, length) when ambiguous
    lists: tuple[tuple[str, int], ...]  # every non-empty ModuleList (path, length)
    expected: int | None
    embeddings: str | None


def _search(model: nn.Module, counts: tuple[int, ...]) -> _Search:
    emb_name = _module_name(model, _embedding(model, "get_input_embeddings"))
    head_name = _module_name(model, _embedding(model, "get_output_embeddings"))
    every = [(n, m) for n, m in model.named_modules() if n and _is_block_list(m)]
    seen = tuple((n, len(m)) for n, m in every)
    lists = [
        (n, m)
        for n, m in every
        if not (head_name and (n == head_name or n.startswith(head_name + ".")))
    ]
    expected = counts[0] if counts else None
    if counts:
        # The most authoritative count first; another stated count only if none has it.
        for count in counts:
            matching = [(n, m) for n, m in lists if len(m) == count]
            if matching:
                expected = count
                break
        lists = matching
    lists = _outermost(lists)
    emb_parts = emb_name.split(".") if emb_name else []
    scored: list[tuple[int, str, nn.ModuleList]] = []
    for name, mod in lists:
        parts = name.split(".")
        shared = _common_prefix(parts, emb_parts)
        if _is_non_text(parts[shared:]) and not _is_non_text(emb_parts):
            continue
        scored.append((shared, name, mod))
    if emb_parts and len(emb_parts) > 1:
        # The list must share the embeddings' top-level module, if they have one.
        scored = [s for s in scored if s[0] >= 1]
    if not scored:
        return _Search(None, (), seen, expected, emb_name)
    top = max(s[0] for s in scored)
    best = [s for s in scored if s[0] == top]
    if len(best) > 1:
        composite = [s for s in best if _is_composite(s[2])]
        if composite:
            best = composite
    if len(best) > 1:
        return _Search(None, tuple((n, len(m)) for _, n, m in best), seen, expected, emb_name)
    return _Search((best[0][1], best[0][2]), (), seen, expected, emb_name)


def _structural(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The block list the structural search picks, or None."""
    return _search(model, text_layer_counts(getattr(model, "config", None))).found


def _listing(items: tuple[tuple[str, int], ...], limit: int = 12) -> str:
    shown = ", ".join(f"{n!r} ({k})" for n, k in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _override(model: nn.Module, layers_path: str) -> ResolvedLayers:
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


def resolve_layers(model: nn.Module, layers_path: str | None = None) -> ResolvedLayers:
    """Return the ``nn.ModuleList`` of text decoder blocks of ``model``.

    Raises :class:`RuntimeCompatError` (code ``LAYERS_NOT_FOUND``) saying what
    was tried, listing the candidates when several are equally plausible, and
    how to pass ``layers_path`` explicitly.
    """
    if layers_path is not None:
        return _override(model, layers_path)

    counts = text_layer_counts(getattr(model, "config", None))
    mismatched: list[tuple[str, int]] = []
    for path in KNOWN_LAYER_PATHS:
        try:
            obj = _get_path(model, path)
        except (AttributeError, IndexError):
            continue
        if not _is_block_list(obj):
            continue
        if counts and len(obj) not in counts:
            mismatched.append((path, len(obj)))
            logger.debug(
                "known path %r holds %d modules, not the text config's %s layers",
                path,
                len(obj),
                " or ".join(map(str, counts)),
            )
            continue
        logger.debug("decoder blocks found at known path %r", path)
        return ResolvedLayers(path, obj, "known")

    search = _search(model, counts)
    if search.found is not None:
        logger.debug("decoder blocks found structurally at %r", search.found[0])
        return ResolvedLayers(search.found[0], search.found[1], "structural")

    name = type(model).__name__
    count = (
        f"the text config's {' or '.join(map(str, counts))} layers"
        if counts
        else "a layer count (the model has no config stating one)"
    )
    if search.candidates:
        raise RuntimeCompatError(
            f"{name} has several equally plausible decoder block lists with {count}: "
            f"{_listing(search.candidates)}; refusing to guess",
            code="LAYERS_NOT_FOUND",
            hint=_HINT,
        )
    detail = (
        f"; its nn.ModuleLists: {_listing(search.lists)}"
        if search.lists
        else ("; it has no non-empty nn.ModuleList")
    )
    if mismatched:
        detail += "; known paths of another length: " + _listing(tuple(mismatched))
    raise RuntimeCompatError(
        f"could not find the decoder block list of {name}: tried the known paths "
        f"{', '.join(KNOWN_LAYER_PATHS)} and the nn.ModuleList with {count} between the "
        f"input embeddings and the LM head, outside vision / audio towers{detail}",
        code="LAYERS_NOT_FOUND",
        hint=_HINT,
    )
