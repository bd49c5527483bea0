"""Property-based fuzzing of the bundle reader (Hypothesis), and short deterministic runs
of the structure-aware targets (ONNX graphs, pickles, GGUF and .svec imports).

Mutated valid bundles (byte flips, truncations, insertions, safetensors
header edits, manifest field edits, ONNX field edits, deleted and duplicated
files) must make ``validate_bundle`` and ``load_bundle`` end in success or a
clean ``AsaError``, and the two must agree. The operators and the property
are shared with ``tests/fuzz_long.py``, the long-running fuzzer.
"""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_long as fz  # tests/ is on sys.path, as for tiny_models
from asa_format import constants as C
from asa_format.errors import CODES, Problem
from asa_format.format.manifest import parse_manifest
from asa_format.format.safetensors import parse_vectors
from asa_format.graphs.profile import check_onnx

SEEDS = fz.seed_bundles()

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=10),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

# (operator, file index, integer, integer, payload); the file index is taken
# modulo the sorted file names of the bundle at the time of the step.
byte_ops = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"]),
    st.integers(0, 15),
    st.integers(0, 1 << 16),
    st.integers(1, 255),
    st.binary(min_size=1, max_size=24),
)
st_ops = st.tuples(
    st.just("st_edit"),
    st.sampled_from([None, "__metadata__", "global", "math", "search", "new"]),
    st.sampled_from(["dtype", "shape", "data_offsets", "format", "extra"]),
    st.one_of(json_values, st.just(fz.DELETE)),
    st.just(b""),
)
st_len_ops = st.tuples(
    st.just("st_len"), st.just(0), st.integers(0, (1 << 64) - 1), st.just(0), st.just(b"")
)
manifest_ops = st.tuples(
    st.just("manifest"),
    st.sampled_from(fz.MANIFEST_PATHS),
    st.one_of(json_values, st.just(fz.DELETE)),
    st.just(0),
    st.just(b""),
)
onnx_ops = st.tuples(
    st.just("onnx"),
    st.integers(0, 15),
    st.sampled_from(fz.ONNX_EDITS),
    st.integers(0, 63),
    st.integers(0, 1 << 32),
)
steps = st.lists(
    st.one_of(byte_ops, st_ops, st_len_ops, manifest_ops, onnx_ops), min_size=1, max_size=3
)


def apply(files: dict[str, bytes], step: tuple[Any, ...]) -> dict[str, bytes]:
    op = step[0]
    names = sorted(files)
    if not names:
        return files
    if op in ("flip", "truncate", "insert", "delete", "duplicate"):
        _, idx, number, mask, payload = step
        name = names[idx % len(names)]
        if op == "flip":
            return fz.flip(files, name, number, mask)
        if op == "truncate":
            return fz.truncate(files, name, number % (len(files[name]) + 1))
        if op == "insert":
            return fz.insert(files, name, number, payload)
        if op == "delete":
            return fz.delete(files, name)
        return fz.duplicate(
            files, name, ["probe_1.onnx", "probe_9.onnx", "extra.bin", C.SIGNATURE_FILE][mask % 4]
        )
    if op == "st_edit":
        _, tensor, key, value, _ = step
        return fz.st_header_edit(files, tensor, key, value)
    if op == "st_len":
        return fz.st_header_length(files, step[2])
    if op == "manifest":
        _, path, value, _, _ = step
        return fz.manifest_edit(files, list(path), value)
    _, idx, kind, index, value = step
    graphs = [n for n in names if n.endswith(".onnx")]
    return fz.onnx_edit(files, graphs[idx % len(graphs)], kind, index, value) if graphs else files


