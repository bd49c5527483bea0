"""The converters' entry points with hostile arguments (the ``convert`` extra).

As in tests/test_api_arguments.py: each parameter of ``convert_legacy`` and
``build_bundle`` in turn gets values a careless or hostile caller passes; a
value that is not valid for the parameter must end in a coded ``AsaError``,
before any graph is exported (nothing written). The valid values are the
converters' own tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from test_api_arguments import World, acceptable, hostile_values

from asa_format.converters import build_bundle, convert_legacy
from asa_format.errors import CODES, AsaError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("convert-api")
    (root / "out").mkdir()
    fifo = root / "fifo"
    os.mkfifo(fifo)
    return World(root, root, root, fifo, root, root, root, [0])


def _pipeline() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((60, 6))
    scaler = StandardScaler().fit(h)
    y = np.array(["a", "b"])[rng.integers(0, 2, 60)]
    router = LogisticRegression(max_iter=200).fit(scaler.transform(h), y)
    return {
        "scaler": scaler,
        "router": router,
        "probes": {},
        "vectors": {n: rng.standard_normal(6) for n in ("a", "b", "global")},
    }


CALLS: dict[str, tuple[Callable[..., Any], Callable[[World], dict[str, Any]], dict[str, str]]] = {
    "convert_legacy": (
        convert_legacy,
        lambda w: {
            "source": ROOT / "examples" / "asa_assets",
            "destination": w.fresh(),
            "model_id": None,
            "model_type": None,
            "num_layers": None,
            "force": False,
            "samples": 64,
            "seed": 0,
        },
        {
            "source": "path",
            "destination": "destination",
            "model_id": "label",
            "model_type": "label",
            "num_layers": "none",
            "force": "bool",
            "samples": "never",
            "seed": "index",
        },
    ),
    "build_bundle": (
        build_bundle,
        lambda w: {
            "destination": w.fresh(),
            **_pipeline(),
            "domains": ["a", "b"],
            "layer": 1,
            "alpha": 1.0,
            "tau": 0.6,
            "beta": 0.2,
            "model_id": None,
            "model_type": None,
            "num_layers": None,
            "metadata": None,
            "force": False,
            "samples": 64,
        },
        {
            "destination": "destination",
            "scaler": "never",
            "router": "never",
            "probes": "mapping",
            "vectors": "never",
            "domains": "never",
            "layer": "index",
            "alpha": "number",
            "tau": "number",
            "beta": "number",
            "model_id": "label",
            "model_type": "label",
            "num_layers": "none",
            "metadata": "optional_mapping",
            "force": "bool",
            "samples": "never",
        },
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_hostile_converter_arguments_are_refused_with_a_code(
    world: World, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn, baseline, kinds = CALLS[name]
    cwd = world.fresh()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    failures: list[str] = []
    refused = 0
    for param in baseline(world):
        for value in hostile_values(world):
            if acceptable(kinds[param], value) or (
                kinds[param].endswith("destination") and isinstance(value, Path)
            ):
                continue  # valid values run whole conversions: the converters' own tests
            kwargs = baseline(world)
            kwargs[param] = value
            try:
                fn(**kwargs)
            except AsaError as exc:
                assert exc.code in CODES
                refused += 1
                continue
            except Exception as exc:
                failures.append(f"{param}={value!r}: {type(exc).__name__}: {exc}"[:300])
                continue
            failures.append(f"{param}={value!r}: accepted, but it is not a valid {kinds[param]}")
    assert not failures, f"{name}:\n" + "\n".join(failures)
    assert refused > 100
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing written
