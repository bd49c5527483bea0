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
from asa_format.format.digest import root_digest
from asa_format.format.manifest import Manifest, ModelBinding, Provenance, Steering
from asa_format.intervention_bundle import (
    InterventionBundle,
    InterventionContents,
    InterventionData,
    load_interventions,
)
from asa_format.signing import (
    VerifiedSignature,
    load_private_key,
    load_public_key,
    sign_bundle,
    verify_bundle_signature,
)
from asa_format.storage.writer import BundleContents, save_bundle
from asa_format.validate import ValidationReport, validate_bundle

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
