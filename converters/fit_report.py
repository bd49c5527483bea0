"""What ``asa fit`` reports: the text on stdout, or the fields of its JSON result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FitReport"]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _scores(m: dict[str, float]) -> str:
    return (
        f"F1 {_f(m['f1'])}  precision {_f(m['precision'])}  recall {_f(m['recall'])}  "
        f"false-positive rate {_f(m['fpr'])}  accuracy {_f(m['accuracy'])}"
    )


@dataclass
class FitReport:
    """The outcome of a fit (``to_dict`` for ``--json``, ``text`` for a person)."""

    destination: str
    digest: str
    kind: str
    model: dict[str, Any]
    files: dict[str, int]
    metadata: dict[str, Any]  # what the manifest's provenance.metadata holds
    extraction: dict[str, Any]
    parity: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "digest": self.digest,
            "kind": self.kind,
            "model": dict(self.model),
            "files": dict(self.files),
            "fit": dict(self.metadata),
            "extraction": dict(self.extraction),
            "parity": self.parity,
            "notes": list(self.notes),
        }

    def text(self) -> str:
        m = self.metadata
        data = m["data"]
        ex = self.extraction
        lines = [
            f"fitted       -> {self.destination}",
            f"digest       {self.digest}",
            f"kind         {self.kind}"
            + (" (the reference pipeline's protocol)" if self.kind == "asa" else ""),
            f"model        id={self.model.get('id') or 'unknown'}  type={self.model.get('type') or 'unknown'}  "
            f"hidden_size={self.model.get('hidden_size')}  layers={self.model.get('num_layers')}  "
            f"dtype={m['model']['dtype']}",
            f"data         {data['digest']}  ({data['kind']}; "
            + ", ".join(f"{k} {v}" for k, v in data["rows"].items())
            + ")",
            f"rendering    {m['rendering']['mode']}"
            + (
                "  system prompt " + m["rendering"]["system_prompt_sha256"]
                if m["rendering"].get("system_prompt_sha256")
                else ""
            )
            + (
                "  special tokens added after the template"
                if m["rendering"].get("add_special_tokens") and m["rendering"]["mode"] == "chat"
                else ""
            ),
            f"hidden       {ex['prompts']} prompts, {ex['mode']}"
            + (
                f" (batch {ex['batch_size']}, {ex['batched_prompts']} batched, {ex['checked_rows']} rows checked "
                "against one-at-a-time passes)"
                if ex["mode"] != "one at a time" and not ex["cached"]
                else ""
            )
            + f", {ex['forward_passes']} forward passes, {ex['seconds']:.1f} s"
            + ("  [from the cache]" if ex["cached"] else ""),
        ]
        if ex.get("fallback"):
            lines.append(f"             {ex['fallback']}")
        if ex.get("padded_max_abs_diff") is not None:
            lines.append(
                f"             padded batching changed the hidden states by up to {ex['padded_max_abs_diff']:.3g} "
                f"(relative {ex['padded_max_rel_diff']:.3g}) on {ex['checked_rows']} rows checked one at a time"
            )
        if self.kind == "asa":
            lines += self._asa_lines(m)
        else:
            lines += self._contrastive_lines(m)
        if self.parity:
            lines.append(
                f"self-check   {self.parity['samples']} hidden states (sampled and the data's own at the "
                f"chosen block): domain agreement {self.parity['domain_agreement']:.2%}, gate agreement "
                f"{self.parity['gate_agreement']:.2%}, max |dp| {self.parity['max_probability_difference']:.3g}"
            )
        lines.append(
            "files        " + ", ".join(f"{n} ({s} B)" for n, s in sorted(self.files.items()))
        )
        for note in self.notes:
            lines.append(f"note         {note}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _asa_lines(m: dict[str, Any]) -> list[str]:
        aucs = m["layer_auc"]
        best = max(aucs)
        layer = m["layer"]["index"]
        lines = ["layer sweep  block  valid ROC AUC"]
        for b, a in enumerate(aucs):
            mark = (
                "  <- L*"
                if b == layer
                else ("  (within 0.005 of the best)" if a >= best - 0.005 else "")
            )
            lines.append(f"             {b:>5}  {a:.4f}{mark}")
        lines.append(f"layer        {layer} ({m['layer']['chosen_by']})")
        lines.append(f"domains      {', '.join(m['domains'])}")
        lines.append(
            f"router       accuracy valid {_f(m['router']['valid_accuracy'])}, test {_f(m['router']['test_accuracy'])}"
        )
        lines.append("tau sweep    tau   F1 of gate=+1 on valid")
        for row in m["tau"]["sweep"]:
            mark = "  <- tau" if row["tau"] == m["tau"]["value"] else ""
            lines.append(
                f"             {row['tau']:.2f}  {_f(row['f1'])}  (precision {_f(row['precision'])}, recall {_f(row['recall'])}){mark}"
            )
        lines.append(f"tau          {m['tau']['value']:g} ({m['tau']['chosen_by']})")
        ab = m["alpha_beta"]
        lines.append(f"alpha, beta  {ab['alpha']:g}, {ab['beta']:g} ({ab['chosen_by']})")
        if ab.get("baseline") is not None:
            lines.append(
                f"             trigger {ab['trigger']!r} in the first {ab['new_tokens']} generated tokens; "
                f"without steering F1 {_f(ab['baseline']['f1'])}"
            )
            for key, rows in (("alpha", ab["alpha_sweep"]), ("beta", ab["beta_sweep"])):
                if rows:
                    lines.append(
                        f"             {key} sweep F1: "
                        + ", ".join(f"{r[key]:g}: {_f(r['f1'])}" for r in rows)
                    )
            for key in ab.get("undecided", []):
                lines.append(
                    f"             every {key} scored the same: the measurement did not distinguish them, "
                    "the first grid value was kept"
                )
        lines.append(f"test         gate=+1 against the label: {_scores(m['test'])}")
        if m.get("convergence"):
            lines.append(
                f"warning      lbfgs did not converge in {len(m['convergence'])} fit(s): {m['convergence'][0]}"
            )
        return lines

    @staticmethod
    def _contrastive_lines(m: dict[str, Any]) -> list[str]:
        lines = [
            f"directions   {m['method']} on the {m['fit_split'] or 'whole'} data at blocks "
            f"{', '.join(map(str, m['blocks']))}; coefficient {m['coefficient']:g}; policy {m['policy']}",
            "             norms: "
            + ", ".join(f"{b}: {n:.4g}" for b, n in m["direction_norms"].items()),
        ]
        cond = m.get("condition")
        if cond:
            lines.append("condition    block  comparator    threshold  valid F1")
            for row in cond["sweep"]:
                mark = "  <- chosen" if row["block"] == cond["block"] else ""
                lines.append(
                    f"             {row['block']:>5}  {row['comparator']:<12}  {row['threshold']:>9.6f}  {_f(row['valid_f1'])}{mark}"
                )
            lines.append(
                f"valid        condition fires against the label: {_scores(cond['valid'])}"
            )
            if cond.get("test"):
                lines.append(
                    f"test         condition fires against the label: {_scores(cond['test'])}"
                )
        return lines
