"""What one call of the model carries, found by behaviour rather than by keyword.

transformers renames forward arguments between releases (``past_key_values``
became ``cache`` in 5.24; ``cache_position`` disappeared from generation
calls). :func:`gather` therefore looks at every argument, positional or
keyword, and recognises:

* a **cache**: any object with a callable ``get_seq_length`` (every
  ``transformers.Cache`` and the model-specific hybrid caches), or a legacy
  tuple cache (a sequence of per-layer sequences whose first item is a 4-D
  tensor); its length is read *before* the pass;
* the **attention mask**: the argument bound to ``attention_mask`` (2-D
  ``[batch, past + query]`` or 4-D ``[batch, 1, query, keys]``);
* ``cache_position`` (older releases): a 1-D integer tensor;
* the number of trailing positions whose logits are asked for
  (``logits_to_keep`` / ``num_logits_to_keep``): assisted generation asks for
  ``k + 1`` of them on a pass that carries ``k`` candidate tokens;
* the input tokens (``input_ids`` or ``inputs_embeds``), to recognise a
  pass that re-reads a sequence seen before (``use_cache=False``).

Anything that looks like a cache but cannot be read is reported in
:attr:`CallEvidence.unreadable`; the classifier then refuses to classify the
pass (it is not steered). Nothing here guesses.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CallEvidence", "cache_key", "cache_length", "find_caches", "gather", "output_cache"]

# Names under which releases have passed the number of trailing logits to compute.
_LOGITS_TO_KEEP = ("logits_to_keep", "num_logits_to_keep")
_TOKEN_NAMES = ("input_ids", "inputs_embeds")
_NOT_CACHES = frozenset({"use_cache", "cache_position", "cache_implementation"})


@dataclass
class CallEvidence:
    """The facts of one call that tell a prefill from a decode step."""

    cache: Any = None  # the cache object given to the call, or None
    past_from_cache: int | None = None  # tokens the cache held before the call
    attention_mask: torch.Tensor | None = None  # 2-D or 4-D, as given
    cache_position: torch.Tensor | None = None
    logits_to_keep: int | None = None  # None when absent or 0 (all positions)
    tokens: torch.Tensor | None = None  # input_ids or inputs_embeds
    unreadable: list[str] = field(default_factory=list)  # why the call cannot be classified

    @property
    def mask_2d(self) -> torch.Tensor | None:
        """The attention mask when it is the 2-D ``[batch, past + query]`` kind."""
        mask = self.attention_mask
        return mask if mask is not None and mask.dim() == 2 else None


def _is_legacy_cache(value: Any) -> bool:
    if not isinstance(value, (tuple, list)) or not value:
        return False
    first = value[0]
    return (
        isinstance(first, (tuple, list))
        and len(first) > 0
        and isinstance(first[0], torch.Tensor)
        and first[0].dim() == 4
    )


def _is_cache(value: Any) -> bool:
    return callable(getattr(value, "get_seq_length", None)) or _is_legacy_cache(value)


def cache_length(cache: Any) -> int | None:
    """Tokens held by ``cache`` (``None`` when it cannot tell)."""
    getter = getattr(cache, "get_seq_length", None)
    if callable(getter):
        try:
            value = getter()
        except Exception:  # a cache type that cannot report its length
            return None
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                return None
            value = value.item()
        try:
            length = int(value)
        except (TypeError, ValueError):
            return None
        return length if length >= 0 else None
    if _is_legacy_cache(cache):
        try:
            return int(cache[0][0].shape[-2])
        except (IndexError, TypeError, AttributeError):
            return None
    return None


def cache_key(cache: Any) -> Any:
    """A weak-referenceable identity of ``cache``.

    A ``Cache`` object is its own key. A legacy tuple cannot be weakly
    referenced and is rebuilt by the model on every call, but its first key
    tensor is handed back unchanged as the next call's input: that tensor is
    the key.
    """
    if _is_legacy_cache(cache):
        return cache[0][0]
    return cache


def _arguments(
    signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    if signature is not None and args:
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = None
        if bound is not None:
            out: dict[str, Any] = {}
            for name, value in bound.items():
                param = signature.parameters.get(name)
                if param is not None and param.kind is inspect.Parameter.VAR_KEYWORD:
                    out.update(value)
                elif param is not None and param.kind is inspect.Parameter.VAR_POSITIONAL:
                    for i, item in enumerate(value):
                        out[f"*{i}"] = item
                else:
                    out[name] = value
            return out
    out = dict(kwargs)
    for i, item in enumerate(args):
        out[f"#{i}"] = item
    return out


def find_caches(values: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The (name, value) pairs that are caches."""
    for name, value in values:
        if value is not None and name not in _NOT_CACHES and _is_cache(value):
            yield name, value


def gather(
    signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> CallEvidence:
    """Collect the :class:`CallEvidence` of one call of the top-level model."""
    call = _arguments(signature, args, kwargs)
    ev = CallEvidence()
    caches = list(find_caches(call.items()))
    distinct = {id(cache_key(v)): (n, v) for n, v in caches}
    if len(distinct) > 1:
        names = ", ".join(sorted(n for n, _ in distinct.values()))
        ev.unreadable.append(f"the call carries several cache objects ({names})")
    elif distinct:
        name, ev.cache = next(iter(distinct.values()))
        ev.past_from_cache = cache_length(ev.cache)
        if ev.past_from_cache is None:
            ev.unreadable.append(
                f"the cache passed as {name!r} ({type(ev.cache).__name__}) cannot report its length"
            )
    for name, value in call.items():
        lowered = name.lower()
        if (
            value is not None
            and not isinstance(value, bool)
            and name not in _NOT_CACHES
            and ("cache" in lowered or "past" in lowered)
            and not _is_cache(value)
        ):
            ev.unreadable.append(
                f"argument {name!r} looks like a cache but is a {type(value).__name__} this "
                "runtime cannot read"
            )

    mask = call.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        if mask.dim() in (2, 4):
            ev.attention_mask = mask
        else:
            ev.unreadable.append(f"the attention mask has {mask.dim()} dimensions")
    elif mask is not None:
        ev.unreadable.append(f"the attention mask is a {type(mask).__name__}")

    position = call.get("cache_position")
    if isinstance(position, torch.Tensor):
        if position.dim() == 1 and not position.is_floating_point():
            ev.cache_position = position
        else:
            ev.unreadable.append(f"cache_position has shape {tuple(position.shape)}")

    for name in _LOGITS_TO_KEEP:
        keep = call.get(name)
        if keep is None or isinstance(keep, bool):
            continue
        if isinstance(keep, int):
            ev.logits_to_keep = keep if keep > 0 else None
        elif isinstance(keep, torch.Tensor) and keep.dim() == 0:
            ev.logits_to_keep = int(keep.item()) or None
        else:
            ev.unreadable.append(
                f"{name} is a {type(keep).__name__}: the candidate tokens of the call are unknown"
            )

    for name in _TOKEN_NAMES:
        value = call.get(name)
        if isinstance(value, torch.Tensor):
            ev.tokens = value
            break
    if ev.tokens is None and isinstance(call.get("#0"), torch.Tensor):
        ev.tokens = call["#0"]
    return ev


def output_cache(output: Any) -> Any:
    """The cache a model call returned (any field name), or None."""
    values: Iterable[Any]
    if isinstance(output, dict):  # ModelOutput is an OrderedDict
        values = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        values = (getattr(output, "past_key_values", None), getattr(output, "cache", None))
    for value in values:
        if value is not None and _is_cache(value):
            return value
    return None
