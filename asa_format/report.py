"""Reporters for ``asa validate``: text for people, JSON for machines.

JSON output (stdout), one document per run::

    {
      "asa_format_version": "0.1.0",
      "valid": false,                       # every bundle valid?
      "summary": {"checked": 2, "valid": 1, "invalid": 1},
      "bundles": [
        {"path": "...", "valid": true, "digest": "sha256:...",
         "errors": [], "warnings": []},
        {"path": "...", "valid": false, "digest": "sha256:...",
         "errors": [{"code": "FILE_HASH_MISMATCH", "file": "router.onnx",
                     "message": "...", "hint": "..."}],
         "warnings": []}
      ]
    }

Text output: one ``ok`` line per valid bundle on stdout; for an invalid
bundle a header line and one indented line per problem on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TextIO

from asa_format import __version__
from asa_format.textsafe import safe_text
from asa_format.validate import ValidationReport

__all__ = ["json_report", "text_report"]


def json_report(reports: Sequence[ValidationReport]) -> str:
    valid = sum(r.ok for r in reports)
    doc = {
        "asa_format_version": __version__,
        "valid": valid == len(reports),
        "summary": {"checked": len(reports), "valid": valid, "invalid": len(reports) - valid},
        "bundles": [r.to_dict() for r in reports],
    }
    return json.dumps(doc, indent=2, sort_keys=True)


def text_report(reports: Sequence[ValidationReport], out: TextIO, err: TextIO) -> None:
    for r in reports:
        if r.ok:
            s = r.summary
            model = s.get("model", {})
            what = safe_text(model.get("id") or model.get("type") or "model unknown")
            out.write(
                f"ok    {safe_text(r.path)}  ({what}, hidden {model.get('hidden_size')}, layer {s.get('layer')}, "
                f"{len(s.get('domains', []))} domains, {r.digest})\n"
            )
            for w in r.warnings:
                err.write(f"      warning: {safe_text(w)}\n")
            continue
        n = len(r.problems)
        err.write(f"FAIL  {safe_text(r.path)}  ({n} problem{'s' if n != 1 else ''})\n")
        for p in r.problems:
            where = f"{safe_text(p.file)}: " if p.file else ""
            err.write(f"  {p.code:<28} {where}{safe_text(p.message)}\n")
            if p.hint:
                err.write(f"  {'':<28} fix: {safe_text(p.hint)}\n")
        for w in r.warnings:
            err.write(f"  warning: {safe_text(w)}\n")
    if len(reports) > 1:
        bad = sum(not r.ok for r in reports)
        (err if bad else out).write(f"{len(reports) - bad} of {len(reports)} bundles valid\n")
