"""Section 3: in-process load time, after imports.

``load_bundle`` with full verification (every file hashed and profiled,
onnxruntime sessions created, the NumPy fast path checked against them),
next to what the legacy path does to load: ``pickle.load`` of the three
pickles and ``numpy.load`` of the vectors.
"""

from __future__ import annotations

import gc
import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .settings import Settings
from .stats import summarize

__all__ = ["run_load"]


def _legacy_load(legacy_dir: Path) -> Any:
    config = json.loads((legacy_dir / "config.json").read_text(encoding="utf-8"))
    loaded = [config]
    for name in ("scaler.pkl", "router.pkl", "probes.pkl"):
        with open(legacy_dir / name, "rb") as f:
            loaded.append(pickle.load(f))  # our own freshly written files
    with np.load(legacy_dir / "steering_vectors.npz") as npz:
        loaded.append({k: npz[k] for k in npz.files})
    return loaded


def _timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up: imports, first-use initialisation
    out: list[float] = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def run_load(settings: Settings, bundle_path: Path, legacy_dir: Path) -> dict[str, Any]:
    from asa_format import load_bundle

    n = settings.load_repeats
    methods: dict[str, Callable[[], Any]] = {
        "load_bundle": lambda: load_bundle(bundle_path),
        "load_bundle_fast_false": lambda: load_bundle(bundle_path, fast=False),
        "legacy_pickle_load": lambda: _legacy_load(legacy_dir),
    }
    times = {name: _timed(fn, n) for name, fn in methods.items()}
    return {
        "repeats": n,
        "ms": {name: summarize(ts, "ms") for name, ts in times.items()},
        "bundle_bytes": sum(p.stat().st_size for p in bundle_path.iterdir()),
        "legacy_bytes": sum(p.stat().st_size for p in legacy_dir.iterdir()),
    }
