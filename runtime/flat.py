"""Steering in a serving engine's flattened batch layout, as a pure function (CPU simulation).

vLLM runs a batch as one ``[num_tokens, H]`` tensor: the scheduled tokens of
every sequence, one after the other, with ``query_start_loc[s]`` the first
row of sequence ``s`` and ``num_computed_tokens[s]`` how many of its tokens
were computed before this step (earlier chunks of a chunked prefill, cached
prefix blocks, or the prompt and generated tokens before a decode step).
:func:`steer_flat` applies asa bundles at one decoder block of that layout,
each sequence with its own bundle (by root digest) or none:

* the decision is taken on the chunk that holds the prompt's last token
  (position ``prompt_len - 1``), from that row, once per request, and kept
  in ``state`` under the request id;
* the delta ``gate * alpha * v`` is added per policy (spec 3.7.1): at the
  decision position (``prefill_last_token``, ``generated_tokens``), at every
  generated token (``generated_tokens``, ``all_tokens``), at every prompt
  token (``all_tokens``, which needs the whole prompt in one chunk);
* the additions are one gather from a delta table and one select,
  ``where(slot > 0, hidden + table[slot], hidden)``: static shapes, the form
  a CUDA graph can capture (docs/serving.md); rows with slot 0 (unsteered,
  gate 0, padding) keep their exact bits, NaN payloads included.

Decisions are grouped by bundle and taken in one call per bundle, with the
bundle's ``TorchDecider`` when one is given, else ``Bundle.decide``.

:func:`steer_flat_block` does the same for every intervention kind of a
format 1.1 bundle (``always``, ``condition``, ``asa``) at one decoder block,
with the condition decisions aggregated across prefill chunks; a serving
plugin calls it from each steered block's hook (asa_format.serving).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from asa_format import constants as C
from asa_format.bundle import Decision
from asa_format.errors import DecisionError
from asa_format.interventions import ConditionGate, condition_fires, condition_similarity

__all__ = [
    "ConditionProgress",
    "FlatBundle",
    "FlatState",
    "RequestSteering",
    "delta_of",
    "finish",
    "steer_flat",
    "steer_flat_block",
]

POLICIES = C.POLICIES


@dataclass(frozen=True)
class RequestSteering:
    """What one request decided: kept from its prefill for its decode steps."""

    digest: str
    policy: str
    prompt_len: int
    decision: Decision
    delta: torch.Tensor | None  # [H] in the hidden dtype; None when the gate is 0


def delta_of(
    bundle: Any,
    decision: Decision,
    dtype: torch.dtype,
    device: torch.device,
    alpha: float | None = None,
) -> torch.Tensor | None:
    """``float32(gate * alpha) * v[domain]`` in float32, cast to ``dtype`` (spec 4.6); None for gate 0."""
    if decision.gate == 0:
        return None
    a = float(bundle.manifest.steering.alpha if alpha is None else alpha)
    v = np.asarray(bundle.steering_vector(decision.domain_index), dtype=np.float32)
    return torch.from_numpy(np.float32(decision.gate * a) * v).to(device=device, dtype=dtype)


def finish(state: MutableMapping[str, RequestSteering], request_ids: Iterable[str]) -> None:
    """Forget finished (or aborted) requests."""
    for rid in request_ids:
        state.pop(rid, None)


def _ints(values: Any, name: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    elif isinstance(values, np.ndarray):
        values = values.tolist()
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise DecisionError(
            f"{name} must be a sequence of integers", code="DECISION_INPUT"
        ) from None


@dataclass
class _Seq:
    index: int
    request_id: str
    digest: str
    policy: str
    start: int  # first row in the flattened batch
    computed: int  # position of that row in the request's sequence
    length: int
    prompt_len: int

    def holds(self, position: int) -> bool:
        return self.computed <= position < self.computed + self.length


def _schedule(
    hidden: torch.Tensor,
    query_start_loc: Any,
    num_computed_tokens: Any,
    prompt_lens: Any,
    selections: Sequence[str | None],
    registry: Mapping[str, Any],
    policy: str | None,
    state: Mapping[str, RequestSteering],
    request_ids: Sequence[str],
    cached_prefix_steered: bool = False,
) -> list[_Seq]:
    if hidden.dim() != 2:
        raise DecisionError(
            f"hidden must be [num_tokens, H], got {list(hidden.shape)}", code="DECISION_INPUT"
        )
    qsl = _ints(query_start_loc, "query_start_loc")
    computed = _ints(num_computed_tokens, "num_computed_tokens")
    prompts = _ints(prompt_lens, "prompt_lens")
    s_count = len(qsl) - 1
    if s_count < 0 or any(len(x) != s_count for x in (computed, prompts, selections, request_ids)):
        raise DecisionError(
            "query_start_loc must have one more entry than num_computed_tokens, prompt_lens, selections and request_ids",
            code="DECISION_INPUT",
        )
    if qsl and (
        qsl[0] != 0 or any(b < a for a, b in itertools.pairwise(qsl)) or qsl[-1] > hidden.shape[0]
    ):
        raise DecisionError(
            f"query_start_loc {qsl} does not describe rows of a [{hidden.shape[0]}, H] batch",
            code="DECISION_INPUT",
        )
    if policy is not None and policy not in POLICIES:
        raise DecisionError(
            f"unknown policy {policy!r}; expected one of {list(POLICIES)}", code="DECISION_INPUT"
        )
    out: list[_Seq] = []
    for s in range(s_count):
        digest = selections[s]
        if digest is None:
            continue
        bundle = registry.get(digest)
        if bundle is None:
            raise DecisionError(
                f"request {request_ids[s]!r} names bundle {digest}, which is not in the registry",
                code="DECISION_INPUT",
                hint="requests name a bundle by the root digest of one loaded and verified at startup",
            )
        if int(bundle.hidden_size) != int(hidden.shape[1]):
            raise DecisionError(
                f"bundle {digest} has hidden size {bundle.hidden_size}, the batch {hidden.shape[1]}",
                code="DECISION_INPUT",
            )
        seq = _Seq(
            s,
            request_ids[s],
            digest,
            policy or bundle.manifest.steering.policy,
            qsl[s],
            computed[s],
            qsl[s + 1] - qsl[s],
            prompts[s],
        )
        if seq.prompt_len < 1 or seq.computed < 0:
            raise DecisionError(
                f"request {seq.request_id!r}: prompt length {seq.prompt_len}, computed {seq.computed}",
                code="DECISION_INPUT",
            )
        known = state.get(seq.request_id)
        if known is not None and (known.digest, known.policy, known.prompt_len) != (
            seq.digest,
            seq.policy,
            seq.prompt_len,
        ):
            raise DecisionError(
                f"request {seq.request_id!r} changed its bundle, policy or prompt length between steps",
                code="DECISION_FAILED",
                hint="a request keeps the bundle it was admitted with; call finish() for ended requests",
            )
        decides_here = seq.holds(seq.prompt_len - 1)
        if (
            seq.policy == C.POLICY_ALL_TOKENS
            and seq.computed < seq.prompt_len
            and (not decides_here or (seq.computed != 0 and not cached_prefix_steered))
        ):
            raise DecisionError(
                f"request {seq.request_id!r}: policy all_tokens steers every prompt token, so the whole prompt must be in one chunk "
                f"(this chunk covers positions {seq.computed}..{seq.computed + seq.length - 1} of a {seq.prompt_len}-token prompt)",
                code="DECISION_FAILED",
                hint="disable chunked prefill and prefix reuse for all_tokens bundles, or use generated_tokens",
            )
        if not decides_here and seq.computed + seq.length > seq.prompt_len and known is None:
            raise DecisionError(
                f"request {seq.request_id!r} has generated tokens in this step but no stored decision",
                code="DECISION_FAILED",
                hint="the state of a request must live from its prefill to its end",
            )
        out.append(seq)
    return out


def steer_flat(
    hidden: torch.Tensor,
    query_start_loc: Any,
    num_computed_tokens: Any,
    prompt_lens: Any,
    selections: Sequence[str | None],
    registry: Mapping[str, Any],
    policy: str | None,
    state: MutableMapping[str, RequestSteering],
    request_ids: Sequence[str],
    *,
    deciders: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Steer the flattened batch ``hidden`` ``[T, H]``; return a new tensor (``hidden`` is unchanged).

    ``query_start_loc`` ``[S+1]``, ``num_computed_tokens``, ``prompt_lens``,
    ``selections`` (a root digest of ``registry`` or None) and ``request_ids``
    ``[S]`` describe the sequences; rows after ``query_start_loc[S]``
    (padding) are never touched. ``policy`` overrides every bundle's policy
    (None: each bundle's own). ``state`` maps request ids to their
    :class:`RequestSteering`; it is updated only if the whole step succeeds.
    ``deciders`` maps digests to ``TorchDecider`` objects used instead of
    ``Bundle.decide``. Raises ``DecisionError`` (nothing modified) on bad
    input, a non-finite decision row, or a state that cannot be classified.
    """
    rows, deltas, decided = _asa_plan(
        hidden,
        query_start_loc,
        num_computed_tokens,
        prompt_lens,
        selections,
        registry,
        policy,
        state,
        request_ids,
        deciders or {},
    )
    out = _apply(hidden, rows, deltas)
    state.update(decided)
    return out


