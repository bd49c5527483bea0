"""``attach``: put one or several bundles, of any kind, on a transformers causal LM.

Every bundle kind applies through the same hooks: ``always`` control
vectors, ``condition`` gates and the ``asa`` decision (one hook per decoder
block, whatever the number of bundles). Every check (bundle integrity and
trust, model compatibility, layer resolution, finite deltas) runs before any
hook is registered: a refused bundle or an incompatible model leaves the
model untouched.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.hooks import RemovableHandle

from asa_format import constants as C
from asa_format.errors import DigestMismatchError, UsageError
from asa_format.runtime._types import BundleLike
from asa_format.runtime.block_output import check_block_output
from asa_format.runtime.compat import check_compatibility
from asa_format.runtime.layers import ResolvedLayers, resolve_layers
from asa_format.runtime.program import Program
from asa_format.runtime.records import GenerationRecord, RecordLog
from asa_format.runtime.steering import DecisionCallback, Entry, Steerer

__all__ = ["SteeringHandle", "attach"]

logger = logging.getLogger("asa_format.runtime")

ON_UNCLASSIFIED = ("warn", "raise")
_DEFAULT = "default"  # the entry name of a handle made from one bundle

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


class SteeringHandle:
    """Steering attached to a model. Also a context manager: leaving it removes the hooks.

    ``records`` holds the last ``max_records`` :class:`GenerationRecord` objects
    (one per prefill), ``last`` the most recent one. ``skipped`` counts the
    block passes that could not be classified and were left alone.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: ResolvedLayers,
        steerer: Steerer,
        hooks: list[RemovableHandle],
        max_records: int,
    ) -> None:
        self.model = model
        self.layers = layers
        self._steerer = steerer
        self._hooks = hooks
        self._max_records = max_records
        self._lock = threading.Lock()

    # -- what is attached -------------------------------------------------------------
    @property
    def bundles(self) -> dict[str, BundleLike]:
        return {name: e.bundle for name, e in self._steerer.entries.items()}

    def _only(self) -> Entry:
        entries = self._steerer.entries
        if len(entries) != 1:
            raise UsageError(
                "this handle holds several bundles",
                hint="use handle.bundles[name] / handle.entry(name)",
            )
        return next(iter(entries.values()))

    @property
    def bundle(self) -> BundleLike:
        return self._only().bundle

    @property
    def layer_index(self) -> int:
        return self._only().block

    @property
    def layer_path(self) -> str:
        return f"{self.layers.path}.{self.layer_index}"

    @property
    def policy(self) -> str:
        return self._only().policy

    @property
    def alpha(self) -> float:
        return self._only().alpha

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    @property
    def skipped(self) -> int:
        return self._steerer.skipped

    @property
    def blocks(self) -> list[int]:
        """Every decoder block a hook of this handle reads or steers."""
        return sorted(self._steerer.by_block)

    @property
    def condition_decisions(self) -> dict[str, list[bool]]:
        """Per condition intervention, whether it steers each row of the last generation."""
        last = self.last
        out: dict[str, list[bool]] = {}
        if last is None:
            return out
        for name in last.bundles:
            program = None if name is None else self._steerer.entries[name].program
            for iv, kind in program.kinds.items() if program is not None else ():
                if kind == C.GATE_CONDITION:
                    out.setdefault(iv, [])
        for outcomes in last.interventions:
            for iv in out:
                out[iv].append(bool(outcomes and outcomes.get(iv)))
        return out

    # -- records ----------------------------------------------------------------------
    @property
    def records(self) -> deque[GenerationRecord]:
        """A copy of the recorded generations, oldest first (bounded by ``max_records``)."""
        return deque(self._steerer.log.snapshot(), maxlen=self._max_records)

    @property
    def last(self) -> GenerationRecord | None:
        return self._steerer.log.last

    def clear_records(self) -> None:
        self._steerer.log.clear()

    # -- per-request selection --------------------------------------------------------
    @contextlib.contextmanager
    def select(self, rows: str | Sequence[str | None] | None) -> Iterator[None]:
        """Choose the bundle of each row for the generations started in this block.

        ``rows`` is one bundle name (or ``None``: no steering) for every row, or
        one entry per prompt row. The choice is held in a context variable: it
        applies to this thread (and task) only, is taken when a generation's
        prefill runs, and stays with that generation.
        """
        if not isinstance(rows, (str, type(None))):
            if not isinstance(rows, Sequence) or isinstance(rows, (bytes, bytearray)):
                raise UsageError(
                    f"select() takes a bundle name, None, or a sequence of them (one per row), "
                    f"got {type(rows).__name__}",
                    hint=f"choose from {', '.join(sorted(self._steerer.entries))} (or None)",
                )
            rows = tuple(rows)
            if not rows:
                raise UsageError("the selection is empty", hint="give one name per row")
            bad = [r for r in rows if r is not None and not isinstance(r, str)]
            if bad:
                raise UsageError(
                    f"a row's selection must be a bundle name or None, got {type(bad[0]).__name__}",
                    hint=f"choose from {', '.join(sorted(self._steerer.entries))} (or None)",
                )
        for name in (rows,) if isinstance(rows, (str, type(None))) else rows:
            if name is not None and name not in self._steerer.entries:
                raise UsageError(
                    f"no bundle named {name!r} is attached",
                    hint=f"choose one of {', '.join(sorted(self._steerer.entries))} (or None)",
                )
        token = self._steerer.selection.set(rows)
        try:
            yield
        finally:
            self._steerer.selection.reset(token)

    # -- lifetime ---------------------------------------------------------------------
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
            self._steerer.lineage.forget()
            for block in self._steerer.by_block:
                _mark_active(self.layers.layers[block], -1)
        logger.info("steering removed from %s", self.layers.path)

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        parts = ", ".join(
            f"{n}: {self.layers.path}.{e.block} {e.policy} alpha={e.alpha}"
            for n, e in self._steerer.entries.items()
        )
        return f"SteeringHandle({parts}, {state})"


