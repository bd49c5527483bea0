"""Section 1: decision latency at batch 1 and throughput at batch 64.

Four implementations decide on the same held-out hidden states:

* ``ours``: ``Bundle.decide`` with the default NumPy fast path;
* ``ours_ort``: ``Bundle.decide`` of ``load_bundle(..., fast=False)`` (onnxruntime);
* ``legacy``: the legacy hook's scikit-learn calls on the unpickled
  estimators, one call chain per row (``scaler.transform``,
  ``router.decision_function`` + argmax, ``probe.predict_proba``); a batch
  is a loop over its rows, as the hook must do to decide per row;
* ``floor``: the same arithmetic by hand in NumPy with precomputed arrays
  (scale, router scores, probe score).

Methods are timed in alternating rounds so that drift of the machine
affects all of them alike, in 7 blocks: each block gives a median per
method, and the ratios against the legacy path are reported as the median
(and range) of the 7 per-block ratios, all in the same process as
scikit-learn.
"""

from __future__ import annotations

import gc
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .settings import Settings
from .stats import summarize

__all__ = ["BLOCKS", "Floor", "LegacyHook", "run_decision"]

Decider = Callable[[np.ndarray], Any]
BLOCKS = 7


class LegacyHook:
    """The legacy decision, per row, with the unpickled scikit-learn estimators."""

    def __init__(self, legacy_dir: Path, tau: float) -> None:
        import json

        config = json.loads((legacy_dir / "config.json").read_text(encoding="utf-8"))
        self.domains: list[str] = list(config["domains"])
        with open(legacy_dir / "scaler.pkl", "rb") as f:
            self.scaler = pickle.load(f)  # our own freshly written file
        with open(legacy_dir / "router.pkl", "rb") as f:
            self.router = pickle.load(f)
        with open(legacy_dir / "probes.pkl", "rb") as f:
            self.probes = pickle.load(f)
        self.tau = tau

    def row(self, h_row: np.ndarray) -> tuple[int, float, int]:
        x = self.scaler.transform(h_row.reshape(1, -1).astype(np.float32))
        scores = self.router.decision_function(x)
        d = int(self.router.classes_[int(np.argmax(scores[0]))])
        probe = self.probes.get(self.domains[d])
        p = float(probe.predict_proba(x)[0, 1]) if probe is not None else 0.5
        gate = 1 if p >= self.tau else (-1 if p <= 1 - self.tau else 0)
        return d, p, gate

    def batch(self, h: np.ndarray) -> list[tuple[int, float, int]]:
        return [self.row(r) for r in h]


