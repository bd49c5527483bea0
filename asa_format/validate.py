"""``validate_bundle``: every problem of a bundle, as data for the reporters."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from asa_format import constants as C
from asa_format.digest import root_digest
from asa_format.errors import Problem
from asa_format.reader import read_bundle_dir

__all__ = ["ValidationReport", "validate_bundle"]


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


def validate_bundle(path: str | os.PathLike[str], *, deep: bool = False) -> ValidationReport:
    """Check the bundle at ``path`` and collect every problem.

    By default every check is static and neither ``onnx`` nor onnxruntime is
    imported: what ``load_bundle``'s onnxruntime sessions would refuse is
    predicted from the graphs (``onnx_check.predict_session``), so a bundle
    that validates also loads. ``deep=True`` creates the onnxruntime sessions
    instead and evaluates each graph once, as ``load_bundle`` does.
    """
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
            "interventions": [iv.name for iv in m.interventions],
            "domains": m.domain_names,
            "files": len(m.files) + 1,
            "signature": (result.path / C.SIGNATURE_FILE).is_file(),
        }
    return report
