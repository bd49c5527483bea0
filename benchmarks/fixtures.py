"""The benchmark's inputs: a pipeline fitted on synthetic data, as legacy and asa bundles.

Scikit-learn estimators (StandardScaler, multinomial LogisticRegression
router, one binary LogisticRegression probe per domain) are fitted on
separable synthetic hidden states with LLM-like offsets and spreads, as the
ASA pipeline fits them. The same objects are written twice: as a legacy
``asa_assets/`` directory (``pickle.dump``, the format ``asa-convert`` reads)
and as an asa bundle (``asa_format.converters.build_bundle``).
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Pipeline",
    "bundle_size",
    "fit_pipeline",
    "write_bundle",
    "write_legacy",
    "write_scale_bundle",
]

TAU = 0.6
ALPHA = 4.0
BETA = 0.25


@dataclass
class Pipeline:
    """Fitted estimators, steering vectors and held-out hidden states."""

    domains: list[str]
    scaler: Any
    router: Any
    probes: dict[str, Any]
    vectors: dict[str, np.ndarray]
    held_out: np.ndarray  # float32 [n, hidden]: the inputs every method is timed on

    @property
    def hidden(self) -> int:
        return int(self.held_out.shape[1])


def fit_pipeline(
    hidden: int, n_domains: int, per_domain: int, pool_rows: int, seed: int = 7
) -> Pipeline:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    domains = [
        "web_search",
        "calculator",
        "calendar",
        "translate",
        *[f"domain_{i}" for i in range(4, n_domains)],
    ][:n_domains]
    offset = rng.normal(0.0, 4.0, size=hidden)
    spread = np.exp(rng.uniform(np.log(0.3), np.log(30.0), size=hidden))
    centers = rng.normal(0.0, 1.2, size=(n_domains, hidden))
    tool_dirs = rng.normal(0.0, 1.0, size=(n_domains, hidden))
    tool_dirs /= np.linalg.norm(tool_dirs, axis=1, keepdims=True)
    n_rows = per_domain + -(-pool_rows // n_domains)
    rows, doms, tools = [], [], []
    for d in range(n_domains):
        tool = (rng.uniform(size=n_rows) < 0.5).astype(np.int64)
        z = (
            centers[d]
            + rng.normal(0.0, 1.0, size=(n_rows, hidden))
            + np.outer(2.0 * tool - 1.0, tool_dirs[d]) * 3.0
        )
        rows.append(offset + spread * z)
        doms.append(np.full(n_rows, d, dtype=np.int64))
        tools.append(tool)
    h = np.concatenate(rows).astype(np.float32)
    dom = np.concatenate(doms)
    tool_all = np.concatenate(tools)
    perm = rng.permutation(len(h))
    train, test = perm[: per_domain * n_domains], perm[per_domain * n_domains :][:pool_rows]

    scaler = StandardScaler().fit(h[train])
    # float64 features, as the published pipeline (scikit-learn < 1.8) fitted on
    x = np.asarray(scaler.transform(h[train]), dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        router = LogisticRegression(C=0.5, max_iter=300).fit(x, dom[train])
        probes = {
            name: LogisticRegression(C=0.5, max_iter=300).fit(
                x[dom[train] == d], tool_all[train][dom[train] == d]
            )
            for d, name in enumerate(domains)
        }
    vectors: dict[str, np.ndarray] = {}
    h64 = h.astype(np.float64)
    for d, name in enumerate(domains):
        sel = dom == d
        vectors[name] = _unit(
            h64[sel & (tool_all == 1)].mean(axis=0) - h64[sel & (tool_all == 0)].mean(axis=0)
        )
    vectors["global"] = _unit(h64[tool_all == 1].mean(axis=0) - h64[tool_all == 0].mean(axis=0))
    return Pipeline(domains, scaler, router, probes, vectors, np.ascontiguousarray(h[test]))


def _unit(v: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (v / np.linalg.norm(v)).astype(np.float32)
    return unit


def write_legacy(pipe: Pipeline, dest: Path, layer: int) -> Path:
    """The legacy ``asa_assets/`` layout (pickles + npz + config.json)."""
    dest.mkdir(parents=True, exist_ok=True)
    config = {
        "L_star": layer,
        "alpha": ALPHA,
        "tau": TAU,
        "beta": BETA,
        "domains": pipe.domains,
        "model": "LiquidAI/LFM2.5-1.2B-Instruct",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    savez: Any = np.savez
    savez(dest / "steering_vectors.npz", **pipe.vectors)
    for name, obj in (
        ("scaler.pkl", pipe.scaler),
        ("router.pkl", pipe.router),
        ("probes.pkl", pipe.probes),
    ):
        with open(dest / name, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    return dest


def write_bundle(pipe: Pipeline, dest: Path, layer: int, num_layers: int) -> Path:
    """The asa bundle of the same estimators (``build_bundle`` with its parity self-check)."""
    from asa_format.converters.build import build_bundle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, parity = build_bundle(
            dest,
            scaler=pipe.scaler,
            router=pipe.router,
            probes=pipe.probes,
            vectors=pipe.vectors,
            domains=pipe.domains,
            layer=layer,
            alpha=ALPHA,
            tau=TAU,
            beta=BETA,
            model_type="lfm2",
            num_layers=num_layers,
            force=True,
        )
    if not parity.ok:  # build_bundle raises first; kept as a guard for the measurements
        raise RuntimeError(f"benchmark bundle failed its parity check: {parity.to_dict()}")
    return path


def write_scale_bundle(dest: Path, hidden: int, n_domains: int) -> Path:
    """A generated bundle (``asa_format.testing``) of the given hidden size and domain count."""
    from asa_format.storage.writer import save_bundle
    from asa_format.testing import make_test_contents

    names = [f"domain_{i:03d}" for i in range(n_domains)]
    return save_bundle(
        make_test_contents(hidden_size=hidden, domains=names, model_type="lfm2", seed=hidden),
        dest,
        force=True,
    )


def bundle_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
