"""Per-call and per-generation state, without global flags.

A forward pre-hook on the top-level model opens a :class:`CallContext` on a
thread-local stack (two threads using one model never see each other's
calls); a forward hook closes it, also when the forward raised.

A generation is identified by its cache: the :class:`GenerationState`
decided on its prefill is stored in a lock-protected ``WeakKeyDictionary``
keyed by the cache's identity (:func:`~asa_format.runtime.evidence.cache_key`)
and dies with it. Cache-less generations (``use_cache=False``) are followed
per thread through the sequence they re-read (:class:`Lineage`).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from asa_format.runtime.classify import PassInfo
from asa_format.runtime.evidence import CallEvidence

__all__ = [
    "CallContext",
    "GenerationState",
    "GenerationStates",
    "LegacyTracker",
    "Lineage",
    "ThreadCalls",
]


@dataclass
class GenerationState:
    """What a prefill decided, per row, for the later passes of its generation.

    Deltas are kept per ``(block, policy)``: the float32 sum ``[B, H]`` of the
    row's interventions that steer that block with that policy, and a bool
    ``[B]`` mask of the rows that have one (a row without stays bit-identical).
    """

    record_id: int
    batch: int
    prompt_len: int  # positions of the prefill pass up to the prompt's end
    positions: list[int]  # per row: the position whose hidden state was decided on
    entries: list[str | None]  # per row: the bundle steering it, or None
    outcomes: list[Any]  # per row: its RowOutcomes (asa decision, condition outcomes), or None
    gates: list[int]  # per row: the asa gate (0 without one), filled when committed
    gate_t: torch.Tensor | None = None  # int8 [B] on the device: the asa gates, for the hooks
    # (block, policy) -> [B, H] float32 deltas (zero rows where nothing is added)
    deltas: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    # (block, policy) -> bool [B]: rows whose delta is added
    active: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    # (block, policy, device, dtype) -> the deltas cast for that block's output
    cast: dict[tuple[int, str, str, torch.dtype], torch.Tensor] = field(default_factory=dict)

    def delta(
        self, block: int, policy: str, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        key = (block, policy, str(device), dtype)
        cached = self.cast.get(key)
        if cached is None:
            cached = self.deltas[(block, policy)].to(device=device, dtype=dtype)
            self.cast[key] = cached
        return cached

    def signature(self, row: int) -> tuple[Any, ...]:
        """What row ``row`` decided: rows with equal signatures are steered alike."""
        out = self.outcomes[row]
        fires = () if out is None else tuple(sorted(out.fires.items()))
        return (self.entries[row], self.gates[row], fires)

    def reordered(self, rows: list[int]) -> GenerationState:
        """The state of a batch whose row ``i`` continues row ``rows[i]`` of this one."""
        index = torch.tensor(rows, dtype=torch.long)
        return GenerationState(
            record_id=self.record_id,
            batch=len(rows),
            prompt_len=self.prompt_len,
            positions=[self.positions[r] for r in rows],
            entries=[self.entries[r] for r in rows],
            outcomes=[self.outcomes[r] for r in rows],
            gates=[self.gates[r] for r in rows],
            gate_t=None if self.gate_t is None else self.gate_t[index.to(self.gate_t.device)],
            deltas={k: d[index.to(d.device)] for k, d in self.deltas.items()},
            active={k: a[index.to(a.device)] for k, a in self.active.items()},
        )


@dataclass
class CallContext:
    """One call of the top-level model, as seen by its hooks."""

    evidence: CallEvidence
    selection: tuple[str | None, ...] | None  # the rows' bundles chosen for this call
    state: GenerationState | None = None  # the state of the call's cache, if known
    info: PassInfo | None = None  # set by the first steered block the call reaches
    new_state: GenerationState | None = None  # decided by this (prefill) call
    pending_record: Any = None  # its per-row decisions, committed when the call succeeds
    pending_device: list[Any] = field(default_factory=list)  # device decisions not yet copied
    passes: list[Any] = field(default_factory=list)  # trace entries (self-test)


class ThreadCalls:
    """A thread-local stack of open :class:`CallContext` objects."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _stack(self) -> list[CallContext]:
        stack: list[CallContext] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = []
            self._local.stack = stack
        return stack

    def push(self, ctx: CallContext) -> None:
        self._stack().append(ctx)

    def pop(self) -> CallContext | None:
        stack = self._stack()
        return stack.pop() if stack else None

    def current(self) -> CallContext | None:
        stack = self._stack()
        return stack[-1] if stack else None


