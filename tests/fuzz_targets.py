"""Fuzz targets that reach the graphs and the pickle machine (used by fuzz_long.py).

* ``onnx``: one to three structure-aware mutations (tests/fuzz_mutators.py)
  of one graph of a seed bundle, the manifest re-hashed. The static ONNX
  profile decides first; a graph it accepts goes through the whole contract
  (:func:`check_contract`): the bundle validates, loads and decides every
  row without an exception, each row alone as inside the batch, the fast
  path as onnxruntime.
* ``pickle``: one to three opcode-level mutations of a legacy or hostile
  pickle; ``safe_load_pickle`` and the record conversion must return or
  raise an ``AsaError``.
* ``gguf``: one to three structure-aware mutations of a control vector
  (counts, lengths, types, offsets, names, data); the import must return
  contents or raise an ``AsaError``. Accepted files are read again by ggml's
  own Python reader (when ``gguf`` is installed), which must agree on every
  tensor, and every accepted direction is finite float32.
* ``svec``: one to three mutations of an activation-steering document (keys
  that alias, values, lengths, members, raw text); the import must return
  contents whose blocks are the file's canonical keys minus one, or raise
  an ``AsaError``.

Any other exception, a disagreement, or an iteration slower than
``SLOW_SECONDS`` is a finding.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_mutators import (
    GFile,
    garray,
    gguf_seed,
    gkv,
    mutate_gguf,
    mutate_graph,
    mutate_pickle,
    mutate_svec,
)

from asa_format import constants as C
from asa_format.errors import AsaError

__all__ = [
    "SLOW_SECONDS",
    "check_contract",
    "gguf_iteration",
    "gguf_seeds",
    "onnx_iteration",
    "pickle_iteration",
    "pickle_seeds",
    "svec_iteration",
    "svec_seeds",
]

ROOT = Path(__file__).resolve().parents[1]
SLOW_SECONDS = 10.0


def contract_rows(hidden: int, rng: np.random.Generator) -> np.ndarray:
    """Rows that reach the corners: zeros, huge, tiny, mixed signs, random scales."""
    big = np.float32(3e38)
    rows = [
        np.zeros(hidden),
        np.full(hidden, big),
        np.full(hidden, -big),
        np.full(hidden, 1e-38),
        rng.standard_normal(hidden) * 1e4,
        rng.standard_normal(hidden) * 1e-3,
        rng.standard_normal(hidden),
        np.where(rng.random(hidden) < 0.5, big, -big),
    ]
    return np.asarray(rows, dtype=np.float32)


def check_contract(path: Path, rows: np.ndarray) -> str:
    """validate <=> load <=> decide, and one decision per row whatever the batch.

    Returns "ok" or "refused:<CODE>"; raises AssertionError on a broken contract.
    """
    from asa_format.bundle import load_bundle
    from asa_format.validate import validate_bundle

    report = validate_bundle(path)
    try:
        bundle = load_bundle(path)
    except AsaError as exc:
        assert not report.ok, f"validate says ok, load refuses with {exc.code}: {exc}"
        return f"refused:{exc.code}"
    assert report.ok, f"load succeeds, validate reports {[p.code for p in report.problems]}"
    reference = load_bundle(path, fast=False)
    batch = bundle.decide(rows)  # must not raise on finite rows
    ort_batch = reference.decide(rows)
    for i in range(rows.shape[0]):
        for name, got in (("fast alone", bundle.decide(rows[i])[0]), ("onnxruntime alone", reference.decide(rows[i])[0]),
                          ("onnxruntime batch", ort_batch[i])):  # fmt: skip
            want = batch[i]
            assert (got.domain_index, got.gate) == (want.domain_index, want.gate), (
                f"row {i}: {name} gives {(got.domain_index, got.gate, got.probability)}, "
                f"the batch {(want.domain_index, want.gate, want.probability)}"
            )
            assert np.isnan(got.probability) == np.isnan(want.probability)
            if not np.isnan(want.probability):  # relative beyond 1: a graph may return any number
                scale = max(1.0, abs(want.probability))
                assert (
                    got.probability == want.probability
                    or abs(got.probability - want.probability) <= 1e-6 * scale
                ), (
                    f"row {i}: {name} probability {got.probability!r}, the batch {want.probability!r}"
                )
    return "ok"


Files = dict[str, bytes]


def onnx_iteration(
    rng: random.Random,
    seeds: dict[str, Files],
    work: Path,
    rehash: Callable[[Files], Files],
    write_bundle: Callable[[Files, Path], Path],
    steps: list[str],
) -> tuple[str, list[str]]:
    import onnx

    from asa_format.format.manifest import parse_manifest
    from asa_format.graphs.profile import check_onnx

    base = rng.choice(sorted(seeds))
    files = dict(seeds[base])
    manifest, _, _ = parse_manifest(files[C.MANIFEST_FILE])
    assert manifest is not None
    hidden = manifest.model.hidden_size
    graphs = sorted(n for n in files if n.endswith(".onnx"))
    name = rng.choice(graphs)
    model = onnx.load_from_string(files[name])
    steps += [base, name]
    for _ in range(rng.choice([1, 1, 2, 3])):
        try:
            steps.append(mutate_graph(rng, model, hidden))
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
            steps.append(f"mutator refused: {type(exc).__name__}")
    try:
        data = model.SerializeToString(deterministic=True)
    except Exception:  # protobuf refuses to serialise (e.g. bad UTF-8 in a name)
        return "unserialisable", steps
    n_classes = len(manifest.domains) if name == C.ROUTER_FILE else 2
    _, problems = check_onnx(data, file=name, hidden_size=hidden, n_classes=n_classes)
    if problems:
        return f"static:{problems[0].code}", steps
    files[name] = data
    path = write_bundle(rehash(files), work)
    rows = contract_rows(hidden, np.random.default_rng(rng.randrange(1 << 30)))
    return check_contract(path, rows), steps


def pickle_seeds() -> list[tuple[str, bytes]]:
    out = []
    for p in sorted((ROOT / "tests" / "fixtures").rglob("*.pkl")):
        out.append((p.name, p.read_bytes()))
    return out


def pickle_iteration(
    rng: random.Random, seeds: list[tuple[str, bytes]], steps: list[str]
) -> tuple[str, list[str]]:
    from asa_format.converters.safe_pickle import (
        safe_load_pickle,
        to_legacy_logistic,
        to_legacy_scaler,
    )

    name, data = rng.choice(seeds)
    other = rng.choice(seeds)[1]
    steps.append(name)
    for _ in range(rng.choice([1, 1, 2, 3])):
        data, step = mutate_pickle(rng, data, other)
        steps.append(step)
    try:
        obj: Any = safe_load_pickle(data, filename=name)
        if name == "scaler.pkl":
            to_legacy_scaler(obj, filename=name)
        elif name == "router.pkl":
            to_legacy_logistic(obj, filename=name, what="router")
        elif isinstance(obj, dict):
            for key, value in obj.items():
                to_legacy_logistic(value, filename=name, what=f"probe {key!r}")
    except AsaError as exc:
        return f"refused:{exc.code}", steps
    return "ok", steps


def gguf_seeds() -> list[GFile]:
    return [
        gguf_seed(8, [1, 2]),
        gguf_seed(7, [3, 5, 9], alignment=64, seed=1),
        gguf_seed(16, [1], arch="steeringvector", seed=2),
        gguf_seed(5, [2, 4], extra=[gkv("controlvector.method", "STRING", "pca"),
                                    garray("x.list", "INT32", [1, 2, 3]),
                                    garray("x.names", "STRING", ["a", "b"])], seed=3),
    ]  # fmt: skip


def gguf_iteration(
    rng: random.Random, seeds: list[GFile], work: Path, steps: list[str]
) -> tuple[str, list[str]]:
    import copy

    from asa_format.interop import import_source

    base = rng.randrange(len(seeds))
    f = copy.deepcopy(seeds[base])
    steps.append(f"seed{base}")
    for _ in range(rng.choice([1, 1, 2, 3])):
        steps.append(mutate_gguf(rng, f))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "v.gguf"
    path.write_bytes(f.encode())
    try:
        contents = import_source(path)
    except AsaError as exc:
        return f"refused:{exc.code}", steps
    (iv,) = contents.interventions
    for block, vec in iv.directions.items():
        assert vec.dtype == np.float32 and np.isfinite(vec).all(), block
    try:
        import gguf
    except ImportError:  # pragma: no cover - the interop extra
        return "ok", steps
    if path.stat().st_size > 1 << 16:  # ggml's reader walks long arrays element by element
        return "ok", steps
    reader = gguf.GGUFReader(path, "r")  # ggml's reader, on a file ours accepted
    theirs = {t.name: np.array(t.data, copy=True).reshape(-1) for t in reader.tensors}
    assert sorted(theirs) == sorted(f"direction.{b}" for b in iv.directions), sorted(theirs)
    for block, vec in iv.directions.items():
        np.testing.assert_array_equal(vec, theirs[f"direction.{block}"])
    return "ok", steps


def svec_seeds() -> list[dict[str, Any]]:
    rng = np.random.default_rng(4)
    return [
        {"model_type": "llama", "directions": {"2": rng.standard_normal(8).tolist(),
                                               "5": rng.standard_normal(8).tolist()}},
        {"model_type": "qwen2", "directions": {"0": [0.5] * 4, "1": [0.25] * 4},
         "explained_variances": {"0": 0.5, "1": 0.25}},
        {"model_type": None, "directions": {"31": [1.0, -1.0, 0.0]}},
    ]  # fmt: skip


def svec_iteration(
    rng: random.Random, seeds: list[dict[str, Any]], work: Path, steps: list[str]
) -> tuple[str, list[str]]:
    import copy
    import json

    from asa_format.interop import import_source

    base = rng.randrange(len(seeds))
    doc: Any = copy.deepcopy(seeds[base])
    steps.append(f"seed{base}")
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not isinstance(doc, dict):
            break
        doc, step = mutate_svec(rng, doc)
        steps.append(step)
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    work.mkdir(parents=True, exist_ok=True)
    path = work / "v.svec"
    path.write_bytes(data)
    try:
        contents = import_source(path)
    except AsaError as exc:
        return f"refused:{exc.code}", steps
    parsed = json.loads(data)  # accepted: it is JSON, with canonical block keys
    keys = {int(k) for k in parsed["directions"]}
    assert all(k == str(int(k)) for k in parsed["directions"]), parsed["directions"].keys()
    (iv,) = contents.interventions
    assert sorted(iv.directions) == sorted(k - 1 for k in keys if k != 0)
    for block, vec in iv.directions.items():
        assert vec.dtype == np.float32 and np.isfinite(vec).all(), block
        expected = np.asarray(parsed["directions"][str(block + 1)], np.float32)
        np.testing.assert_array_equal(vec, expected)
    return "ok", steps


def timed(fn: Any, *args: Any) -> tuple[str, list[str], float]:
    t0 = time.monotonic()
    outcome, steps = fn(*args)
    return outcome, steps, time.monotonic() - t0
