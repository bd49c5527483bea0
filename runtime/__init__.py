"""Apply an asa-bundle to a decoder layer of a Hugging Face transformers model.

    from asa_format.runtime import attach

    with attach(model, "path/to/bundle") as handle:
        out = model.generate(**inputs)
    print(handle.last.rows)

Requires torch and transformers (the ``runtime`` extra).
"""

from __future__ import annotations

if __name__ != "asa_format.runtime":  # pragma: no cover - guards against a second copy
    raise ImportError(
        f"{__name__!r} is the asa_format.runtime package seen under another name; import asa_format.runtime"
    )

from asa_format.runtime.compat import (
    check_compatibility,
    model_hidden_size,
    model_id,
    model_types,
    same_model_id,
)
from asa_format.runtime.interventions import InterventionHandle, attach_interventions  # format 1.1
from asa_format.runtime.layers import KNOWN_LAYER_PATHS, ResolvedLayers, resolve_layers
from asa_format.runtime.records import GenerationRecord
from asa_format.runtime.steering import SteeringHandle, attach

__all__ = [
    "KNOWN_LAYER_PATHS",
    "GenerationRecord",
    "InterventionHandle",
    "ResolvedLayers",
    "SteeringHandle",
    "attach",
    "attach_interventions",
    "check_compatibility",
    "model_hidden_size",
    "model_id",
    "model_types",
    "resolve_layers",
    "same_model_id",
]