def _asa_plan(
    hidden: torch.Tensor,
    query_start_loc: Any,
    num_computed_tokens: Any,
    prompt_lens: Any,
    selections: Sequence[str | None],
    registry: Mapping[str, Any],
    policy: str | None,
    state: Mapping[str, RequestSteering],
    request_ids: Sequence[str],
    deciders: Mapping[str, Any],
    cached_prefix_steered: bool = False,
) -> tuple[list[int], list[torch.Tensor], dict[str, RequestSteering]]:
    """The rows to steer, their deltas and the new decisions (``state`` is not modified)."""
    seqs = _schedule(
        hidden,
        query_start_loc,
        num_computed_tokens,
        prompt_lens,
        selections,
        registry,
        policy,
        state,
        request_ids,
        cached_prefix_steered,
    )
    decided = _decide(hidden, seqs, registry, deciders)
    rows: list[int] = []
    deltas: list[torch.Tensor] = []
    for seq in seqs:
        info = decided.get(seq.request_id) or state.get(seq.request_id)
        if info is None or info.delta is None:
            continue
        for k in range(seq.length):
            if _steers(seq.policy, seq.computed + k, seq.prompt_len):
                rows.append(seq.start + k)
                deltas.append(info.delta)
    return rows, deltas, decided


def _steers(policy: str, position: int, prompt_len: int) -> bool:
    """Whether the token at ``position`` of a request gets its delta (spec 3.7.1)."""
    if position == prompt_len - 1:  # the decision position
        return True
    if position < prompt_len:  # another prompt token
        return policy == C.POLICY_ALL_TOKENS
    return policy != C.POLICY_PREFILL_LAST_TOKEN  # a generated token


