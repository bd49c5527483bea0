"""The hooks of a steering handle (spec section 3.7).

Three kinds of hooks, and nothing else (no module is replaced, no attribute
is set on the model):

* a forward pre-hook on the top-level model gathers the call's evidence
  (:mod:`asa_format.runtime.evidence`) and the rows' bundle selection into a
  thread-local :class:`~asa_format.runtime.context.CallContext`;
* a forward hook on each steered decoder block classifies the pass
  (:mod:`asa_format.runtime.classify`), decides on a prefill (per row, at the
  prompt's last real token) and adds ``gate * alpha * v`` where the row's
  policy says;
* a forward hook on the top-level model (``always_call``) closes the context
  and, when the call succeeded, commits the prefill's decision under the
  cache the call used or returned, logs the record and calls ``on_decision``.

A pass that cannot be classified is not steered; the handle counts it and
says why once (or raises, with ``on_unclassified="raise"``). If a decision
fails, the forward raises :class:`DecisionError` and nothing is committed.
"""

from __future__ import annotations

import inspect
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from asa_format import constants as C
from asa_format.errors import AsaError, DecisionError, UsageError
from asa_format.runtime._types import BundleLike
from asa_format.runtime.block_output import first_tensor
from asa_format.runtime.classify import PassInfo, PassKind, classify
from asa_format.runtime.context import (
    CallContext,
    GenerationState,
    GenerationStates,
    LegacyTracker,
    Lineage,
    ThreadCalls,
)
from asa_format.runtime.evidence import cache_key, gather, output_cache
from asa_format.runtime.positions import last_real_positions, real_token_mask
from asa_format.runtime.records import GenerationRecord, RecordLog

__all__ = ["UNSET", "Entry", "Steerer", "SteeringSkippedWarning", "split_output"]

logger = logging.getLogger("asa_format.runtime")

DecisionCallback = Callable[[GenerationRecord], Any]
Selection = tuple[str | None, ...]


UNSET = object()  # no selection was made for the current context


class SteeringSkippedWarning(RuntimeWarning):
    """A forward pass could not be classified and was not steered."""


