"""Python steering objects to bundle contents (duck-typed: the libraries are not imported).

- repeng ``ControlVector``: ``model_type`` and ``directions`` (block -> numpy
  vector); ``ControlModel.set_control(cv, coeff)`` adds ``coeff x direction``
  to the output of each listed block at every (non-padding) position.
- steering-vectors ``SteeringVector``: ``layer_activations`` (block -> torch
  tensor) and ``layer_type`` (``"decoder_block"``); ``apply(model,
  multiplier)`` adds ``multiplier x activation`` to the block outputs at every
  position.

Both become one ``always`` intervention with ``coefficient`` = the strength
(default 1.0) and policy ``all_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from asa_format.errors import ConversionError
from asa_format.format.contents import BundleContents
from asa_format.interop.binding import ImportBinding, check_import_args, make_contents

__all__ = ["from_repeng", "from_steering_vectors"]


def _as_numpy(value: Any, where: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: float32 on the CPU, without importing torch
        value = value.detach().to("cpu").float().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise ConversionError(
            f"{where} is not an array: {type(value).__name__}",
            code="IMPORT_INVALID",
            hint="pass the library's own object",
        ) from exc
    if arr.dtype.kind not in "fiu":
        raise ConversionError(
            f"{where} has dtype {arr.dtype}",
            code="IMPORT_INVALID",
            hint="directions are float vectors",
        )
    return arr


def _blocks(mapping: Any, what: str) -> dict[int, Any]:
    if not isinstance(mapping, Mapping):
        raise ConversionError(
            f"{what} is a {type(mapping).__name__}, expected a dict block -> vector",
            code="IMPORT_INVALID",
            hint="pass the library's own object",
        )
    out: dict[int, Any] = {}
    for k, v in mapping.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 0:
            raise ConversionError(
                f"{what} key {k!r} is not a non-negative block index",
                code="IMPORT_INVALID",
                hint="negative indices must be resolved against the model first",
            )
        out[int(k)] = v
    return out


def from_repeng(
    vector: Any,
    binding: ImportBinding | None = None,
    *,
    name: str = "control",
    coefficient: float = 1.0,
    card: bool = True,
) -> BundleContents:
    """A repeng ``ControlVector`` as bundle contents (``coefficient`` is repeng's ``coeff``)."""
    check_import_args(binding, name, coefficient, card, name_required=True)
    if not hasattr(vector, "directions") or not hasattr(vector, "model_type"):
        raise ConversionError(
            f"{type(vector).__name__} has no directions/model_type",
            code="IMPORT_UNKNOWN_KIND",
            hint="pass a repeng ControlVector",
        )
    dirs = {
        b: _as_numpy(v, f"directions[{b}]")
        for b, v in _blocks(vector.directions, "directions").items()
    }
    hint = vector.model_type if isinstance(vector.model_type, str) else None
    return make_contents(
        name,
        dirs,
        binding or ImportBinding(),
        model_hint=hint,
        source="repeng.ControlVector",
        coefficient=coefficient,
        card=card,
    )


def from_steering_vectors(
    vector: Any,
    binding: ImportBinding | None = None,
    *,
    name: str = "steering-vector",
    multiplier: float = 1.0,
    card: bool = True,
) -> BundleContents:
    """A steering-vectors ``SteeringVector`` as bundle contents (``multiplier`` as in ``apply``)."""
    check_import_args(binding, name, multiplier, card, name_required=True)
    if not hasattr(vector, "layer_activations"):
        raise ConversionError(
            f"{type(vector).__name__} has no layer_activations",
            code="IMPORT_UNKNOWN_KIND",
            hint="pass a steering_vectors.SteeringVector",
        )
    layer_type = getattr(vector, "layer_type", "decoder_block")
    if layer_type != "decoder_block":
        raise ConversionError(
            f"the steering vector acts on {layer_type!r} layers; a bundle steers decoder block outputs",
            code="IMPORT_INVALID",
            hint="train the vector with layer_type='decoder_block'",
        )
    dirs = {
        b: _as_numpy(v, f"layer_activations[{b}]")
        for b, v in _blocks(vector.layer_activations, "layer_activations").items()
    }
    return make_contents(
        name,
        dirs,
        binding or ImportBinding(),
        model_hint=None,
        source="steering_vectors.SteeringVector",
        coefficient=multiplier,
        card=card,
    )
