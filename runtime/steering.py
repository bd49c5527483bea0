"""The hooks of a steering handle (spec sections 3.7 and 14).

Three kinds of hooks, and nothing else (no module is replaced, no attribute
is set on the model):

* a forward pre-hook on the top-level model gathers the call's evidence
  (:mod:`asa_format.runtime.evidence`) and the rows' bundle selection into a
  thread-local :class:`~asa_format.runtime.context.CallContext`;
* one forward hook on each decoder block that any attached bundle reads or
  steers, whatever the number of bundles: it classifies the pass
  (:mod:`asa_format.runtime.classify`); on a prefill it takes, per row, the
  decisions of the row's bundle that belong to this block (the asa decision
  at the prompt's last real token, condition similarities) and sums the
  row's deltas of every intervention steering this block
  (:mod:`asa_format.runtime.program`); on every pass it adds them where each
  intervention's policy says;
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
from asa_format.runtime.program import Program, Read, RowOutcomes, Term, condition_outcome
from asa_format.runtime.records import GenerationRecord, RecordLog
from asa_format.runtime.torch_decide import CPU_BLOCK_ELEMENTS, RowDecision

__all__ = ["UNSET", "Entry", "Steerer", "SteeringSkippedWarning", "decide_host_row", "split_output"]

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
    """One bundle of a handle, compiled: what it reads and adds at each block."""

    name: str
    bundle: BundleLike
    program: Program
    hidden_size: int
    # The asa decision in torch on the hidden state's device (asa_format.runtime.torch_decide),
    # when it was proven equal to onnxruntime on load; None: bundle.decide on the host.
    decider: Any = None
    _vectors: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    _terms: dict[tuple[int, str, str], torch.Tensor] = field(default_factory=dict)
    _table: np.ndarray | None = None  # [domains, 3, H] float32 asa deltas (host path)
    _rows: tuple[tuple[np.ndarray, ...], ...] | None = None  # its rows, [domain][gate + 1]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def block(self) -> int:
        """The asa layer, or else the first block the bundle steers."""
        program = self.program
        if program.asa_block is not None:
            return program.asa_block
        return min(program.terms) if program.terms else min(program.reads)

    @property
    def policy(self) -> str:
        """The asa policy, or else the interventions' common policy (``"mixed"`` if several)."""
        if self.program.asa_policy is not None:
            return self.program.asa_policy
        policies = self.program.policies
        return policies[0] if len(policies) == 1 else "mixed"

    @property
    def alpha(self) -> float:
        """The asa strength (NaN without an asa intervention)."""
        a = self.program.asa_alpha
        return float("nan") if a is None else a

    def vector(self, domain: str, device: torch.device) -> torch.Tensor:
        """The float32 asa steering vector of ``domain`` on ``device`` (cached)."""
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

    def host_table(self) -> np.ndarray:
        """The decider's ``[domains, 3, H]`` float32 delta table on the host (the one the device
        path gathers from: ``table[domain, gate + 1]``), computed once."""
        table = self._table
        if table is None:
            assert self.decider is not None
            table = self.decider.delta_table(
                torch.float32, torch.device("cpu"), alpha=self.program.asa_alpha
            ).numpy()
            table.setflags(write=False)
            self._table = table
        return table

    def host_rows(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """:meth:`host_table`'s rows as ``rows[domain][gate + 1]`` (read-only views): a lone
        row's delta by two tuple lookups, where a NumPy index costs microseconds in a hook."""
        rows = self._rows
        if rows is None:
            table = self.host_table()
            rows = tuple(tuple(table[d, k] for k in range(3)) for d in range(table.shape[0]))
            self._rows = rows
        return rows

    def term_vector(self, term: Term, device: torch.device) -> torch.Tensor:
        """The float32 ``coefficient x direction`` of an always/condition term on ``device``."""
        key = (term.block, term.intervention, str(device))
        with self._lock:
            cached = self._terms.get(key)
        if cached is not None:
            return cached
        assert term.vector is not None
        tensor = torch.from_numpy(np.array(term.vector, dtype=np.float32)).to(device=device)
        with self._lock:
            return self._terms.setdefault(key, tensor)


# Hidden states in host memory take the NumPy path (_prefill_host, _where_host, _apply's row
# blocks); the torch path serves every other device. Tests turn this off to check on the CPU
# that the torch path gives the same bits.
HOST_PATH_ON_CPU = True
CPU_CHUNKS_MAX = 64  # more steered positions than this many blocks: whole-tensor operations
_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _apply(hidden: torch.Tensor, delta: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``hidden`` with ``delta[b]`` added at the positions ``add[b, s]``, every other value
    unchanged (bit for bit).

    In host memory, without autograd, when the steered positions are few (a prefill steers
    one per row, a decode step one per row): the copy is one single-threaded ``memcpy``
    and the sums run in row blocks below torch's parallel grain, so the hook never enters
    torch's thread pool, whose workers may be descheduled right after the model's own
    parallel work on a busy CPU (``benchmarks/results/serving.md``). The same sums as the
    whole-tensor ``torch.where``, element by element, without ``[B, S, H]`` temporaries
    (bit for bit; for bfloat16 and float16 a NaN the sum makes may carry another payload,
    as torch's own vector and scalar lanes differ there).
    """
    as_int = _SAME_SIZE_INT.get(hidden.element_size())
    if (
        HOST_PATH_ON_CPU
        and hidden.device.type == "cpu"
        and not (hidden.requires_grad and torch.is_grad_enabled())
        and as_int is not None
        and hidden.dtype.is_floating_point
        and delta.dtype == hidden.dtype
        and delta.device.type == "cpu"
    ):
        rows, cols = np.nonzero(add.numpy())
        n = int(rows.size)
        step = max(1, CPU_BLOCK_ELEMENTS // max(1, int(hidden.shape[-1])))
        if n <= step * CPU_CHUNKS_MAX:
            # Gathers and scatters move bits with NumPy: torch's indexing kernels enter its
            # thread pool even below the parallel grain (measured: milliseconds of spinning
            # per call with both cores busy). The sums stay torch's own additions, on
            # contiguous row blocks below the grain: the same kernel, hence the same bits
            # (NaN payloads of bfloat16 and float16 included), as the whole-tensor select.
            out = _host_copy(hidden)
            if n == 0:
                return out
            src = hidden.detach().view(as_int).numpy()
            dst = out.view(as_int).numpy()
            d_bits = delta.detach().view(as_int).numpy()
            dtype = hidden.dtype
            for i in range(0, n, step):
                r, c = rows[i : i + step], cols[i : i + step]
                total = torch.from_numpy(src[r, c]).view(dtype) + torch.from_numpy(d_bits[r]).view(
                    dtype
                )
                dst[r, c] = total.view(as_int).numpy()
            return out
    return torch.where(add.unsqueeze(-1), hidden + delta[:, None, :], hidden)


def _host_copy(hidden: torch.Tensor) -> torch.Tensor:
    """A copy of a host tensor with the same strides where torch gives them, bit for bit, by
    one NumPy copy of its bytes (``Tensor.clone`` enters torch's thread pool above its grain)."""
    as_int = _SAME_SIZE_INT.get(hidden.element_size())
    if as_int is None or hidden.is_complex() or not hidden.dtype.is_floating_point:
        return hidden.clone()
    out = torch.empty_like(hidden)
    np.copyto(out.view(as_int).numpy(), hidden.detach().view(as_int).numpy())
    return out


def _gather_float32(hidden: torch.Tensor, b: Any, p: Any) -> np.ndarray:
    """``float32(hidden[b, p])`` in host memory, for ints ``b, p`` (a row ``[H]``, a view of a
    float32 tensor) or intp arrays (rows ``[B, H]``): bfloat16 and float16 widen to float32
    without rounding, other dtypes through torch's cast."""
    h = hidden.detach() if hidden.requires_grad else hidden
    if h.dtype == torch.float32:
        out: np.ndarray = h.numpy()[b, p]
    elif h.dtype == torch.bfloat16:  # the float32 whose upper 16 bits are the bfloat16's
        bits = h.view(torch.int16).numpy()[b, p].view(np.uint16).astype(np.uint32)
        out = (bits << np.uint32(16)).view(np.float32)
    elif h.dtype == torch.float16:
        out = h.view(torch.int16).numpy()[b, p].view(np.float16).astype(np.float32)
    elif isinstance(b, int):
        out = h[b, p].to(torch.float32).numpy()
    else:
        out = h[torch.from_numpy(b), torch.from_numpy(p)].to(torch.float32).numpy()
    return out


def _host_rows(hidden: torch.Tensor, positions: Sequence[int]) -> np.ndarray:
    """``float32(hidden[b, positions[b]])`` for every row ``b``, ``[B, H]``, C-contiguous."""
    b = np.arange(len(positions), dtype=np.intp)
    return np.ascontiguousarray(_gather_float32(hidden, b, np.asarray(positions, dtype=np.intp)))


def _host_row(hidden: torch.Tensor, b: int, position: int) -> np.ndarray:
    """``float32(hidden[b, position])`` as a NumPy row ``[H]`` (a view of a float32 tensor)."""
    return _gather_float32(hidden, b, position)


def _host_view(hidden: torch.Tensor, b: int, position: int) -> tuple[np.ndarray, int, int]:
    """Row ``(b, position)`` of the hook's hidden states ``[B, T, H]`` as ``(array, b, p)``
    with ``array[b, p]`` that row in float32: the float32 tensor itself as a NumPy view
    (the decision reads the row where it lies), else the row widened (:func:`_host_row`)
    as ``[1, 1, H]``."""
    if hidden.dtype == torch.float32:
        h = hidden.detach() if hidden.requires_grad else hidden
        return h.numpy(), b, position
    return _host_row(hidden, b, position)[None, None], 0, 0


def _call_decider(decide: Callable[[Any], Any], rows: Any) -> Any:
    """``decide(rows)`` with any failure but an ``AsaError`` as ``DECISION_FAILED``."""
    try:
        return decide(rows)
    except AsaError:
        raise
    except Exception as exc:
        raise _decision_failed(exc) from exc


def _decision_failed(exc: Exception) -> DecisionError:
    return DecisionError(
        f"the bundle's decision failed with {type(exc).__name__}: {exc}", code="DECISION_FAILED"
    )


def decide_host_row(
    entry: Entry, hidden: np.ndarray, b: int, p: int
) -> tuple[RowDecision, np.ndarray] | None:
    """The asa decision of row ``(b, p)`` of host hidden states (``hidden``: float32
    ``[B, T, H]``, as :func:`_host_view` gives them) and its float32 delta ``[H]`` (a row of
    the entry's delta table, read-only); None when the row needs the batch path (no proven
    decider, a row near a boundary or non-finite). The whole decision of a lone row inside
    a hook: one call to the C lane where it is built (``benchmarks.serving`` times it)."""
    decider = entry.decider
    if decider is None:
        return None
    try:  # _call_decider's rule, without its frame (each costs microseconds in a hook)
        got = decider.decide_host_row(hidden, b, p)
    except AsaError:
        raise
    except Exception as exc:
        raise _decision_failed(exc) from exc
    if got is None:
        return None
    d, p, g = got
    return RowDecision(d, p, g), entry.host_rows()[d][g + 1]


def _host_delta(
    state: GenerationState, key: tuple[int, str], batch: int, hidden_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The state's ``[B, H]`` float32 deltas and bool ``[B]`` mask of ``key`` as NumPy arrays
    (created as zeros; the state's tensors share their memory)."""
    delta = state.deltas.get(key)
    if delta is None:
        delta = torch.from_numpy(np.zeros((batch, hidden_size), dtype=np.float32))
        state.deltas[key] = delta
        state.active[key] = torch.from_numpy(np.zeros(batch, dtype=bool))
    return delta.numpy(), state.active[key].numpy()


def _host_gates(ctx: CallContext) -> np.ndarray:
    """The new generation's int8 ``[B]`` asa gates as a NumPy array (the state's tensor
    shares its memory; created as zeros)."""
    state = ctx.new_state
    assert state is not None
    if state.gate_t is None:
        state.gate_t = torch.from_numpy(np.zeros(state.batch, dtype=np.int8))
    gates: np.ndarray = state.gate_t.numpy()
    return gates


_ONE_ROW = np.zeros(1, dtype=np.intp)  # the inverse index of a lone row's decision
_GENERATED_POLICIES = (C.POLICY_ALL_TOKENS, C.POLICY_GENERATED_TOKENS)


def _term_rows(term: Term, idx: Sequence[int], state: GenerationState) -> list[int]:
    """The positions ``k`` in ``idx`` whose row gets an always or condition ``term``."""
    return [
        k
        for k, i in enumerate(idx)
        if term.kind == C.GATE_ALWAYS or bool(state.outcomes[i].fires.get(term.intervention))
    ]


def _where_host(
    state: GenerationState, info: PassInfo, policy: str, real: np.ndarray, query: int
) -> np.ndarray:
    """:meth:`Steerer._where` with NumPy, for host tensors: bool ``[batch, query]``."""
    batch = real.shape[0]
    generated = policy in _GENERATED_POLICIES
    if info.kind is PassKind.DECODE:
        return real.copy() if generated else np.zeros((batch, query), dtype=bool)
    where = np.zeros((batch, query), dtype=bool)
    where[np.arange(batch), np.asarray(state.positions, dtype=np.intp)] = True
    if policy == C.POLICY_ALL_TOKENS:
        where |= real
    elif generated:
        where |= (np.arange(query) >= state.prompt_len)[None, :] & real
    return where


def _decide(entry: Entry, rows: np.ndarray) -> list[Any]:
    """Decisions for ``rows``; identical rows get one decision (beams of one prompt)."""
    # a row's bytes -> its index among the unique rows (np.unique(axis=0) sorts: 100x slower)
    first: dict[bytes, int] = {}
    keep: list[int] = []
    inverse: list[int] = []
    for i, row in enumerate(rows):
        k = first.setdefault(row.tobytes(), len(first))
        if k == len(keep):
            keep.append(i)
        inverse.append(k)
    unique = rows[keep]
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
    return [listed[i] for i in inverse]


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
            for block in entry.program.blocks:
                self.by_block.setdefault(block, []).append(entry)
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
        return any(e.program.steers_decode for e in self.entries.values())

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
        if info.kind is PassKind.DECODE and self.trace is None:
            assert ctx.state is not None
            # a decode step gets only the deltas of policies that steer generated tokens
            # (3.7.1; _where selects nothing for the others): the rest leave the output as it is
            keys = [(index, p) for p in _GENERATED_POLICIES if (index, p) in ctx.state.deltas]
            if not keys:
                return None
        real = real_token_mask(ctx.evidence.attention_mask, batch, query, hidden.device, info.past)
        if info.kind is PassKind.PREFILL:
            state = self._prefill_state(ctx, index, hidden, real, info, entries)
        else:
            assert ctx.state is not None
            state = ctx.state
        keys = [(index, p) for p in C.POLICIES if (index, p) in state.deltas]
        if info.kind is PassKind.DECODE and self.trace is None:
            keys = [k for k in keys if k[1] in _GENERATED_POLICIES]
        wheres = {
            key[1]: self._where(state, info, key[1], real, query, hidden.device)
            & state.active[key].to(hidden.device)[:, None]
            for key in keys
        }
        self._record(ctx, index, info, wheres, state)
        if not keys:
            return None
        if len(keys) == 1:  # one policy: the common case, one select
            (policy,) = wheres
            delta = state.delta(index, policy, hidden.device, hidden.dtype)
            return rebuild(_apply(hidden, delta, wheres[policy]))
        total = torch.zeros((batch, query, size), dtype=torch.float32, device=hidden.device)
        anywhere = torch.zeros((batch, query), dtype=torch.bool, device=hidden.device)
        for policy, where in wheres.items():
            d = state.deltas[(index, policy)].to(hidden.device)
            total += where.unsqueeze(-1).to(torch.float32) * d[:, None, :]
            anywhere |= where
        return rebuild(torch.where(anywhere.unsqueeze(-1), hidden + total.to(hidden.dtype), hidden))

    def _new_state(
        self, ctx: CallContext, hidden: torch.Tensor, real: torch.Tensor, info: PassInfo
    ) -> GenerationState:
        batch, query, _ = hidden.shape
        rows = self._rows(ctx, batch)
        prompt_len = query - info.candidates
        last = last_real_positions(real[:, :prompt_len])
        state = GenerationState(
            record_id=0,
            batch=batch,
            prompt_len=prompt_len,
            positions=[int(p) for p in last.tolist()],
            entries=rows,
            outcomes=[None if r is None else RowOutcomes() for r in rows],
            gates=[0] * batch,
        )
        ctx.new_state = state
        ctx.pending_record = [None] * batch
        return state

    def _prefill_state(
        self,
        ctx: CallContext,
        index: int,
        hidden: torch.Tensor,
        real: torch.Tensor,
        info: PassInfo,
        entries: list[Entry],
    ) -> GenerationState:
        state = ctx.new_state
        if state is None:
            state = self._new_state(ctx, hidden, real, info)
        if HOST_PATH_ON_CPU and hidden.device.type == "cpu":
            self._prefill_host(ctx, index, hidden, real, state, entries)
            return state
        batch = hidden.shape[0]
        device = hidden.device
        for entry in entries:
            idx = [i for i, name in enumerate(state.entries) if name == entry.name]
            if not idx:
                continue
            program = entry.program
            index_t = torch.tensor(idx, device=device)
            pos = torch.tensor([state.positions[i] for i in idx], device=device)
            for read in program.reads.get(index, ()):
                self._read_condition(state, read, hidden, real, idx, pos)
            asa_rows: torch.Tensor | None = None  # [len(idx), H] float32 asa deltas
            asa_gated: torch.Tensor | None = None
            if program.asa_block == index:
                rows_t = hidden.detach()[index_t, pos]
                if state.gate_t is None or state.gate_t.device != device:
                    state.gate_t = torch.zeros(batch, dtype=torch.int8, device=device)
                if entry.decider is not None:
                    asa_rows, asa_gated = self._decide_on_device(ctx, entry, idx, index_t, rows_t)
                else:
                    asa_rows, asa_gated = self._decide_on_host(ctx, entry, idx, index_t, rows_t)
                assert state.gate_t is not None
            for term in program.terms.get(index, ()):
                key = (index, term.policy)
                delta = state.deltas.get(key)
                if delta is None:
                    delta = torch.zeros(
                        (batch, entry.hidden_size), dtype=torch.float32, device=device
                    )
                    state.deltas[key] = delta
                    state.active[key] = torch.zeros(batch, dtype=torch.bool, device=device)
                if term.kind == C.GATE_ASA:
                    assert asa_rows is not None and asa_gated is not None
                    delta[index_t] += asa_rows
                    state.active[key][index_t] |= asa_gated
                    continue
                on = _term_rows(term, idx, state)
                if not on:
                    continue
                rows_on = index_t[torch.tensor(on, device=device)]
                delta[rows_on] += entry.term_vector(term, device)
                state.active[key][rows_on] = True
        return state

    def _prefill_host(
        self,
        ctx: CallContext,
        index: int,
        hidden: torch.Tensor,
        real: torch.Tensor,
        state: GenerationState,
        entries: list[Entry],
    ) -> None:
        """A prefill's decisions and deltas at one block, for hidden states in host memory.

        The same values as the device path (the same float32 products and sums, in the same
        order), computed with NumPy on host arrays that the state's tensors share: one
        gather of every row's decision position per block, then per bundle a slice of it,
        its decision, and one gather from its ``[domain, gate]`` delta table. Small torch
        operations right after the model's own parallel work enter torch's thread pool and
        wait for it on a busy CPU; these do not, and there are fewer of them per bundle.
        """
        batch = hidden.shape[0]
        last: np.ndarray | None = None  # [B, H] float32: every row's decision position
        for entry in entries:
            idx = [i for i, name in enumerate(state.entries) if name == entry.name]
            if not idx:
                continue
            program = entry.program
            rows = np.asarray(idx, dtype=np.intp)
            reads = program.reads.get(index, ())
            if reads:
                pos = torch.tensor([state.positions[i] for i in idx])
                for read in reads:
                    self._read_condition(state, read, hidden, real, idx, pos)
            asa_rows: np.ndarray | None = None  # [len(idx), H] float32 asa deltas
            asa_on: np.ndarray | None = None
            lone: tuple[RowDecision, np.ndarray] | None = None  # a bundle's only row
            if program.asa_block == index:
                if len(idx) == 1:
                    i = idx[0]
                    if last is not None:
                        view, b, p = last[None], 0, i
                    else:
                        view, b, p = _host_view(hidden, i, state.positions[i])
                    lone = decide_host_row(entry, view, b, p)
                    if lone is not None:
                        self._keep_row(ctx, entry, i, lone[0])
                    else:
                        row = np.ascontiguousarray(view[b, p], dtype=np.float32)
                        asa_rows, asa_on = self._decide_host_rows(ctx, entry, idx, row[None])
                else:
                    if last is None:
                        last = _host_rows(hidden, state.positions)
                    asa_rows, asa_on = self._decide_host_rows(ctx, entry, idx, last[rows])
            for term in program.terms.get(index, ()):
                delta, active = _host_delta(state, (index, term.policy), batch, entry.hidden_size)
                if term.kind == C.GATE_ASA:
                    if lone is not None:  # the same float32 sum as below, for one row
                        i = idx[0]
                        delta[i] += lone[1]
                        active[i] |= lone[0].gate != 0
                        continue
                    assert asa_rows is not None and asa_on is not None
                    delta[rows] += asa_rows
                    active[rows] |= asa_on
                    continue
                on = _term_rows(term, idx, state)
                if not on:
                    continue
                rows_on = rows[on]
                delta[rows_on] += entry.term_vector(term, torch.device("cpu")).numpy()
                active[rows_on] = True

    def _keep_row(self, ctx: CallContext, entry: Entry, i: int, got: RowDecision) -> None:
        """Keep a lone row's decision as :meth:`_decide_host_rows` keeps a batch's."""
        _host_gates(ctx)[i] = got.gate
        ctx.pending_device.append((entry, [i], got, _ONE_ROW))

    def _decide_host_rows(
        self, ctx: CallContext, entry: Entry, idx: list[int], rows32: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The asa decision of the rows ``idx`` from their float32 hidden states: their
        float32 deltas ``[n, H]`` and whether each is steered."""
        gate_np = _host_gates(ctx)
        if entry.decider is None:
            rows_t = torch.from_numpy(rows32)
            index_t = torch.tensor(idx)
            out, on = self._decide_on_host(ctx, entry, idx, index_t, rows_t)
            return out.numpy(), on.numpy()
        decider = entry.decider
        got = _call_decider(decider.decide_host, rows32)  # the CPU rows' NumPy plan, as arrays
        if got is None:
            got = _call_decider(lambda r: decider.decide(torch.from_numpy(r)).on_host(), rows32)
        domain, gate = got.domain_index, got.gate
        gate_np[np.asarray(idx, dtype=np.intp)] = gate
        ctx.pending_device.append((entry, idx, got, np.arange(len(idx))))
        return entry.host_table()[domain, gate.astype(np.intp) + 1], gate != 0

    def _read_condition(
        self,
        state: GenerationState,
        read: Read,
        hidden: torch.Tensor,
        real: torch.Tensor,
        idx: list[int],
        pos: torch.Tensor,
    ) -> None:
        """The similarity of each of the rows ``idx`` at one condition block (spec 14.4)."""
        h = hidden.detach()
        if read.gate.aggregate == "last":
            agg = h[torch.tensor(idx, device=h.device), pos].to(torch.float64)
        else:  # the mean of the row's real prompt positions (all of them if none is real)
            parts = []
            for i in idx:
                m = real[i, : state.prompt_len]
                if not bool(m.any()):
                    m = torch.ones_like(m)
                parts.append(h[i, : state.prompt_len][m].to(torch.float64).mean(dim=0))
            agg = torch.stack(parts)
        for i, row in zip(idx, agg.cpu().numpy(), strict=True):
            outcomes = state.outcomes[i]
            assert outcomes is not None
            condition_outcome(outcomes, read, row)

    def _decide_on_host(
        self,
        ctx: CallContext,
        entry: Entry,
        idx: list[int],
        index_t: torch.Tensor,
        rows_t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``bundle.decide`` on the rows' decision positions: their float32 asa deltas and gates."""
        state = ctx.new_state
        assert state is not None and state.gate_t is not None
        decisions = _decide(entry, rows_t.to(torch.float32).cpu().numpy())
        out = torch.zeros((len(idx), entry.hidden_size), dtype=torch.float32, device=rows_t.device)
        for k, (i, decision) in enumerate(zip(idx, decisions, strict=True)):
            gate = int(decision.gate)
            state.gates[i] = gate
            ctx.pending_record[i] = decision
            outcomes = state.outcomes[i]
            assert outcomes is not None
            outcomes.asa = decision
            if gate != 0:
                assert entry.program.asa_alpha is not None
                scale = float(np.float32(gate * entry.program.asa_alpha))
                out[k] = entry.vector(str(decision.domain), rows_t.device) * scale
        gates_t = torch.tensor(
            [state.gates[i] for i in idx], dtype=torch.int8, device=rows_t.device
        )
        state.gate_t[index_t] = gates_t
        return out, gates_t != 0

    def _decide_on_device(
        self,
        ctx: CallContext,
        entry: Entry,
        idx: list[int],
        index_t: torch.Tensor,
        rows_t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decide with the bundle's torch evaluation where the hidden states live.

        Identical rows are decided once; the deltas are gathered from a
        ``[domain, gate]`` table, all on the device: one boolean is read
        back, and only rows near a decision boundary are copied to the host
        (decided by onnxruntime, spec 4.9). The records are copied to the
        host when the call is committed (:meth:`make_record`).
        """
        state = ctx.new_state
        assert state is not None and state.gate_t is not None
        unique, inverse = torch.unique(rows_t, dim=0, return_inverse=True)
        got = _call_decider(entry.decider.decide, unique)
        domain = got.domain_index[inverse]
        gate = got.gate[inverse].to(torch.int64)
        table = entry.decider.delta_table(
            torch.float32, rows_t.device, alpha=entry.program.asa_alpha
        )
        state.gate_t[index_t] = gate.to(torch.int8)
        ctx.pending_device.append((entry, idx, got, inverse))
        return table[domain, gate + 1], gate != 0

    def _where(
        self,
        state: GenerationState,
        info: PassInfo,
        policy: str,
        real: torch.Tensor,
        query: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Bool ``[batch, query]``: where a delta of ``policy`` is added in this pass (3.7.1)."""
        if HOST_PATH_ON_CPU and device.type == "cpu":  # host masks: NumPy (see _prefill_host)
            return torch.from_numpy(_where_host(state, info, policy, real.numpy(), query))
        batch = real.shape[0]
        generated = policy in _GENERATED_POLICIES
        if info.kind is PassKind.DECODE:
            if not generated:
                return torch.zeros((batch, query), dtype=torch.bool, device=device)
            return real
        # PREFILL or REREAD: the sequence from its first position
        where = torch.zeros((batch, query), dtype=torch.bool, device=device)
        where[torch.arange(batch, device=device), torch.tensor(state.positions, device=device)] = (
            True
        )
        if policy == C.POLICY_ALL_TOKENS:
            where |= real
        elif generated:
            tail = torch.arange(query, device=device) >= state.prompt_len
            where |= tail[None, :] & real
        return where

    def _record(
        self,
        ctx: CallContext,
        index: int,
        info: PassInfo,
        wheres: dict[str, torch.Tensor] | None,
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
                "where": None
                if wheres is None
                else {p: w.detach().cpu().clone() for p, w in wheres.items()},
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
                outcomes = state.outcomes[i]
                assert outcomes is not None
                outcomes.asa = rows[int(k)]
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
            interventions=[
                None if name is None or out is None else out.summary(self.entries[name].program)
                for name, out in zip(state.entries, state.outcomes, strict=True)
            ],
        )
