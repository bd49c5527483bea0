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

import importlib
import warnings

from asa_format._version import __version__

# The public names are imported on first use (PEP 562), so that ``import asa_format`` (and
# every ``asa_format.X`` module, the command-line entry points first of all) starts in a
# millisecond: ``asa_format.entry`` installs its signal handlers before anything heavy loads.
# Not even ``typing`` (3 ms): type checkers treat a name ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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

_EXPORTS: dict[str, str] = {
    "Bundle": "asa_format.bundle",
    "Decision": "asa_format.bundle",
    "DecisionBatch": "asa_format.bundle",
    "load_bundle": "asa_format.bundle",
    "read_bundle_contents": "asa_format.bundle",
    "root_digest": "asa_format.format.digest",
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
    "BundleContents": "asa_format.format.contents",
    "InterventionData": "asa_format.format.contents",
    "ConditionGate": "asa_format.format.interventions",
    "LoadedIntervention": "asa_format.format.interventions",
    "Manifest": "asa_format.format.manifest",
    "ModelBinding": "asa_format.format.manifest",
    "Provenance": "asa_format.format.manifest",
    "Steering": "asa_format.format.manifest",
    "VerifiedSignature": "asa_format.signing",
    "load_private_key": "asa_format.signing",
    "load_public_key": "asa_format.signing",
    "sign_bundle": "asa_format.signing",
    "verify_bundle_signature": "asa_format.signing",
    "ValidationReport": "asa_format.validate",
    "validate_bundle": "asa_format.validate",
    "save_bundle": "asa_format.storage.writer",
}

# Names of the two-model era, kept for one minor version: each access warns and names its
# replacement (asa_format._deprecated).
_DEPRECATED = ("load_interventions", "InterventionContents", "InterventionBundle")


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _DEPRECATED:
        deprecated = importlib.import_module("asa_format._deprecated")
        warnings.warn(
            f"asa_format.{name} is deprecated: use {deprecated.REPLACEMENTS[name]} "
            "(one bundle model for every kind)",
            DeprecationWarning,
            stacklevel=2,
        )
        if name == "InterventionBundle":
            return importlib.import_module("asa_format.bundle").Bundle
        return getattr(deprecated, name)
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
