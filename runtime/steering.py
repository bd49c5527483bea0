"""Apply an asa-bundle to one decoder block of a Hugging Face causal LM.

:func:`attach` checks compatibility, then registers three hooks and nothing
else (no module is replaced, no attribute is set on the model):

* a forward pre-hook on the top-level model that records the call's
  ``attention_mask`` and KV cache in a thread-local context and tells a
  prefill (no cache, or an empty one) from a decode step;
* a forward hook on the steered decoder block that, on a prefill, reads the
  hidden state at the last real token of each row, decides per row with
  ``bundle.decide`` (float32, CPU) and adds ``gate * alpha * v`` where the
  policy says; on a decode step it adds the row's delta when the policy
  says so (``all_tokens``, ``generated_tokens``);
* a forward hook on the top-level model (``always_call``) that closes the
  context and, when the call succeeded, commits its decision: the
  generation state is stored under the cache object, the record is logged
  and ``on_decision`` is called.

If the decision fails, the forward raises :class:`DecisionError`; the
output is never partially modified and nothing is stored. The hooks stay
registered until :meth:`SteeringHandle.remove` (or the end of the ``with``
block): a failed call does not silently turn steering off.

Notes on what counts as a generation:

* ``model.generate`` passes one cache object through all its steps, so a
  generation is one prefill plus its decode steps. A manual loop that feeds
  the ``past_key_values`` returned by a steered call back to the model
  continues that generation.
* A call with a non-empty cache the handle has never seen (e.g. a cache
  pre-filled before ``attach``) is a decode step of an unknown generation
  and is not steered.
* With ``use_cache=False`` every call is a prefill: the decision is taken
  again on each step's last token.
* The steered block, called outside the top-level model, is treated as a
  standalone prefill without padding information.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from asa_format import constants as C
from asa_format.errors import AsaError, DecisionError, DigestMismatchError, UsageError
from asa_format.runtime._types import BundleLike
from asa_format.runtime.compat import check_compatibility
from asa_format.runtime.context import (
    CallContext,
    GenerationState,
    GenerationStates,
    ThreadCalls,
    cache_length,
)
from asa_format.runtime.layers import ResolvedLayers, resolve_layers
from asa_format.runtime.positions import last_real_positions, real_token_mask
from asa_format.runtime.records import GenerationRecord, RecordLog

__all__ = ["SteeringHandle", "attach"]

logger = logging.getLogger("asa_format.runtime")

DecisionCallback = Callable[[GenerationRecord], Any]

# Blocks currently steered by an active handle (to warn when steering is stacked).
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_ACTIVE_LOCK = threading.Lock()


def _mark_active(block: nn.Module, delta: int) -> int:
    with _ACTIVE_LOCK:
        count = _ACTIVE.get(block, 0) + delta
        if count > 0:
            _ACTIVE[block] = count
        else:
            _ACTIVE.pop(block, None)
        return count


def _split_output(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The hidden-state tensor of a block's output and a function rebuilding the output."""
    if isinstance(output, torch.Tensor):
        return output, lambda h: h
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        rest = output[1:]
        return output[0], lambda h: (h, *rest)
    if isinstance(output, list) and output and isinstance(output[0], torch.Tensor):
        rest_list = output[1:]
        return output[0], lambda h: [h, *rest_list]
    raise DecisionError(
        f"the steered decoder block returned {type(output).__name__}; expected a tensor or a "
        "tuple whose first element is the hidden-state tensor",
        code="DECISION_INPUT",
        hint="check layers_path: it must name the list of decoder blocks",
    )


