"""``asa export --to gguf``: a bundle as a llama.cpp control vector, with a loss report.

llama.cpp adds ``direction.N`` to the output of block N at every token, for
the whole server, unconditionally; it has no slot for block 0. So:

- ``always`` interventions export exactly when their coefficient is 1 and
  their policy ``all_tokens`` (``direction.N`` = the stored direction);
  otherwise the coefficient is folded in (one float32 rounding) and a policy
  other than ``all_tokens`` is a *positions* loss. Several interventions on
  one block are summed (the same sum llama.cpp forms when given several files).
- the ``asa`` intervention exports one chosen domain and sign:
  ``direction.L = float32(sign x alpha) x v[domain]`` (float32, the product
  the runtime adds); the gate is dropped and, unless the policy is
  ``all_tokens``, so is the position rule.
- ``condition`` interventions cannot be expressed (their gate decides per
  prompt): refused. Block 0: refused.

*Losses* change what the vector does; *notes* are metadata GGUF cannot hold
(model id, layer count, digests, signature). ``strict`` refuses any loss.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asa_format import constants as C
from asa_format.bundle import Bundle, load_bundle
from asa_format.errors import AsaError, ConversionError, UsageError
from asa_format.interop.gguf_cv import write_control_vector

__all__ = ["ExportReport", "export_gguf", "plan_gguf"]


@dataclass
class ExportReport:
    model_hint: str
    directions: dict[int, np.ndarray]
    losses: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"export: {len(self.directions)} direction tensor(s) for blocks {sorted(self.directions)}, model_hint {self.model_hint!r}"
        ]
        if not self.losses:
            lines.append("loss: none (the GGUF steers exactly as the bundle)")
        for kind, detail in self.losses:
            lines.append(f"loss: {kind}: {detail}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _unsupported(message: str, hint: str) -> ConversionError:
    return ConversionError(message, code="EXPORT_UNSUPPORTED", hint=hint)


def plan_gguf(
    bundle: Bundle,
    *,
    interventions: list[str] | None = None,
    domain: str | None = None,
    sign: int | None = None,
    model_hint: str | None = None,
) -> ExportReport:
    """Compute the direction tensors and what the export loses (nothing is written)."""
    m = bundle.manifest
    hint = model_hint or m.model.type
    if not hint:
        raise _unsupported(
            "the bundle's model type is unknown; a control vector names it in controlvector.model_hint",
            "pass --model-hint MODEL_TYPE",
        )
    chosen = [
        iv for iv in bundle.interventions if interventions is None or iv.name in interventions
    ]
    if interventions is not None:
        missing = sorted(set(interventions) - {iv.name for iv in chosen})
        if missing:
            raise UsageError(
                f"the bundle has no intervention {missing}",
                code="USAGE",
                hint=f"choose among {[iv.name for iv in bundle.interventions]}",
            )
    if (
        interventions is None
        and any(iv.kind != C.GATE_ASA for iv in chosen)
        and any(iv.kind == C.GATE_ASA for iv in chosen)
        and domain is None
    ):
        chosen = [
            iv for iv in chosen if iv.kind != C.GATE_ASA
        ]  # the asa one only when a domain is chosen
    report = ExportReport(model_hint=hint, directions={})
    sums: dict[int, list[np.ndarray]] = {}
    for iv in chosen:
        if iv.kind == C.GATE_CONDITION:
            raise _unsupported(
                f"intervention {iv.name!r} is conditional; llama.cpp steers every prompt",
                "export the other interventions with --intervention",
            )
        if iv.kind == C.GATE_ASA:
            vec = _asa_vector(bundle, domain, sign, report)
            layer = bundle.manifest.layer
            assert layer is not None  # the bundle has an asa intervention
            sums.setdefault(int(layer.index), []).append(vec)
            continue
        if iv.spec.policy != C.POLICY_ALL_TOKENS:
            report.losses.append(
                (
                    "positions",
                    f"{iv.name!r} has policy {iv.spec.policy}; llama.cpp adds the vector at every token",
                )
            )
        coef = np.float32(iv.spec.coefficient)
        if coef != np.float32(1.0):
            report.losses.append(
                (
                    "precision",
                    f"{iv.name!r}: coefficient {iv.spec.coefficient:g} folded into the vectors (one float32 rounding per value)",
                )
            )
        for block, d in iv.directions.items():
            sums.setdefault(block, []).append(
                d if coef == np.float32(1.0) else (d * coef).astype(np.float32)
            )
    if not sums:
        raise _unsupported(
            "nothing to export",
            "the bundle has no always intervention; for an asa bundle pass --domain and --sign",
        )
    if 0 in sums:
        raise _unsupported(
            "a vector steers block 0, which llama.cpp control vectors cannot address (direction.0 is an error there)",
            "drop block 0 from the intervention",
        )
    for block, vecs in sorted(sums.items()):
        total = vecs[0].astype(np.float32)
        for v in vecs[1:]:
            total = (total + v).astype(np.float32)
        if len(vecs) > 1:
            report.losses.append(
                ("precision", f"block {block}: {len(vecs)} vectors summed into one (float32)")
            )
        report.directions[block] = total
    report.notes.append(
        "model id, layer count, root digest and signature are not carried by GGUF; llama.cpp does not check the model at all"
    )
    if m.model.id:
        report.notes.append(f"the bundle is bound to {m.model.id!r}")
    return report


def _asa_vector(
    bundle: Bundle, domain: str | None, sign: int | None, report: ExportReport
) -> np.ndarray:
    asa = bundle.asa
    assert asa is not None
    if domain is None or sign not in (1, -1):
        raise UsageError(
            "exporting the asa intervention needs one domain and one sign",
            code="USAGE",
            hint=f"pass --domain (one of {asa.domains}) and --sign +1 or -1",
        )
    steering = asa.manifest.steering
    assert steering is not None  # the bundle has an asa intervention
    v = asa.steering_vector(domain)  # raises DECISION_INPUT for an unknown domain
    report.losses.append(
        (
            "gate",
            f"the router/probe gate is dropped: domain {domain!r}, sign {sign:+d} is applied to every prompt",
        )
    )
    if steering.policy != C.POLICY_ALL_TOKENS:
        report.losses.append(
            (
                "positions",
                f"policy {steering.policy}: llama.cpp adds the vector at every token of every step",
            )
        )
    out: np.ndarray = (v * np.float32(sign * steering.alpha)).astype(np.float32)
    return out


def export_gguf(
    bundle_path: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    interventions: list[str] | None = None,
    domain: str | None = None,
    sign: int | None = None,
    model_hint: str | None = None,
    strict: bool = False,
    force: bool = False,
    bundle: Bundle | None = None,
) -> ExportReport:
    """Write the control vector at ``destination`` (atomically) and return the report."""
    loaded = bundle or load_bundle(bundle_path)
    report = plan_gguf(
        loaded, interventions=interventions, domain=domain, sign=sign, model_hint=model_hint
    )
    if strict and report.losses:
        kinds = sorted({k for k, _ in report.losses})
        raise ConversionError(
            f"the export would lose: {', '.join(kinds)}",
            code="EXPORT_LOSSY",
            hint="drop --strict to accept the losses listed in the report",
        )
    dest = Path(destination)
    if dest.exists() or dest.is_symlink():
        if not force:
            raise UsageError(
                f"destination {str(dest)!r} already exists",
                code="DESTINATION_EXISTS",
                file=str(dest),
                hint="choose another destination, or pass --force",
            )
        if (
            dest.is_symlink() or not dest.is_file()
        ):  # --force replaces a file, never a directory or a link's target
            raise UsageError(
                f"destination {str(dest)!r} exists and is not a regular file; --force only replaces a file",
                code="DESTINATION_NOT_BUNDLE",
                file=str(dest),
                hint="choose another destination",
            )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise AsaError(
            f"cannot create a file in {str(dest.parent)!r}: {exc.strerror}",
            code="IO_ERROR",
            hint="check that the folder exists and is writable",
        ) from exc
    os.close(fd)
    try:
        write_control_vector(tmp, report.model_hint, report.directions)
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AsaError(
            f"writing {str(dest)!r} failed: {exc.strerror or exc}",
            code="IO_ERROR",
            hint="check free space and permissions; nothing was written at the destination",
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return report
