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
from asa_format.errors import AsaError, ConversionError, UsageError
from asa_format.finite import check_finite_product
from asa_format.inputs import check_path_arg
from asa_format.interop.gguf_cv import write_control_vector
from asa_format.intervention_bundle import InterventionBundle, load_interventions
from asa_format.textrules import is_label

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


def _check_args(
    bundle: object,
    interventions: object,
    domain: object,
    sign: object,
    model_hint: object,
    flags: dict[str, object],
) -> None:
    """Types and ranges of the export arguments: a coded UsageError, before anything is read."""

    def usage(message: str, hint: str) -> UsageError:
        return UsageError(message, hint=hint)

    if bundle is not None and not isinstance(bundle, InterventionBundle):
        raise usage(
            f"bundle must be an InterventionBundle, not {type(bundle).__name__}",
            "pass asa_format.load_interventions(path)",
        )
    if interventions is not None and not (
        isinstance(interventions, (list, tuple)) and all(isinstance(n, str) for n in interventions)
    ):
        raise usage("interventions must be a list of intervention names", "pass a list of str")
    if domain is not None and not isinstance(domain, str):
        raise usage(f"domain must be a str, not {type(domain).__name__}", "pass a domain name")
    if sign is not None and (type(sign) is not int or sign not in (1, -1)):
        raise usage(f"sign is {str(sign)[:20]!r}; it must be +1 or -1", "pass sign=1 or sign=-1")
    if model_hint is not None and not is_label(model_hint):
        raise usage(
            f"model_hint {str(model_hint)[:60]!r} is not a model type "
            "(1..128 characters, no control characters)",
            "pass the transformers model_type, e.g. llama",
        )
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise usage(f"{name} must be a bool, not {type(value).__name__}", f"pass {name}=True")


def plan_gguf(
    bundle: InterventionBundle,
    *,
    interventions: list[str] | None = None,
    domain: str | None = None,
    sign: int | None = None,
    model_hint: str | None = None,
) -> ExportReport:
    """Compute the direction tensors and what the export loses (nothing is written)."""
    if not isinstance(bundle, InterventionBundle):
        raise UsageError(
            f"bundle must be an InterventionBundle, not {type(bundle).__name__}",
            hint="pass asa_format.load_interventions(path)",
        )
    _check_args(bundle, interventions, domain, sign, model_hint, {})
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
    if (domain is not None or sign is not None) and not any(iv.kind == C.GATE_ASA for iv in chosen):
        raise UsageError(
            "a domain and a sign choose the asa intervention's vector, but none is exported",
            code="USAGE",
            hint="drop --domain and --sign, or export a bundle with an asa intervention",
        )
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
            assert bundle.asa is not None
            sums.setdefault(int(bundle.asa.manifest.layer.index), []).append(vec)
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
            check_finite_product(
                float(coef),
                d,
                "float32",
                what=f"intervention {iv.name!r} block {block}",
                hint="a GGUF control vector stores coefficient x direction in float32; "
                "lower the coefficient or the direction's magnitude",
            )
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
        with np.errstate(over="ignore"):
            for v in vecs[1:]:
                total = (total + v).astype(np.float32)
        if not np.isfinite(total).all():
            raise ConversionError(
                f"block {block}: the sum of {len(vecs)} vectors overflows float32",
                code="VALUE_OVERFLOW",
                hint="export the interventions one at a time (--intervention)",
            )
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
    bundle: InterventionBundle, domain: str | None, sign: int | None, report: ExportReport
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
    scale = float(np.float32(sign * steering.alpha))
    check_finite_product(
        scale,
        v,
        "float32",
        what=f"domain {domain!r}: sign x alpha",
        hint="a GGUF control vector stores alpha x vector in float32",
    )
    out: np.ndarray = (v * np.float32(scale)).astype(np.float32)
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
    bundle: InterventionBundle | None = None,
) -> ExportReport:
    """Write the control vector at ``destination`` (atomically) and return the report."""
    check_path_arg(destination, "the destination")
    if bundle is None:
        check_path_arg(bundle_path, "the bundle")
    _check_args(bundle, interventions, domain, sign, model_hint, {"strict": strict, "force": force})
    loaded = bundle or load_interventions(bundle_path)
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