def _decide(
    hidden: torch.Tensor, seqs: list[_Seq], registry: Mapping[str, Any], deciders: Mapping[str, Any]
) -> dict[str, RequestSteering]:
    """One decision call per bundle, on the rows of the prompts' last tokens in this step."""
    groups: dict[str, list[_Seq]] = {}
    for seq in seqs:
        if seq.holds(seq.prompt_len - 1):
            groups.setdefault(seq.digest, []).append(seq)
    out: dict[str, RequestSteering] = {}
    cache: dict[
        tuple[str, int, int], torch.Tensor | None
    ] = {}  # one delta per (bundle, domain, gate)
    for digest, members in groups.items():
        bundle = registry[digest]
        index = torch.tensor(
            [m.start + m.prompt_len - 1 - m.computed for m in members],
            dtype=torch.long,
            device=hidden.device,
        )
        rows = hidden.index_select(0, index).to(torch.float32)
        decider = deciders.get(digest)
        if decider is not None:
            decisions = decider.decide(rows).to_numpy_records(bundle.domains)
        else:
            decisions = list(bundle.decide(rows.cpu().numpy()))
        for m, d in zip(members, decisions, strict=True):
            key = (digest, d.domain_index, d.gate)
            if key not in cache:
                cache[key] = delta_of(bundle, d, hidden.dtype, hidden.device)
            out[m.request_id] = RequestSteering(digest, m.policy, m.prompt_len, d, cache[key])
    return out


