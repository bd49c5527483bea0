"""Per-call and per-generation state, without global flags.

A forward pre-hook on the top-level model opens a :class:`CallContext` on a
thread-local stack (so two threads using the same model never see each
other's calls); a forward hook closes it, also when the forward raised.

A generation is identified by its KV-cache object: the state decided on its
prefill (:class:`GenerationState`) is stored in a lock-protected
``WeakKeyDictionary`` keyed by the cache, and dies with it. A call is a
prefill when it gets no cache or an empty one (``get_seq_length() == 0``).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CallContext", "GenerationState", "GenerationStates", "ThreadCalls", "cache_length"]


@dataclass
class GenerationState:
    """What a prefill decided: per-row deltas to add on later decode steps."""

    record_id: int
    batch_size: int
    gates: list[int]
    domains: list[str]
    # Per (device, dtype): [B, H] deltas (rows with gate 0 are zero and skipped).
    deltas: dict[tuple[str, torch.dtype], torch.Tensor] = field(default_factory=dict)


@dataclass
class CallContext:
    """One call of the top-level model, as seen by its forward pre-hook."""

    attention_mask: torch.Tensor | None
    cache: Any  # the cache object passed in, or None
    is_prefill: bool
    state: GenerationState | None = None  # existing state of a decode step
    new_state: GenerationState | None = None  # state decided by this (prefill) call
    pending_record: Any = None  # its GenerationRecord, committed when the call succeeds


def cache_length(cache: Any) -> int | None:
    """Tokens already held by ``cache`` (``None`` when it cannot tell)."""
    if cache is None:
        return 0
    getter = getattr(cache, "get_seq_length", None)
    if callable(getter):
        try:
            return int(getter())
        except Exception:  # a cache type that cannot report its length
            return None
    if isinstance(cache, (tuple, list)):  # legacy tuple cache
        if len(cache) == 0:
            return 0
        try:
            return int(cache[0][0].shape[-2])
        except (IndexError, TypeError, AttributeError):
            return None
    return None


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
    """Cache object -> :class:`GenerationState`, weakly keyed and lock-protected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: weakref.WeakKeyDictionary[Any, GenerationState] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, cache: Any) -> GenerationState | None:
        if cache is None:
            return None
        with self._lock:
            try:
                return self._states.get(cache)
            except TypeError:  # not weak-referenceable or not hashable
                return None

    def put(self, cache: Any, state: GenerationState) -> bool:
        if cache is None:
            return False
        with self._lock:
            try:
                self._states[cache] = state
            except TypeError:
                return False
            return True

    def discard(self, cache: Any) -> None:
        if cache is None:
            return
        with self._lock:
            try:
                self._states.pop(cache, None)
            except TypeError:
                pass

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)
