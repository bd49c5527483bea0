"""Format 1.1 bundles in memory: write (``intervention_files``) and load (``load_interventions``).

``save_bundle`` accepts an :class:`InterventionContents` as well as the 1.0
``BundleContents``; ``load_interventions`` reads any 1.x bundle and returns
every intervention with its vectors (the asa one as a loaded
:class:`~asa_format.bundle.Bundle`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import __version__
from asa_format import constants as C
from asa_format.digest import root_digest
from asa_format.errors import BundleError, UsageError
from asa_format.interventions import NAME_PATTERN, ConditionGate, Intervention, tensor_name
from asa_format.manifest import AsaManifest, FileEntry, Manifest, ModelBinding, Producer, Provenance
from asa_format.safetensors_profile import serialize_vectors

__all__ = [
    "InterventionBundle",
    "InterventionContents",
    "InterventionData",
    "intervention_files",
    "load_interventions",
]


@dataclass
class InterventionData:
    """An ``always`` or ``condition`` intervention with its vectors."""

    name: str
    directions: Mapping[int, np.ndarray]  # block -> float32 [H]; added as coefficient x direction
    coefficient: float = 1.0
    policy: str = C.POLICY_ALL_TOKENS
    condition: ConditionGate | None = None
    conditions: Mapping[int, np.ndarray] = field(default_factory=dict)  # condition block -> vector

    @property
    def kind(self) -> str:
        return C.GATE_ALWAYS if self.condition is None else C.GATE_CONDITION

    def entry(self) -> Intervention:
        return Intervention(
            name=self.name,
            kind=self.kind,
            blocks=tuple(sorted(int(b) for b in self.directions)),
            coefficient=float(self.coefficient),
            policy=self.policy,
            condition=self.condition,
        )

    def tensors(self) -> dict[str, np.ndarray]:
        out = {
            tensor_name(self.name, int(b)): np.asarray(v, dtype=np.float32)
            for b, v in self.directions.items()
        }
        for b, v in self.conditions.items():
            out[tensor_name(self.name, int(b), C.CONDITION_ROLE)] = np.asarray(v, dtype=np.float32)
        return out


@dataclass
class InterventionContents:
    """Everything a 1.1 bundle holds: any always/condition interventions and at most one asa one."""

    model: ModelBinding
    interventions: Sequence[InterventionData] = ()
    asa: Any = None  # asa_format.writer.BundleContents, or None
    asa_name: str = "asa"
    provenance: Provenance | None = None
    card: bool | str = True  # write README.md, the hub model card (a str: this exact text)
    producer: Producer | None = None  # None: this library; a loaded bundle keeps its own


def intervention_files(contents: InterventionContents) -> tuple[Manifest, dict[str, bytes]]:
    """Return the manifest and the bytes of every file of a 1.1 bundle."""
    names = [iv.name for iv in contents.interventions] + (
        [contents.asa_name] if contents.asa is not None else []
    )
    bad = [n for n in names if not NAME_PATTERN.match(n)]
    if bad:
        raise BundleError(
            f"intervention name {bad[0]!r} is not allowed",
            code="MANIFEST_SCHEMA",
            hint="use 1-64 characters: letters, digits, '_', '.', '-'",
        )
    if len(set(names)) != len(names):
        raise BundleError(
            "intervention names are not unique",
            code="MANIFEST_SEMANTIC",
            hint="give every intervention its own name",
        )
    if not names:
        raise BundleError(
            "a bundle needs at least one intervention",
            code="MANIFEST_SEMANTIC",
            hint="add an intervention",
        )
    for iv in contents.interventions:
        for b, v in list(iv.directions.items()) + list(iv.conditions.items()):
            arr = np.asarray(v)
            if arr.shape != (contents.model.hidden_size,):
                raise BundleError(
                    f"intervention {iv.name!r} block {b}: vector shape {list(arr.shape)}, expected [{contents.model.hidden_size}]",
                    code="HIDDEN_SIZE_MISMATCH",
                    hint="vectors have the model's hidden size",
                )
    files: dict[str, bytes] = {}
    asa_parts: dict[str, Any] = {}
    entries: list[Intervention] = []
    if contents.asa is not None:
        from asa_format.writer import bundle_files

        if contents.asa.model != contents.model:
            raise BundleError(
                "the asa part is bound to another model",
                code="MANIFEST_SEMANTIC",
                hint="use one model binding",
            )
        asa_manifest, asa_files = bundle_files(contents.asa)
        asa_files.pop(C.MANIFEST_FILE)
        files.update(asa_files)
        asa_parts = {
            "layer": asa_manifest.layer,
            "steering": asa_manifest.steering,
            "domains": asa_manifest.domains,
        }
        entries.append(Intervention(name=contents.asa_name, kind=C.GATE_ASA))
    tensors: dict[str, np.ndarray] = {}
    for iv in contents.interventions:
        entries.append(iv.entry())
        tensors.update(iv.tensors())
    requires: list[str] = []
    if contents.interventions:
        files[C.INTERVENTIONS_FILE] = serialize_vectors(tensors)
    requires.append(C.FEATURE_INTERVENTIONS)
    if contents.card:
        from asa_format.card import render_card

        text = (
            contents.card
            if isinstance(contents.card, str)
            else render_card(contents.model, entries, asa_parts, files)
        )
        files[C.CARD_FILE] = text.encode("utf-8")
        requires.append(C.FEATURE_CARD)
    manifest = Manifest(
        format_version=C.FORMAT_VERSION,
        producer=contents.producer or Producer(C.PRODUCER_NAME, __version__),
        model=contents.model,
        files={
            n: FileEntry(size=len(d), sha256=hashlib.sha256(d).hexdigest())
            for n, d in sorted(files.items())
        },
        provenance=contents.provenance,
        requires=tuple(sorted(requires)),
        interventions=tuple(entries),
        **asa_parts,
    )
    files[C.MANIFEST_FILE] = manifest.to_bytes()
    return manifest, files


@dataclass(frozen=True)
class LoadedIntervention:
    """One intervention of a loaded bundle with its vectors (read-only float32 arrays)."""

    spec: Intervention
    directions: dict[int, np.ndarray]
    conditions: dict[int, np.ndarray]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


@dataclass
class InterventionBundle:
    """Every intervention of a verified bundle."""

    manifest: Manifest
    manifest_bytes: bytes
    interventions: list[LoadedIntervention]
    asa: Any = None  # asa_format.bundle.Bundle when the bundle has an asa intervention
    card: str | None = None
    path: Path | None = None

    @property
    def root_digest(self) -> str:
        return root_digest(self.manifest_bytes)

    def __getitem__(self, name: str) -> LoadedIntervention:
        for iv in self.interventions:
            if iv.name == name:
                return iv
        raise KeyError(name)

    def to_contents(self) -> InterventionContents:
        """What ``save_bundle`` needs to write this 1.1 bundle again.

        ``save_bundle(load_interventions(p).to_contents(), q)`` writes the same
        bytes as ``p`` when ``p`` lists its asa intervention first (as this
        writer does). The model card is rendered again from the contents, so
        that it follows an edit, unless it is not the rendered one (written by
        hand): then its text is kept as it is.
        """
        from asa_format.writer import asa_contents_of

        m = self.manifest
        major, _, minor = m.format_version.partition(".")
        if (int(major), int(minor)) > (C.FORMAT_MAJOR, C.FORMAT_MINOR):
            raise UsageError(
                f"the bundle is format {m.format_version}, newer than this library's {C.FORMAT_VERSION}; "
                "saving it would drop what this version does not know",
                file=C.MANIFEST_FILE,
                hint="upgrade asa-format to edit this bundle",
            )
        if not m.interventions:
            raise UsageError(
                "this is a format 1.0 bundle (one asa intervention), which BundleContents holds",
                file=C.MANIFEST_FILE,
                hint="use load_bundle(path).to_contents()",
            )
        asa, asa_name, data = None, "asa", []
        for iv in self.interventions:
            if iv.kind == C.GATE_ASA:
                assert self.asa is not None and isinstance(self.asa.manifest, AsaManifest)
                asa_name = iv.name
                asa = asa_contents_of(self.asa.manifest, self.asa.vectors, self.asa.graph_bytes)
                continue
            data.append(
                InterventionData(
                    iv.name,
                    dict(iv.directions),
                    coefficient=iv.spec.coefficient,
                    policy=iv.spec.policy,
                    condition=iv.spec.condition,
                    conditions=dict(iv.conditions),
                )
            )
        contents = InterventionContents(
            model=m.model,
            interventions=data,
            asa=asa,
            asa_name=asa_name,
            provenance=m.provenance,
            card=C.CARD_FILE in m.files,
            producer=m.producer,
        )
        if contents.card and self.card is not None:
            _, files = intervention_files(contents)
            if files[C.CARD_FILE] != self.card.encode("utf-8"):
                contents.card = self.card  # not the rendered card: kept as written
        return contents


def load_interventions(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    expected_digest: str | None = None,
    trusted_keys: Sequence[Any] | None = None,
    signature_path: str | os.PathLike[str] | None = None,
) -> InterventionBundle:
    """Load and check any 1.x bundle; return all its interventions.

    The checks are those of ``load_bundle`` (one reader); the asa
    intervention, when present, is loaded with ``load_bundle`` as well.
    """
    from asa_format.bundle import check_load_args, read_checked
    from asa_format.hub import is_hub_reference, load_from_hub

    trusted_keys = check_load_args(path, verify, expected_digest, trusted_keys, signature_path)

    if is_hub_reference(path):  # org/name@revision
        return load_from_hub(
            str(path),
            load_interventions,
            verify=verify,
            expected_digest=expected_digest,
            trusted_keys=trusted_keys,
            signature_path=signature_path,
        )
    result = read_checked(
        path,
        verify=verify,
        expected_digest=expected_digest,
        trusted_keys=trusted_keys,
        signature_path=signature_path,
    )
    m = result.manifest
    asa = None
    if m.has_asa:
        from asa_format.bundle import load_bundle

        asa = load_bundle(
            path, verify=verify, expected_digest=root_digest(result.manifest_bytes), asa_only=True
        )
    specs = list(m.interventions) or [Intervention(name="asa", kind=C.GATE_ASA)]
    loaded = []
    vec = result.intervention_vectors
    for spec in specs:
        directions = {b: _frozen(vec[tensor_name(spec.name, b)]) for b in spec.blocks}
        conditions = {}
        if spec.condition is not None:
            conditions = {
                b: _frozen(vec[tensor_name(spec.name, b, C.CONDITION_ROLE)])
                for b in spec.condition.blocks
            }
        loaded.append(LoadedIntervention(spec, directions, conditions))
    return InterventionBundle(
        m, result.manifest_bytes, loaded, asa=asa, card=result.card, path=Path(path)
    )


def _frozen(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float32, copy=True)
    out.setflags(write=False)
    return out
