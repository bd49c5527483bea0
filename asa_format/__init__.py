"""asa-format: portable, secure bundles of activation-steering (ASA) assets.

Public API::

    from asa_format import load_bundle, save_bundle, validate_bundle
    bundle = load_bundle("my-bundle/")          # verified, sessions ready
    decisions = bundle.decide(hidden_states)    # [N, H] -> per-row domain, p, gate
    v = bundle.steering_vector("search")        # mixed, normalized float32 [H]

    contents = bundle.to_contents()             # or read_bundle_contents("my-bundle/")
    save_bundle(dataclasses.replace(contents, steering=...), "edited/")

    key = load_private_key("key.pem")           # ECDSA P-256/384/521
    sign_bundle("my-bundle/", key)              # writes my-bundle/model.sig
    verify_bundle_signature("my-bundle/", trusted_keys=["key.pub"])
    load_bundle("my-bundle/", trusted_keys=["key.pub"])

Every error is an :class:`AsaError` with a stable ``code`` (:data:`ErrorCode`);
the class tells its category (:class:`BundleError`, :class:`SignatureError`,
:class:`DecisionError`, ...). ``asa_format.converters`` turns legacy pickle
bundles and in-memory scikit-learn objects into bundles;
``asa_format.runtime`` applies a bundle to a Hugging Face transformers model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), so that ``import asa_format`` (and
# every ``asa_format.X`` module, the command-line entry points first of all) starts in a
# millisecond: ``asa_format.entry`` installs its signal handlers before anything heavy loads.
if TYPE_CHECKING:
    from asa_format.bundle import Bundle, Decision, DecisionBatch, load_bundle, read_bundle_contents
    from asa_format.digest import root_digest
    from asa_format.errors import (
        CODES,
        AsaError,
        BundleError,
        ConversionError,
        DecisionError,
        DigestMismatchError,
        ErrorCode,
        LegacyFormatError,
        ParityError,
        Problem,
        RuntimeCompatError,
        SignatureError,
        UnsafePickleError,
        UsageError,
    )
    from asa_format.intervention_bundle import (
        InterventionBundle,
        InterventionContents,
        InterventionData,
        load_interventions,
    )
    from asa_format.manifest import Manifest, ModelBinding, Provenance, Steering
    from asa_format.signing import (
        VerifiedSignature,
        load_private_key,
        load_public_key,
        sign_bundle,
        verify_bundle_signature,
    )
    from asa_format.validate import ValidationReport, validate_bundle
    from asa_format.writer import BundleContents, save_bundle

_EXPORTS: dict[str, str] = {
    "Bundle": "asa_format.bundle",
    "Decision": "asa_format.bundle",
    "DecisionBatch": "asa_format.bundle",
    "load_bundle": "asa_format.bundle",
    "read_bundle_contents": "asa_format.bundle",
    "root_digest": "asa_format.digest",
    "CODES": "asa_format.errors",
    "AsaError": "asa_format.errors",
    "BundleError": "asa_format.errors",
    "ConversionError": "asa_format.errors",
    "DecisionError": "asa_format.errors",
    "DigestMismatchError": "asa_format.errors",
    "ErrorCode": "asa_format.errors",
    "LegacyFormatError": "asa_format.errors",
    "ParityError": "asa_format.errors",
    "Problem": "asa_format.errors",
    "RuntimeCompatError": "asa_format.errors",
    "SignatureError": "asa_format.errors",
    "UnsafePickleError": "asa_format.errors",
    "UsageError": "asa_format.errors",
    "InterventionBundle": "asa_format.intervention_bundle",
    "InterventionContents": "asa_format.intervention_bundle",
    "InterventionData": "asa_format.intervention_bundle",
    "load_interventions": "asa_format.intervention_bundle",
    "Manifest": "asa_format.manifest",
    "ModelBinding": "asa_format.manifest",
    "Provenance": "asa_format.manifest",
    "Steering": "asa_format.manifest",
    "VerifiedSignature": "asa_format.signing",
    "load_private_key": "asa_format.signing",
    "load_public_key": "asa_format.signing",
    "sign_bundle": "asa_format.signing",
    "verify_bundle_signature": "asa_format.signing",
    "ValidationReport": "asa_format.validate",
    "validate_bundle": "asa_format.validate",
    "BundleContents": "asa_format.writer",
    "save_bundle": "asa_format.writer",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):  # a submodule, as an eagerly importing package would have it
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "CODES",
    "AsaError",
    "Bundle",
    "BundleContents",
    "BundleError",
    "ConversionError",
    "Decision",
    "DecisionBatch",
    "DecisionError",
    "DigestMismatchError",
    "ErrorCode",
    "InterventionBundle",
    "InterventionContents",
    "InterventionData",
    "LegacyFormatError",
    "Manifest",
    "ModelBinding",
    "ParityError",
    "Problem",
    "Provenance",
    "RuntimeCompatError",
    "SignatureError",
    "Steering",
    "UnsafePickleError",
    "UsageError",
    "ValidationReport",
    "VerifiedSignature",
    "__version__",
    "load_bundle",
    "load_interventions",
    "load_private_key",
    "load_public_key",
    "read_bundle_contents",
    "root_digest",
    "save_bundle",
    "sign_bundle",
    "validate_bundle",
    "verify_bundle_signature",
]