def _apply(hidden: torch.Tensor, rows: list[int], deltas: list[torch.Tensor]) -> torch.Tensor:
    """``where(slot > 0, hidden + table[slot], hidden)``: slot i+1 holds the i-th delta, slot 0 nothing."""
    if not rows:
        return hidden.clone()
    table = torch.cat(
        [
            torch.full((1, hidden.shape[1]), -0.0, dtype=hidden.dtype, device=hidden.device),
            torch.stack(deltas),
        ]
    )
    slot = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    slot[torch.tensor(rows, dtype=torch.long, device=hidden.device)] = torch.arange(
        1, len(rows) + 1, device=hidden.device
    )
    return torch.where((slot > 0).unsqueeze(1), hidden + table[slot], hidden)


# --------------------------------------------------------------------------
# every intervention kind of a format 1.1 bundle (always, condition, asa) at one block


@dataclass(frozen=True)
class _Add:
    """An always/condition intervention's addition at one block."""

    name: str
    policy: str
    gated: bool  # a condition intervention: only rows whose condition fired
    vector: np.ndarray  # float32(coefficient) x direction, float32 [H]


@dataclass(frozen=True)
class _Condition:
    """A condition intervention's condition vector at one of its condition blocks."""

    name: str
    gate: ConditionGate
    vector: np.ndarray  # [H]


