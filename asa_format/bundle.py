"""A loaded bundle: its interventions, the decision function and the steering vectors.

``load_bundle`` reads and checks every file (``reader.read_bundle_dir``) of
any bundle (format 1.0 or 1.1, with or without an asa intervention) and
returns one :class:`Bundle` type. ``Bundle.interventions`` lists every
intervention in manifest order (spec 14.1: a 1.0 bundle is one ``asa``
intervention). Where the bundle has an asa intervention, its onnxruntime
sessions were created once, from the checked bytes; ``Bundle.decide``
implements the spec's decision function (section 4),
``Bundle.steering_vector`` its mixing rule. Both refuse a bundle without an
asa intervention (``NOT_AN_ASA_BUNDLE``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.argcheck import (
    bool_arg,
    digest_arg,
    key_sources_arg,
    optional_path_arg,
    path_arg,
)
from asa_format.errors import AsaError, BundleError, DecisionError, DigestMismatchError, UsageError
from asa_format.format.contents import BundleContents, contents_of
from asa_format.format.digest import root_digest
from asa_format.format.interventions import Intervention, LoadedIntervention, tensor_name
from asa_format.format.manifest import AsaManifest, Manifest
from asa_format.gating import gate_of, gates
from asa_format.graphs.fastpath import FastPlan, build_plan, check_inputs
from asa_format.storage.reader import read_bundle_dir

__all__ = [
    "GENERIC_MARGIN",
    "Bundle",
    "Decision",
    "DecisionBatch",
    "load_bundle",
    "read_bundle_contents",
]

# Margin (on probabilities) within which a row of an onnxruntime batch is decided again
# alone, for graphs whose rounding error has no proven bound (not a linear classifier).
GENERIC_MARGIN = 1e-6


@dataclass(frozen=True)
class Decision:
    """The decision for one row: routed domain, tool probability and gate."""

    domain: str
    domain_index: int
    probability: float
    gate: int  # -1, 0 or +1


@dataclass(frozen=True)
class DecisionBatch:
    """Decisions for ``N`` rows, as arrays; iterate or index for :class:`Decision`."""

    domains: tuple[str, ...]
    domain_index: np.ndarray  # int64 [N]
    probability: np.ndarray  # float64 [N]
    gate: np.ndarray  # int8 [N]

    def __len__(self) -> int:
        return int(self.domain_index.shape[0])

    def __getitem__(self, i: int) -> Decision:
        d = int(self.domain_index[i])
        return Decision(self.domains[d], d, float(self.probability[i]), int(self.gate[i]))

    def __iter__(self) -> Iterator[Decision]:
        for i in range(len(self)):
            yield self[i]

    @property
    def domain(self) -> list[str]:
        return [self.domains[int(d)] for d in self.domain_index]

    @classmethod
    def _one(cls, domains: tuple[str, ...], d: int, p: float, g: int) -> DecisionBatch:
        """One row, without the frozen dataclass's per-field ``object.__setattr__`` calls."""
        batch = object.__new__(cls)
        batch.__dict__.update(
            domains=domains,
            domain_index=np.array([d], dtype=np.int64),
            probability=np.array([p], dtype=np.float64),
            gate=np.array([g], dtype=np.int8),
        )
        return batch


