"""The hidden state inside a decoder block's output, and its layout.

A bundle is fitted on the residual stream of one decoder block: a tensor
``[batch, sequence, hidden]`` (the block returns it alone or as the first
element of a tuple or list). Some architectures carry several residual
streams instead (DeepSeek-V4's hyper-connections: ``[batch, sequence,
streams, hidden]``); such a block has no single hidden state the bundle was
fitted on, so it is refused (``BLOCK_OUTPUT_LAYOUT``), never steered by
guessing a stream.

* :func:`split_block_output` returns the hidden-state tensor of an output and a
  function rebuilding the output around a replacement tensor, and refuses any
  layout other than ``[batch, sequence, hidden]``.
* :func:`classify_layout` names the layout of a shape (``"standard"``,
  ``"multi_stream"`` or ``"unknown"``); :func:`check_layout` raises for a
  layout that cannot be steered.
* :func:`probe_block_output` runs one tiny forward pass with a temporary hook
  on a block to learn its output shape, so that ``attach`` can refuse an
  unsupported layout before registering any steering hook;
  :func:`check_block_output` probes and checks in one call.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from asa_format.errors import RuntimeCompatError

__all__ = [
    "LAYOUT_MULTI_STREAM",
    "LAYOUT_STANDARD",
    "LAYOUT_UNKNOWN",
    "PROBE_BATCH",
    "PROBE_SEQUENCE",
    "BlockOutput",
    "check_block_output",
    "check_layout",
    "classify_layout",
    "first_tensor",
    "probe_block_output",
    "split_block_output",
]

LAYOUT_STANDARD = "standard"  # [batch, sequence, hidden]
LAYOUT_MULTI_STREAM = "multi_stream"  # [batch, sequence, streams, hidden]
LAYOUT_UNKNOWN = "unknown"

# The probe's input is [PROBE_BATCH, PROBE_SEQUENCE] tokens: two different sizes, so a
# sequence-first output ([sequence, batch, hidden]) cannot pass for a standard one.
PROBE_BATCH = 2
PROBE_SEQUENCE = 3

_HINT = (
    "steer a model whose decoder blocks return one [batch, sequence, hidden] residual stream, "
    "or pass layers_path naming such a block list"
)

Rebuild = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class BlockOutput:
    """The hidden state of a block's output, how to rebuild the output, and its layout."""

    hidden: torch.Tensor
    rebuild: Rebuild
    layout: str


def _where(layers_path: str | None, index: int | None) -> str:
    if layers_path is None:
        return "the decoder block" if index is None else f"decoder block {index}"
    return f"{layers_path}.{index}" if index is not None else f"the blocks at {layers_path!r}"


def first_tensor(output: Any) -> tuple[torch.Tensor, Rebuild] | None:
    if isinstance(output, torch.Tensor):
        return output, lambda h: h
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        rest = output[1:]
        if hasattr(output, "_fields"):  # a named tuple: rebuild the same type
            return output[0], lambda h: type(output)(h, *rest)
        return output[0], lambda h: (h, *rest)
    if isinstance(output, list) and output and isinstance(output[0], torch.Tensor):
        rest_list = output[1:]
        return output[0], lambda h: [h, *rest_list]
    if isinstance(output, MutableMapping) and output:
        key = next(iter(output))
        first = output[key]
        if isinstance(first, torch.Tensor):

            def rebuild(h: torch.Tensor) -> Any:
                new: Any = copy.copy(output)  # same type (ModelOutput, OrderedDict, dict)
                new[key] = h
                return new

            return first, rebuild
    return None


