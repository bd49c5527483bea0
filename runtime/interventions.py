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
(attention mask) of every forward pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from asa_format import constants as C
from asa_format.errors import DecisionError, RuntimeCompatError
from asa_format.intervention_bundle import (
    InterventionBundle,
    LoadedIntervention,
    load_interventions,
)
from asa_format.interventions import condition_fires, condition_similarity
from asa_format.runtime.compat import check_compatibility
from asa_format.runtime.layers import resolve_layers

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
    """Per forward pass: which positions are real, and whether this is a prefill."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.prefill = True
        self.fires: dict[str, np.ndarray] = {}  # condition intervention -> per-row decision
        self.pending: dict[str, list[list[float]]] = {}

    def pre_forward(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 renames it
        if cache is None:
            self.prefill = True
        elif hasattr(cache, "get_seq_length"):
            self.prefill = int(cache.get_seq_length()) == 0
        else:
            raise DecisionError(
                f"cannot tell a prefill from a decode step: past_key_values is a {type(cache).__name__}",
                code="DECISION_FAILED",
                hint="use a transformers Cache object (the default of generate)",
            )
        if self.prefill:
            self.fires = {}
            self.pending = {}

    def real(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` bool: the real positions of this step's ``S`` positions."""
        b, s = hidden.shape[0], hidden.shape[1]
        if self.mask is None or self.mask.shape[0] != b or self.mask.shape[1] < s:
            return torch.ones((b, s), dtype=torch.bool, device=hidden.device)
        return (self.mask[:, -s:] != 0).to(hidden.device)


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
        self.adds: list[tuple[LoadedIntervention, np.ndarray]] = []  # float32 coefficient x direction
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
            raise DecisionError(f"block {self.block} returned {type(hidden).__name__}, expected a [batch, seq, hidden] tensor", code="DECISION_FAILED")
        state = self.state
        real = state.real(hidden)
        if state.prefill:
            for iv, cond in self.conditions:
                self._condition(iv, cond, hidden, real)
        out = hidden
        for i, (iv, _) in enumerate(self.adds):
            where = self._positions(iv, real, hidden)
            if where is None:
                continue
            out = out + where.unsqueeze(-1).to(out.dtype) * self._delta(i, out) if not bool(where.all()) else out + self._delta(i, out)
        if out is hidden:
            return output
        return (out, *output[1:]) if isinstance(output, tuple) else out

    def _condition(self, iv: LoadedIntervention, cond: np.ndarray, hidden: torch.Tensor, real: torch.Tensor) -> None:
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

    def _positions(self, iv: LoadedIntervention, real: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor | None:
        state = self.state
        rows = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        if iv.spec.condition is not None:
            fires = state.fires.get(iv.name)
            if fires is None:
                raise DecisionError(f"intervention {iv.name!r}: no condition decision for this generation", code="DECISION_FAILED", hint="start with a prefill pass")
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
        if policy == C.POLICY_ALL_TOKENS or (policy == C.POLICY_GENERATED_TOKENS and not state.prefill):
            where = real
        elif not state.prefill:  # prefill_last_token: nothing in decode steps
            return None
        else:  # the decision position only
            where = torch.zeros_like(real)
            where[torch.arange(real.shape[0], device=real.device), _last_real(real)] = True
        return where & rows.unsqueeze(1)


class InterventionHandle:
    """Hooks of one attached bundle; ``remove()`` (or leaving the ``with``) detaches them."""

    def __init__(self, bundle: InterventionBundle, hooks: list[RemovableHandle], asa_handle: Any, state: _State) -> None:
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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
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
    bundle = bundle_or_path if isinstance(bundle_or_path, InterventionBundle) else load_interventions(
        bundle_or_path, expected_digest=expected_digest, trusted_keys=trusted_keys
    )
    layers = resolve_layers(model, layers_path)
    steered = [iv for iv in bundle.interventions if iv.kind != C.GATE_ASA]
    blocks = sorted({b for iv in steered for b in iv.directions} | {b for iv in steered for b in iv.conditions})
    if blocks:
        view = _BundleView(_Binding(bundle.manifest.model, _Layer(blocks[-1])))
        check_compatibility(model, view, layers, strict_model_match=strict_model_match)  # type: ignore[arg-type]
    state = _State()
    per_block: dict[int, _BlockHook] = {}
    for iv in steered:
        for b, vec in sorted(iv.conditions.items()):
            per_block.setdefault(b, _BlockHook(b, state)).conditions.append((iv, vec))
        coef = np.float32(iv.spec.coefficient)
        for b, vec in sorted(iv.directions.items()):
            per_block.setdefault(b, _BlockHook(b, state)).adds.append((iv, (vec * coef).astype(np.float32)))
    hooks: list[RemovableHandle] = []
    asa_handle = None
    try:
        if per_block:
            hooks.append(model.register_forward_pre_hook(state.pre_forward, with_kwargs=True))
            for b, hook in sorted(per_block.items()):
                hooks.append(layers.layers[b].register_forward_hook(hook))
        if bundle.asa is not None:
            from asa_format.runtime.handle import attach

            asa_handle = attach(model, bundle.asa, layers_path=layers_path, strict_model_match=strict_model_match)
    except BaseException:
        for h in hooks:
            h.remove()
        raise
    if not per_block and bundle.asa is None:  # pragma: no cover - a valid bundle has an intervention
        raise RuntimeCompatError("the bundle has no intervention", code="LAYER_MISSING")
    logger.info("attached %d intervention(s) on blocks %s of %s", len(bundle.interventions), sorted(per_block), layers.path)
    return InterventionHandle(bundle, hooks, asa_handle, state)
