"""Apply a format 1.1 bundle (every intervention) to a transformers model.

    from asa_format.runtime.interventions import attach_interventions

    with attach_interventions(model, "bundle/") as handle:
        out = model.generate(**inputs)

``always`` and ``condition`` interventions get one forward hook per steered
block (several interventions on one block share it); the ``asa``
intervention is attached with :func:`asa_format.runtime.attach`. At block
``b`` the hook adds ``float32(coefficient x direction[b])``, cast to the
output's dtype, to the block output: that is repeng's ``ControlModel`` and
steering-vectors' ``apply`` (and llama.cpp's ``direction.N``) with default
options. Positions follow the policy: ``all_tokens`` = every real position
(attention mask) of every forward pass. Prefill and decode steps are told
apart by what each pass carries (spec 3.7.2), as for ``attach``; a pass that
cannot be classified is not steered and is reported. Condition decisions
belong to the thread's latest prefill; without a cache
(``use_cache=False``) every pass is a prefill and a condition is decided
again on the sequence it re-reads.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from asa_format import constants as C
from asa_format.errors import DecisionError, RuntimeCompatError
from asa_format.format.interventions import condition_fires, condition_similarity
from asa_format.intervention_bundle import (
    InterventionBundle,
    LoadedIntervention,
    load_interventions,
)
from asa_format.runtime.classify import PassInfo, PassKind, classify
from asa_format.runtime.compat import check_compatibility
from asa_format.runtime.evidence import CallEvidence, gather
from asa_format.runtime.layers import resolve_layers
from asa_format.runtime.positions import real_token_mask
from asa_format.runtime.steering import SteeringSkippedWarning

__all__ = ["InterventionHandle", "attach_interventions"]

logger = logging.getLogger("asa_format.runtime")


@dataclass(frozen=True)
class _Binding:
    """What check_compatibility reads of a bundle: the binding and the highest block."""

    model: Any
    layer: Any


@dataclass(frozen=True)
class _Layer:
    index: int


@dataclass(frozen=True)
class _BundleView:
    manifest: _Binding


class _State:
    """Per thread: the evidence of the current call, its classification, and the condition
    decisions of the thread's latest prefill.

    A pass is classified by what it carries (:mod:`asa_format.runtime.classify`),
    never by an argument's name. An unclassifiable pass is not steered and is
    reported once (``SteeringSkippedWarning``).
    """

    def __init__(self, signature: inspect.Signature | None) -> None:
        self.signature = signature
        self._local = threading.local()
        self._reported: set[str] = set()
        self._lock = threading.Lock()
        self.skipped = 0

    @property
    def fires(self) -> dict[str, np.ndarray]:  # condition intervention -> per-row decision
        value: dict[str, np.ndarray] | None = getattr(self._local, "fires", None)
        if value is None:
            value = {}
            self._local.fires = value
        return value

    @property
    def pending(self) -> dict[str, list[list[float]]]:
        value: dict[str, list[list[float]]] | None = getattr(self._local, "pending", None)
        if value is None:
            value = {}
            self._local.pending = value
        return value

    def pre_forward(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._local.evidence = gather(self.signature, args, kwargs)
        self._local.info = None

    def post_forward(self, *_: Any) -> None:
        self._local.evidence = None
        self._local.info = None

    def classify(self, hidden: torch.Tensor) -> PassInfo:
        """The kind of the current pass (computed at the first steered block it reaches)."""
        ev: CallEvidence | None = getattr(self._local, "evidence", None)
        if ev is None:
            return PassInfo(
                PassKind.SKIP, reason="a steered block was called outside the model's forward"
            )
        info: PassInfo | None = getattr(self._local, "info", None)
        if info is None:
            info = classify(ev, batch=hidden.shape[0], query=hidden.shape[1], known_cache=True)
            if info.kind is PassKind.PREFILL:
                self._local.fires = {}
                self._local.pending = {}
            self._local.info = info
        return info

    def real(self, hidden: torch.Tensor, info: PassInfo) -> torch.Tensor:
        """``[B, S]`` bool: the real positions of this pass's ``S`` positions."""
        ev: CallEvidence | None = getattr(self._local, "evidence", None)
        mask = None if ev is None else ev.attention_mask
        return real_token_mask(mask, hidden.shape[0], hidden.shape[1], hidden.device, info.past)

    def skip(self, reason: str) -> None:
        with self._lock:
            self.skipped += 1
            first = reason not in self._reported
            self._reported.add(reason)
        if first:
            message = f"a forward pass was not steered: {reason} (spec section 3.7.2)"
            logger.warning(message)
            warnings.warn(message, SteeringSkippedWarning, stacklevel=3)


