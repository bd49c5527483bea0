"""Steering in a serving engine's flattened batch layout, as pure functions (the vLLM plugin's batch path).

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

:func:`steer_flat_block` applies every intervention kind of a bundle
(``always``, ``condition``, ``asa``) at one decoder block, with the per-row
semantics of :mod:`asa_format.runtime.program` (the transformers hooks use
the same module) and the condition aggregates summed across prefill chunks;
the vLLM plugin calls it from each steered block's hook (asa_format.serving).
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
from asa_format.runtime.program import Program, RowOutcomes, condition_outcome, term_delta

__all__ = [
    "FlatState",
    "RequestSteering",
    "delta_of",
    "finish",
    "steer_flat",
    "steer_flat_block",
    "steer_flat_rows",
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


def _layout(
    tokens: torch.Tensor,
    query_start_loc: Any,
    num_computed_tokens: Any,
    prompt_lens: Any,
    selections: Sequence[Any],
    request_ids: Sequence[str],
) -> tuple[list[int], list[int], list[int]]:
    """The flattened batch's layout, checked: ``(query_start_loc, num_computed, prompt_lens)``."""
    if tokens.dim() != 2:
        raise DecisionError(
            f"the hidden states must be [num_tokens, H], got {list(tokens.shape)}",
            code="DECISION_INPUT",
        )
    qsl = _ints(query_start_loc, "query_start_loc")
    computed = _ints(num_computed_tokens, "num_computed_tokens")
    prompts = _ints(prompt_lens, "prompt_lens")
    s_count = len(qsl) - 1
    if s_count < 0 or any(len(x) != s_count for x in (computed, prompts, selections, request_ids)):
        raise DecisionError(
            "query_start_loc must have one more entry than num_computed_tokens, prompt_lens, "
            "selections and request_ids",
            code="DECISION_INPUT",
        )
    if qsl and (
        qsl[0] != 0 or any(b < a for a, b in itertools.pairwise(qsl)) or qsl[-1] > tokens.shape[0]
    ):
        raise DecisionError(
            f"query_start_loc {qsl} does not describe rows of a [{tokens.shape[0]}, H] batch",
            code="DECISION_INPUT",
        )
    return qsl, computed, prompts


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
    qsl, computed, prompts = _layout(
        hidden, query_start_loc, num_computed_tokens, prompt_lens, selections, request_ids
    )
    s_count = len(qsl) - 1
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
# every intervention kind of a bundle (always, condition, asa) at one block


@dataclass
class FlatState:
    """Per worker: what each request's prefill decided, kept from its prefill to its end."""

    bound: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (digest, prompt_len)
    outcomes: dict[str, RowOutcomes] = field(default_factory=dict)
    # id -> (condition intervention, block) -> (prompt positions summed, their float64 sum)
    sums: dict[str, dict[tuple[str, int], tuple[int, np.ndarray]]] = field(default_factory=dict)
    # id -> (block, policies) -> the delta those policies add there, cast; id -> block -> policies
    added: dict[str, dict[tuple[int, tuple[str, ...]], torch.Tensor]] = field(default_factory=dict)
    present: dict[str, dict[int, tuple[str, ...]]] = field(default_factory=dict)

    def finish(self, request_ids: Iterable[str]) -> None:
        """Forget finished (or aborted) requests."""
        for rid in request_ids:
            self.bound.pop(rid, None)
            self.outcomes.pop(rid, None)
            self.sums.pop(rid, None)
            self.added.pop(rid, None)
            self.present.pop(rid, None)

    def request_ids(self) -> set[str]:
        return (
            set(self.bound)
            | set(self.outcomes)
            | set(self.sums)
            | set(self.added)
            | set(self.present)
        )


