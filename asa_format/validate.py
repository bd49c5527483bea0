"""``validate_bundle``: every problem of a bundle, as data for the reporters."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from asa_format import constants as C
from asa_format.argcheck import bool_arg, path_arg
from asa_format.errors import Problem
from asa_format.format.digest import root_digest
from asa_format.format.interventions import Intervention
from asa_format.format.manifest import Manifest
from asa_format.storage.reader import read_bundle_dir

__all__ = ["ValidationReport", "describe_interventions", "intervention_text", "validate_bundle"]


@dataclass
class ValidationReport:
    path: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    digest: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "valid": self.ok,
            "digest": self.digest,
            "errors": [p.to_dict() for p in self.problems],
            "warnings": [p.to_dict() for p in self.warnings],
        }


def describe_interventions(m: Manifest) -> list[dict[str, Any]]:
    """Every intervention in manifest order: name, kind, blocks, gate (a 1.0 bundle: one asa)."""
    out: list[dict[str, Any]] = []
    entries = list(m.interventions) or (
        [Intervention(name=C.GATE_ASA, kind=C.GATE_ASA)] if m.layer is not None else []
    )
    for iv in entries:
        if iv.kind == C.GATE_ASA:
            assert m.layer is not None and m.steering is not None
            out.append(
                {
                    "name": iv.name,
                    "kind": iv.kind,
                    "blocks": [m.layer.index],
                    "policy": m.steering.policy,
                    "gate": {"kind": C.GATE_ASA, "domains": len(m.domains), "tau": m.steering.tau},
                }
            )
            continue
        gate: dict[str, Any] = {"kind": iv.kind}
        if iv.condition is not None:
            gate = iv.condition.to_dict()
        out.append(
            {
                "name": iv.name,
                "kind": iv.kind,
                "blocks": list(iv.blocks),
                "policy": iv.policy,
                "coefficient": iv.coefficient,
                "gate": gate,
            }
        )
    return out


def intervention_text(item: dict[str, Any]) -> str:
    """One intervention of :func:`describe_interventions` in a few words."""
    blocks = ",".join(str(b) for b in item["blocks"])
    if item["kind"] == C.GATE_ASA:
        return f"{item['name']}: asa gate, block {blocks}, {item['gate']['domains']} domains"
    text = f"{item['name']}: {item['kind']}, block{'s' if len(item['blocks']) > 1 else ''} {blocks}"
    if item["kind"] == C.GATE_CONDITION:
        g = item["gate"]
        text += (
            f", if {g['aggregate']} similarity at {','.join(str(b) for b in g['blocks'])} "
            f"{'>' if g['comparator'] == 'greater_than' else '<'} {g['threshold']:g}"
        )
    return text


def validate_bundle(path: str | os.PathLike[str], *, deep: bool = False) -> ValidationReport:
    """Check the bundle at ``path`` and collect every problem.

    By default every check is static and neither ``onnx`` nor onnxruntime is
    imported: what ``load_bundle``'s onnxruntime sessions would refuse is
    predicted from the graphs (``onnx_check.predict_session``), so a bundle
    that validates also loads. ``deep=True`` creates the onnxruntime sessions
    instead and evaluates each graph once, as ``load_bundle`` does.
    """
    path_arg(path, "path")
    bool_arg(deep, "deep")
    result = read_bundle_dir(path, verify=True, create_sessions=deep, predict_sessions=not deep)
    report = ValidationReport(
        path=str(path), problems=list(result.problems), warnings=list(result.warnings)
    )
    if result.manifest_bytes is not None:
        report.digest = root_digest(result.manifest_bytes)
    m = result.manifest
    if m is not None:
        report.summary = {
            "model": m.model.to_dict(),
            "layer": m.layer.index if m.layer is not None else None,
            "interventions": describe_interventions(m),
            "domains": m.domain_names,
            "files": len(m.files) + 1,
            "signature": (result.path / C.SIGNATURE_FILE).is_file(),
        }
    return report
