"""Legacy pickle bundle -> asa bundle, with a parity self-check.

``convert_legacy`` reads the legacy directory without running any pickled
code (``legacy.read_legacy_bundle``), exports the graphs (``export``), writes
the bundle into a temporary directory, reloads it with ``load_bundle`` and
compares its decisions with the legacy decision function
(``semantics.legacy_decide``) on a few thousand hidden states sampled around
the scaler's mean and scale. Only a bundle that agrees is renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format._version import __version__
from asa_format.bundle import load_bundle
from asa_format.converters.legacy import read_legacy_bundle
from asa_format.converters.legacy_model import LegacyAssets
from asa_format.converters.parity import (
    DEFAULT_SAMPLES,
    FLOAT32_PARITY_TOLERANCE,
    PARITY_TOLERANCE,
    Parity,
    compare,
    sample_chunks,
    sample_hidden_states,
)
from asa_format.converters.semantics import estimators_use_float32, legacy_decide
from asa_format.errors import ParityError, UsageError
from asa_format.format.digest import root_digest
from asa_format.format.manifest import FileEntry, ModelBinding, Producer, Provenance, Steering
from asa_format.storage.writer import BundleContents, check_destination, save_bundle

__all__ = [
    "PARITY_TOLERANCE",
    "ConversionReport",
    "Parity",
    "assets_to_contents",
    "check_not_source",
    "convert_legacy",
    "sample_hidden_states",
]


@dataclass
class ConversionReport:
    destination: str
    files: dict[str, int]  # name -> size
    hidden_size: int
    domains: list[str]
    layer: int
    model: dict[str, Any]
    parity: Parity
    digest: str
    unknown: list[str] = field(default_factory=list)  # binding members not known

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "files": dict(self.files),
            "hidden_size": self.hidden_size,
            "domains": list(self.domains),
            "layer": self.layer,
            "model": dict(self.model),
            "unknown": list(self.unknown),
            "parity": self.parity.to_dict(),
            "digest": self.digest,
        }

    def text(self) -> str:
        p = self.parity
        lines = [
            f"converted    -> {self.destination}",
            f"digest       {self.digest}",
            f"model        id={self.model.get('id') or 'unknown'}  type={self.model.get('type') or 'unknown'}  "
            f"hidden_size={self.hidden_size}  layers={self.model.get('num_layers') or 'unknown'}",
            f"layer        {self.layer}",
            f"domains      {', '.join(self.domains)}",
            "files        " + ", ".join(f"{n} ({s} B)" for n, s in sorted(self.files.items())),
            f"parity       {p.line()} "
            f"(gates -1/0/+1: {p.gate_counts.get('-1', 0)}/{p.gate_counts.get('0', 0)}/{p.gate_counts.get('1', 0)})",
        ]
        if self.unknown:
            lines.append(
                "not known    "
                + ", ".join(self.unknown)
                + " (pass --model-id / --model-type / --num-layers to record them)"
            )
        return "\n".join(lines) + "\n"


def assets_to_contents(
    assets: LegacyAssets,
    *,
    model_id: str | None = None,
    model_type: str | None = None,
    num_layers: int | None = None,
    policy: str = C.POLICY_PREFILL_LAST_TOKEN,
) -> BundleContents:
    """Map legacy assets to bundle contents (graphs exported through skl2onnx)."""
    from asa_format.converters.export import export_probe, export_router, export_scaler

    probes = {name: export_probe(probe) for name, probe in assets.probes.items()}
    versions = sorted(
        {
            v
            for v in [
                assets.scaler.sklearn_version,
                assets.router.sklearn_version,
                *(p.sklearn_version for p in assets.probes.values()),
            ]
            if v
        }
    )
    library_versions = {"scikit-learn": ", ".join(versions)} if versions else {}
    metadata: dict[str, Any] = dict(assets.extra_config)
    return BundleContents(
        model=ModelBinding(
            hidden_size=assets.hidden_size,
            id=model_id if model_id is not None else assets.model_id,
            type=model_type,
            num_layers=num_layers,
        ),
        layer=assets.layer,
        steering=Steering(
            alpha=assets.alpha,
            tau=assets.tau,
            beta=assets.beta,
            policy=policy,
            no_probe_probability=0.5,
        ),
        domains=list(assets.domains),
        vectors={k: np.asarray(v, dtype=np.float32) for k, v in assets.vectors.items()},
        scaler=export_scaler(assets.scaler),
        router=export_router(assets.router, assets.domains),
        probes=probes,
        provenance=Provenance(
            source="legacy-pickle",
            tool=Producer("asa-convert", __version__),
            inputs={s.name: FileEntry(size=s.size, sha256=s.sha256) for s in assets.sources},
            library_versions=library_versions,
            metadata=metadata,
        ),
    )


def check_not_source(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Refuse a destination that is the source directory or one of its parents."""
    src = Path(source).resolve()
    dst = Path(destination).resolve()
    if dst == src or dst in src.parents:
        what = (
            "is the source directory"
            if dst == src
            else f"contains the source directory {str(source)!r}"
        )
        raise UsageError(
            f"destination {str(destination)!r} {what}; writing there would replace the legacy inputs",
            code="DESTINATION_IS_SOURCE",
            file=str(destination),
            hint="write the bundle to a new directory outside the source, e.g. SOURCE-bundle",
        )


