"""Fitted objects -> a format 1.1 bundle with provenance and a model card, written atomically.

The asa intervention's graphs are exported with the converters' exporters
(``export_fitted_scaler``, ``export_fitted_classifier``) and the bundle is
written with ``save_bundle``: into a temporary directory, checked by the
reader, then compared with the fitted estimators themselves (on hidden
states sampled around the scaler's mean and scale, and on the data's own
hidden states at the chosen block) before it is moved into place. The model
card is the standard one (``asa_format.format.card``) followed by a section on the
fit: protocol, data digest, per-block AUC, sweeps and test scores.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import __version__
from asa_format import constants as C
from asa_format.format.manifest import FileEntry, ModelBinding, Producer, Provenance, Steering
from asa_format.storage.writer import BundleContents, save_bundle

__all__ = ["PRODUCER", "asa_contents", "fit_card_section", "library_versions", "write_fitted"]

PRODUCER = "asa fit"


def library_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, label in (
        ("sklearn", "scikit-learn"),
        ("skl2onnx", "skl2onnx"),
        ("onnx", "onnx"),
        ("numpy", "numpy"),
        ("torch", "torch"),
        ("transformers", "transformers"),
    ):
        try:
            module = __import__(name)
        except ImportError:  # pragma: no cover - all are needed to fit
            continue
        out[label] = str(getattr(module, "__version__", "unknown"))
    return out


def asa_contents(
    model: ModelBinding,
    *,
    layer: int,
    domains: Sequence[str],
    vectors: Mapping[str, np.ndarray],
    scaler: Any,
    router: Any,
    probes: Mapping[str, Any],
    alpha: float,
    tau: float,
    beta: float,
) -> BundleContents:
    """The asa intervention of fitted estimators (graphs exported, vectors unit float32)."""
    from asa_format.converters.export import export_fitted_classifier, export_fitted_scaler

    unit = {}
    for name, v in vectors.items():
        v64 = np.asarray(v, dtype=np.float64)
        unit[name] = (v64 / np.linalg.norm(v64)).astype(np.float32)
    return BundleContents(
        model=model,
        layer=int(layer),
        steering=Steering(alpha=float(alpha), tau=float(tau), beta=float(beta)),
        domains=list(domains),
        vectors=unit,
        scaler=export_fitted_scaler(scaler),
        router=export_fitted_classifier(router, list(range(len(domains)))),
        probes={d: export_fitted_classifier(p, [0, 1]) for d, p in probes.items()},
    )


def _f(x: float) -> str:
    return f"{x:.4f}"


def fit_card_section(meta: Mapping[str, Any]) -> str:
    """Markdown for the card: what was fitted, on what, and how it scored."""
    lines = ["", "## How this bundle was fitted", ""]
    lines.append(
        f"Written by `asa fit` (asa-format {__version__}) from the model's own hidden states; "
        "the same model, data, rendering and dtype give the same bytes."
    )
    lines.append("")
    data = meta["data"]
    lines.append(f"- kind: `{meta['kind']}`; protocol: {meta['protocol']}")
    lines.append(
        f"- data: {data['layout']} layout, {data['kind']}, digest `{data['digest']}`; rows per split: "
        + ", ".join(f"{k} {v}" for k, v in data["rows"].items())
    )
    r = meta["rendering"]
    lines.append(
        f"- rendering: {r['mode']}"
        + (
            f", system prompt `{r['system_prompt_sha256']}`"
            if r.get("system_prompt_sha256")
            else ""
        )
        + f"; model dtype {meta['model']['dtype']}"
    )
    if meta["kind"] == C.GATE_ASA:
        aucs = meta["layer_auc"]
        lines.append(
            f"- layer: {meta['layer']['index']} ({meta['layer']['chosen_by']}); validation ROC AUC per block: "
            + ", ".join(f"{b}: {_f(a)}" for b, a in enumerate(aucs))
        )
        lines.append(
            f"- tau: {meta['tau']['value']:g} ({meta['tau']['chosen_by']}); sweep F1: "
            + ", ".join(f"{row['tau']:g}: {_f(row['f1'])}" for row in meta["tau"]["sweep"])
        )
        ab = meta["alpha_beta"]
        lines.append(f"- alpha {ab['alpha']:g}, beta {ab['beta']:g}: {ab['chosen_by']}")
        t = meta["test"]
        lines.append(
            f"- test split, gate = +1 against the label: F1 {_f(t['f1'])}, precision {_f(t['precision'])}, "
            f"recall {_f(t['recall'])}, false-positive rate {_f(t['fpr'])}"
        )
    else:
        lines.append(
            f"- directions: {meta['method']} at blocks {', '.join(map(str, meta['blocks']))}, "
            f"coefficient {meta['coefficient']:g}"
        )
        cond = meta.get("condition")
        if cond:
            lines.append(
                f"- condition: block {cond['block']}, {cond['aggregate']} hidden state, cosine "
                f"{cond['comparator'].replace('_', ' ')} {cond['threshold']:.6g} (chosen on valid: F1 "
                f"{_f(cond['valid']['f1'])})"
            )
            if cond.get("test"):
                tt = cond["test"]
                lines.append(
                    f"- test split, condition fires against the label: F1 {_f(tt['f1'])}, precision "
                    f"{_f(tt['precision'])}, recall {_f(tt['recall'])}, false-positive rate {_f(tt['fpr'])}"
                )
    lines.append("")
    lines.append(
        "The manifest's `provenance` holds every number above and the versions of the libraries used."
    )
    return "\n".join(lines) + "\n"


def write_fitted(
    destination: str | os.PathLike[str],
    *,
    model: ModelBinding,
    asa: BundleContents | None,
    interventions: Sequence[Any],
    metadata: Mapping[str, Any],
    inputs: Mapping[str, FileEntry],
    force: bool,
    self_check: Any = None,
) -> Path:
    """Write the 1.1 bundle (card included) atomically; ``self_check(tmp)`` runs before commit."""
    from asa_format.format.card import render_card
    from asa_format.format.contents import BundleContents, bundle_files

    provenance = Provenance(
        source="pipeline",
        tool=Producer(PRODUCER, __version__),
        inputs=dict(sorted(inputs.items())[:64]),
        library_versions=library_versions(),
        metadata=dict(metadata),
    )
    if asa is not None:  # the asa part and the other interventions: one contents type
        contents = dataclasses.replace(
            asa,
            interventions=list(interventions),
            provenance=provenance,
            producer=None,
            card=False,
            format_version=C.FORMAT_VERSION,
        )
    else:
        contents = BundleContents(
            model=model,
            interventions=list(interventions),
            provenance=provenance,
            card=False,
            format_version=C.FORMAT_VERSION,
        )
    manifest, files = bundle_files(contents)
    asa_parts: dict[str, Any] = {}
    if asa is not None:
        asa_parts = {
            "layer": manifest.layer,
            "steering": manifest.steering,
            "domains": manifest.domains,
        }
    card = render_card(model, list(manifest.interventions), asa_parts, files) + fit_card_section(
        metadata
    )
    contents = dataclasses.replace(contents, card=card)
    return save_bundle(contents, destination, force=force, before_commit=self_check)