def _load(bundle_or_path: Any, expected_digest: str | None, trusted_keys: Any) -> BundleLike:
    if isinstance(bundle_or_path, (str, os.PathLike)):
        from asa_format import load_bundle

        return load_bundle(
            bundle_or_path if isinstance(bundle_or_path, str) else Path(bundle_or_path),
            verify=True,
            expected_digest=expected_digest,
            trusted_keys=trusted_keys,
        )
    if trusted_keys is not None:
        raise UsageError(
            "trusted_keys applies when attach() loads the bundle from a path",
            hint="pass the bundle path, or load it with load_bundle(path, trusted_keys=...)",
        )
    from asa_format.bundle import Bundle

    if not isinstance(bundle_or_path, Bundle):  # a duck-typed asa bundle (a wrapper, a test)
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
    result: BundleLike = bundle_or_path
    return result


def _decider(bundle: BundleLike) -> Any:
    """The bundle's proven torch decision, or None (duck-typed bundles decide themselves)."""
    from asa_format.bundle import Bundle
    from asa_format.runtime.torch_decide import TorchDecider

    if type(bundle) is not Bundle:  # a wrapper may override decide(): respect it
        return None
    if not bundle.has_asa:
        return None
    return TorchDecider.for_bundle(bundle)


def _has_asa(bundle: Any) -> bool:
    """Whether a bundle has an asa intervention (a duck-typed asa bundle has)."""
    return bool(getattr(bundle, "has_asa", True))


def _model_dtype(model: nn.Module) -> str:
    """The name of the model's floating dtype (its first floating parameter's)."""
    for param in model.parameters():
        if param.is_floating_point():
            return str(param.dtype).replace("torch.", "")
    return "float32"


def _forward_signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


