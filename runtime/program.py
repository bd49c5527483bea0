"""A bundle compiled for application: what each decoder block reads and adds, per row.

One implementation of the per-row semantics of every intervention kind
(spec 14.1), shared by the transformers hooks (:mod:`asa_format.runtime.steering`)
and the serving path (:mod:`asa_format.runtime.flat`):

- ``always``: ``coefficient * direction[b]`` at each steered block ``b``;
- ``condition``: the same, for a row whose condition held at every condition
  block at the prefill (spec 14.4: cosine similarity of the row's mean or last
  hidden state with the condition vector, compared with the threshold);
- ``asa``: ``gate * alpha * v[domain]`` at the asa layer, decided at the
  prefill on the row's decision position (spec section 4).

A :class:`Program` holds, per block, the condition reads (:class:`Read`) and
the additions (:class:`Term`) of one bundle. A :class:`RowOutcomes` holds
what a row's prefill decided. :func:`term_delta` gives a term's float32 delta
for a row from those outcomes; deltas of one block and one policy are summed
in float32 and cast once to the hidden states' dtype (spec 14.1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.errors import RuntimeCompatError, UsageError
from asa_format.format.finite import FLOAT_DTYPES, check_finite_product
from asa_format.format.interventions import ConditionGate, condition_fires, condition_similarity

__all__ = [
    "POLICIES",
    "Program",
    "Read",
    "RowOutcomes",
    "Term",
    "condition_outcome",
    "term_delta",
]

POLICIES = C.POLICIES


@dataclass(frozen=True)
class Term:
    """One steered block of one intervention."""

    intervention: str
    kind: str  # "asa", "always" or "condition"
    block: int
    policy: str
    vector: np.ndarray | None  # float32 coefficient x direction; None for asa (per-row vector)


@dataclass(frozen=True)
class Read:
    """A condition block of a ``condition`` intervention: read at the prefill."""

    intervention: str
    block: int
    vector: np.ndarray  # float64 condition vector
    gate: ConditionGate
    index: int  # position of this block in the gate's blocks


@dataclass
class RowOutcomes:
    """What one row's prefill decided, per intervention of its bundle.

    ``asa``: the ASA decision (``Decision``) or None; ``similarities``: per
    condition intervention, the similarities read so far (one per condition
    block); ``fires``: per condition intervention, whether it steers the row.
    """

    asa: Any = None
    similarities: dict[str, list[float]] = field(default_factory=dict)
    fires: dict[str, bool] = field(default_factory=dict)

    def summary(self, program: Program) -> dict[str, Any]:
        """Per intervention name: the asa gate, the condition outcome, or ``"always"``."""
        out: dict[str, Any] = {}
        for name, kind in program.kinds.items():
            if kind == C.GATE_ASA:
                out[name] = None if self.asa is None else int(self.asa.gate)
            elif kind == C.GATE_CONDITION:
                out[name] = self.fires.get(name)
            else:
                out[name] = True
        return out


class Program:
    """A loaded bundle compiled for application (``policy``/``alpha`` override its values).

    ``policy`` replaces the policy of every intervention; ``alpha`` replaces
    the asa intervention's strength (a bundle without one refuses it).
    """

    def __init__(self, bundle: Any, *, policy: str | None = None, alpha: float | None = None):
        if policy is not None and policy not in POLICIES:
            raise UsageError(
                f"unknown injection policy {policy!r}", hint=f"use one of {', '.join(POLICIES)}"
            )
        self.bundle = bundle
        self.hidden_size = int(bundle.manifest.model.hidden_size)
        self.kinds: dict[str, str] = {}
        self.terms: dict[int, list[Term]] = {}
        self.reads: dict[int, list[Read]] = {}
        self.conditions: dict[str, ConditionGate] = {}
        self.asa_name: str | None = None
        self.asa_block: int | None = None
        self.asa_policy: str | None = None
        self.asa_alpha: float | None = None
        interventions = getattr(bundle, "interventions", None)
        if interventions is None:  # a duck-typed asa bundle (decide, steering_vector, manifest)
            interventions = [_AsaOnly()]
        for iv in interventions:
            self.kinds[iv.name] = iv.kind
            if iv.kind == C.GATE_ASA:
                steering = bundle.manifest.steering
                self.asa_name = iv.name
                self.asa_block = int(bundle.manifest.layer.index)
                self.asa_policy = steering.policy if policy is None else policy
                self.asa_alpha = float(steering.alpha if alpha is None else alpha)
                if self.asa_policy not in POLICIES:
                    raise UsageError(f"the bundle has an unknown policy {self.asa_policy!r}")
                self._add(Term(iv.name, iv.kind, self.asa_block, self.asa_policy, None))
                continue
            spec = iv.spec
            coef = np.float32(spec.coefficient)
            for b, direction in sorted(iv.directions.items()):
                vec = (np.asarray(direction, dtype=np.float32) * coef).astype(np.float32)
                self._add(Term(iv.name, iv.kind, int(b), policy or spec.policy, vec))
            if spec.condition is not None:
                self.conditions[iv.name] = spec.condition
                for i, b in enumerate(spec.condition.blocks):
                    cond = np.asarray(iv.conditions[b], dtype=np.float64)
                    self.reads.setdefault(int(b), []).append(
                        Read(iv.name, int(b), cond, spec.condition, i)
                    )
        if alpha is not None:
            if not math.isfinite(float(alpha)):
                raise UsageError(f"alpha must be finite, got {alpha!r}")
            if self.asa_name is None:
                raise UsageError(
                    "alpha= sets the asa intervention's strength, and this bundle has none",
                    hint="scale an always/condition intervention by its coefficient instead",
                )

    def _add(self, term: Term) -> None:
        self.terms.setdefault(term.block, []).append(term)

    @property
    def blocks(self) -> list[int]:
        """Every block this program reads or steers, ascending."""
        return sorted(set(self.terms) | set(self.reads))

    @property
    def policies(self) -> list[str]:
        return sorted({t.policy for terms in self.terms.values() for t in terms})

    @property
    def steers_decode(self) -> bool:
        return any(p != C.POLICY_PREFILL_LAST_TOKEN for p in self.policies)

    def check_finite(self, dtype_name: str) -> None:
        """Refuse deltas that overflow float32 or ``dtype_name`` (``VALUE_OVERFLOW``).

        Checked once at attach, with the check every writer uses
        (:func:`asa_format.format.finite.check_finite_product`): every
        ``coefficient x direction``, and ``alpha x v[domain]`` for every
        domain of the asa part.
        """
        dtype = dtype_name if dtype_name in FLOAT_DTYPES else "float32"
        hint = "lower the coefficient or alpha, or run the model in a wider dtype"
        for terms in self.terms.values():
            for t in terms:
                if t.vector is None:
                    continue
                for name in dict.fromkeys(("float32", dtype)):
                    check_finite_product(
                        1.0,
                        t.vector,
                        name,
                        what=f"intervention {t.intervention!r} block {t.block}",
                        hint=hint,
                        error=RuntimeCompatError,
                    )
        if self.asa_name is not None and self.asa_alpha is not None:
            for domain in self.bundle.domains:
                v = np.asarray(self.bundle.steering_vector(domain), dtype=np.float32)
                for name in dict.fromkeys(("float32", dtype)):
                    check_finite_product(
                        self.asa_alpha,
                        v,
                        name,
                        what=f"the asa intervention, domain {domain!r}",
                        hint=hint,
                        error=RuntimeCompatError,
                    )


class _AsaOnly:
    """The one asa intervention of a duck-typed bundle."""

    name = C.GATE_ASA
    kind = C.GATE_ASA


def condition_outcome(outcomes: RowOutcomes, read: Read, aggregated: np.ndarray) -> bool | None:
    """Record the similarity read at one condition block; the outcome when the gate is complete.

    ``aggregated`` is the row's float64 hidden state at the block (mean of its
    real prompt positions, or its decision position, by the gate's
    ``aggregate``). Returns whether the intervention steers the row once the
    last condition block was read, else None.
    """
    sims = outcomes.similarities.setdefault(read.intervention, [])
    sims.append(condition_similarity(aggregated, read.vector))
    if len(sims) == len(read.gate.blocks):
        fires = condition_fires(sims, read.gate)
        outcomes.fires[read.intervention] = fires
        return fires
    return None


def term_delta(
    program: Program, term: Term, outcomes: RowOutcomes, asa_vector: Any = None
) -> np.ndarray | None:
    """A term's float32 delta ``[H]`` for one row, or None when it adds nothing to the row.

    For the asa term, ``asa_vector`` is the mixed unit vector of the row's
    domain (``bundle.steering_vector(domain)``), scaled here by
    ``float32(gate * alpha)`` (spec 4.6).
    """
    if term.kind == C.GATE_ALWAYS:
        return term.vector
    if term.kind == C.GATE_CONDITION:
        return term.vector if outcomes.fires.get(term.intervention) else None
    decision = outcomes.asa
    if decision is None or int(decision.gate) == 0:
        return None
    assert program.asa_alpha is not None
    v = np.asarray(asa_vector, dtype=np.float32)
    return (v * np.float32(int(decision.gate) * program.asa_alpha)).astype(np.float32)


def positions_for(policy: str) -> tuple[bool, bool, bool]:
    """(decision position at the prefill, generated positions, every real prompt position)."""
    return (
        True,
        policy in (C.POLICY_ALL_TOKENS, C.POLICY_GENERATED_TOKENS),
        policy == C.POLICY_ALL_TOKENS,
    )


def summarise(programs: Mapping[str, Program], rows: Sequence[str | None]) -> list[str]:
    """The distinct policies of the rows' bundles (for records)."""
    out: set[str] = set()
    for name in rows:
        if name is not None:
            out.update(programs[name].policies)
    return sorted(out)
