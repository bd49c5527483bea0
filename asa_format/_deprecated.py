"""Names of the two-model era (format 1.1 beside 1.0), kept for one minor version.

``asa_format.load_interventions``, ``InterventionBundle`` and
``InterventionContents`` (and ``asa_format.runtime.attach_interventions``)
still work; reading any of them from the package emits a
:class:`DeprecationWarning` naming its replacement. They are thin aliases of
the one bundle model: :func:`~asa_format.bundle.load_bundle`,
:class:`~asa_format.bundle.Bundle` and
:class:`~asa_format.format.contents.BundleContents`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from asa_format import constants as C
from asa_format.errors import UsageError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.manifest import ModelBinding, Producer, Provenance

__all__ = ["REPLACEMENTS", "InterventionContents", "load_interventions"]

# deprecated name -> what replaces it (named in the warning)
REPLACEMENTS = {
    "load_interventions": "asa_format.load_bundle",
    "InterventionBundle": "asa_format.Bundle",
    "InterventionContents": "asa_format.BundleContents",
    "attach_interventions": "asa_format.runtime.attach",
}


def InterventionContents(
    model: ModelBinding,
    interventions: Sequence[InterventionData] = (),
    asa: BundleContents | None = None,
    asa_name: str = C.GATE_ASA,
    provenance: Provenance | None = None,
    card: bool | str = True,
    producer: Producer | None = None,
) -> BundleContents:
    """A format 1.1 :class:`BundleContents` (deprecated: build ``BundleContents`` directly)."""
    if asa is not None:
        if not isinstance(asa, BundleContents) or not asa.has_asa:
            raise UsageError(
                "asa= must be a BundleContents with an asa part",
                hint="use BundleContents(model=..., layer=..., steering=..., interventions=[...])",
            )
        if asa.model != model:
            raise UsageError("the asa part is bound to another model", hint="use one model binding")
        return dataclasses.replace(
            asa,
            interventions=list(interventions),
            asa_name=asa_name,
            asa_position=0,
            provenance=provenance,
            producer=producer,
            card=card,
            format_version=C.FORMAT_VERSION,
        )
    return BundleContents(
        model=model,
        interventions=list(interventions),
        provenance=provenance,
        producer=producer,
        card=card,
        format_version=C.FORMAT_VERSION,
    )


def load_interventions(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """:func:`asa_format.load_bundle` (deprecated name)."""
    from asa_format.bundle import load_bundle

    return load_bundle(path, **kwargs)