def _last_real(real: torch.Tensor) -> torch.Tensor:
    """Index of the last real position per row (the last position if none is real)."""
    s = real.shape[1]
    idx = torch.arange(s, device=real.device).expand_as(real)
    last = torch.where(real, idx, torch.full_like(idx, -1)).max(dim=1).values
    return torch.where(last < 0, torch.full_like(last, s - 1), last)


class _BlockHook:
    """Every always/condition intervention that steers or conditions one block."""

    def __init__(self, block: int, state: _State) -> None:
        self.block = block
        self.state = state
        self.adds: list[
            tuple[LoadedIntervention, np.ndarray]
        ] = []  # float32 coefficient x direction
        self.conditions: list[tuple[LoadedIntervention, np.ndarray]] = []
        self._cache: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def _delta(self, i: int, ref: torch.Tensor) -> torch.Tensor:
        key = (i, ref.device, ref.dtype)
        t = self._cache.get(key)
        if t is None:
            t = torch.from_numpy(self.adds[i][1].copy()).to(device=ref.device, dtype=ref.dtype)
            self._cache[key] = t
        return t

    def __call__(self, _module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            raise DecisionError(
                f"block {self.block} returned {type(hidden).__name__}, expected a [batch, seq, hidden] tensor",
                code="DECISION_FAILED",
            )
        state = self.state
        info = state.classify(hidden)
        if info.kind is PassKind.SKIP:
            state.skip(info.reason)
            return output
        prefill = info.kind is PassKind.PREFILL
        real = state.real(hidden, info)
        if prefill:
            for iv, cond in self.conditions:
                self._condition(iv, cond, hidden, real)
        out = hidden
        for i, (iv, _) in enumerate(self.adds):
            where = self._positions(iv, real, hidden, prefill)
            if where is None:
                continue
            out = (
                out + where.unsqueeze(-1).to(out.dtype) * self._delta(i, out)
                if not bool(where.all())
                else out + self._delta(i, out)
            )
        if out is hidden:
            return output
        return (out, *output[1:]) if isinstance(output, tuple) else out

    def _condition(
        self, iv: LoadedIntervention, cond: np.ndarray, hidden: torch.Tensor, real: torch.Tensor
    ) -> None:
        gate = iv.spec.condition
        assert gate is not None
        h = hidden.detach().to(torch.float64)
        if gate.aggregate == "mean":
            rows = []
            for r in range(h.shape[0]):
                m = real[r] if bool(real[r].any()) else torch.ones_like(real[r])
                rows.append(h[r][m].mean(dim=0))
            agg = torch.stack(rows)
        else:
            agg = h[torch.arange(h.shape[0]), _last_real(real)]
        sims = [condition_similarity(row, cond) for row in agg.cpu().numpy()]
        pending = self.state.pending.setdefault(iv.name, [[] for _ in sims])
        for r, s in enumerate(sims):
            pending[r].append(s)
        if len(pending[0]) == len(gate.blocks):
            self.state.fires[iv.name] = np.array([condition_fires(p, gate) for p in pending])

    def _positions(
        self, iv: LoadedIntervention, real: torch.Tensor, hidden: torch.Tensor, prefill: bool
    ) -> torch.Tensor | None:
        state = self.state
        rows = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        if iv.spec.condition is not None:
            fires = state.fires.get(iv.name)
            if fires is None:
                raise DecisionError(
                    f"intervention {iv.name!r}: no condition decision for this generation",
                    code="DECISION_FAILED",
                    hint="start with a prefill pass",
                )
            if fires.shape[0] != hidden.shape[0]:
                raise DecisionError(
                    f"intervention {iv.name!r}: the batch has {hidden.shape[0]} rows, the prefill had {fires.shape[0]}",
                    code="DECISION_FAILED",
                    hint="do not add or drop rows during a generation",
                )
            rows = torch.from_numpy(fires).to(hidden.device)
            if not bool(rows.any()):
                return None
        policy = iv.spec.policy
        if policy == C.POLICY_ALL_TOKENS or (policy == C.POLICY_GENERATED_TOKENS and not prefill):
            where = real
        elif not prefill:  # prefill_last_token: nothing in decode steps
            return None
        else:  # the decision position only
            where = torch.zeros_like(real)
            where[torch.arange(real.shape[0], device=real.device), _last_real(real)] = True
        return where & rows.unsqueeze(1)


class InterventionHandle:
    """Hooks of one attached bundle; ``remove()`` (or leaving the ``with``) detaches them."""

    def __init__(
        self,
        bundle: InterventionBundle,
        hooks: list[RemovableHandle],
        asa_handle: Any,
        state: _State,
    ) -> None:
        self.bundle = bundle
        self._hooks = hooks
        self.asa = asa_handle
        self._state = state

    @property
    def condition_decisions(self) -> dict[str, list[bool]]:
        """Per condition intervention, whether it steers each row of the last generation."""
        return {k: [bool(x) for x in v] for k, v in self._state.fires.items()}

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.asa is not None:
            self.asa.remove()
            self.asa = None

    def __enter__(self) -> InterventionHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def attach_interventions(
    model: Any,
    bundle_or_path: InterventionBundle | str | os.PathLike[str],
    *,
    layers_path: str | None = None,
    strict_model_match: bool = True,
    expected_digest: str | None = None,
    trusted_keys: Sequence[Any] | None = None,
) -> InterventionHandle:
    """Attach every intervention of a bundle; every check runs before any hook exists."""
    bundle = (
        bundle_or_path
        if isinstance(bundle_or_path, InterventionBundle)
        else load_interventions(
            bundle_or_path, expected_digest=expected_digest, trusted_keys=trusted_keys
        )
    )
    layers = resolve_layers(model, layers_path)
    steered = [iv for iv in bundle.interventions if iv.kind != C.GATE_ASA]
    blocks = sorted(
        {b for iv in steered for b in iv.directions} | {b for iv in steered for b in iv.conditions}
    )
    if blocks:
        view = _BundleView(_Binding(bundle.manifest.model, _Layer(blocks[-1])))
        check_compatibility(model, view, layers, strict_model_match=strict_model_match)  # type: ignore[arg-type]
    try:
        signature: inspect.Signature | None = inspect.signature(model.forward)
    except (TypeError, ValueError):
        signature = None
    state = _State(signature)
    per_block: dict[int, _BlockHook] = {}
    for iv in steered:
        for b, vec in sorted(iv.conditions.items()):
            per_block.setdefault(b, _BlockHook(b, state)).conditions.append((iv, vec))
        coef = np.float32(iv.spec.coefficient)
        for b, vec in sorted(iv.directions.items()):
            per_block.setdefault(b, _BlockHook(b, state)).adds.append(
                (iv, (vec * coef).astype(np.float32))
            )
    hooks: list[RemovableHandle] = []
    asa_handle = None
    try:
        if per_block:
            hooks.append(model.register_forward_pre_hook(state.pre_forward, with_kwargs=True))
            hooks.append(model.register_forward_hook(state.post_forward, always_call=True))
            for b, hook in sorted(per_block.items()):
                hooks.append(layers.layers[b].register_forward_hook(hook))
        if bundle.asa is not None:
            from asa_format.runtime.handle import attach

            asa_handle = attach(
                model, bundle.asa, layers_path=layers_path, strict_model_match=strict_model_match
            )
    except BaseException:
        for h in hooks:
            h.remove()
        raise
    if (
        not per_block and bundle.asa is None
    ):  # pragma: no cover - a valid bundle has an intervention
        raise RuntimeCompatError("the bundle has no intervention", code="LAYER_MISSING")
    logger.info(
        "attached %d intervention(s) on blocks %s of %s",
        len(bundle.interventions),
        sorted(per_block),
        layers.path,
    )
    return InterventionHandle(bundle, hooks, asa_handle, state)