class FlatBundle:
    """A loaded bundle (``load_interventions``) as the flattened batch path uses it.

    Every intervention is indexed by block: the additions of ``always`` and
    ``condition`` interventions (``float32(coefficient) x direction``, as
    :func:`asa_format.runtime.interventions.attach_interventions` adds them),
    the condition vectors, and the ``asa`` intervention's block.
    """

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.digest: str = bundle.root_digest
        self.hidden_size = int(bundle.manifest.model.hidden_size)
        self.asa: Any = bundle.asa
        self.asa_block: int | None = (
            None if bundle.asa is None else int(bundle.asa.manifest.layer.index)
        )
        self.adds: dict[int, list[_Add]] = {}
        self.conditions: dict[int, list[_Condition]] = {}
        self.gates: dict[str, ConditionGate] = {}
        for iv in bundle.interventions:
            if iv.kind == C.GATE_ASA:
                continue
            gate = iv.spec.condition
            if gate is not None:
                self.gates[iv.name] = gate
                for b, vec in sorted(iv.conditions.items()):
                    self.conditions.setdefault(int(b), []).append(_Condition(iv.name, gate, vec))
            coef = np.float32(iv.spec.coefficient)
            for b, vec in sorted(iv.directions.items()):
                self.adds.setdefault(int(b), []).append(
                    _Add(iv.name, iv.spec.policy, gate is not None, (vec * coef).astype(np.float32))
                )
        blocks = set(self.adds) | set(self.conditions)
        if self.asa_block is not None:
            blocks.add(self.asa_block)
        self.blocks: tuple[int, ...] = tuple(sorted(blocks))
        self._deltas: dict[tuple[str, int, torch.dtype, torch.device], torch.Tensor] = {}

    def policies(self) -> set[str]:
        """The policies of every intervention (the asa one's from its steering member)."""
        out = {a.policy for adds in self.adds.values() for a in adds}
        if self.asa is not None:
            out.add(self.asa.manifest.steering.policy)
        return out

    def prompt_dependent_all_tokens(self) -> bool:
        """Whether a gated intervention (asa, condition) steers every prompt token.

        Its steering of the first prompt token depends on the decision, taken
        on the whole prompt: the prompt must be computed in one chunk.
        """
        gated = [a.policy for adds in self.adds.values() for a in adds if a.gated]
        if self.asa is not None:
            gated.append(self.asa.manifest.steering.policy)
        return C.POLICY_ALL_TOKENS in gated

    def mean_condition(self) -> bool:
        """Whether a condition aggregates the mean of every prompt position (no prefix reuse)."""
        return any(g.aggregate == "mean" for g in self.gates.values())

    def delta(
        self, add: _Add, block: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        key = (add.name, block, dtype, device)
        t = self._deltas.get(key)
        if t is None:
            t = torch.from_numpy(add.vector.copy()).to(device=device, dtype=dtype)
            self._deltas[key] = t
        return t


@dataclass
class ConditionProgress:
    """One request's condition decision, built across the chunks of its prefill."""

    seen: dict[int, int] = field(default_factory=dict)  # block -> prompt positions summed ("mean")
    sums: dict[int, np.ndarray] = field(default_factory=dict)  # block -> float64 sum over them
    similarities: dict[int, float] = field(default_factory=dict)
    fires: bool | None = None

    def copy(self) -> ConditionProgress:
        return ConditionProgress(
            dict(self.seen), dict(self.sums), dict(self.similarities), self.fires
        )


@dataclass
class FlatState:
    """Per worker: what each request decided, kept from its prefill to its end."""

    asa: dict[str, RequestSteering] = field(default_factory=dict)
    bound: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (digest, prompt_len)
    conditions: dict[str, dict[str, ConditionProgress]] = field(default_factory=dict)

    def finish(self, request_ids: Iterable[str]) -> None:
        """Forget finished (or aborted) requests."""
        for rid in request_ids:
            self.asa.pop(rid, None)
            self.bound.pop(rid, None)
            self.conditions.pop(rid, None)

    def request_ids(self) -> set[str]:
        return set(self.bound) | set(self.asa) | set(self.conditions)


def steer_flat_block(
    stream: torch.Tensor,
    block: int,
    query_start_loc: Any,
    num_computed_tokens: Any,
    prompt_lens: Any,
    selections: Sequence[str | None],
    registry: Mapping[str, FlatBundle],
    state: FlatState,
    request_ids: Sequence[str],
    *,
    deciders: Mapping[str, Any] | None = None,
    cached_prefix_steered: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply, at decoder block ``block``, every intervention of each sequence's bundle.

    ``stream`` ``[T, H]`` is the block's output (the residual stream after the
    block) in the flattened layout of :func:`steer_flat`; ``registry`` maps
    root digests to :class:`FlatBundle`. In the order
    :func:`~asa_format.runtime.interventions.attach_interventions` hooks a
    block: the conditions measured at this block, then the additions of the
    always/condition interventions (in the bundle's order), then the asa
    intervention (deciding on the stream after those additions).

    Conditions (spec 14.4): the similarity at each condition block is taken
    when the chunk holding the last prompt token arrives, on the mean of the
    request's prompt positions (summed in float64 across chunks: every
    prompt position must be computed in this worker, so no reused prefix) or
    on its last one; the decision is kept per request for its decode steps.
    ``cached_prefix_steered``: prompt positions taken from a prefix cache
    were computed with this request's own steering (the cache is salted per
    bundle and prompt), so an ``all_tokens`` decision chunk may start after
    position 0.

    Returns the steered stream (a new tensor; ``stream`` is unchanged) and
    the ``[T]`` mask of the rows that received an addition, or ``(stream,
    None)`` when nothing was added. ``state`` is updated only on success.
    """
    if stream.dim() != 2:
        raise DecisionError(
            f"the stream must be [num_tokens, H], got {list(stream.shape)}", code="DECISION_INPUT"
        )
    qsl = _ints(query_start_loc, "query_start_loc")
    computed = _ints(num_computed_tokens, "num_computed_tokens")
    prompts = _ints(prompt_lens, "prompt_lens")
    s_count = len(qsl) - 1
    if s_count < 0 or any(len(x) != s_count for x in (computed, prompts, selections, request_ids)):
        raise DecisionError(
            "query_start_loc must have one more entry than num_computed_tokens, prompt_lens, selections and request_ids",
            code="DECISION_INPUT",
        )
    if qsl and (
        qsl[0] != 0 or any(b < a for a, b in itertools.pairwise(qsl)) or qsl[-1] > stream.shape[0]
    ):
        raise DecisionError(
            f"query_start_loc {qsl} does not describe rows of a [{stream.shape[0]}, H] batch",
            code="DECISION_INPUT",
        )
    seqs: list[tuple[_Seq, FlatBundle]] = []
    for s in range(s_count):
        digest = selections[s]
        if digest is None:
            continue
        fb = registry.get(digest)
        if fb is None:
            raise DecisionError(
                f"request {request_ids[s]!r} names bundle {digest}, which is not in the registry",
                code="DECISION_INPUT",
                hint="requests name a bundle by the root digest of one loaded and verified at startup",
            )
        if fb.hidden_size != int(stream.shape[1]):
            raise DecisionError(
                f"bundle {digest} has hidden size {fb.hidden_size}, the batch {stream.shape[1]}",
                code="DECISION_INPUT",
            )
        seq = _Seq(
            s, request_ids[s], digest, "", qsl[s], computed[s], qsl[s + 1] - qsl[s], prompts[s]
        )
        if seq.prompt_len < 1 or seq.computed < 0:
            raise DecisionError(
                f"request {seq.request_id!r}: prompt length {seq.prompt_len}, computed {seq.computed}",
                code="DECISION_INPUT",
            )
        bound = state.bound.get(seq.request_id)
        if bound is not None and bound != (digest, seq.prompt_len):
            raise DecisionError(
                f"request {seq.request_id!r} changed its bundle or prompt length between steps",
                code="DECISION_FAILED",
                hint="a request keeps the bundle it was admitted with; call finish() for ended requests",
            )
        seqs.append((seq, fb))
    if not seqs:
        return stream, None

    progress: dict[str, dict[str, ConditionProgress]] = {}
    for seq, fb in seqs:
        for cond in fb.conditions.get(block, ()):
            mine = progress.setdefault(seq.request_id, {})
            prog = mine.get(cond.name)
            if prog is None:
                known = state.conditions.get(seq.request_id, {}).get(cond.name)
                prog = known.copy() if known is not None else ConditionProgress()
                mine[cond.name] = prog
            _measure(stream, block, seq, cond, prog)

    def fires(seq: _Seq, name: str) -> bool | None:
        prog = progress.get(seq.request_id, {}).get(name)
        if prog is None:
            prog = state.conditions.get(seq.request_id, {}).get(name)
        return None if prog is None else prog.fires

    out = stream
    mask: torch.Tensor | None = None
    rounds = max(len(fb.adds.get(block, ())) for _, fb in seqs)
    for k in range(rounds):
        rows: list[int] = []
        deltas: list[torch.Tensor] = []
        for seq, fb in seqs:
            adds = fb.adds.get(block, ())
            if k >= len(adds):
                continue
            add = adds[k]
            here = [
                j
                for j in range(seq.length)
                if _steers(add.policy, seq.computed + j, seq.prompt_len)
            ]
            if add.gated and add.policy == C.POLICY_ALL_TOKENS and seq.computed < seq.prompt_len:
                if not seq.holds(seq.prompt_len - 1) or (
                    seq.computed != 0 and not cached_prefix_steered
                ):
                    raise DecisionError(
                        f"request {seq.request_id!r}: intervention {add.name!r} steers every prompt token once its "
                        f"condition is decided, so the whole prompt must be in one chunk (this chunk covers positions "
                        f"{seq.computed}..{seq.computed + seq.length - 1} of a {seq.prompt_len}-token prompt)",
                        code="DECISION_FAILED",
                        hint="disable chunked prefill for bundles with gated all_tokens interventions",
                    )
            if not here:
                continue
            if add.gated:
                fired = fires(seq, add.name)
                if fired is None:
                    raise DecisionError(
                        f"request {seq.request_id!r}: intervention {add.name!r} steers block {block} "
                        "but its condition was not decided",
                        code="DECISION_FAILED",
                        hint="the state of a request must live from its prefill to its end",
                    )
                if not fired:
                    continue
            delta = fb.delta(add, block, stream.dtype, stream.device)
            for j in here:
                rows.append(seq.start + j)
                deltas.append(delta)
        if rows:
            out = _apply(out, rows, deltas)
            mask = _mark(mask, rows, stream)

    decided: dict[str, RequestSteering] = {}
    asa_seqs = [(seq, fb) for seq, fb in seqs if fb.asa_block == block]
    if asa_seqs:
        chosen = {seq.index for seq, _ in asa_seqs}
        rows, deltas, decided = _asa_plan(
            out,
            qsl,
            computed,
            prompts,
            [sel if s in chosen else None for s, sel in enumerate(selections)],
            {fb.digest: fb.asa for _, fb in asa_seqs},
            None,
            state.asa,
            request_ids,
            deciders or {},
            cached_prefix_steered,
        )
        if rows:
            out = _apply(out, rows, deltas)
            mask = _mark(mask, rows, stream)

    for seq, _ in seqs:
        state.bound[seq.request_id] = (seq.digest, seq.prompt_len)
    for rid, mine in progress.items():
        state.conditions.setdefault(rid, {}).update(mine)
    state.asa.update(decided)
    return out, mask


def _mark(mask: torch.Tensor | None, rows: list[int], like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        mask = torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
    mask[torch.tensor(rows, dtype=torch.long, device=like.device)] = True
    return mask


def _measure(
    stream: torch.Tensor, block: int, seq: _Seq, cond: _Condition, prog: ConditionProgress
) -> None:
    """Update one request's condition at ``block`` with this chunk (spec 14.4)."""
    gate = cond.gate
    last = seq.prompt_len - 1
    if gate.aggregate == "mean":
        seen = prog.seen.get(block, 0)
        if seen < seq.computed < seq.prompt_len:
            raise DecisionError(
                f"request {seq.request_id!r}: prompt positions {seen}..{seq.computed - 1} were not computed "
                f"here (a reused prefix), so the mean condition of {cond.name!r} cannot be taken",
                code="DECISION_FAILED",
                hint="a mean condition needs every prompt position: do not reuse cached prefixes for it",
            )
        lo, hi = max(seq.computed, seen), min(seq.computed + seq.length, seq.prompt_len)
        if hi > lo:
            part = (
                stream[seq.start + lo - seq.computed : seq.start + hi - seq.computed]
                .to(torch.float64)
                .sum(dim=0)
                .cpu()
                .numpy()
            )
            prev = prog.sums.get(block)
            prog.sums[block] = part if prev is None else prev + part
            prog.seen[block] = hi
        if seq.holds(last):
            aggregate = prog.sums[block] / float(seq.prompt_len)
            prog.similarities[block] = condition_similarity(aggregate, cond.vector)
    elif seq.holds(last):
        row = stream[seq.start + last - seq.computed].to(torch.float64).cpu().numpy()
        prog.similarities[block] = condition_similarity(row, cond.vector)
    if seq.holds(last) and all(b in prog.similarities for b in gate.blocks):
        prog.fires = condition_fires([prog.similarities[b] for b in gate.blocks], gate)