class _Steerer:
    """The hook logic of one handle (kept apart from the public handle object)."""

    def __init__(
        self,
        bundle: BundleLike,
        *,
        layer_index: int,
        policy: str,
        alpha: float,
        hidden_size: int,
        log: RecordLog,
        on_decision: DecisionCallback | None,
        forward_signature: inspect.Signature | None,
    ) -> None:
        self.bundle = bundle
        self.layer_index = layer_index
        self.policy = policy
        self.alpha = float(alpha)
        self.hidden_size = hidden_size
        self.log = log
        self.on_decision = on_decision
        self.signature = forward_signature
        self.calls = ThreadCalls()
        self.states = GenerationStates()
        self._vectors: dict[tuple[str, str, torch.dtype], torch.Tensor] = {}
        self._vector_lock = threading.Lock()

    # -- vectors ---------------------------------------------------------------
    def vector(self, domain: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The steering vector of ``domain`` in ``dtype`` on ``device`` (cached)."""
        key = (domain, str(device), dtype)
        with self._vector_lock:
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
        tensor = torch.from_numpy(v.copy()).to(device=device, dtype=dtype)
        with self._vector_lock:
            self._vectors.setdefault(key, tensor)
            return self._vectors[key]

    def deltas(
        self, gates: list[int], domains: list[str], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """``[B, H]`` rows ``gate * alpha * v[domain]`` in ``dtype`` (zero where gate is 0).

        The product is computed in float32 and cast to ``dtype`` once (spec, decision step 6).
        """
        out = torch.zeros((len(gates), self.hidden_size), dtype=torch.float32, device=device)
        for i, (gate, domain) in enumerate(zip(gates, domains, strict=True)):
            if gate != 0:
                out[i] = self.vector(domain, device, torch.float32) * float(np.float32(gate * self.alpha))
        return out.to(dtype)

    # -- top-level model hooks ----------------------------------------------------
    def _call_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.signature is not None and args:
            try:
                return dict(self.signature.bind_partial(*args, **kwargs).arguments)
            except TypeError:
                pass
        return dict(kwargs)

    def pre_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            call = self._call_arguments(args, kwargs)
            mask = call.get("attention_mask")
            cache = call.get("past_key_values")
            length = cache_length(cache)
            state = self.states.get(cache)
            # A cache that cannot report its length is a prefill the first time it is seen.
            is_prefill = length == 0 if length is not None else state is None
            if is_prefill:
                state = None
            ctx = CallContext(
                attention_mask=mask if isinstance(mask, torch.Tensor) else None,
                cache=cache,
                is_prefill=is_prefill,
                state=state,
            )
        except Exception:  # never leave the stack unbalanced: the post-hook always pops
            logger.exception("could not read the model call's arguments; treating it as a prefill")
            ctx = CallContext(attention_mask=None, cache=None, is_prefill=True)
        self.calls.push(ctx)

    def post_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        ctx = self.calls.pop()
        if ctx is None or output is None or ctx.new_state is None:
            return  # nothing decided, or the forward raised: nothing is committed
        cache = ctx.cache
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        assert ctx.pending_record is not None
        self.commit(ctx.new_state, ctx.pending_record, cache)

    def commit(
        self, state: GenerationState, record: GenerationRecord, cache: Any
    ) -> None:
        if cache is not None and not self.states.put(cache, state):
            logger.debug("cache %s cannot be tracked; decode steps will not be steered",
                          type(cache).__name__)
        self.log.append(record)
        logger.info(
            "generation %d (layer %d, policy %s): gates=%s domains=%s",
            record.generation, record.layer, record.policy, record.gates, record.domains,
        )
        if logger.isEnabledFor(logging.DEBUG):
            for i, row in enumerate(record.rows):
                logger.debug(
                    "generation %d row %d: domain=%s p=%.6f gate=%+d position=%d",
                    record.generation, i, row.domain, float(row.probability), int(row.gate),
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

    # -- steered block hook ----------------------------------------------------------
    def layer_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        ctx = self.calls.current()
        standalone = ctx is None
        if ctx is None:
            logger.debug("steered block called outside the top-level model: treated as a prefill")
            ctx = CallContext(attention_mask=None, cache=None, is_prefill=True)
        hidden, rebuild = _split_output(output)
        if hidden.dim() != 3 or hidden.shape[-1] != self.hidden_size:
            raise DecisionError(
                f"the steered block's output has shape {tuple(hidden.shape)}, expected "
                f"[batch, sequence, {self.hidden_size}]",
                code="DECISION_INPUT",
                hint="check that the bundle matches the model and layers_path",
            )
        new_hidden: torch.Tensor | None
        if ctx.is_prefill:
            new_hidden = self._prefill(ctx, hidden)
            if standalone:
                assert ctx.new_state is not None and ctx.pending_record is not None
                self.commit(ctx.new_state, ctx.pending_record, None)
        else:
            new_hidden = self._decode(ctx, hidden)
        return None if new_hidden is None else rebuild(new_hidden)

    def _decide(self, rows: np.ndarray) -> Any:
        try:
            decisions = self.bundle.decide(rows)
        except DecisionError:
            raise
        except AsaError as exc:
            raise DecisionError(
                f"the bundle's decision failed: {exc}", code="DECISION_FAILED"
            ) from exc
        except Exception as exc:
            raise DecisionError(
                f"the bundle's decision failed with {type(exc).__name__}: {exc}",
                code="DECISION_FAILED",
                hint="the model was not modified; check the bundle with 'asa validate'",
            ) from exc
        if len(decisions) != rows.shape[0]:
            raise DecisionError(
                f"the bundle returned {len(decisions)} decisions for {rows.shape[0]} rows",
                code="DECISION_FAILED",
            )
        return decisions

    def _prefill(self, ctx: CallContext, hidden: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        real = real_token_mask(ctx.attention_mask, batch, seq, hidden.device)
        last = last_real_positions(real)
        rows_t = hidden.detach()[torch.arange(batch, device=hidden.device), last]
        rows = rows_t.to(torch.float32).cpu().numpy()
        decisions = self._decide(rows)
        try:
            gates = [int(g) for g in np.asarray(decisions.gate).tolist()]
            domains = [str(d) for d in decisions.domain]
            delta = self.deltas(gates, domains, hidden.device, hidden.dtype)
        except DecisionError:
            raise
        except Exception as exc:
            raise DecisionError(
                f"could not build the steering deltas: {type(exc).__name__}: {exc}",
                code="DECISION_FAILED",
            ) from exc

        if self.policy == C.POLICY_ALL_TOKENS:
            where = real
        else:  # prefill_last_token, generated_tokens: the last real position only
            where = torch.zeros_like(real)
            where[torch.arange(batch, device=real.device), last] = True
        gated = torch.tensor([g != 0 for g in gates], dtype=torch.bool, device=hidden.device)
        select = (where & gated[:, None]).unsqueeze(-1)
        new_hidden = torch.where(select, hidden + delta[:, None, :], hidden)

        record_id = self.log.next_id()
        ctx.new_state = GenerationState(
            record_id=record_id, batch_size=batch, gates=gates, domains=domains,
            deltas={(str(hidden.device), hidden.dtype): delta},
        )
        record = GenerationRecord(
            generation=record_id,
            policy=self.policy,
            layer=self.layer_index,
            alpha=self.alpha,
            rows=list(decisions),
            positions=[int(p) for p in last.tolist()],
            thread=threading.current_thread().name,
        )
        ctx.pending_record = record
        return new_hidden

    def _decode(self, ctx: CallContext, hidden: torch.Tensor) -> torch.Tensor | None:
        state = ctx.state
        if state is None:
            logger.debug("decode step of an unknown generation: not steered")
            return None
        if self.policy == C.POLICY_PREFILL_LAST_TOKEN or not any(state.gates):
            return None
        batch, seq, _ = hidden.shape
        if batch != state.batch_size:
            raise DecisionError(
                f"a decode step has {batch} rows but its prefill had {state.batch_size}",
                code="DECISION_FAILED",
                hint="generation strategies that change the batch size during decoding are not "
                "supported with the all_tokens/generated_tokens policies",
            )
        key = (str(hidden.device), hidden.dtype)
        delta = state.deltas.get(key)
        if delta is None:
            delta = self.deltas(state.gates, state.domains, hidden.device, hidden.dtype)
            state.deltas[key] = delta
        real = real_token_mask(ctx.attention_mask, batch, seq, hidden.device)
        gated = torch.tensor([g != 0 for g in state.gates], dtype=torch.bool, device=hidden.device)
        select = (real & gated[:, None]).unsqueeze(-1)
        return torch.where(select, hidden + delta[:, None, :], hidden)


class SteeringHandle:
    """Steering attached to a model. Also a context manager: leaving it removes the hooks.

    ``records`` holds the last ``max_records`` :class:`GenerationRecord` objects
    (one per prefill), ``last`` the most recent one.
    """

    def __init__(
        self,
        model: nn.Module,
        bundle: BundleLike,
        layers: ResolvedLayers,
        steerer: _Steerer,
        hooks: list[RemovableHandle],
        max_records: int,
    ) -> None:
        self.model = model
        self.bundle = bundle
        self.layers = layers
        self._steerer = steerer
        self._hooks = hooks
        self._max_records = max_records
        self._lock = threading.Lock()

    @property
    def layer_index(self) -> int:
        return self._steerer.layer_index

    @property
    def layer_path(self) -> str:
        return f"{self.layers.path}.{self.layer_index}"

    @property
    def policy(self) -> str:
        return self._steerer.policy

    @property
    def alpha(self) -> float:
        return self._steerer.alpha

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    @property
    def records(self) -> deque[GenerationRecord]:
        """A copy of the recorded generations, oldest first (bounded by ``max_records``)."""
        return deque(self._steerer.log.snapshot(), maxlen=self._max_records)

    @property
    def last(self) -> GenerationRecord | None:
        return self._steerer.log.last

    def clear_records(self) -> None:
        self._steerer.log.clear()

    def remove(self) -> None:
        """Remove every hook (idempotent). The model is left exactly as before ``attach``."""
        with self._lock:
            hooks, self._hooks = self._hooks, []
        if not hooks:
            return
        try:
            for hook in hooks:
                hook.remove()
        finally:
            self._steerer.states.clear()
            _mark_active(self.layers.layers[self.layer_index], -1)
        logger.info("steering removed from %s", self.layer_path)

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (
            f"SteeringHandle({self.layer_path}, policy={self.policy!r}, alpha={self.alpha}, "
            f"domains={list(self.bundle.domains)!r}, {state})"
        )


def _load(
    bundle_or_path: Any, expected_digest: str | None, trusted_keys: Any
) -> BundleLike:
    if isinstance(bundle_or_path, (str, os.PathLike)):
        from asa_format import load_bundle

        return load_bundle(
            Path(bundle_or_path), verify=True, expected_digest=expected_digest,
            trusted_keys=trusted_keys,
        )
    if trusted_keys is not None:
        raise UsageError(
            "trusted_keys applies when attach() loads the bundle from a path",
            hint="pass the bundle path, or load it with load_bundle(path, trusted_keys=...)",
        )
    for attr in ("manifest", "decide", "steering_vector", "domains"):
        if not hasattr(bundle_or_path, attr):
            raise UsageError(
                f"attach() needs a bundle or a bundle path, got {type(bundle_or_path).__name__}",
                hint="pass asa_format.load_bundle(path) or the path of the bundle directory",
            )
    if expected_digest is not None:
        actual = getattr(bundle_or_path, "root_digest", None)
        if actual != expected_digest:
            raise DigestMismatchError(
                f"the bundle's root digest is {actual} but {expected_digest} was expected",
                hint="attach the bundle you meant to, or update the expected digest",
            )
    return bundle_or_path


def _forward_signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


def attach(
    model: nn.Module,
    bundle_or_path: Any,
    *,
    policy: str | None = None,
    alpha: float | None = None,
    layers_path: str | None = None,
    strict_model_match: bool = True,
    expected_digest: str | None = None,
    trusted_keys: Any = None,
    on_decision: DecisionCallback | None = None,
    max_records: int = 1024,
) -> SteeringHandle:
    """Attach a bundle to ``model`` (any transformers causal LM) and return the handle.

    ``bundle_or_path`` is a loaded bundle or a bundle directory (loaded with
    ``load_bundle(verify=True, expected_digest=..., trusted_keys=...)``).
    ``policy`` and ``alpha`` override the bundle's values. Every check runs
    before any hook is registered: a refused bundle or an incompatible model
    leaves the model untouched.
    """
    bundle = _load(bundle_or_path, expected_digest, trusted_keys)
    steering = bundle.manifest.steering
    chosen_policy = steering.policy if policy is None else policy
    if chosen_policy not in C.POLICIES:
        raise UsageError(
            f"unknown injection policy {chosen_policy!r}",
            hint=f"use one of {', '.join(C.POLICIES)}",
        )
    chosen_alpha = float(steering.alpha if alpha is None else alpha)
    if not np.isfinite(chosen_alpha):
        raise UsageError(f"alpha must be finite, got {chosen_alpha!r}")
    if int(max_records) < 1:
        raise UsageError(f"max_records must be at least 1, got {max_records!r}")

    layers = resolve_layers(model, layers_path)
    check_compatibility(model, bundle, layers, strict_model_match=strict_model_match)
    layer_index = int(bundle.manifest.layer.index)
    block = layers.layers[layer_index]

    steerer = _Steerer(
        bundle,
        layer_index=layer_index,
        policy=chosen_policy,
        alpha=chosen_alpha,
        hidden_size=int(bundle.manifest.model.hidden_size),
        log=RecordLog(max_records),
        on_decision=on_decision,
        forward_signature=_forward_signature(model),
    )
    hooks: list[RemovableHandle] = []
    try:
        hooks.append(model.register_forward_pre_hook(steerer.pre_forward, with_kwargs=True))
        hooks.append(
            model.register_forward_hook(steerer.post_forward, with_kwargs=True, always_call=True)
        )
        hooks.append(block.register_forward_hook(steerer.layer_forward))
    except BaseException:
        for hook in hooks:
            hook.remove()
        raise
    if _mark_active(block, +1) > 1:
        logger.warning(
            "%s.%d is already steered by another active handle: the deltas will add up",
            layers.path, layer_index,
        )
    handle = SteeringHandle(model, bundle, layers, steerer, hooks, int(max_records))
    logger.info(
        "steering attached to %s.%d (%s): policy=%s alpha=%g domains=%s",
        layers.path, layer_index, type(model).__name__, chosen_policy, chosen_alpha,
        list(bundle.domains),
    )
    return handle
