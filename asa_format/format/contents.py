"""A bundle in memory: one contents type for every bundle kind, and its files.

A bundle is a manifest plus an ordered list of interventions (spec 14.1):

- the ``asa`` intervention, when there is one, is held by the flat members
  ``layer``, ``steering``, ``domains``, ``vectors``, ``scaler``, ``router`` and
  ``probes`` (they are the manifest's top-level members of the same names);
- every ``always`` or ``condition`` intervention is an :class:`InterventionData`
  in ``interventions``.

A format 1.0 bundle is the special case "an asa part and nothing else";
:func:`bundle_files` writes it as 1.0 unless ``format_version`` asks for 1.1.
:func:`contents_of` is the inverse of :func:`bundle_files`: saving what it
returns writes the same bytes, for every bundle kind. Nothing here touches
the file system.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format._version import __version__
from asa_format.errors import BundleError, UsageError
from asa_format.format.interventions import (
    NAME_PATTERN,
    ConditionGate,
    Intervention,
    tensor_name,
)
from asa_format.format.manifest import (
    AsaManifest,
    DomainEntry,
    FileEntry,
    LayerRef,
    Manifest,
    ModelBinding,
    Producer,
    Provenance,
    Steering,
    probe_file_name,
)
from asa_format.format.safetensors import serialize_vectors

__all__ = [
    "BundleContents",
    "InterventionData",
    "bundle_files",
    "contents_of",
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
class BundleContents:
    """Everything a bundle holds, in memory: the asa part (optional) and the other interventions.

    ``asa_name`` and ``asa_position`` place the asa intervention in the
    manifest's ordered list (1.1); ``card`` is the hub model card (``None``:
    written for a 1.1 bundle, not for 1.0; ``True``/``False``; a ``str``: this
    exact text); ``format_version`` is ``None`` for the lowest version that
    holds the contents (1.0 for an asa part alone without a card).
    """

    model: ModelBinding
    layer: int | None = None
    steering: Steering | None = None
    domains: Sequence[str] = ()
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)  # per domain plus "global"
    scaler: bytes | None = None  # scaler.onnx
    router: bytes | None = None  # router.onnx
    probes: Mapping[str, bytes] = field(default_factory=dict)  # domain name -> probe graph
    provenance: Provenance | None = None
    producer: Producer | None = None  # None: this library; a loaded bundle keeps its own
    interventions: Sequence[InterventionData] = ()  # the always/condition interventions, in order
    asa_name: str = C.GATE_ASA
    asa_position: int = 0
    card: bool | str | None = None
    format_version: str | None = None

    @property
    def has_asa(self) -> bool:
        return self.layer is not None or self.steering is not None

    @property
    def names(self) -> list[str]:
        """The interventions' names in manifest order."""
        names = [iv.name for iv in self.interventions]
        if self.has_asa:
            names.insert(min(max(self.asa_position, 0), len(names)), self.asa_name)
        return names


