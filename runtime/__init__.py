"""Apply an asa-bundle to a decoder layer of a Hugging Face transformers model.

    from asa_format.runtime import attach

    with attach(model, "path/to/bundle") as handle:
        out = model.generate(**inputs)
    print(handle.last.rows)

Requires torch and transformers (the ``runtime`` extra).
"""

from __future__ import annotations

from .compat import check_compatibility, model_hidden_size, model_id, model_types, same_model_id
from .layers import KNOWN_LAYER_PATHS, ResolvedLayers, resolve_layers
from .records import GenerationRecord
from .steering import SteeringHandle, attach

__all__ = [
    "KNOWN_LAYER_PATHS",
    "GenerationRecord",
    "ResolvedLayers",
    "SteeringHandle",
    "attach",
    "check_compatibility",
    "model_hidden_size",
    "model_id",
    "model_types",
    "resolve_layers",
    "same_model_id",
]