def split_output(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The hidden-state tensor of a block's output and a function rebuilding the output."""
    found = first_tensor(output)
    if found is None:
        raise DecisionError(
            f"the steered decoder block returned {type(output).__name__}; expected a tensor or a "
            "tuple whose first element is the hidden-state tensor",
            code="DECISION_INPUT",
            hint="check layers_path: it must name the list of decoder blocks",
        )
    return found


@dataclass
class Entry:
    """One bundle of a handle: where it steers and how."""

    name: str
    bundle: BundleLike
    block: int
    policy: str
    alpha: float
    hidden_size: int
    # The bundle's decision in torch on the hidden state's device (asa_format.runtime.torch_decide),
    # when it was proven equal to onnxruntime on load; None: bundle.decide on the host.
    decider: Any = None
    _vectors: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def vector(self, domain: str, device: torch.device) -> torch.Tensor:
        """The float32 steering vector of ``domain`` on ``device`` (cached)."""
        key = (domain, str(device))
        with self._lock:
            cached = self._vectors.get(key)
        if cached is not None:
            return cached
        v = np.asarray(self.bundle.steering_vector(domain), dtype=np.float32)
        if v.shape != (self.hidden_size,):
            raise DecisionError(
                f"steering vector of domain {domain!r} has shape {v.shape}, expected "
                f"({self.hidden_size},)",
                code="DECISION_FAILED",
            )
        tensor = torch.from_numpy(v.copy()).to(device=device)
        with self._lock:
            return self._vectors.setdefault(key, tensor)


def _apply(hidden: torch.Tensor, delta: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``hidden`` with ``delta[b]`` added at the positions ``add[b, s]``, every other value
    unchanged (bit for bit). On the CPU, where reading the mask costs nothing, only the
    steered positions are computed when they are few (a prefill steers one position per
    row): the same sums as the whole-tensor ``torch.where``, without [B, S, H] temporaries."""
    if hidden.device.type == "cpu":
        rows, cols = torch.nonzero(add, as_tuple=True)
        if 2 * int(rows.numel()) <= int(add.numel()):
            out = hidden.clone()
            out[rows, cols] = hidden[rows, cols] + delta[rows]
            return out
    return torch.where(add.unsqueeze(-1), hidden + delta[:, None, :], hidden)


def _decide(entry: Entry, rows: np.ndarray) -> list[Any]:
    """Decisions for ``rows``; identical rows get one decision (beams of one prompt)."""
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    try:
        decisions = entry.bundle.decide(unique)
    except DecisionError:
        raise
    except AsaError as exc:
        raise DecisionError(f"the bundle's decision failed: {exc}", code="DECISION_FAILED") from exc
    except Exception as exc:
        raise DecisionError(
            f"the bundle's decision failed with {type(exc).__name__}: {exc}",
            code="DECISION_FAILED",
            hint="the model was not modified; check the bundle with 'asa validate'",
        ) from exc
    if len(decisions) != unique.shape[0]:
        raise DecisionError(
            f"the bundle returned {len(decisions)} decisions for {unique.shape[0]} rows",
            code="DECISION_FAILED",
        )
    listed = list(decisions)
    return [listed[int(i)] for i in np.asarray(inverse).reshape(-1)]


class Steerer:
    """The hook logic of one handle (kept apart from the public handle object)."""

    def __init__(
        self,
        entries: Mapping[str, Entry],
        *,
        default: str | None,
        log: RecordLog,
        on_decision: DecisionCallback | None,
        forward_signature: inspect.Signature | None,
        on_unclassified: str,
    ) -> None:
        self.entries = dict(entries)
        self.by_block: dict[int, list[Entry]] = {}
        for entry in self.entries.values():
            self.by_block.setdefault(entry.block, []).append(entry)
        self.default = default
        self.log = log
        self.on_decision = on_decision
        self.signature = forward_signature
        self.on_unclassified = on_unclassified
        self.calls = ThreadCalls()
        self.states = GenerationStates()
        self.lineage = Lineage()
        self.legacy = LegacyTracker()
        self.selection: ContextVar[Any] = ContextVar(f"asa_selection_{id(self)}", default=UNSET)
        self.trace: list[dict[str, Any]] | None = None  # set by the self-test
        self.skipped = 0
        self._reasons: set[str] = set()
        self._lock = threading.Lock()

    # -- the top-level model -------------------------------------------------------
    def pre_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        evidence = gather(self.signature, args, kwargs)
        raw = self.selection.get()
        selection: Selection | None
        if raw is UNSET:
            selection = None
        elif raw is None or isinstance(raw, str):
            selection = (raw,)
        else:
            selection = tuple(raw)
        state = None
        if evidence.cache is not None:
            key = cache_key(evidence.cache)
            state = self.states.get(key)
            if state is None and key is not evidence.cache:  # a legacy tuple, maybe reordered
                state = self.legacy.match(evidence.cache)
        ctx = CallContext(evidence=evidence, selection=selection, state=state)
        self.calls.push(ctx)

    def post_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        ctx = self.calls.pop()
        if ctx is None or output is None:
            return  # the forward raised: nothing is committed
        info = ctx.info
        if info is None or info.kind is PassKind.SKIP:
            return
        state = ctx.new_state if ctx.new_state is not None else ctx.state
        if state is None:
            return
        returned = output_cache(output)
        for cache in (ctx.evidence.cache, returned):
            if cache is None:
                continue
            key = cache_key(cache)
            if not self.states.put(key, state):
                logger.debug("cache %s cannot be tracked", type(cache).__name__)
            if key is not cache and cache is returned:
                self.legacy.remember(cache, state)
        if info.cacheless and returned is None:
            self.lineage.remember(ctx.evidence.tokens, ctx.evidence.mask_2d, state)
        elif info.kind is PassKind.PREFILL:
            self.lineage.forget()
        if ctx.new_state is not None:
            self.commit(self.make_record(ctx))

    def commit(self, record: GenerationRecord) -> None:
        self.log.append(record)
        logger.info(
            "generation %d (layer %d, policy %s): gates=%s domains=%s",
            record.generation,
            record.layer,
            record.policy,
            record.gates,
            record.domains,
        )
        if logger.isEnabledFor(logging.DEBUG):
            for i, row in enumerate(record.rows):
                if row is not None:
                    logger.debug(
                        "generation %d row %d: domain=%s p=%.6f gate=%+d position=%d",
                        record.generation,
                        i,
                        row.domain,
                        float(row.probability),
                        int(row.gate),
                        record.positions[i],
                    )
        if self.on_decision is not None:
            try:
                self.on_decision(record)
            except Exception as exc:
                raise DecisionError(
                    f"the on_decision callback raised {type(exc).__name__}: {exc}",
                    code="DECISION_FAILED",
                    hint="fix the callback passed to attach(on_decision=...)",
                ) from exc

    # -- classification ------------------------------------------------------------
    def _classify(self, ctx: CallContext, batch: int, query: int) -> PassInfo:
        ev = ctx.evidence
        info = classify(ev, batch=batch, query=query, known_cache=ctx.state is not None)
        if info.kind is PassKind.PREFILL and info.cacheless:
            cont = self.lineage.continuation(ev.tokens, ev.mask_2d)
            if isinstance(cont, str):
                return PassInfo(PassKind.SKIP, query=query, reason=cont, cacheless=True)
            if cont is not None:
                ctx.state = cont
                return PassInfo(PassKind.REREAD, past=0, query=query, cacheless=True)
        if info.kind is PassKind.DECODE and ctx.state is not None and ctx.state.batch != batch:
            return PassInfo(
                PassKind.SKIP,
                query=query,
                reason=f"a decode step has {batch} rows but its prefill had {ctx.state.batch}",
            )
        return info

    def _skip(self, reason: str) -> None:
        with self._lock:
            self.skipped += 1
            first = reason not in self._reasons
            self._reasons.add(reason)
        message = (
            f"a forward pass was not steered: {reason}. Steering applies only to passes the "
            "runtime can classify (spec section 3.7.2); pass on_unclassified='raise' to attach() "
            "(--on-unclassified raise on the command line) to make this an error"
        )
        if self.on_unclassified == "raise":
            raise DecisionError(message, code="PASS_UNCLASSIFIED")
        if first:
            logger.warning(message)
            warnings.warn(message, SteeringSkippedWarning, stacklevel=2)

    def _steers_decode(self) -> bool:
        return any(e.policy != C.POLICY_PREFILL_LAST_TOKEN for e in self.entries.values())

    def _rows(self, ctx: CallContext, batch: int) -> list[str | None]:
        sel = ctx.selection
        chosen: Sequence[str | None]
        if sel is None:  # nothing selected for this call: the handle's default
            chosen = [self.default] * batch
        elif len(sel) == 1:
            chosen = [sel[0]] * batch
        elif batch % len(sel) == 0:
            per = batch // len(sel)  # beam search / num_return_sequences expand rows in place
            chosen = [name for name in sel for _ in range(per)]
        else:
            raise UsageError(
                f"the bundle selection has {len(sel)} entries for a batch of {batch} rows",
                hint="select one bundle name (or None) per prompt row",
            )
        for name in chosen:
            if name is not None and name not in self.entries:
                raise UsageError(
                    f"no bundle named {name!r} is attached",
                    hint=f"choose one of {', '.join(sorted(self.entries))} (or None)",
                )
        return list(chosen)

    # -- a steered block -------------------------------------------------------------
    def on_block(self, index: int, output: Any) -> Any:
        hidden, rebuild = split_output(output)
        entries = self.by_block[index]
        size = entries[0].hidden_size
        if hidden.dim() != 3 or hidden.shape[-1] != size:
            raise DecisionError(
                f"the steered block's output has shape {tuple(hidden.shape)}, expected "
                f"[batch, sequence, {size}]",
                code="DECISION_INPUT",
                hint="check that the bundle matches the model and layers_path",
            )
        batch, query, _ = hidden.shape
        ctx = self.calls.current()
        if ctx is None:
            self._skip(
                "the steered block was called outside the forward of the model attach() was given"
            )
            return None
        if ctx.info is None:
            ctx.info = self._classify(ctx, batch, query)
        info = ctx.info
        if info.kind is PassKind.SKIP:
            self._record(ctx, index, info, None, None)
            if info.past > 0 and not self._steers_decode():
                return None  # no policy of this handle changes a decode step: nothing is lost
            self._skip(info.reason)
            return None
        if info.kind is PassKind.PREFILL:
            state = self._prefill_state(ctx, index, hidden, info, entries)
        else:
            assert ctx.state is not None
            state = ctx.state
        where = self._where(ctx, state, info, batch, query, hidden.device)
        delta = state.delta(index, hidden.device, hidden.dtype)
        self._record(ctx, index, info, where, state)
        if delta is None:
            return None
        gated = state.gated(hidden.device)  # a row whose gate is 0 stays bit-identical
        add = where & gated[:, None]
        return rebuild(_apply(hidden, delta, add))

    def _prefill_state(
        self,
        ctx: CallContext,
        index: int,
        hidden: torch.Tensor,
        info: PassInfo,
        entries: list[Entry],
    ) -> GenerationState:
        batch, query, _ = hidden.shape
        state = ctx.new_state
        if state is None:
            rows = self._rows(ctx, batch)
            prompt_len = query - info.candidates
            mask = ctx.evidence.attention_mask
            real = real_token_mask(mask, batch, query, hidden.device, info.past)
            last = last_real_positions(real[:, :prompt_len])
            state = GenerationState(
                record_id=0,
                batch=batch,
                prompt_len=prompt_len,
                positions=[int(p) for p in last.tolist()],
                entries=rows,
                policies=[None if r is None else self.entries[r].policy for r in rows],
                gates=[0] * batch,
            )
            ctx.new_state = state
            ctx.pending_record = [None] * batch
        decided: list[Any] = ctx.pending_record
        for entry in entries:
            idx = [i for i, name in enumerate(state.entries) if name == entry.name]
            if not idx:
                continue
            index_t = torch.tensor(idx, device=hidden.device)
            pos = torch.tensor([state.positions[i] for i in idx], device=hidden.device)
            rows_t = hidden.detach()[index_t, pos]
            delta = state.deltas.get(index)
            if delta is None:
                delta = torch.zeros(
                    (batch, entry.hidden_size), dtype=torch.float32, device=hidden.device
                )
                state.deltas[index] = delta
            if state.gate_t is None or state.gate_t.device != hidden.device:
                state.gate_t = torch.zeros(batch, dtype=torch.int8, device=hidden.device)
            if entry.decider is not None:
                self._decide_on_device(ctx, entry, idx, index_t, rows_t, delta, state)
                continue
            decisions = _decide(entry, rows_t.to(torch.float32).cpu().numpy())
            for i, decision in zip(idx, decisions, strict=True):
                gate = int(decision.gate)
                state.gates[i] = gate
                decided[i] = decision
                if gate != 0:
                    scale = float(np.float32(gate * entry.alpha))
                    delta[i] = entry.vector(str(decision.domain), hidden.device) * scale
            state.gate_t[index_t] = torch.tensor(
                [state.gates[i] for i in idx], dtype=torch.int8, device=hidden.device
            )
        return state

    def _decide_on_device(
        self,
        ctx: CallContext,
        entry: Entry,
        idx: list[int],
        index_t: torch.Tensor,
        rows_t: torch.Tensor,
        delta: torch.Tensor,
        state: GenerationState,
    ) -> None:
        """Decide with the bundle's torch evaluation where the hidden states live.

        Identical rows are decided once; the deltas are gathered from a
        ``[domain, gate]`` table, all on the device: one boolean is read
        back, and only rows near a decision boundary are copied to the host
        (decided by onnxruntime, spec 4.9). The records are copied to the
        host when the call is committed (:meth:`make_record`).
        """
        unique, inverse = torch.unique(rows_t, dim=0, return_inverse=True)
        try:
            got = entry.decider.decide(unique)
        except AsaError:
            raise
        except Exception as exc:
            raise DecisionError(
                f"the bundle's decision failed with {type(exc).__name__}: {exc}",
                code="DECISION_FAILED",
            ) from exc
        domain = got.domain_index[inverse]
        gate = got.gate[inverse].to(torch.int64)
        table = entry.decider.delta_table(torch.float32, rows_t.device, alpha=entry.alpha)
        delta[index_t] = table[domain, gate + 1]
        assert state.gate_t is not None
        state.gate_t[index_t] = gate.to(torch.int8)
        ctx.pending_device.append((entry, idx, got, inverse))

    def _where(
        self,
        ctx: CallContext,
        state: GenerationState,
        info: PassInfo,
        batch: int,
        query: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Bool ``[batch, query]``: where the rows' deltas are added in this pass."""
        real = real_token_mask(ctx.evidence.attention_mask, batch, query, device, info.past)
        pol_all, pol_gen, steered = state.policy_masks(device)
        if info.kind is PassKind.DECODE:
            where = pol_gen[:, None] & real
        else:  # PREFILL or REREAD: the sequence from its first position
            where = torch.zeros((batch, query), dtype=torch.bool, device=device)
            rows = torch.arange(batch, device=device)
            where[rows, torch.tensor(state.positions, device=device)] = True
            tail = torch.arange(query, device=device) >= state.prompt_len
            where |= pol_gen[:, None] & tail[None, :] & real
            where |= pol_all[:, None] & real
        return where & steered[:, None]

    def _record(
        self,
        ctx: CallContext,
        index: int,
        info: PassInfo,
        where: torch.Tensor | None,
        state: GenerationState | None,
    ) -> None:
        if self.trace is None:
            return
        self.trace.append(
            {
                "block": index,
                "kind": info.kind.value,
                "query": info.query,
                "reason": info.reason,
                "where": None if where is None else where.detach().cpu().clone(),
                "gates": None if state is None or state.gate_t is None else state.gate_t.tolist(),
            }
        )

    def make_record(self, ctx: CallContext) -> GenerationRecord:
        state = ctx.new_state
        assert state is not None
        for entry, idx, got, inverse in ctx.pending_device:  # one copy to the host, now
            rows = got.to_numpy_records(entry.bundle.domains)
            for i, k in zip(idx, inverse.tolist(), strict=True):
                ctx.pending_record[i] = rows[int(k)]
                state.gates[i] = int(rows[int(k)].gate)
        ctx.pending_device.clear()
        record_id = self.log.next_id()
        state.record_id = record_id
        names = [n for n in state.entries if n is not None]
        first = self.entries[names[0]] if names else next(iter(self.entries.values()))
        same = len(set(names)) <= 1
        return GenerationRecord(
            generation=record_id,
            policy=first.policy if same else "mixed",
            layer=first.block,
            alpha=first.alpha,
            rows=list(ctx.pending_record),
            positions=list(state.positions),
            thread=threading.current_thread().name,
            bundles=list(state.entries),
        )