def _coded_float(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BundleError(
            f"{what} is not a number: {value!r}",
            code="MANIFEST_SCHEMA",
            hint="give a finite number",
        ) from None
    if not math.isfinite(number):
        raise BundleError(
            f"{what} is {number}, not a finite number",
            code="MANIFEST_SCHEMA",
            hint="give a finite number",
        )
    return number


def _asa_files(contents: BundleContents) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The asa part's manifest members and files."""
    if contents.layer is None or contents.steering is None:
        raise BundleError(
            "the asa part needs both layer and steering",
            code="MANIFEST_SCHEMA",
            hint="set layer and steering, or neither (a bundle without an asa intervention)",
        )
    if contents.scaler is None or contents.router is None:
        raise BundleError(
            "the asa part needs its scaler and router graphs",
            code="MANIFEST_SCHEMA",
            hint="give scaler= and router= (ONNX bytes)",
        )
    unknown = sorted(set(contents.probes) - set(contents.domains))
    if unknown:
        raise BundleError(
            f"probes given for unknown domains {unknown}",
            code="DOMAIN_MISMATCH",
            hint="probe keys must be domain names",
        )
    files: dict[str, bytes] = {
        C.VECTORS_FILE: serialize_vectors(contents.vectors),
        C.SCALER_FILE: contents.scaler,
        C.ROUTER_FILE: contents.router,
    }
    domains: list[DomainEntry] = []
    for i, name in enumerate(contents.domains):
        probe = contents.probes.get(name)
        if probe is None:
            domains.append(DomainEntry(name=name, probe=None))
        else:
            fname = probe_file_name(i)
            files[fname] = probe
            domains.append(DomainEntry(name=name, probe=fname))
    members = {
        "layer": LayerRef(index=int(contents.layer)),
        "steering": contents.steering,
        "domains": tuple(domains),
    }
    return members, files


def _check_interventions(contents: BundleContents) -> None:
    names = contents.names
    bad = [n for n in names if not isinstance(n, str) or not NAME_PATTERN.fullmatch(n)]
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
            hint="add an intervention (an asa part, or an always/condition intervention)",
        )
    for iv in contents.interventions:
        _coded_float(iv.coefficient, f"intervention {iv.name!r}: coefficient")
        for b, v in list(iv.directions.items()) + list(iv.conditions.items()):
            arr = np.asarray(v)
            if arr.shape != (contents.model.hidden_size,):
                raise BundleError(
                    f"intervention {iv.name!r} block {b}: vector shape {list(arr.shape)}, "
                    f"expected [{contents.model.hidden_size}]",
                    code="HIDDEN_SIZE_MISMATCH",
                    hint="vectors have the model's hidden size",
                )


def _version_of(contents: BundleContents) -> str:
    wanted = contents.format_version
    needs_11 = bool(contents.interventions) or not contents.has_asa or bool(contents.card)
    if wanted is None:
        return C.FORMAT_VERSION if needs_11 else C.FORMAT_VERSION_BASE
    if wanted not in (C.FORMAT_VERSION_BASE, C.FORMAT_VERSION):
        raise UsageError(
            f"format_version {wanted!r} cannot be written by this library",
            hint=f"use {C.FORMAT_VERSION_BASE!r}, {C.FORMAT_VERSION!r} or None",
        )
    if wanted == C.FORMAT_VERSION_BASE and needs_11:
        raise UsageError(
            "these contents need format 1.1 (interventions besides asa, or a model card)",
            hint="drop format_version='1.0', or the 1.1 parts",
        )
    return wanted


def bundle_files(contents: BundleContents) -> tuple[Manifest, dict[str, bytes]]:
    """Return the manifest and the bytes of every file of ``contents`` (any bundle kind)."""
    version = _version_of(contents)
    files: dict[str, bytes] = {}
    asa_members: dict[str, Any] = {}
    if contents.has_asa:
        asa_members, files = _asa_files(contents)
    if version == C.FORMAT_VERSION_BASE:
        manifest = Manifest(
            producer=contents.producer or Producer(C.PRODUCER_NAME, __version__),
            model=contents.model,
            files=_entries(files),
            provenance=contents.provenance,
            **asa_members,
        )
        files[C.MANIFEST_FILE] = manifest.to_bytes()
        return manifest, files

    _check_interventions(contents)
    entries: list[Intervention] = [iv.entry() for iv in contents.interventions]
    if contents.has_asa:
        position = min(max(contents.asa_position, 0), len(entries))
        entries.insert(position, Intervention(name=contents.asa_name, kind=C.GATE_ASA))
    tensors: dict[str, np.ndarray] = {}
    for iv in contents.interventions:
        tensors.update(iv.tensors())
    requires = [C.FEATURE_INTERVENTIONS]
    if contents.interventions:
        files[C.INTERVENTIONS_FILE] = serialize_vectors(tensors)
    card = True if contents.card is None else contents.card
    if card:
        from asa_format.format.card import render_card

        text = (
            card
            if isinstance(card, str)
            else render_card(contents.model, entries, asa_members, files)
        )
        files[C.CARD_FILE] = text.encode("utf-8")
        requires.append(C.FEATURE_CARD)
    manifest = Manifest(
        format_version=version,
        producer=contents.producer or Producer(C.PRODUCER_NAME, __version__),
        model=contents.model,
        files=_entries(files),
        provenance=contents.provenance,
        requires=tuple(sorted(requires)),
        interventions=tuple(entries),
        **asa_members,
    )
    files[C.MANIFEST_FILE] = manifest.to_bytes()
    return manifest, files


