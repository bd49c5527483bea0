"""Choosing alpha and beta by a measurement in which they matter.

The reference notebook "sweeps" alpha and beta with an F1 that uses only the
gate, so its choice is always the first grid value. Here, with a trigger
text (the start of a tool call, e.g. ``<|tool_call_start|>``), each candidate
is measured on the valid split by generation with the steering applied
through the runtime (``asa_format.runtime.attach``, exactly as it will be
served): a row is predicted positive when the first generated tokens,
leading white space removed, start with the trigger; the score is the F1 of
that prediction against the label. Greedy decoding, ``len(trigger tokens) + 2``
new tokens; prompts of equal token length are generated together (no
padding: the values of one prompt at a time), the others alone.

The sweep is coordinate-wise, as the notebook's: alpha over
:data:`ALPHA_GRID` at beta 0.3 (or the given beta), then beta over
:data:`BETA_GRID` at the chosen alpha; of equal F1 the first grid value wins.
When every candidate scores the same, the measurement did not distinguish
them, and the report says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = ["ALPHA_GRID", "BETA_GRID", "AlphaBeta", "choose_alpha_beta"]

ALPHA_GRID = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0)
BETA_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
BETA_DURING_ALPHA = 0.3  # the notebook's beta while it sweeps alpha


@dataclass
class AlphaBeta:
    alpha: float
    beta: float
    chosen_by: str  # "given", "trigger F1 on valid (generation with steering)"
    trigger: str | None = None
    new_tokens: int | None = None
    baseline: dict[str, float] | None = None  # the trigger F1 without steering
    alpha_rows: list[dict[str, float]] = field(default_factory=list)
    beta_rows: list[dict[str, float]] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)  # "alpha"/"beta": every candidate tied

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "chosen_by": self.chosen_by,
            "trigger": self.trigger,
            "new_tokens": self.new_tokens,
            "baseline": self.baseline,
            "alpha_sweep": self.alpha_rows,
            "beta_sweep": self.beta_rows,
            "undecided": list(self.undecided),
        }


def _generate_starts(
    loaded: Any,
    prompts: Sequence[list[int]],
    trigger: str,
    new_tokens: int,
    handle_factory: Any,
    batch_size: int,
) -> np.ndarray:
    """1 where the first generated tokens start with ``trigger``; prompts of equal token
    length are generated together (no padding), others one at a time."""
    import torch

    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = np.zeros(len(prompts), dtype=int)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        groups.setdefault(len(ids), []).append(i)
    batches = [
        g[k : k + max(1, batch_size)]
        for _, g in sorted(groups.items())
        for k in range(0, len(g), max(1, batch_size))
    ]
    with handle_factory():
        for rows in batches:
            x = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=loaded.device)
            with torch.no_grad():
                gen = loaded.model.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
            for j, i in enumerate(rows):
                text = tokenizer.decode(gen[j, x.shape[1] :], skip_special_tokens=False)
                out[i] = int(str(text).lstrip().startswith(trigger))
    return out


def choose_alpha_beta(
    loaded: Any,
    write_bundle: Callable[[float, float, Path], Path],
    prompts: Sequence[list[int]],
    labels: np.ndarray,
    *,
    alpha: float | None,
    beta: float | None,
    trigger: str | None,
    batch_size: int = 1,
    progress: TextIO | None = None,
) -> AlphaBeta:
    """Alpha and beta: as given, or chosen by the trigger F1 (see the module docstring).

    ``write_bundle(alpha, beta, directory)`` writes a bundle with the fitted
    estimators and these values and returns its path.
    """
    import contextlib

    from asa_format.bundle import load_bundle
    from asa_format.converters.fit_protocol import gate_metrics
    from asa_format.errors import UsageError
    from asa_format.runtime import attach

    if alpha is not None and beta is not None:
        return AlphaBeta(float(alpha), float(beta), "given", trigger=trigger)
    if trigger is None:
        missing = " and ".join(n for n, v in (("alpha", alpha), ("beta", beta)) if v is None)
        raise UsageError(
            f"{missing} {'is' if ' and ' not in missing else 'are'} not given, and without a trigger "
            "no measurement can choose them (the gate-only F1 of the reference notebook does not "
            "depend on them)",
            hint="give alpha and beta, or a trigger text (the text that starts a tool call) to "
            "choose them by the F1 of triggered generations on the valid split",
        )
    if not trigger.strip():
        raise UsageError("the trigger text is empty", hint="pass the text that starts a tool call")
    trigger_ids = loaded.tokenizer(trigger, add_special_tokens=False)["input_ids"]
    new_tokens = len(trigger_ids) + 2
    result = AlphaBeta(
        0.0,
        0.0,
        "trigger F1 on valid (greedy generation with the steering applied by the runtime)",
        trigger=trigger,
        new_tokens=new_tokens,
    )
    with tempfile.TemporaryDirectory(prefix="asa-fit-measure-") as tmp:
        measured: dict[tuple[float, float], dict[str, float]] = {}
        bundles: dict[float, Any] = {}

        def score(a: float, b: float) -> dict[str, float]:
            if (a, b) not in measured:
                if b not in bundles:
                    path = write_bundle(a, b, Path(tmp) / f"beta-{len(bundles)}")
                    bundles[b] = load_bundle(path)
                bundle = bundles[b]
                predicted = _generate_starts(
                    loaded,
                    prompts,
                    trigger,
                    new_tokens,
                    lambda: attach(loaded.model, bundle, alpha=a),
                    batch_size,
                )
                measured[(a, b)] = gate_metrics(labels, predicted)
                if progress is not None and progress.isatty():
                    progress.write(f"\rmeasuring alpha and beta: {len(measured)} candidates")
                    progress.flush()
            return measured[(a, b)]

        base = _generate_starts(
            loaded, prompts, trigger, new_tokens, contextlib.nullcontext, batch_size
        )
        result.baseline = gate_metrics(labels, base)
        beta_for_alpha = float(beta) if beta is not None else BETA_DURING_ALPHA
        if alpha is None:
            result.alpha_rows = [{"alpha": a, **score(a, beta_for_alpha)} for a in ALPHA_GRID]
            best = max(result.alpha_rows, key=lambda r: r["f1"])
            result.alpha = float(best["alpha"])
            if len({r["f1"] for r in result.alpha_rows}) == 1:
                result.undecided.append("alpha")
        else:
            result.alpha = float(alpha)
        if beta is None:
            result.beta_rows = [{"beta": b, **score(result.alpha, b)} for b in BETA_GRID]
            best = max(result.beta_rows, key=lambda r: r["f1"])
            result.beta = float(best["beta"])
            if len({r["f1"] for r in result.beta_rows}) == 1:
                result.undecided.append("beta")
        else:
            result.beta = float(beta)
        if progress is not None and progress.isatty():
            progress.write("\n")
    return result
