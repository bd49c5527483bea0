"""Apply bundles of every kind to the decoder blocks of a Hugging Face transformers model.

    from asa_format.runtime import attach

    with attach(model, "path/to/bundle") as handle:
        out = model.generate(**inputs)
    print(handle.last.rows)

    with attach(model, bundles={"cv": "control-vector/", "asa": "asa-bundle/"}) as handle:
        with handle.select(["cv", "asa", None]):  # per row: a bundle, or none
            out = model.generate(**batch)

Requires torch and transformers (the ``runtime`` extra).
"""

from __future__ import annotations

if __name__ != "asa_format.runtime":  # pragma: no cover - guards against a second copy
    raise ImportError(
        f"{__name__!r} is the asa_format.runtime package seen under another name; import asa_format.runtime"
    )

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asa_format.runtime.compat import (
        check_compatibility,
        model_hidden_size,
        model_id,
        model_types,
        same_model_id,
    )
    from asa_format.runtime.handle import SteeringHandle, attach
    from asa_format.runtime.layers import KNOWN_LAYER_PATHS, ResolvedLayers, resolve_layers
    from asa_format.runtime.records import GenerationRecord
    from asa_format.runtime.steering import SteeringSkippedWarning

# name -> module; imported on first use, so that `asa run --help` and the
# other commands work without torch (the package itself imports nothing heavy)
_EXPORTS = {
    "KNOWN_LAYER_PATHS": "layers",
    "GenerationRecord": "records",
    "ResolvedLayers": "layers",
    "SteeringHandle": "handle",
    "SteeringSkippedWarning": "steering",
    "attach": "handle",
    "check_compatibility": "compat",
    "model_hidden_size": "compat",
    "model_id": "compat",
    "model_types": "compat",
    "resolve_layers": "layers",
    "same_model_id": "compat",
}

__all__ = [
    "KNOWN_LAYER_PATHS",
    "GenerationRecord",
    "ResolvedLayers",
    "SteeringHandle",
    "SteeringSkippedWarning",
    "attach",
    "check_compatibility",
    "model_hidden_size",
    "model_id",
    "model_types",
    "resolve_layers",
    "same_model_id",
]


def attach_interventions(model: Any, bundle_or_path: Any, **kwargs: Any) -> Any:
    """:func:`attach` (deprecated name, kept for one minor version)."""
    import warnings

    warnings.warn(
        "asa_format.runtime.attach_interventions is deprecated: use asa_format.runtime.attach "
        "(one runtime for every bundle kind)",
        DeprecationWarning,
        stacklevel=2,
    )
    from asa_format.runtime.handle import attach

    return attach(model, bundle_or_path, **kwargs)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asa_format.runtime' has no attribute {name!r}")
    try:
        value = getattr(import_module(f"asa_format.runtime.{module}"), name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(
                f"asa_format.runtime needs torch and transformers ({exc.name} is not installed): "
                'pip install "asa-format[runtime]"',
                name=exc.name,
            ) from exc
        raise
    globals()[name] = value
    return value