class GenerationStates:
    """Cache identity -> :class:`GenerationState`, weakly keyed by identity, lock-protected.

    Keys are compared by identity, not equality (a legacy cache's key is a
    tensor, whose ``==`` is element-wise); an entry dies with its key.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[int, tuple[weakref.ref[Any], GenerationState]] = {}

    def get(self, key: Any) -> GenerationState | None:
        if key is None:
            return None
        with self._lock:
            found = self._states.get(id(key))
        if found is None or found[0]() is not key:
            return None
        return found[1]

    def put(self, key: Any, state: GenerationState) -> bool:
        if key is None:
            return False
        ident = id(key)

        def forget(ref: weakref.ref[Any], ident: int = ident) -> None:
            with self._lock:
                entry = self._states.get(ident)
                if entry is not None and entry[0] is ref:
                    del self._states[ident]

        try:
            ref = weakref.ref(key, forget)
        except TypeError:  # not weak-referenceable
            return False
        with self._lock:
            self._states[ident] = (ref, state)
        return True

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref, _ in self._states.values() if ref() is not None)


class LegacyTracker:
    """Follows legacy tuple caches that beam search rebuilds with reordered rows.

    A legacy cache is rebuilt on every step, and beam search reorders its
    rows (``index_select``), so the new tuple holds new tensors. Each row's
    key vector of the last cached position in layer 0 is copied bit for bit
    by that reordering: a new cache whose every row equals exactly one row
    of a cache seen before (with one decision per match) continues that
    generation with its rows reordered. Anything else is not matched.
    """

    def __init__(self, keep: int = 64) -> None:
        self._lock = threading.Lock()
        self._seen: list[tuple[torch.Tensor, GenerationState]] = []
        self._keep = keep

    @staticmethod
    def fingerprint(cache: Any) -> torch.Tensor | None:
        try:
            key: torch.Tensor = cache[0][0]
            return key[:, :, -1, :].detach().reshape(key.shape[0], -1)
        except (IndexError, TypeError, AttributeError, RuntimeError):
            return None

    def remember(self, cache: Any, state: GenerationState) -> None:
        fp = self.fingerprint(cache)
        if fp is None:
            return
        with self._lock:
            self._seen.append((fp.clone(), state))
            del self._seen[: -self._keep]

    def match(self, cache: Any) -> GenerationState | None:
        fp = self.fingerprint(cache)
        if fp is None:
            return None
        with self._lock:
            seen = list(self._seen)
        for old, state in reversed(seen):
            if old.shape != fp.shape or old.device != fp.device or state.batch != fp.shape[0]:
                continue
            same = (fp[:, None, :] == old[None, :, :]).all(dim=-1)  # [new, old]
            rows: list[int] = []
            for i in range(fp.shape[0]):
                matches = torch.nonzero(same[i]).flatten().tolist()
                kinds = {state.signature(j) for j in matches}
                if len(kinds) != 1:
                    break
                rows.append(int(matches[0]))
            else:
                return state if rows == list(range(state.batch)) else state.reordered(rows)
        return None


@dataclass
class _Seen:
    tokens: torch.Tensor
    mask: torch.Tensor | None
    state: GenerationState


class Lineage:
    """Per thread: the last cache-less pass, to recognise its continuation."""

    def __init__(self) -> None:
        self._local = threading.local()

    def remember(
        self, tokens: torch.Tensor | None, mask: torch.Tensor | None, state: GenerationState
    ) -> None:
        if tokens is None:
            self.forget()
            return
        self._local.seen = _Seen(tokens.detach(), None if mask is None else mask.detach(), state)

    def forget(self) -> None:
        self._local.seen = None

    def continuation(
        self, tokens: torch.Tensor | None, mask: torch.Tensor | None
    ) -> GenerationState | str | None:
        """The state this pass continues, ``None`` for a new sequence, or why it is ambiguous.

        Row ``i`` continues an earlier row ``j`` when its first ``n`` tokens (and
        mask columns) equal row ``j`` of the previous pass, ``n`` being that
        pass's length; rows may be reordered (beam search). Rows matching
        several earlier rows with different decisions are ambiguous.
        """
        seen: _Seen | None = getattr(self._local, "seen", None)
        if seen is None or tokens is None:
            return None
        old = seen.tokens
        if tokens.dim() != old.dim() or tokens.shape[2:] != old.shape[2:]:
            return None
        n = old.shape[1]
        if tokens.shape[1] <= n or tokens.device != old.device:
            return None
        if (mask is None) != (seen.mask is None):
            return None
        prefix = tokens[:, :n]
        rows: list[int] = []
        for i in range(tokens.shape[0]):
            same = (prefix[i].unsqueeze(0) == old).reshape(old.shape[0], -1).all(dim=1)
            if mask is not None and seen.mask is not None:
                if mask.shape[1] != tokens.shape[1] or seen.mask.shape[1] != n:
                    return None
                same &= (mask[i, :n].unsqueeze(0) == seen.mask).all(dim=1)
            matches = [int(j) for j in torch.nonzero(same).flatten().tolist()]
            if not matches:
                return None
            kinds = {(*seen.state.signature(j), seen.state.positions[j]) for j in matches}
            if len(kinds) > 1:
                return (
                    f"row {i} re-reads a sequence shared by earlier rows with different decisions"
                )
            rows.append(matches[0])
        if rows == list(range(seen.state.batch)):
            return seen.state
        return seen.state.reordered(rows)
