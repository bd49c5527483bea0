"""Format 1.1 interventions: the data model, its manifest member and its checks.

A bundle holds one or more *interventions*. Each adds vectors to the output
of one or more decoder blocks and says when:

- ``always``: ``coefficient x direction[block]`` at every position the policy
  names, on every forward pass (repeng's ControlModel, llama.cpp control
  vectors, ``.svec`` files, steering-vectors);
- ``asa``: the 1.0 prefill-gated scheme (scaler, router, probes); its members
  are the manifest's top-level ``layer``, ``steering`` and ``domains``, so a
  1.0 bundle is a 1.1 bundle with one ``asa`` intervention;
- ``condition``: CAST-style conditional steering; at the prefill, per row, the
  cosine similarity between the (mean or last) hidden state at each condition
  block and that block's condition vector is compared with a threshold by an
  explicitly named comparator; the steering is applied to the row only if the
  comparison holds at every condition block.

The vectors of ``always`` and ``condition`` interventions are stored in
``interventions.safetensors`` under ``<intervention>/<block>/direction`` and
``<intervention>/<block>/condition``; the ``asa`` vectors stay in
``vectors.safetensors`` (one per domain plus ``global``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.errors import ErrorCode, Problem

__all__ = [
    "ConditionGate",
    "Intervention",
    "LoadedIntervention",
    "condition_fires",
    "condition_similarity",
    "intervention_problems",
    "tensor_name",
]

NAME_PATTERN = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"
)  # anchored by match, \Z: not before a newline


def tensor_name(intervention: str, block: int, role: str = C.DIRECTION_ROLE) -> str:
    """The name of a vector in ``interventions.safetensors``."""
    return f"{intervention}/{block}/{role}"


@dataclass(frozen=True)
class ConditionGate:
    """When a ``condition`` intervention steers a row (decided once, at the prefill)."""

    blocks: tuple[int, ...]  # condition blocks, each with a condition vector
    comparator: str  # "greater_than": fires when similarity > threshold; "less_than": <
    threshold: float  # in [-1, 1]
    aggregate: str = "mean"  # "mean" over the row's real prompt positions, or its "last" one

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": C.GATE_CONDITION,
            "blocks": list(self.blocks),
            "comparator": self.comparator,
            "threshold": float(self.threshold),
            "aggregate": self.aggregate,
        }


@dataclass(frozen=True)
class Intervention:
    """One intervention of a bundle (the manifest entry; vectors live beside it).

    For ``kind == "asa"`` only ``name`` is meaningful: its block, strength and
    policy are the manifest's ``layer``, ``steering`` and ``domains``.
    """

    name: str
    kind: str  # "always", "asa" or "condition"
    blocks: tuple[int, ...] = ()
    coefficient: float = 1.0
    policy: str = C.POLICY_ALL_TOKENS
    condition: ConditionGate | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.kind == C.GATE_ASA:
            return {"name": self.name, "gate": {"kind": C.GATE_ASA}}
        gate: dict[str, Any] = (
            {"kind": C.GATE_ALWAYS} if self.condition is None else self.condition.to_dict()
        )
        return {
            "name": self.name,
            "gate": gate,
            "blocks": list(self.blocks),
            "coefficient": float(self.coefficient),
            "policy": self.policy,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Intervention:
        gate = d["gate"]
        kind = gate["kind"]
        if kind == C.GATE_ASA:
            return cls(name=d["name"], kind=kind)
        condition = None
        if kind == C.GATE_CONDITION:
            condition = ConditionGate(
                blocks=tuple(int(b) for b in gate["blocks"]),
                comparator=gate["comparator"],
                threshold=float(gate["threshold"]),
                aggregate=gate["aggregate"],
            )
        return cls(
            name=d["name"],
            kind=kind,
            blocks=tuple(int(b) for b in d["blocks"]),
            coefficient=float(d["coefficient"]),
            policy=d["policy"],
            condition=condition,
        )

    def tensor_names(self) -> list[str]:
        """The tensors this intervention needs in ``interventions.safetensors``."""
        names = [tensor_name(self.name, b) for b in self.blocks]
        if self.condition is not None:
            names += [tensor_name(self.name, b, C.CONDITION_ROLE) for b in self.condition.blocks]
        return names


# --------------------------------------------------------------------------
# manifest semantics (after the JSON Schema)


def intervention_problems(doc: Mapping[str, Any]) -> list[Problem]:
    """The semantic rules of the 1.1 members ``requires`` and ``interventions``."""
    problems: list[Problem] = []

    def bad(message: str, hint: str, code: ErrorCode = "MANIFEST_SEMANTIC") -> None:
        problems.append(Problem(code=code, file=C.MANIFEST_FILE, message=message, hint=hint))

    requires = list(doc.get("requires", []))
    if len(set(requires)) != len(requires):
        bad("$.requires names a feature twice", "list each feature once")
    has_asa_members = [k for k in ("layer", "steering", "domains") if k in doc]
    entries = doc.get("interventions")
    listed = set(doc.get("files", {}))
    version = str(doc.get("format_version", ""))
    if (requires or entries is not None) and version == C.FORMAT_VERSION_BASE:
        bad(
            "$.requires and $.interventions are format 1.1 members, but $.format_version is '1.0'",
            "write format_version '1.1'",
        )
    if entries is None:
        if len(has_asa_members) != 3:
            missing = sorted({"layer", "steering", "domains"} - set(has_asa_members))
            problems.append(
                Problem(
                    "MANIFEST_SCHEMA",
                    f"$: without $.interventions the members {missing} are required",
                    C.MANIFEST_FILE,
                    "a bundle without an interventions list is one asa intervention (format 1.0)",
                )
            )
        if C.FEATURE_INTERVENTIONS in requires:
            bad(
                "$.requires names 'interventions' but the manifest has no $.interventions",
                "drop it from requires",
            )
    else:
        if C.FEATURE_INTERVENTIONS not in requires:
            bad(
                "$.interventions is present but $.requires does not name 'interventions'",
                "add 'interventions' to $.requires",
            )
        _check_entries(doc, entries, has_asa_members, bad)
    card_listed = C.CARD_FILE in listed
    if card_listed != (C.FEATURE_CARD in requires):
        bad(
            f"$.files {'lists' if card_listed else 'does not list'} {C.CARD_FILE!r} but $.requires "
            f"{'does not name' if card_listed else 'names'} 'card'",
            "a model card is listed in $.files exactly when $.requires names 'card'",
        )
    return problems


def _check_entries(
    doc: Mapping[str, Any], entries: Sequence[Mapping[str, Any]], asa_members: list[str], bad: Any
) -> None:
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        bad(
            "$.interventions: intervention names are not unique",
            "give every intervention its own name",
        )
    asa = [i for i, e in enumerate(entries) if e["gate"]["kind"] == C.GATE_ASA]
    if len(asa) > 1:
        bad(
            "$.interventions has more than one asa intervention",
            "a bundle holds at most one asa intervention",
        )
    if asa and len(asa_members) != 3:
        bad(
            "$.interventions has an asa intervention but $.layer, $.steering or $.domains is missing",
            "give the asa intervention its 1.0 members",
        )
    if not asa and asa_members:
        bad(
            f"$.{asa_members[0]} is present but no intervention has gate kind 'asa'",
            "add the asa intervention or drop its members",
        )
    num_layers = doc["model"].get("num_layers")
    listed = set(doc.get("files", {}))
    needs_file = any(e["gate"]["kind"] != C.GATE_ASA for e in entries)
    if needs_file and C.INTERVENTIONS_FILE not in listed:
        bad(
            f"$.files does not list {C.INTERVENTIONS_FILE!r}",
            "list the vectors of the always/condition interventions",
        )
    if not needs_file and C.INTERVENTIONS_FILE in listed:
        bad(
            f"$.files lists {C.INTERVENTIONS_FILE!r}, which no intervention uses",
            "remove the entry",
        )
    for i, entry in enumerate(entries):
        kind = entry["gate"]["kind"]
        if kind == C.GATE_ASA:
            continue
        blocks = list(entry["blocks"])
        if blocks != sorted(set(blocks)):
            bad(
                f"$.interventions[{i}].blocks is not strictly increasing",
                "list each block once, in increasing order",
            )
        cond_blocks = list(entry["gate"].get("blocks", []))
        if cond_blocks != sorted(set(cond_blocks)):
            bad(
                f"$.interventions[{i}].gate.blocks is not strictly increasing",
                "list each block once, in increasing order",
            )
        if num_layers is not None:
            for b in blocks + cond_blocks:
                if b >= num_layers:
                    bad(
                        f"$.interventions[{i}] names block {b} but $.model.num_layers is {num_layers}",
                        "blocks are 0-based",
                        code="LAYER_OUT_OF_RANGE",
                    )
        if cond_blocks and blocks and min(blocks) < max(cond_blocks):
            bad(
                f"$.interventions[{i}] steers block {min(blocks)} before its condition is known (condition block {max(cond_blocks)})",
                "a condition intervention steers only blocks at or after its last condition block",
            )


def tensor_problems(entries: Sequence[Intervention], present: Sequence[str]) -> list[Problem]:
    """The tensor names of ``interventions.safetensors`` against the manifest."""
    expected = {n for iv in entries for n in iv.tensor_names()}
    got = set(present)
    out = []
    missing, unknown = sorted(expected - got), sorted(got - expected)
    if missing:
        out.append(
            Problem(
                "SAFETENSORS_KEYS",
                f"missing tensors {missing[:8]}",
                C.INTERVENTIONS_FILE,
                "store one vector per intervention block (and condition block)",
            )
        )
    if unknown:
        out.append(
            Problem(
                "SAFETENSORS_KEYS",
                f"unknown tensors {unknown[:8]}",
                C.INTERVENTIONS_FILE,
                "store only the tensors the manifest's interventions name",
            )
        )
    return out


def zero_condition_problems(
    entries: Sequence[Intervention], vectors: Mapping[str, np.ndarray]
) -> list[Problem]:
    """A condition vector must have a non-zero norm (the similarity divides by it)."""
    out = []
    for iv in entries:
        if iv.condition is None:
            continue
        for b in iv.condition.blocks:
            name = tensor_name(iv.name, b, C.CONDITION_ROLE)
            vec = vectors.get(name)
            if vec is not None and not float(np.linalg.norm(vec.astype(np.float64))) > 0.0:
                out.append(
                    Problem(
                        "MANIFEST_SEMANTIC",
                        f"condition vector {name!r} is zero",
                        C.INTERVENTIONS_FILE,
                        "a condition vector needs a direction",
                    )
                )
    return out


# --------------------------------------------------------------------------
# the condition decision (section "Condition gate" of the spec)


def condition_similarity(hidden: np.ndarray, condition: np.ndarray) -> float:
    """``cos(h, c) = (h . c) / (||h|| ||c||)`` in float64; 0 when ``h`` is zero."""
    h = np.asarray(hidden, dtype=np.float64)
    c = np.asarray(condition, dtype=np.float64)
    nh = math.sqrt(float(np.dot(h, h)))
    nc = math.sqrt(float(np.dot(c, c)))
    if nh == 0.0 or nc == 0.0:
        return 0.0
    return float(np.dot(h, c)) / (nh * nc)


def condition_fires(similarities: Sequence[float], gate: ConditionGate) -> bool:
    """True when the comparison holds at every condition block (NaN never fires)."""
    if len(similarities) != len(gate.blocks):
        raise ValueError(
            f"{len(similarities)} similarities for {len(gate.blocks)} condition blocks"
        )
    for s in similarities:
        if not math.isfinite(s):
            return False
        if gate.comparator == "greater_than" and not s > gate.threshold:
            return False
        if gate.comparator == "less_than" and not s < gate.threshold:
            return False
    return True


def aggregate_rows(hidden: np.ndarray, real: np.ndarray, how: str) -> np.ndarray:
    """Per row, the mean of the real positions or the last real one (``[B, S, H]`` -> ``[B, H]``).

    A row with no real position uses all of its positions.
    """
    h = np.asarray(hidden, dtype=np.float64)
    mask = np.asarray(real, dtype=bool)
    out = np.empty((h.shape[0], h.shape[2]), dtype=np.float64)
    for r in range(h.shape[0]):
        idx = np.flatnonzero(mask[r])
        if idx.size == 0:
            idx = np.arange(h.shape[1])
        out[r] = h[r, idx].mean(axis=0) if how == "mean" else h[r, idx[-1]]
    return out


@dataclass(frozen=True)
class LoadedIntervention:
    """One intervention of a loaded bundle with its vectors (read-only float32 arrays).

    For the ``asa`` intervention ``directions`` and ``conditions`` are empty:
    its vectors and graphs are the bundle's asa part (``Bundle.decide``,
    ``Bundle.steering_vector``).
    """

    spec: Intervention
    directions: dict[int, np.ndarray]
    conditions: dict[int, np.ndarray]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind
