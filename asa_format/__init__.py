"""asa-format: portable, secure bundles of activation-steering (ASA) assets.

Public API::

    from asa_format import load_bundle, save_bundle, validate_bundle
    bundle = load_bundle("my-bundle/")          # verified, sessions ready
    decisions = bundle.decide(hidden_states)    # [N, H] -> per-row domain, p, gate
    v = bundle.steering_vector("search")        # mixed, normalized float32 [H]

``asa_format.converters`` turns legacy pickle bundles and in-memory
scikit-learn objects into bundles; ``asa_format.runtime`` applies a bundle to
a Hugging Face transformers model.
"""

from __future__ import annotations

__version__ = "0.1.0"

from asa_format.bundle import Bundle, Decision, DecisionBatch, load_bundle
from asa_format.digest import root_digest
from asa_format.errors import AsaError, BundleError, Problem
from asa_format.intervention_bundle import (
    InterventionBundle,
    InterventionContents,
    InterventionData,
    load_interventions,
)
from asa_format.manifest import Manifest, ModelBinding, Provenance, Steering
from asa_format.validate import ValidationReport, validate_bundle
from asa_format.writer import BundleContents, save_bundle

__all__ = [
    "AsaError",
    "Bundle",
    "BundleContents",
    "BundleError",
    "Decision",
    "DecisionBatch",
    "InterventionBundle",
    "InterventionContents",
    "InterventionData",
    "Manifest",
    "ModelBinding",
    "Problem",
    "Provenance",
    "Steering",
    "ValidationReport",
    "__version__",
    "load_bundle",
    "load_interventions",
    "root_digest",
    "save_bundle",
    "validate_bundle",
]