class Floor:
    """Scale, router scores and probe score by hand, with precomputed arrays."""

    def __init__(
        self, scaler: Any, router: Any, probes: dict[str, Any], domains: list[str], tau: float
    ) -> None:
        self.mean = np.asarray(scaler.mean_, dtype=np.float32)
        self.scale = np.asarray(scaler.scale_, dtype=np.float32)
        order = [int(c) for c in router.classes_]
        self.w_router = np.ascontiguousarray(
            np.asarray(router.coef_, dtype=np.float64)[np.argsort(order)].T
        )
        self.b_router = np.asarray(router.intercept_, dtype=np.float64)[np.argsort(order)]
        self.w_probe = np.ascontiguousarray(
            np.stack([np.asarray(probes[d].coef_, dtype=np.float64)[0] for d in domains], axis=1)
        )
        self.b_probe = np.array([float(probes[d].intercept_[0]) for d in domains])
        self.w_probe_rows = [np.ascontiguousarray(self.w_probe[:, i]) for i in range(len(domains))]
        self.tau = tau

    def row(self, h1: np.ndarray) -> tuple[int, float, int]:
        x = ((h1[0] - self.mean) / self.scale).astype(np.float64)
        d = int(np.argmax(x @ self.w_router + self.b_router))
        p = 1.0 / (1.0 + np.exp(-(float(x @ self.w_probe_rows[d]) + self.b_probe[d])))
        gate = 1 if p >= self.tau else (-1 if p <= 1 - self.tau else 0)
        return d, float(p), gate

    def batch(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = ((h - self.mean) / self.scale).astype(np.float64)
        d = np.argmax(x @ self.w_router + self.b_router, axis=1)
        s = np.take_along_axis(x @ self.w_probe, d[:, None], axis=1)[:, 0] + self.b_probe[d]
        p = 1.0 / (1.0 + np.exp(-s))
        gate = np.where(p >= self.tau, 1, np.where(p <= 1 - self.tau, -1, 0))
        return d, p, gate


def _time_rounds(
    methods: dict[str, Decider], inputs: list[np.ndarray], calls: int, per_round: int
) -> dict[str, list[float]]:
    """Per-call seconds of every method, in alternating rounds over the same inputs."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():  # warm up
        for h in inputs[: min(len(inputs), 20)]:
            fn(h)
    clock = time.perf_counter
    done = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while done < calls:
            n = min(per_round, calls - done)
            for name, fn in methods.items():
                out = times[name]
                for i in range(done, done + n):
                    h = inputs[i % len(inputs)]
                    t0 = clock()
                    fn(h)
                    out.append(clock() - t0)
            done += n
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _in_blocks(
    methods: dict[str, Decider], inputs: list[np.ndarray], calls: int, per_round: int
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """``_time_rounds`` in ``BLOCKS`` blocks: every call's time, and each block's medians."""
    per_block = max(per_round, -(-calls // BLOCKS))
    merged: dict[str, list[float]] = {name: [] for name in methods}
    medians = []
    for _ in range(BLOCKS):
        block = _time_rounds(methods, inputs, per_block, per_round)
        for name, ts in block.items():
            merged[name] += ts
        medians.append({name: float(np.median(ts)) for name, ts in block.items()})
    return merged, medians


def _block_ratio(medians: list[dict[str, float]], num: str, den: str) -> dict[str, Any]:
    ratios = [m[num] / m[den] for m in medians]
    return {
        "median": float(np.median(ratios)),
        "min": float(min(ratios)),
        "max": float(max(ratios)),
        "per_block": ratios,
    }


def _one_blas_thread(
    methods: dict[str, Decider], inputs: list[np.ndarray], settings: Settings
) -> tuple[list[Any], dict[str, list[float]]]:
    """The batch timing again with one BLAS thread (if threadpoolctl is installed)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return [], {}
    info = [
        {"api": i.get("internal_api"), "threads": i.get("num_threads")} for i in threadpool_info()
    ]
    with threadpool_limits(limits=1, user_api="blas"):
        return info, _time_rounds(methods, inputs, settings.batch_calls, settings.batch_round)


def _agreement(
    pool: np.ndarray, bundle: Any, bundle_ort: Any, legacy: LegacyHook, floor: Floor
) -> dict[str, Any]:
    ours = bundle.decide(pool)
    ort = bundle_ort.decide(pool)
    leg = legacy.batch(pool)
    leg_d = np.array([r[0] for r in leg])
    leg_p = np.array([r[1] for r in leg])
    leg_g = np.array([r[2] for r in leg])
    fd, fp, fg = floor.batch(pool)
    return {
        "rows": int(pool.shape[0]),
        "domain_ours_vs_legacy": float(np.mean(ours.domain_index == leg_d)),
        "gate_ours_vs_legacy": float(np.mean(ours.gate == leg_g)),
        "max_dp_ours_vs_legacy": float(np.max(np.abs(ours.probability - leg_p))),
        "domain_ort_vs_legacy": float(np.mean(ort.domain_index == leg_d)),
        "gate_ort_vs_legacy": float(np.mean(ort.gate == leg_g)),
        "domain_floor_vs_legacy": float(np.mean(fd == leg_d)),
        "gate_floor_vs_legacy": float(np.mean(fg == leg_g)),
        "max_dp_floor_vs_legacy": float(np.max(np.abs(fp - leg_p))),
        "gate_counts": {str(g): int(np.sum(leg_g == g)) for g in (-1, 0, 1)},
        "domains_seen": int(np.unique(leg_d).size),
    }


def run_decision(
    settings: Settings, pipe: Any, bundle_path: Path, legacy_dir: Path
) -> dict[str, Any]:
    from asa_format import load_bundle

    from .fixtures import TAU

    bundle = load_bundle(bundle_path)
    bundle_ort = load_bundle(bundle_path, fast=False)
    legacy = LegacyHook(legacy_dir, TAU)
    floor = Floor(legacy.scaler, legacy.router, legacy.probes, legacy.domains, TAU)
    pool: np.ndarray = pipe.held_out
    rows = [np.ascontiguousarray(pool[i : i + 1]) for i in range(pool.shape[0])]
    b = settings.batch
    batches = [np.ascontiguousarray(np.roll(pool, -k * 7, axis=0)[:b]) for k in range(8)]

    one: dict[str, Decider] = {
        "ours": bundle.decide,
        "ours_ort": bundle_ort.decide,
        "legacy": lambda h: legacy.row(h[0]),
        "floor": floor.row,
    }
    batch: dict[str, Decider] = {
        "ours": bundle.decide,
        "ours_ort": bundle_ort.decide,
        "legacy": legacy.batch,
        "floor": floor.batch,
    }
    t1, blocks1 = _in_blocks(one, rows, settings.batch1_calls, settings.batch1_round)
    tb, blocksb = _in_blocks(batch, batches, settings.batch_calls, settings.batch_round)
    blas_threads, tb1 = _one_blas_thread(batch, batches, settings)
    batch1 = {name: summarize([t * 1e6 for t in ts], "us") for name, ts in t1.items()}
    batch_n = {name: summarize([b / t for t in ts], "rows/s") for name, ts in tb.items()}
    batch_n_blas1 = {name: summarize([b / t for t in ts], "rows/s") for name, ts in tb1.items()}
    batch_n_us = {name: summarize([t * 1e6 for t in ts], "us") for name, ts in tb.items()}
    med1 = {k: v["median"] for k, v in batch1.items()}
    medb = {k: v["median"] for k, v in batch_n.items()}
    ratios = {
        "legacy_over_ours_batch1": med1["legacy"] / med1["ours"],
        "ours_over_floor_batch1": med1["ours"] / med1["floor"],
        "legacy_over_ours_ort_batch1": med1["legacy"] / med1["ours_ort"],
        "ours_ort_over_ours_batch1": med1["ours_ort"] / med1["ours"],
        "ours_over_legacy_rows_per_s_batch": medb["ours"] / medb["legacy"],
        "ours_ort_over_legacy_rows_per_s_batch": medb["ours_ort"] / medb["legacy"],
        "floor_over_ours_rows_per_s_batch": medb["floor"] / medb["ours"],
    }
    protocol = {
        "blocks": BLOCKS,
        "legacy_over_ours_batch1": _block_ratio(blocks1, "legacy", "ours"),
        "legacy_over_ours_batch": _block_ratio(blocksb, "legacy", "ours"),
        "legacy_over_ours_ort_batch1": _block_ratio(blocks1, "legacy", "ours_ort"),
        "legacy_over_ours_ort_batch": _block_ratio(blocksb, "legacy", "ours_ort"),
        "ours_over_floor_batch1": _block_ratio(blocks1, "ours", "floor"),
        "ours_over_floor_batch": _block_ratio(blocksb, "ours", "floor"),
    }
    return {
        "protocol": protocol,
        "hidden": pipe.hidden,
        "domains": len(pipe.domains),
        "batch": b,
        "bundle_bytes": sum(p.stat().st_size for p in bundle_path.iterdir()),
        "backend": {"ours": bundle.decision_backend, "ours_ort": bundle_ort.decision_backend},
        "batch1_us": batch1,
        "batch_rows_per_s": batch_n,
        "batch_call_us": batch_n_us,
        "blas_threads": blas_threads,
        # the same batch measurement with the BLAS thread pool limited to one thread
        "batch_rows_per_s_blas1": batch_n_blas1,
        "ratios": ratios,
        "agreement": _agreement(pool, bundle, bundle_ort, legacy, floor),
    }