def steer_flat_block(
    stream: torch.Tensor,
    block: int,
    query_start_loc: Any,
    num_computed_tokens: Any,
    prompt_lens: Any,
    selections: Sequence[str | None],
    registry: Mapping[str, Program],
    state: FlatState,
    request_ids: Sequence[str],
    *,
    cached_prefix_steered: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`steer_flat_rows` applied: the steered stream (a new tensor) and its ``[T]`` row mask.

    ``(stream, None)`` when nothing was added.
    """
    plan = steer_flat_rows(
        stream,
        block,
        query_start_loc,
        num_computed_tokens,
        prompt_lens,
        selections,
        registry,
        state,
        request_ids,
        cached_prefix_steered=cached_prefix_steered,
    )
    if plan is None:
        return stream, None
    index, values = plan
    out = stream.clone()
    out[index] = values
    mask = torch.zeros(stream.shape[0], dtype=torch.bool, device=stream.device)
    mask[index] = True
    return out, mask


def steer_flat_rows(
    stream: torch.Tensor,
    block: int,
    query_start_loc: Any,
    num_computed_tokens: Any,
    prompt_lens: Any,
    selections: Sequence[str | None],
    registry: Mapping[str, Program],
    state: FlatState,
    request_ids: Sequence[str],
    *,
    cached_prefix_steered: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Apply, at decoder block ``block``, every intervention of each sequence's bundle.

    ``stream`` ``[T, H]`` is the block's output (the residual stream after the
    block) in the flattened layout of :func:`steer_flat`; ``registry`` maps
    root digests to compiled bundles (:class:`~asa_format.runtime.program.Program`).
    The semantics are those of ``attach`` for each sequence alone (spec 14):
    at the chunk that holds a request's last prompt token, the condition
    reads and the asa decision of this block are taken on the block output;
    then the deltas of this block's terms, summed in float32 per policy,
    are added once where each policy steers, cast to the stream's dtype.

    Conditions aggregated as a mean are summed in float64 across the
    request's prefill chunks, so every prompt position must be computed in
    this worker (no reused prefix). ``cached_prefix_steered``: prompt
    positions taken from a prefix cache were computed with this request's
    own steering (the cache is salted per bundle and prompt), so the chunk
    that decides an ``all_tokens`` gated term may start after position 0.

    Returns the rows that receive a delta and their new values, ``(index
    [n] long, stream[index] + delta [n, H])``, or None when nothing is added;
    ``stream`` is not modified. ``state`` is updated only on success.
    """
    qsl, computed, prompts = _layout(
        stream, query_start_loc, num_computed_tokens, prompt_lens, selections, request_ids
    )
    s_count = len(qsl) - 1
    seqs: list[tuple[_Seq, Program]] = []
    for s in range(s_count):
        digest = selections[s]
        if digest is None:
            continue
        program = registry.get(digest)
        if program is None:
            raise DecisionError(
                f"request {request_ids[s]!r} names bundle {digest}, which is not in the registry",
                code="DECISION_INPUT",
                hint="requests name a bundle by the root digest of one loaded and verified at startup",
            )
        if program.hidden_size != int(stream.shape[1]):
            raise DecisionError(
                f"bundle {digest} has hidden size {program.hidden_size}, the batch {stream.shape[1]}",
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
        if block in program.terms or block in program.reads:
            seqs.append((seq, program))
    if not seqs:
        return None

    # the prefill decisions of this block, on the block output (copies: committed on success)
    outcomes: dict[str, RowOutcomes] = {}
    sums: dict[str, dict[tuple[str, int], tuple[int, np.ndarray]]] = {}
    for seq, program in seqs:
        known = state.outcomes.get(seq.request_id)
        reads = program.reads.get(block, ())
        decides = seq.holds(seq.prompt_len - 1) and (bool(reads) or program.asa_block == block)
        if known is not None and not decides and not (reads and seq.computed < seq.prompt_len):
            outcomes[seq.request_id] = known  # read only: nothing is decided at this block here
            continue
        mine = _copy_outcomes(known) if known is not None else RowOutcomes()
        outcomes[seq.request_id] = mine
        if not reads:
            continue
        partial = dict(state.sums.get(seq.request_id, {}))
        sums[seq.request_id] = partial
        for read in reads:
            aggregated = _aggregate(
                stream, seq, read.intervention, read.gate.aggregate, block, partial
            )
            if aggregated is not None:
                if read.index == 0:  # a recomputed prefill (preemption) reads the gate again
                    mine.similarities.pop(read.intervention, None)
                    mine.fires.pop(read.intervention, None)
                condition_outcome(mine, read, aggregated)
    asa = [(seq, p) for seq, p in seqs if p.asa_block == block and seq.holds(seq.prompt_len - 1)]
    groups: dict[str, list[_Seq]] = {}
    for seq, _ in asa:
        groups.setdefault(seq.digest, []).append(seq)
    for digest, members in groups.items():
        bundle = registry[digest].bundle
        index = torch.tensor(
            [m.start + m.prompt_len - 1 - m.computed for m in members],
            dtype=torch.long,
            device=stream.device,
        )
        decision_rows = stream.index_select(0, index).to(torch.float32).cpu().numpy()
        for m, d in zip(members, bundle.decide(decision_rows), strict=True):
            outcomes[m.request_id].asa = d

    # the deltas: per sequence and policy, the float32 sum of its terms at this block, cast once;
    # kept per request (state.added) while its decisions stand, so a decode step only gathers
    rows: list[int] = []
    gathered: list[torch.Tensor] = []
    added: dict[str, dict[tuple[int, tuple[str, ...]], torch.Tensor]] = {}
    present_now: dict[str, dict[int, tuple[str, ...]]] = {}
    for seq, program in seqs:
        terms = program.terms.get(block, ())
        if not terms:
            continue
        rid = seq.request_id
        mine = outcomes[rid]
        fresh = mine is not state.outcomes.get(rid)  # decided (again) in this call
        kept = {} if fresh else state.added.get(rid, {})
        present = None if fresh else state.present.get(rid, {}).get(block)
        if present is None or seq.computed < seq.prompt_len:
            per_policy = _per_policy(seq, program, block, terms, mine, cached_prefix_steered)
            present = tuple(p for p in POLICIES if p in per_policy)
            mine_added = added.setdefault(rid, {k: v for k, v in kept.items() if k[0] != block})
            for applying in _subsets(present):
                total = per_policy[applying[0]].copy()
                for p in applying[1:]:
                    total = total + per_policy[p]
                mine_added[(block, applying)] = torch.from_numpy(total).to(
                    device=stream.device, dtype=stream.dtype
                )
            present_now.setdefault(rid, {} if fresh else dict(state.present.get(rid, {})))[
                block
            ] = present
            kept = mine_added
        for j in range(seq.length):
            applying = tuple(p for p in present if _steers(p, seq.computed + j, seq.prompt_len))
            if applying:
                rows.append(seq.start + j)
                gathered.append(kept[(block, applying)])

    for seq, _ in seqs:
        state.bound[seq.request_id] = (seq.digest, seq.prompt_len)
    for rid, mine in outcomes.items():
        if mine is not state.outcomes.get(rid) and rid not in added:
            state.added.pop(rid, None)  # decided again, nothing added at this block: void
            state.present.pop(rid, None)
    state.outcomes.update(outcomes)
    state.sums.update(sums)
    state.added.update(added)
    state.present.update(present_now)
    if not rows:
        return None
    index = torch.tensor(rows, dtype=torch.long, device=stream.device)
    return index, stream.index_select(0, index) + torch.stack(gathered)


def _subsets(present: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty ordered subset of the policies present (the ones a position may get)."""
    return [
        tuple(p for k, p in enumerate(present) if mask >> k & 1)
        for mask in range(1, 1 << len(present))
    ]


def _per_policy(
    seq: _Seq,
    program: Program,
    block: int,
    terms: Sequence[Any],
    outcomes: RowOutcomes,
    cached_prefix_steered: bool,
) -> dict[str, np.ndarray]:
    """Per policy, the float32 sum of the request's deltas at ``block`` (terms in order)."""
    per_policy: dict[str, np.ndarray] = {}
    for term in terms:
        if (
            term.kind != C.GATE_ALWAYS
            and term.policy == C.POLICY_ALL_TOKENS
            and seq.computed < seq.prompt_len
            and (
                not seq.holds(seq.prompt_len - 1)
                or (seq.computed != 0 and not cached_prefix_steered)
            )
        ):
            raise DecisionError(
                f"request {seq.request_id!r}: intervention {term.intervention!r} steers every prompt "
                "token with a decision taken on the whole prompt, so the prompt must be in one chunk "
                f"(this chunk covers positions {seq.computed}..{seq.computed + seq.length - 1} of a "
                f"{seq.prompt_len}-token prompt)",
                code="DECISION_FAILED",
                hint="disable chunked prefill for bundles with gated all_tokens interventions",
            )
        if not any(
            _steers(term.policy, seq.computed + j, seq.prompt_len) for j in range(seq.length)
        ):
            continue
        if term.kind == C.GATE_ASA and outcomes.asa is None:
            raise DecisionError(
                f"request {seq.request_id!r} has steered positions in this step but no stored decision",
                code="DECISION_FAILED",
                hint="the state of a request must live from its prefill to its end",
            )
        if term.kind == C.GATE_CONDITION and term.intervention not in outcomes.fires:
            raise DecisionError(
                f"request {seq.request_id!r}: intervention {term.intervention!r} steers block {block} "
                "but its condition was not decided",
                code="DECISION_FAILED",
                hint="the state of a request must live from its prefill to its end",
            )
        vector = None
        if term.kind == C.GATE_ASA and outcomes.asa is not None and int(outcomes.asa.gate) != 0:
            vector = program.bundle.steering_vector(outcomes.asa.domain_index)
        delta = term_delta(program, term, outcomes, vector)
        if delta is None:
            continue
        prev = per_policy.get(term.policy)
        per_policy[term.policy] = (
            np.asarray(delta, dtype=np.float32).copy() if prev is None else prev + delta
        )
    return per_policy


def _copy_outcomes(o: RowOutcomes) -> RowOutcomes:
    return RowOutcomes(
        asa=o.asa,
        similarities={k: list(v) for k, v in o.similarities.items()},
        fires=dict(o.fires),
    )


def _aggregate(
    stream: torch.Tensor,
    seq: _Seq,
    name: str,
    how: str,
    block: int,
    partial: dict[tuple[str, int], tuple[int, np.ndarray]],
) -> np.ndarray | None:
    """The row's float64 aggregate at a condition block once its last prompt token is here (14.4).

    ``mean``: the prompt positions of this chunk are added to the request's
    running float64 sum (``partial``); ``last``: the decision position's row.
    None while the last prompt token is still to come.
    """
    last = seq.prompt_len - 1
    if how != "mean":
        if not seq.holds(last):
            return None
        return stream[seq.start + last - seq.computed].to(torch.float64).cpu().numpy()
    seen, total = partial.get((name, block), (0, np.zeros(stream.shape[1], dtype=np.float64)))
    if seen < seq.computed < seq.prompt_len:
        raise DecisionError(
            f"request {seq.request_id!r}: prompt positions {seen}..{seq.computed - 1} were not computed "
            f"here (a reused prefix), so the mean condition of {name!r} cannot be taken",
            code="DECISION_FAILED",
            hint="a mean condition needs every prompt position: do not reuse cached prefixes for it",
        )
    lo, hi = max(seq.computed, seen), min(seq.computed + seq.length, seq.prompt_len)
    if hi > lo:
        part = stream[seq.start + lo - seq.computed : seq.start + hi - seq.computed]
        total = total + part.to(torch.float64).sum(dim=0).cpu().numpy()
        seen = hi
        partial[(name, block)] = (seen, total)
    if not seq.holds(last):
        return None
    return np.asarray(total / float(seq.prompt_len), dtype=np.float64)