def _entries(files: Mapping[str, bytes]) -> dict[str, FileEntry]:
    return {
        n: FileEntry(size=len(d), sha256=hashlib.sha256(d).hexdigest())
        for n, d in sorted(files.items())
    }


def contents_of(
    manifest: Manifest,
    vectors: Mapping[str, np.ndarray],
    graphs: Mapping[str, bytes],
    intervention_vectors: Mapping[str, np.ndarray] | None = None,
    card: str | None = None,
) -> BundleContents:
    """The :class:`BundleContents` of a checked bundle, of any kind.

    The inverse of :func:`bundle_files`: saving the result writes the same
    bytes. The model card is rendered again from the contents (so that it
    follows an edit) unless it is not the rendered one (written by hand):
    then its text is kept as it is. A manifest of a newer minor format
    version is refused: it may carry members this version does not know,
    and saving would drop them.
    """
    major, _, minor = manifest.format_version.partition(".")
    if (int(major), int(minor)) > (C.FORMAT_MAJOR, C.FORMAT_MINOR):
        raise UsageError(
            f"the bundle is format {manifest.format_version}, newer than this library's "
            f"{C.FORMAT_VERSION}; saving it would drop what this version does not know",
            file=C.MANIFEST_FILE,
            hint="upgrade asa-format to edit this bundle",
        )
    ivec = intervention_vectors or {}
    fields: dict[str, Any] = {}
    if isinstance(manifest, AsaManifest):
        fields = dict(
            layer=manifest.layer.index,
            steering=manifest.steering,
            domains=list(manifest.domain_names),
            vectors={name: np.array(vec, dtype=np.float32) for name, vec in vectors.items()},
            scaler=graphs[C.SCALER_FILE],
            router=graphs[C.ROUTER_FILE],
            probes={d.name: graphs[d.probe] for d in manifest.domains if d.probe is not None},
        )
    data: list[InterventionData] = []
    asa_name, asa_position = C.GATE_ASA, 0
    for spec in manifest.interventions:
        if spec.kind == C.GATE_ASA:
            asa_name, asa_position = spec.name, len(data)
            continue
        data.append(
            InterventionData(
                spec.name,
                {
                    b: np.array(ivec[tensor_name(spec.name, b)], dtype=np.float32)
                    for b in spec.blocks
                },
                coefficient=spec.coefficient,
                policy=spec.policy,
                condition=spec.condition,
                conditions={}
                if spec.condition is None
                else {
                    b: np.array(ivec[tensor_name(spec.name, b, C.CONDITION_ROLE)], dtype=np.float32)
                    for b in spec.condition.blocks
                },
            )
        )
    contents = BundleContents(
        model=manifest.model,
        provenance=manifest.provenance,
        producer=manifest.producer,
        interventions=data,
        asa_name=asa_name,
        asa_position=asa_position,
        card=C.CARD_FILE in manifest.files,
        format_version=manifest.format_version,
        **fields,
    )
    if contents.card and card is not None:
        _, files = bundle_files(contents)
        if files[C.CARD_FILE] != card.encode("utf-8"):
            contents.card = card  # not the rendered card: kept as written
    return contents