def convert_legacy(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    model_type: str | None = None,
    num_layers: int | None = None,
    force: bool = False,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> ConversionReport:
    """Convert the legacy bundle at ``source`` into a bundle at ``destination``.

    Raises an AsaError (nothing written at ``destination``) if the source is
    refused, the export fails, or the parity self-check fails. ``force``
    replaces an existing asa bundle only: never another directory, the
    source itself or a directory that contains it.
    """
    from asa_format.argcheck import binding_args, bool_arg, int_arg, path_arg

    path_arg(source, "source")
    path_arg(destination, "destination")
    binding_args(model_id, model_type, num_layers)
    bool_arg(force, "force")
    int_arg(samples, "samples", 1, 1_000_000)
    int_arg(seed, "seed", 0, 2**32 - 1)
    check_not_source(source, destination)
    check_destination(destination, force=force)  # before reading: refuse early, nothing read
    assets = read_legacy_bundle(source)
    contents = assets_to_contents(
        assets, model_id=model_id, model_type=model_type, num_layers=num_layers
    )
    hidden = sample_chunks(
        assets.scaler.mean, assets.scaler.scale, assets.hidden_size, samples, seed
    )
    outcome: dict[str, Any] = {}

    def self_check(tmp: Path) -> None:
        bundle = load_bundle(tmp)
        f32 = estimators_use_float32(assets)
        parity = compare(
            bundle,
            lambda h: legacy_decide(assets, h),
            hidden,
            FLOAT32_PARITY_TOLERANCE if f32 else PARITY_TOLERANCE,
            tau=float(assets.tau),
            precision="float32" if f32 else "float64",
        )
        outcome["parity"] = parity
        outcome["digest"] = bundle.root_digest
        if not parity.ok:
            raise ParityError(
                f"the converted bundle does not reproduce the legacy decisions: domain agreement "
                f"{parity.domain_agreement:.4%}, gate agreement {parity.gate_agreement:.4%}, max |dp| "
                f"{parity.max_probability_difference:.3g} (tolerance {parity.tolerance:g})",
                file=str(source),
                hint="nothing was written; please report this with the legacy bundle's scikit-learn version",
            )

    dest = save_bundle(contents, destination, force=force, before_commit=self_check)
    files = {p.name: p.stat().st_size for p in sorted(dest.iterdir())}
    binding = contents.model
    unknown = [
        name
        for name, value in (
            ("model id", binding.id),
            ("model type", binding.type),
            ("layer count", binding.num_layers),
        )
        if value is None
    ]
    return ConversionReport(
        destination=str(dest),
        files=files,
        hidden_size=assets.hidden_size,
        domains=list(assets.domains),
        layer=assets.layer,
        model=binding.to_dict(),
        parity=outcome["parity"],
        digest=outcome.get("digest") or root_digest((dest / C.MANIFEST_FILE).read_bytes()),
        unknown=unknown,
    )