class Bundle:
    """A verified bundle held in memory: every intervention, and the asa part's decision.

    ``interventions`` lists every intervention in manifest order (a
    :class:`~asa_format.format.interventions.LoadedIntervention`: ``name``,
    ``kind``, ``spec``, and the vectors of ``always``/``condition`` ones);
    ``bundle[name]`` finds one. ``has_asa`` says whether the bundle has an
    asa intervention; ``decide``, ``steering_vector`` and ``domains`` belong
    to it.
    """

    def __init__(
        self,
        manifest: Manifest,
        manifest_bytes: bytes,
        vectors: dict[str, np.ndarray],
        sessions: dict[str, Any],
        path: Path | None = None,
        models: dict[str, Any] | None = None,
        fast: bool = True,
        graph_bytes: dict[str, bytes] | None = None,
        interventions: Sequence[LoadedIntervention] | None = None,
        card: str | None = None,
    ) -> None:
        self.manifest = manifest
        self.graph_bytes: dict[str, bytes] = dict(graph_bytes or {})  # file name -> checked bytes
        self.manifest_bytes = manifest_bytes
        self.vectors = vectors
        self.path = path
        self.card = card
        self.interventions: list[LoadedIntervention] = (
            list(interventions)
            if interventions is not None
            else [LoadedIntervention(Intervention(name=C.GATE_ASA, kind=C.GATE_ASA), {}, {})]
        )
        self._sessions = sessions
        self.domains: list[str] = manifest.domain_names
        self.hidden_size = manifest.model.hidden_size
        self._probe_files: list[str | None] = [d.probe for d in manifest.domains]
        self._mixed: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._plan: FastPlan | None = None  # the NumPy evaluator, when used
        self._structure: FastPlan | None = (
            None  # the proven linear structure (error bounds), if any
        )
        self._domains_tuple = tuple(self.domains)
        if models is not None and self.has_asa:
            plan = build_plan(models, self._probe_files, self.hidden_size)
            if plan is not None and self._plan_agrees(plan):
                self._structure = plan
                self._plan = plan if fast else None
        self._single_row = self._plan is not None

    # -- the interventions ---------------------------------------------------------
    @property
    def has_asa(self) -> bool:
        """Whether the bundle has an asa intervention (every 1.0 bundle has)."""
        return isinstance(self.manifest, AsaManifest)

    @property
    def asa(self) -> Bundle | None:
        """The bundle itself when it has an asa intervention, else None."""
        return self if self.has_asa else None

    @property
    def kinds(self) -> list[str]:
        """The gate kind of every intervention, in manifest order."""
        return [iv.kind for iv in self.interventions]

    @property
    def blocks(self) -> list[int]:
        """Every decoder block an intervention steers or reads, ascending."""
        out: set[int] = set()
        for iv in self.interventions:
            if iv.kind == C.GATE_ASA:
                assert self.manifest.layer is not None
                out.add(int(self.manifest.layer.index))
            else:
                out.update(iv.spec.blocks)
                if iv.spec.condition is not None:
                    out.update(iv.spec.condition.blocks)
        return sorted(out)

    def __getitem__(self, name: str) -> LoadedIntervention:
        for iv in self.interventions:
            if iv.name == name:
                return iv
        raise KeyError(name)

    @property
    def _steering(self) -> Any:
        steering = self.manifest.steering
        assert steering is not None  # only the asa part's methods read it, after _require_asa
        return steering

    def _require_asa(self, what: str) -> None:
        if not self.has_asa:
            raise BundleError(
                f"{what} needs an asa intervention; this bundle has "
                f"{', '.join(f'{iv.name} ({iv.kind})' for iv in self.interventions)}",
                code="NOT_AN_ASA_BUNDLE",
                file=C.MANIFEST_FILE,
                hint="its interventions apply with asa_format.runtime.attach; "
                "bundle.interventions lists them",
            )

    @property
    def decision_backend(self) -> str:
        """``"numpy"`` when the checked fast path is used, else ``"onnxruntime"``."""
        return "numpy" if self._plan is not None else "onnxruntime"

    def _plan_agrees(self, plan: FastPlan) -> bool:
        """A sanity check of the structural match: the plan reproduces onnxruntime on fixed
        inputs (scaler bit for bit; domains, gates and probabilities on rows off the margins)."""
        probe = check_inputs(self.hidden_size)
        tau = self._steering.tau
        no_probe = self._steering.no_probe_probability
        try:
            scaled = self._sessions[C.SCALER_FILE].run([C.SCALER_OUTPUT], {C.SCALER_INPUT: probe})[
                0
            ]
            _, ref_index, ref_prob = self._decide_ort(probe)
            got = plan.evaluate(probe, tau, no_probe)
            fast_scaled = plan.scale(probe)
            ones = [plan.decide_one(probe[i : i + 1], tau) for i in range(min(12, probe.shape[0]))]
        except Exception:
            return False
        if fast_scaled.shape != scaled.shape or not np.array_equal(fast_scaled, scaled):
            return False
        ok = ~got.near
        if not np.array_equal(got.index[ok], ref_index[ok]) or not np.allclose(
            got.probability[ok], ref_prob[ok], rtol=0.0, atol=1e-9
        ):
            return False
        for i, one in enumerate(ones):
            if one is not None:
                pv = no_probe if one[1] is None else one[1]
                if one[0] != int(ref_index[i]) or not abs(pv - float(ref_prob[i])) <= 1e-9:
                    return False
        return True

    def to_contents(self) -> BundleContents:
        """What :func:`~asa_format.storage.writer.save_bundle` needs to write this bundle again.

        ``save_bundle(load_bundle(p).to_contents(), q)`` writes the same bytes
        as ``p``, for every bundle kind; change a field first
        (``dataclasses.replace``) to edit it.
        """
        if self.has_asa and not self.graph_bytes:
            raise UsageError(
                "this Bundle was built without its graph bytes",
                hint="load it with load_bundle() to save it again",
            )
        tensors: dict[str, np.ndarray] = {}
        for iv in self.interventions:
            for b, v in iv.directions.items():
                tensors[tensor_name(iv.name, b)] = v
            for b, v in iv.conditions.items():
                tensors[tensor_name(iv.name, b, C.CONDITION_ROLE)] = v
        return contents_of(self.manifest, self.vectors, self.graph_bytes, tensors, self.card)

    # -- identity ---------------------------------------------------------------
    @property
    def root_digest(self) -> str:
        """``sha256:<hex>`` of the manifest bytes; pins the whole bundle."""
        return root_digest(self.manifest_bytes)

    def __repr__(self) -> str:
        m = self.manifest
        if self.kinds == [C.GATE_ASA] and m.layer is not None:
            return (
                f"Bundle(model={m.model.id!r}, hidden_size={m.model.hidden_size}, "
                f"layer={m.layer.index}, "
                f"domains={self.domains!r}, digest={self.root_digest[:19]}...)"
            )
        parts = ", ".join(f"{iv.name}: {iv.kind}" for iv in self.interventions)
        return (
            f"Bundle(model={m.model.id!r}, hidden_size={m.model.hidden_size}, "
            f"interventions=[{parts}], blocks={self.blocks}, digest={self.root_digest[:19]}...)"
        )

    # -- decision ----------------------------------------------------------------
    def _check_hidden(self, hidden: Any, *, finite: bool = True) -> np.ndarray:
        if (
            type(hidden) is np.ndarray
            and hidden.dtype == np.float32
            and hidden.ndim == 2
            and hidden.shape[1] == self.hidden_size
            and hidden.flags.c_contiguous
        ):  # the common case, checked with attribute reads only
            if finite:
                self._check_finite(hidden)
            return hidden
        arr = np.asarray(hidden)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.hidden_size:
            raise DecisionError(
                f"decide() needs an array of shape [N, {self.hidden_size}], got {list(arr.shape)}",
                code="DECISION_INPUT",
                hint="pass the last-token hidden states of the bundle's layer, one row per prompt",
            )
        if arr.dtype.kind not in "fiu":
            raise DecisionError(
                f"decide() needs a numeric array, got dtype {arr.dtype}", code="DECISION_INPUT"
            )
        h = np.ascontiguousarray(arr, dtype=np.float32)
        if finite:
            self._check_finite(h)
        return h

    @staticmethod
    def _check_finite(h: np.ndarray) -> None:
        if not np.isfinite(h).all():
            raise DecisionError(
                "decide() got NaN or Infinity in the hidden states",
                code="DECISION_INPUT",
                hint="the model produced non-finite activations; check its dtype and inputs",
            )

    def decide(self, hidden: Any) -> DecisionBatch:
        """Decide, per row of ``hidden`` ``[N, H]``, the domain, probability and gate.

        Every row gets the decision it gets alone: rows within the numeric
        margin of a decision boundary are decided by onnxruntime on the row
        alone (spec section 4.9).
        """
        self._require_asa("decide()")
        plan = self._plan
        h = self._check_hidden(hidden, finite=plan is None)
        n = h.shape[0]
        steering = self._steering
        if n == 0:
            return DecisionBatch(
                self._domains_tuple,
                np.zeros(0, np.int64),
                np.zeros(0, np.float64),
                np.zeros(0, np.int8),
            )
        try:
            if plan is not None:
                return self._decide_fast(plan, h)
            scores, index, prob, x64 = self._decide_ort_scaled(h)
            near = self._near_ort(scores, index, prob, x64) if n > 1 else np.zeros(n, dtype=bool)
            gate = gates(prob, steering.tau)
            gate[np.isnan(scores).any(axis=1)] = 0  # no reliable routing: do not steer
            rows = np.flatnonzero(near)
            if rows.size:
                index[rows], prob[rows], gate[rows] = self._decide_alone(h, rows)
        except DecisionError:
            raise
        except Exception as exc:
            raise DecisionError(
                f"evaluating the decision graphs failed: {exc}", code="DECISION_FAILED"
            ) from exc
        return DecisionBatch(self._domains_tuple, index, prob, gate)

    def _decide_fast(self, plan: FastPlan, h: np.ndarray) -> DecisionBatch:
        """The checked NumPy plan; rows near a boundary by onnxruntime on the row alone."""
        steering = self._steering
        if h.shape[0] == 1:
            one = plan.decide_one(h, steering.tau)
            if one is not None:
                d, p, has_nan = one
                pv = steering.no_probe_probability if p is None else p
                g = 0 if has_nan else gate_of(pv, steering.tau)
                return DecisionBatch._one(self._domains_tuple, d, pv, g)
            self._check_finite(h)
            index, prob, gate = self._decide_alone(h, np.array([0]))
            return DecisionBatch(self._domains_tuple, index, prob, gate)
        got = plan.evaluate(h, steering.tau, steering.no_probe_probability)
        index, prob, gate = got.index, got.probability, got.gate
        rows = np.flatnonzero(got.near)
        if rows.size:  # the only rows that can hold NaN or infinity (FastPlan.evaluate)
            self._check_finite(h[rows])
            index[rows], prob[rows], gate[rows] = self._decide_alone(h, rows)
        return DecisionBatch(self._domains_tuple, index, prob, gate)

    def _decide_alone(
        self, h: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference decision of each row in ``rows``: onnxruntime on that row alone."""
        tau = self._steering.tau
        index = np.zeros(rows.size, dtype=np.int64)
        prob = np.zeros(rows.size, dtype=np.float64)
        gate = np.zeros(rows.size, dtype=np.int8)
        for k, i in enumerate(rows):
            scores, d, p = self._decide_ort(h[i : i + 1])
            index[k], prob[k] = d[0], p[0]
            gate[k] = 0 if np.isnan(scores).any() else gate_of(float(p[0]), tau)
        return index, prob, gate

    def _near_ort(
        self, scores: np.ndarray, index: np.ndarray, prob: np.ndarray, x64: np.ndarray
    ) -> np.ndarray:
        """Rows of an onnxruntime batch within the margin of a boundary (decided again alone)."""
        tau = self._steering.tau
        s = self._structure
        with np.errstate(all="ignore"):
            xnorm = np.sqrt(np.einsum("ij,ij->i", x64, x64))
            near = ~np.isfinite(scores).all(axis=1) | ~np.isfinite(xnorm)
            if scores.shape[1] > 1:
                top2 = np.sort(scores, axis=1)[:, -2:]
                margin = (
                    2.0 * s.router.error(xnorm, self.hidden_size)
                    if s is not None
                    else GENERIC_MARGIN
                )
                near |= ~(top2[:, 1] - top2[:, 0] > margin)
            if s is not None and s.router.needs_sum_check:
                near |= ~_sigmoid_sums_ok(s.router, x64)
            for d in np.unique(index):
                if self._probe_files[int(d)] is None:
                    continue
                rows = np.flatnonzero(index == d)
                head = s.probes[int(d)] if s is not None else None
                m = (
                    2.0 * head.error(xnorm[rows], self.hidden_size)
                    if head is not None
                    else GENERIC_MARGIN
                )
                p = prob[rows]
                near[rows] |= ~((np.abs(p - tau) > m) & (np.abs(p - (1.0 - tau)) > m))
                if head is not None and head.needs_sum_check:
                    near[rows] |= ~_sigmoid_sums_ok(head, x64[rows])
        return np.asarray(near, dtype=bool)

    def _decide_ort(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference evaluation with onnxruntime: (router output, domain index, probability)."""
        scores, index, prob, _ = self._decide_ort_scaled(h)
        return scores, index, prob

    def _decide_ort_scaled(
        self, h: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = h.shape[0]
        x = self._sessions[C.SCALER_FILE].run([C.SCALER_OUTPUT], {C.SCALER_INPUT: h})[0]
        x64 = np.ascontiguousarray(x, dtype=np.float64)
        scores = self._sessions[C.ROUTER_FILE].run(
            [C.CLASSIFIER_PROBABILITIES], {C.CLASSIFIER_INPUT: x64}
        )[0]
        index = np.argmax(scores, axis=1).astype(np.int64)
        prob = np.full(n, self._steering.no_probe_probability, dtype=np.float64)
        for d in np.unique(index):
            probe = self._probe_files[int(d)]
            if probe is None:
                continue
            rows = np.flatnonzero(index == d)
            out = self._sessions[probe].run(
                [C.CLASSIFIER_PROBABILITIES], {C.CLASSIFIER_INPUT: x64[rows]}
            )[0]
            prob[rows] = out[:, 1]
        return scores, index, prob, x64

    # -- steering vectors -----------------------------------------------------------
    def domain_index(self, domain: str | int) -> int:
        self._require_asa("a domain")
        if isinstance(domain, (int, np.integer)):
            if not 0 <= int(domain) < len(self.domains):
                raise DecisionError(
                    f"domain index {domain} is out of range 0..{len(self.domains) - 1}",
                    code="DECISION_INPUT",
                )
            return int(domain)
        try:
            return self.domains.index(domain)
        except ValueError:
            raise DecisionError(
                f"unknown domain {domain!r}; the bundle's domains are {self.domains}",
                code="DECISION_INPUT",
            ) from None

    def steering_vector(self, domain: str | int) -> np.ndarray:
        """``v = (1-beta) vec[d] + beta vec[global]``, then ``v / (||v|| + 1e-8)``; float32."""
        self._require_asa("steering_vector()")
        i = self.domain_index(domain)
        with self._lock:
            cached = self._mixed.get(i)
            if cached is None:
                cached = mix_vectors(
                    self.vectors[self.domains[i]],
                    self.vectors[C.GLOBAL_VECTOR],
                    self._steering.beta,
                )
                cached.setflags(write=False)
                self._mixed[i] = cached
        return cached


def _sigmoid_sums_ok(head: Any, x64: np.ndarray) -> np.ndarray:
    """Rows whose ``sigmoid(s0) + sigmoid(s1)`` is at least 1/2 (``LinearHead.needs_sum_check``:
    below, onnxruntime's absolute-accuracy sigmoid makes the quotient depend on the batch)."""
    with np.errstate(all="ignore"):
        t = 1.0 / (1.0 + np.exp(-(x64 @ head.weight + head.bias)))
        out: np.ndarray = t.sum(axis=1) >= 0.5
    return out


def mix_vectors(domain_vec: np.ndarray, global_vec: np.ndarray, beta: float) -> np.ndarray:
    """The spec's mixing rule, in float32 arithmetic."""
    v = np.float32(1.0 - beta) * domain_vec.astype(np.float32) + np.float32(
        beta
    ) * global_vec.astype(np.float32)
    norm = np.float32(np.sqrt(np.dot(v.astype(np.float64), v.astype(np.float64))))
    return (v / (norm + np.float32(C.NORM_EPS))).astype(np.float32)


def check_load_args(
    path: object,
    verify: object,
    expected_digest: object,
    trusted_keys: object,
    signature_path: object,
    **flags: object,
) -> list[Any] | None:
    """The shared arguments of the loaders, checked before anything is read."""
    path_arg(path, "path")
    bool_arg(verify, "verify")
    digest_arg(expected_digest, "expected_digest")
    optional_path_arg(signature_path, "signature_path")
    for name, value in flags.items():
        bool_arg(value, name)
    keys = key_sources_arg(trusted_keys, "trusted_keys")
    if signature_path is not None and keys is None:
        raise UsageError(
            "signature_path is given but trusted_keys is not: the signature would not be checked",
            hint="pass trusted_keys=[...] with signature_path",
        )
    return keys


def read_checked(
    path: str | os.PathLike[str],
    *,
    verify: bool,
    expected_digest: str | None,
    trusted_keys: Sequence[Any] | None,
    signature_path: str | os.PathLike[str] | None,
    keep_models: bool = False,
) -> Any:
    """Read a bundle directory once and run the checks every loader shares.

    The reader's checks, the pinned root digest and, with ``trusted_keys``, the
    signature, verified against the digests of the bytes this read hashed and
    parsed (never a second read). Returns the reader's result; raises the first
    failing check's error, with hints that name keywords (``trusted_keys=``).
    """
    result = read_bundle_dir(path, verify=verify, create_sessions=False, keep_models=keep_models)
    if result.manifest_bytes is not None and expected_digest is not None:
        actual = root_digest(result.manifest_bytes)
        if actual != expected_digest:
            raise DigestMismatchError(
                f"bundle root digest is {actual}, expected {expected_digest}",
                file=C.MANIFEST_FILE,
                hint="this is not the pinned bundle; check where it came from, or update the pin",
            )
    if result.problems:
        raise BundleError.from_problems(result.problems)
    if trusted_keys is not None:
        from asa_format.hints import python_error
        from asa_format.signing import verify_bundle_signature

        try:
            verify_bundle_signature(
                Path(path),
                list(trusted_keys),
                signature_path=signature_path,
                file_digests=result.file_sha256,
            )
        except AsaError as exc:  # hints name keywords here (trusted_keys=), not the CLI's flags
            python_error(exc)
            raise
    assert result.manifest is not None and result.manifest_bytes is not None
    return result


def load_bundle(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    expected_digest: str | None = None,
    trusted_keys: Sequence[Any] | None = None,
    signature_path: str | os.PathLike[str] | None = None,
    fast: bool = True,
    asa_only: bool = False,
) -> Bundle:
    """Load, check and return the bundle at ``path`` (a directory or a hub ``org/name@revision``).

    Every valid bundle loads, of any kind: format 1.0 (one asa intervention)
    and 1.1 (any ordered list of ``always``, ``condition`` and at most one
    ``asa`` intervention). ``verify=False`` skips only the size/sha256
    comparison with the manifest; every profile check still runs.
    ``expected_digest`` pins the root digest; ``trusted_keys`` requires a
    valid signature by one of the public keys. ``fast`` allows the NumPy
    evaluator of ``asa_format.graphs.fastpath``, used only if it reproduces
    onnxruntime on load. ``asa_only`` keeps only the asa intervention (and
    refuses a bundle without one, ``NOT_AN_ASA_BUNDLE``). Raises
    :class:`BundleError` (with every problem found) on failure.
    """
    from asa_format.storage.hub import is_hub_reference, load_from_hub

    trusted_keys = check_load_args(
        path, verify, expected_digest, trusted_keys, signature_path, fast=fast, asa_only=asa_only
    )
    if is_hub_reference(
        path
    ):  # org/name@revision: downloaded, copied, then loaded with every check
        return load_from_hub(
            str(path),
            load_bundle,
            verify=verify,
            expected_digest=expected_digest,
            trusted_keys=trusted_keys,
            signature_path=signature_path,
            fast=fast,
            asa_only=asa_only,
        )
    # the parsed graphs are always kept: the structural match also bounds the rounding error
    # of the onnxruntime path (rows near a boundary), not only the fast path
    result = read_checked(
        path,
        verify=verify,
        expected_digest=expected_digest,
        trusted_keys=trusted_keys,
        signature_path=signature_path,
        keep_models=True,
    )
    from asa_format.storage.reader import _create_sessions

    assert result.manifest is not None and result.manifest_bytes is not None
    manifest = result.manifest
    interventions = _loaded_interventions(manifest, result.intervention_vectors)
    if asa_only:
        if not isinstance(manifest, AsaManifest):
            raise BundleError(
                "the bundle has no asa intervention (no router, probes or domains)",
                code="NOT_AN_ASA_BUNDLE",
                file=C.MANIFEST_FILE,
                hint="load it without asa_only=True; asa_format.runtime.attach applies every kind",
            )
        interventions = [iv for iv in interventions if iv.kind == C.GATE_ASA]
    if isinstance(manifest, AsaManifest):
        _create_sessions(
            result, result.graph_bytes, manifest.model.hidden_size, len(manifest.domains)
        )
        if result.problems:
            raise BundleError.from_problems(result.problems)
    return Bundle(
        manifest,
        result.manifest_bytes,
        result.vectors,
        result.sessions,
        Path(path),
        models=result.models if isinstance(manifest, AsaManifest) else None,
        fast=fast,
        graph_bytes=result.graph_bytes,
        interventions=interventions,
        card=result.card,
    )


def _loaded_interventions(
    manifest: Manifest, vectors: dict[str, np.ndarray]
) -> list[LoadedIntervention]:
    """Every intervention of a checked manifest, in order, with read-only float32 vectors."""
    specs = list(manifest.interventions) or [Intervention(name=C.GATE_ASA, kind=C.GATE_ASA)]
    loaded = []
    for spec in specs:
        directions = {b: _frozen(vectors[tensor_name(spec.name, b)]) for b in spec.blocks}
        conditions = {}
        if spec.condition is not None:
            conditions = {
                b: _frozen(vectors[tensor_name(spec.name, b, C.CONDITION_ROLE)])
                for b in spec.condition.blocks
            }
        loaded.append(LoadedIntervention(spec, directions, conditions))
    return loaded


def _frozen(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float32, copy=True)
    out.setflags(write=False)
    return out


def read_bundle_contents(path: str | os.PathLike[str], *, verify: bool = True) -> BundleContents:
    """Read and check the bundle at ``path``; return its :class:`BundleContents`.

    Every check of :func:`load_bundle` runs (the graphs are evaluated once,
    no session is kept). ``save_bundle(read_bundle_contents(p), q)`` writes
    the same bytes as ``p``.
    """
    path_arg(path, "path")
    bool_arg(verify, "verify")
    result = read_bundle_dir(path, verify=verify)
    if result.problems:
        raise BundleError.from_problems(result.problems)
    assert result.manifest is not None
    return contents_of(
        result.manifest,
        result.vectors,
        result.graph_bytes,
        result.intervention_vectors,
        result.card,
    )