def attach(
    model: nn.Module,
    bundle_or_path: Any = None,
    *,
    bundles: Mapping[str, Any] | None = None,
    default: str | None = None,
    policy: str | None = None,
    alpha: float | None = None,
    layers_path: str | None = None,
    strict_model_match: bool = True,
    expected_digest: str | None = None,
    trusted_keys: Any = None,
    on_decision: DecisionCallback | None = None,
    max_records: int = 1024,
    on_unclassified: str = "warn",
    self_test: bool = False,
    device_decisions: bool = True,
) -> SteeringHandle:
    """Attach a bundle (or several) to ``model`` (any transformers causal LM).

    Every bundle kind applies: ``always`` control vectors, ``condition``
    gates and the ``asa`` decision, each intervention on its own blocks, one
    hook per decoder block whatever the number of bundles. Gates (asa and
    condition) are decided per generation at its prefill and kept with it.
    ``bundle_or_path`` is a loaded bundle or a bundle directory (loaded with
    ``load_bundle(verify=True, expected_digest=..., trusted_keys=...)``).
    ``bundles`` instead maps names to bundles or paths; each row of a batch is
    then steered by the bundle chosen with :meth:`SteeringHandle.select`
    (``default`` when nothing is selected; no steering when that is None).
    ``policy`` overrides every intervention's policy, ``alpha`` the asa
    interventions' strength. A forward pass
    that cannot be classified is not steered and a warning says why;
    ``on_unclassified="raise"`` makes it a :class:`DecisionError`.
    ``device_decisions`` (default) decides with the bundle's graphs evaluated in
    torch on the hidden states' device when that evaluation is proven equal to
    onnxruntime on load (:mod:`asa_format.runtime.torch_decide`); otherwise, or
    when False, ``bundle.decide`` decides on the host.
    ``self_test=True`` runs a short generation through the real hooks and
    checks the steered passes, positions and decisions before returning
    (:mod:`asa_format.runtime.selftest`); on a mismatch the hooks are removed
    and the error raised.
    """
    if (bundle_or_path is None) == (bundles is None):
        raise UsageError(
            "attach() takes either one bundle or a bundles= mapping",
            hint="attach(model, path) or attach(model, bundles={'name': path, ...})",
        )
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"attach() needs a torch.nn.Module (a transformers causal LM), got {type(model).__name__}",
            hint="load the model with transformers' AutoModelForCausalLM.from_pretrained(...)",
        )
    if on_unclassified not in ON_UNCLASSIFIED:
        raise UsageError(
            f"on_unclassified must be one of {', '.join(ON_UNCLASSIFIED)}, got {on_unclassified!r}"
        )
    if policy is not None and policy not in C.POLICIES:
        raise UsageError(
            f"unknown injection policy {policy!r}", hint=f"use one of {', '.join(C.POLICIES)}"
        )
    if alpha is not None and (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float, np.floating, np.integer))
        or not np.isfinite(float(alpha))
    ):
        raise UsageError(f"alpha must be a finite number, got {alpha!r}")
    if isinstance(max_records, bool) or not isinstance(max_records, (int, np.integer)):
        raise UsageError(f"max_records must be an integer, got {max_records!r}")
    if int(max_records) < 1:
        raise UsageError(f"max_records must be at least 1, got {max_records!r}")
    if layers_path is not None and not isinstance(layers_path, str):
        raise UsageError(f"layers_path must be a string, got {type(layers_path).__name__}")

    sources: dict[str, Any]
    if bundles is not None:
        if not isinstance(bundles, Mapping):
            raise UsageError(
                f"bundles= must map names to bundles or paths, got {type(bundles).__name__}",
                hint="attach(model, bundles={'name': 'path/to/bundle', ...})",
            )
        if not bundles:
            raise UsageError("bundles= is empty", hint="map at least one name to a bundle")
        bad = [k for k in bundles if not isinstance(k, str) or not k]
        if bad:
            raise UsageError(
                f"bundle names must be non-empty strings, got {bad[0]!r}",
                hint="attach(model, bundles={'name': 'path/to/bundle', ...})",
            )
        if expected_digest is not None:
            raise UsageError(
                "expected_digest applies to one bundle",
                hint="check each bundle's digest with load_bundle(path, expected_digest=...)",
            )
        sources = dict(bundles)
        if default is not None and default not in sources:
            raise UsageError(f"default={default!r} is not one of the bundles' names")
        chosen_default = default
    else:
        sources = {_DEFAULT: bundle_or_path}
        chosen_default = _DEFAULT
    loaded = {str(name): _load(src, expected_digest, trusted_keys) for name, src in sources.items()}

    layers = resolve_layers(model, layers_path)
    dtype = _model_dtype(model)
    entries: dict[str, Entry] = {}
    for name, bundle in loaded.items():
        check_compatibility(model, bundle, layers, strict_model_match=strict_model_match)
        program = Program(bundle, policy=policy, alpha=alpha if _has_asa(bundle) else None)
        program.check_finite(dtype)
        entries[name] = Entry(
            name=name,
            bundle=bundle,
            program=program,
            hidden_size=int(bundle.manifest.model.hidden_size),
            decider=_decider(bundle) if device_decisions and _has_asa(bundle) else None,
        )
    if alpha is not None and not any(_has_asa(b) for b in loaded.values()):
        raise UsageError(
            "alpha= sets the strength of an asa intervention, and no attached bundle has one",
            hint="scale always/condition interventions by their coefficients instead",
        )

    # Probe each steered block once (a tiny forward that stops there) and refuse any output
    # layout but one [batch, sequence, hidden] state before any hook is registered.
    sizes: dict[int, int] = {}
    for e in entries.values():
        for index in e.program.blocks:
            sizes.setdefault(index, e.hidden_size)
    for index in sorted(sizes):
        check_block_output(model, layers, index, hidden_size=sizes[index])

    steerer = Steerer(
        entries,
        default=chosen_default,
        log=RecordLog(max_records),
        on_decision=on_decision,
        forward_signature=_forward_signature(model),
        on_unclassified=on_unclassified,
    )
    blocks = sorted(steerer.by_block)
    hooks: list[RemovableHandle] = []
    try:
        hooks.append(model.register_forward_pre_hook(steerer.pre_forward, with_kwargs=True))
        hooks.append(
            model.register_forward_hook(steerer.post_forward, with_kwargs=True, always_call=True)
        )
        for index in blocks:
            hooks.append(
                layers.layers[index].register_forward_hook(
                    lambda module, args, output, i=index: steerer.on_block(i, output)
                )
            )
    except BaseException:
        for hook in hooks:
            hook.remove()
        raise
    for index in blocks:
        if _mark_active(layers.layers[index], +1) > 1:
            logger.warning(
                "%s.%d is already steered by another active handle: the deltas will add up",
                layers.path,
                index,
            )
    handle = SteeringHandle(model, layers, steerer, hooks, int(max_records))
    logger.info("steering attached to %s (%s)", type(model).__name__, handle)
    if self_test:
        from asa_format.runtime.selftest import run_self_test

        try:
            run_self_test(handle)
        except BaseException:
            handle.remove()
            raise
    return handle
