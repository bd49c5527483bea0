"""asa-format: portable, secure bundles of activation-steering (ASA) assets.

A bundle is a manifest plus an ordered list of interventions (``always``
control vectors, ``condition`` gates, at most one ``asa`` decision); every
kind loads into one :class:`Bundle`. Public API::

    from asa_format import load_bundle, save_bundle, validate_bundle
    bundle = load_bundle("my-bundle/")          # any kind: verified, sessions ready
    bundle.interventions                        # [LoadedIntervention(name, kind, ...)]
    decisions = bundle.decide(hidden_states)    # asa part: [N, H] -> per-row domain, p, gate
    v = bundle.steering_vector("web_search")    # asa part: mixed, normalized float32 [H]

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

from typing import Any

from asa_format._version import __version__
from asa_format.bundle import Bundle, Decision, DecisionBatch, load_bundle, read_bundle_contents
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
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.digest import root_digest
from asa_format.format.interventions import ConditionGate, LoadedIntervention
from asa_format.format.manifest import Manifest, ModelBinding, Provenance, Steering
from asa_format.signing import (
    VerifiedSignature,
    load_private_key,
    load_public_key,
    sign_bundle,
    verify_bundle_signature,
)
from asa_format.storage.writer import save_bundle
from asa_format.validate import ValidationReport, validate_bundle

__all__ = [
    "CODES",
    "AsaError",
    "Bundle",
    "BundleContents",
    "BundleError",
    "ConditionGate",
    "ConversionError",
    "Decision",
    "DecisionBatch",
    "DecisionError",
    "DigestMismatchError",
    "ErrorCode",
    "InterventionData",
    "LegacyFormatError",
    "LoadedIntervention",
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
    "load_private_key",
    "load_public_key",
    "read_bundle_contents",
    "root_digest",
    "save_bundle",
    "sign_bundle",
    "validate_bundle",
    "verify_bundle_signature",
]


def _deprecated_module() -> Any:
    import importlib

    return importlib.import_module("asa_format._deprecated")


def __getattr__(name: str) -> object:
    """Deprecated names of the two-model era, for one minor version (with a warning)."""
    import warnings

    if name in ("load_interventions", "InterventionContents", "InterventionBundle"):
        warnings.warn(
            f"asa_format.{name} is deprecated: use {_deprecated_module().REPLACEMENTS[name]} "
            "(one bundle model for every kind)",
            DeprecationWarning,
            stacklevel=2,
        )
        return Bundle if name == "InterventionBundle" else getattr(_deprecated_module(), name)
    raise AttributeError(f"module 'asa_format' has no attribute {name!r}")