def run(files: dict[str, bytes]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return fz.exercise(fz.write_bundle(files, Path(tmp) / "bundle"))


@FUZZ
@given(base=st.sampled_from(fz.SEEDS), ops=steps, rehash=st.booleans())
def test_mutated_bundles_fail_cleanly(base: str, ops: list[tuple[Any, ...]], rehash: bool) -> None:
    files = SEEDS[base]
    for step in ops:
        files = apply(files, step)
    if rehash:
        files = fz.rehash(files)
    run(files)


@FUZZ
@given(
    base=st.sampled_from(fz.SEEDS),
    ops=st.lists(st.one_of(st_ops, st_len_ops), min_size=1, max_size=4),
)
def test_safetensors_header_edits(base: str, ops: list[tuple[Any, ...]]) -> None:
    files = SEEDS[base]
    for step in ops:
        files = apply(files, step)
    outcome = run(fz.rehash(files))
    assert outcome == "ok" or outcome.startswith("refused:")


@FUZZ
@given(base=st.sampled_from(fz.SEEDS), ops=st.lists(manifest_ops, min_size=1, max_size=4))
def test_manifest_field_edits(base: str, ops: list[tuple[Any, ...]]) -> None:
    files = SEEDS[base]
    for step in ops:
        files = apply(files, step)
    run(fz.rehash(files))


@FUZZ
@given(base=st.sampled_from(fz.SEEDS), ops=st.lists(onnx_ops, min_size=1, max_size=3))
def test_onnx_field_edits(base: str, ops: list[tuple[Any, ...]]) -> None:
    files = SEEDS[base]
    for step in ops:
        files = apply(files, step)
    run(fz.rehash(files))


@FUZZ
@given(
    base=st.sampled_from(fz.SEEDS),
    edits=st.lists(
        st.tuples(
            st.integers(0, 40),
            st.one_of(st.sampled_from(fz.TRICKY_LITERALS), json_values.map(json.dumps)),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_manifest_literal_edits(base: str, edits: list[tuple[int, str]]) -> None:
    """Raw JSON literals a serializer would never write (1e400, 5000 digits, '1.\u00b2', ...)."""
    files = SEEDS[base]
    for occurrence, literal in edits:
        files = fz.manifest_token(files, occurrence, literal)
    run(files)


@settings(max_examples=400, deadline=timedelta(seconds=5), derandomize=True, database=None)
@given(data=st.binary(max_size=512) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_parsers_return_problems_on_arbitrary_bytes(data: bytes) -> None:
    """The three parsers never raise: they return problems with known codes."""
    manifest, errors, _ = parse_manifest(data)
    assert (manifest is None) == bool(errors)
    vectors, problems = parse_vectors(data, hidden_size=8, names=["math", "search"])
    assert not (vectors and problems)
    found = [*errors, *problems]
    for name in (C.SCALER_FILE, C.ROUTER_FILE, "probe_0.onnx"):
        model, graph_problems = check_onnx(data, file=name, hidden_size=8, n_classes=2)
        assert model is None or not graph_problems
        found.extend(graph_problems)
    assert all(isinstance(p, Problem) and p.code in CODES for p in found)


# -- structure-aware targets (tests/fuzz_targets.py): a short, deterministic run of each ----------


def _target_run(target: str, iterations: int, seed: int) -> dict[str, int]:
    seeds = fz.target_seeds(target)
    outcomes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(iterations):
            outcome, steps, tb = fz.run_iteration(seeds, seed, i, Path(tmp) / "bundle", target)
            assert tb is None, f"iteration {i}: {' -> '.join(steps)}\n{tb}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def test_graph_mutations_keep_the_decision_contract() -> None:
    """Node kinds, attributes, shapes, initializers, inserted nodes: refused statically,
    refused by the session, or accepted and decided consistently (never an exception)."""
    outcomes = _target_run("onnx", 120, seed=3)
    assert outcomes.get("ok", 0) > 0 and any(k.startswith("static:") for k in outcomes), outcomes


def test_pickle_opcode_mutations_end_in_data_or_a_coded_refusal() -> None:
    outcomes = _target_run("pickle", 400, seed=3)
    assert any(k.startswith("refused:") for k in outcomes), outcomes


def test_gguf_structure_mutations_end_in_a_control_vector_or_a_coded_refusal() -> None:
    """Counts, key/string/array lengths, value and element types, nested arrays, alignment,
    tensor names, ranks, dimensions, types, offsets and data, mutated as structures; an
    accepted file is read the same by ggml's Python reader (tests/fuzz_targets.py)."""
    outcomes = _target_run("gguf", 400, seed=5)
    assert outcomes.get("ok", 0) > 10, outcomes
    assert outcomes.get("refused:IMPORT_INVALID", 0) > 100, outcomes


def test_svec_mutations_end_in_canonical_blocks_or_a_coded_refusal() -> None:
    outcomes = _target_run("svec", 200, seed=5)
    assert outcomes.get("ok", 0) > 10, outcomes
    assert outcomes.get("refused:IMPORT_INVALID", 0) > 20, outcomes
