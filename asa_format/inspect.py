"""``asa inspect``: a readable summary of a bundle."""

from __future__ import annotations

import os
from typing import Any

from asa_format import constants as C
from asa_format.cli.textsafe import safe_text as t
from asa_format.errors import BundleError
from asa_format.format.digest import root_digest
from asa_format.storage.reader import read_bundle_dir

__all__ = ["describe"]


def describe(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """Return ``(summary as JSON-able dict, text for a person)``; raises BundleError."""
    result = read_bundle_dir(path, verify=True, create_sessions=False)
    if result.problems or result.manifest is None or result.manifest_bytes is None:
        raise BundleError.from_problems(result.problems)
    m = result.manifest
    digest = root_digest(result.manifest_bytes)
    signed = (result.path / C.SIGNATURE_FILE).is_file()
    summary = {
        "path": str(path),
        "digest": digest,
        "signature_file": signed,
        "manifest": m.to_dict(),
    }

    # every string from the bundle (or the path) is escaped on its own: a newline or an
    # escape sequence in a name never makes a line of its own (the text is printed with
    # safe_lines, which keeps the newlines this function writes)
    lines = [
        f"bundle       {t(path)}",
        f"digest       {digest}",
        f"format       {m.format} {m.format_version} (written by {t(m.producer.name)} {t(m.producer.version)})",
        f"model        {t(m.model.id or '(id unknown)')}  type={t(m.model.type or 'unknown')}  "
        f"hidden_size={m.model.hidden_size}  layers={m.model.num_layers if m.model.num_layers is not None else 'unknown'}",
    ]
    if m.layer is not None and m.steering is not None:
        s = m.steering
        lines += [
            f"layer        {m.layer.index} ({m.layer.tensor}: output of decoder block {m.layer.index}, 0-based)",
            f"steering     alpha={s.alpha:g}  tau={s.tau:g}  beta={s.beta:g}  policy={s.policy}  "
            f"no-probe p={s.no_probe_probability:g}",
            f"domains      {len(m.domains)}",
        ]
    for iv in m.interventions:
        where = (
            f"blocks {list(iv.blocks)}  coefficient={iv.coefficient:g}  policy={iv.policy}"
            if iv.kind != C.GATE_ASA
            else "see layer/steering/domains"
        )
        lines.append(f"intervention {t(iv.name)} ({t(iv.kind)})  {where}")
        if iv.condition is not None:
            g = iv.condition
            lines.append(
                f"  condition  blocks {list(g.blocks)}: {g.aggregate} similarity {g.comparator} {g.threshold:g}"
            )
    for i, d in enumerate(m.domains):
        lines.append(f"  [{i}] {t(d.name):<24} probe: {t(d.probe or 'none (p = no-probe p)')}")
    lines.append(
        f"files        {len(m.files)} + manifest.json{'  + signature ' + C.SIGNATURE_FILE if signed else ''}"
    )
    for name in sorted(m.files):
        f = m.files[name]
        lines.append(f"  {t(name):<22} {f.size:>10} bytes  sha256:{t(f.sha256[:16])}...")
    if m.provenance is not None:
        p = m.provenance
        lines.append(
            f"provenance   source={p.source}"
            + (f"  tool={t(p.tool.name)} {t(p.tool.version)}" if p.tool else "")
        )
        for name, f in sorted(p.inputs.items()):
            lines.append(f"  from {t(name):<20} {f.size:>10} bytes  sha256:{t(f.sha256[:16])}...")
        for lib, ver in sorted(p.library_versions.items()):
            lines.append(f"  {t(lib)} {t(ver)}")
        if p.metadata:
            lines.append(f"  metadata keys: {', '.join(t(k) for k in sorted(p.metadata))}")
    return summary, "\n".join(lines) + "\n"
