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

__version__ = "0.1.0"

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asa_format.bundle import (
        Bundle,
        Decision,
        DecisionBatch,
        load_bundle,
        read_bundle_contents,
    )
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

# The public names, imported from their modules on first use: `asa validate` loads the
# reader and its checks, not the signing library, the writer or the fast path.
_SOURCES = {
    "asa_format.bundle": (
        "Bundle", "Decision", "DecisionBatch", "load_bundle", "read_bundle_contents",
    ),
    "asa_format.digest": ("root_digest",),
    "asa_format.errors": (
        "CODES", "AsaError", "BundleError", "ConversionError", "DecisionError",
        "DigestMismatchError", "ErrorCode", "LegacyFormatError", "ParityError", "Problem",
        "RuntimeCompatError", "SignatureError", "UnsafePickleError", "UsageError",
    ),
    "asa_format.intervention_bundle": (
        "InterventionBundle", "InterventionContents", "InterventionData", "load_interventions",
    ),
    "asa_format.manifest": ("Manifest", "ModelBinding", "Provenance", "Steering"),
    "asa_format.signing": (
        "VerifiedSignature", "load_private_key", "load_public_key", "sign_bundle",
        "verify_bundle_signature",
    ),
    "asa_format.validate": ("ValidationReport", "validate_bundle"),
    "asa_format.writer": ("BundleContents", "save_bundle"),
}  # fmt: skip
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'asa_format' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


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