def classify_layout(
    shape: tuple[int, ...],
    *,
    hidden_size: int | None = None,
    batch: int | None = None,
    sequence: int | None = None,
) -> str:
    """``"standard"``, ``"multi_stream"`` or ``"unknown"`` for a block output ``shape``.

    Standard is ``[batch, sequence, hidden]``; multi-stream is ``[batch, sequence,
    streams, hidden]`` (DeepSeek-V4) or ``[streams, batch, sequence, hidden]``
    (Gemma-3n's AltUp). ``hidden_size``, ``batch`` and ``sequence``, when given,
    must match; without ``batch`` and ``sequence`` the two multi-stream orders
    cannot be told apart and a 4-D shape counts as multi-stream either way.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) not in (3, 4):
        return LAYOUT_UNKNOWN
    if hidden_size is not None and shape[-1] != int(hidden_size):
        return LAYOUT_UNKNOWN

    def matches(b: int, s: int) -> bool:
        return (batch is None or b == int(batch)) and (sequence is None or s == int(sequence))

    if len(shape) == 3:
        return LAYOUT_STANDARD if matches(shape[0], shape[1]) else LAYOUT_UNKNOWN
    if matches(shape[0], shape[1]) or matches(shape[1], shape[2]):
        return LAYOUT_MULTI_STREAM
    return LAYOUT_UNKNOWN


def _streams(shape: tuple[int, ...], batch: int | None, sequence: int | None) -> tuple[int, str]:
    """Stream count and order of a multi-stream shape."""
    if (
        batch is not None
        and sequence is not None
        and (shape[1], shape[2]) == (batch, sequence)
        and ((shape[0], shape[1]) != (batch, sequence))
    ):
        return shape[0], "[streams, batch, sequence, hidden]"
    return shape[2], "[batch, sequence, streams, hidden]"


def check_layout(
    shape: tuple[int, ...],
    *,
    hidden_size: int | None = None,
    batch: int | None = None,
    sequence: int | None = None,
    layers_path: str | None = None,
    index: int | None = None,
) -> str:
    """Return ``"standard"`` or raise ``RuntimeCompatError`` (``BLOCK_OUTPUT_LAYOUT``)."""
    shape = tuple(int(d) for d in shape)
    layout = classify_layout(shape, hidden_size=hidden_size, batch=batch, sequence=sequence)
    if layout == LAYOUT_STANDARD:
        return layout
    where = _where(layers_path, index)
    path_note = f" (layers_path {layers_path!r})" if layers_path is not None else ""
    if layout == LAYOUT_MULTI_STREAM:
        streams, order = _streams(shape, batch, sequence)
        raise RuntimeCompatError(
            f"{where}{path_note} returns a multi-stream residual of shape {list(shape)} "
            f"({order}, streams={streams}, hidden={shape[3]}): the model carries "
            f"{streams} residual streams, so there is no single hidden state the bundle was "
            "fitted on, and steering one stream would be a guess",
            code="BLOCK_OUTPUT_LAYOUT",
            hint=_HINT,
        )
    expected = (
        f"[{'batch' if batch is None else batch}, {'sequence' if sequence is None else sequence}, "
        f"{'hidden' if hidden_size is None else hidden_size}]"
    )
    raise RuntimeCompatError(
        f"{where}{path_note} returns a hidden state of shape {list(shape)}, expected "
        f"{expected} ([batch, sequence, hidden])",
        code="BLOCK_OUTPUT_LAYOUT",
        hint=_HINT,
    )


def split_block_output(
    output: Any,
    *,
    hidden_size: int | None = None,
    layers_path: str | None = None,
    index: int | None = None,
) -> BlockOutput:
    """The hidden-state tensor of a block's ``output`` and a function rebuilding the output.

    The output is a tensor, or a tuple, list or mapping whose first element is
    the hidden-state tensor. Raises ``RuntimeCompatError`` (``BLOCK_OUTPUT_LAYOUT``)
    when there is no such tensor or its layout is not ``[batch, sequence, hidden]``.
    """
    found = first_tensor(output)
    if found is None:
        raise RuntimeCompatError(
            f"{_where(layers_path, index)} returned {type(output).__name__}; expected a tensor "
            "or a tuple, list or mapping whose first element is the hidden-state tensor",
            code="BLOCK_OUTPUT_LAYOUT",
            hint=_HINT,
        )
    hidden, rebuild = found
    layout = check_layout(
        tuple(hidden.shape), hidden_size=hidden_size, layers_path=layers_path, index=index
    )
    return BlockOutput(hidden, rebuild, layout)


class _ProbeDone(Exception):
    """Raised by the probe hook to stop the forward pass once the block has run."""


def _block_list(layers: Any) -> tuple[nn.ModuleList | nn.Sequential, str | None]:
    path = getattr(layers, "path", None)
    blocks = getattr(layers, "layers", layers)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise TypeError(
            f"layers must be a ResolvedLayers or an nn.ModuleList, got {type(layers).__name__}"
        )
    return blocks, path if isinstance(path, str) else None


def _probe_inputs(model: nn.Module) -> dict[str, Any]:
    device = torch.device("cpu")
    vocab = PROBE_SEQUENCE + 1
    embeddings = getattr(model, "get_input_embeddings", None)
    emb = embeddings() if callable(embeddings) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        device = weight.device
        vocab = int(weight.shape[0])
    else:
        param = next(model.parameters(), None)
        if param is not None:
            device = param.device
    ids = torch.arange(PROBE_BATCH * PROBE_SEQUENCE, device=device).reshape(
        PROBE_BATCH, PROBE_SEQUENCE
    ) % max(vocab, 1)
    kwargs: dict[str, Any] = {"input_ids": ids}
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "attention_mask" in params:
        kwargs["attention_mask"] = torch.ones_like(ids)
    if "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["use_cache"] = False  # the probe needs no cache (hybrid caches may refuse one)
    return kwargs


def probe_block_output(model: nn.Module, layers: Any, index: int) -> tuple[int, ...]:
    """Shape of the hidden-state tensor block ``index`` returns, learned by one tiny forward.

    Runs ``model`` on a ``[PROBE_BATCH, PROBE_SEQUENCE]`` batch of token ids with a
    temporary forward hook on ``layers[index]`` (``layers`` is a ``ResolvedLayers``
    or an ``nn.ModuleList``); the pass stops as soon as the block has run and the
    hook is removed whatever happens. Gradients are off and the model's mode is
    unchanged. Raises ``RuntimeCompatError`` (``BLOCK_OUTPUT_LAYOUT``) when the
    forward pass fails or never reaches the block.
    """
    blocks, path = _block_list(layers)
    if not -len(blocks) <= index < len(blocks):
        raise RuntimeCompatError(
            f"block index {index} is out of range for {len(blocks)} blocks"
            + (f" at {path!r}" if path else ""),
            code="LAYER_MISSING",
        )
    seen: list[tuple[int, ...]] = []
    bad: list[str] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        found = first_tensor(output)
        if found is None:
            bad.append(type(output).__name__)
        else:
            seen.append(tuple(int(d) for d in found[0].shape))
        raise _ProbeDone

    handle = blocks[index].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(**_probe_inputs(model))
    except _ProbeDone:
        pass
    except Exception as exc:
        raise RuntimeCompatError(
            f"a probe forward pass of {type(model).__name__} on token ids of shape "
            f"[{PROBE_BATCH}, {PROBE_SEQUENCE}] failed before {_where(path, index)} ran, so its "
            f"output layout is unknown: {type(exc).__name__}: {exc}",
            code="BLOCK_OUTPUT_LAYOUT",
            hint="the model must run on input_ids alone; " + _HINT,
        ) from exc
    finally:
        handle.remove()
    if bad:
        raise RuntimeCompatError(
            f"{_where(path, index)} returned {bad[0]}; expected a tensor or a tuple, list or "
            "mapping whose first element is the hidden-state tensor",
            code="BLOCK_OUTPUT_LAYOUT",
            hint=_HINT,
        )
    if not seen:
        raise RuntimeCompatError(
            f"a probe forward pass of {type(model).__name__} never ran {_where(path, index)}: "
            "the block is not on the model's forward path",
            code="BLOCK_OUTPUT_LAYOUT",
            hint="check layers_path: it must name the list of decoder blocks the model runs",
        )
    return seen[0]


def check_block_output(
    model: nn.Module, layers: Any, index: int, *, hidden_size: int | None = None
) -> tuple[int, ...]:
    """Probe block ``index`` and refuse any layout but ``[batch, sequence, hidden]``.

    Returns the probed shape; raises ``RuntimeCompatError`` (``BLOCK_OUTPUT_LAYOUT``).
    Call it before registering steering hooks.
    """
    shape = probe_block_output(model, layers, index)
    _, path = _block_list(layers)
    check_layout(
        shape,
        hidden_size=hidden_size,
        batch=PROBE_BATCH,
        sequence=PROBE_SEQUENCE,
        layers_path=path,
        index=index,
    )
    return shape
