"""The one-row lane in C (asa_format/graphs/_lane.c, asa_format.graphs.native).

The lane must scale a row bit for bit as the NumPy scaler (hence onnxruntime) does, decide
every row as the Python lane decides it (the same rows declined, the same domains and
gates, probabilities within 1e-12), refuse what it cannot take, and never be used when it
disagrees. CI builds it and sets ``ASA_REQUIRE_NATIVE_LANE=1``: there these tests cannot
pass by the extension being absent.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_fastpath import FORMS, _bundle, _rows

from asa_format import load_bundle
from asa_format.gating import gate_of
from asa_format.graphs import native
from asa_format.graphs.fastpath import _lane_check_rows
from asa_format.testing import make_test_bundle

REQUIRED = os.environ.get("ASA_REQUIRE_NATIVE_LANE") == "1"


def test_the_lane_is_built_where_it_is_required() -> None:
    if REQUIRED:
        assert native.native_available(), "ASA_REQUIRE_NATIVE_LANE=1 but the C lane is not built"
    assert native._load({native.ENV_SWITCH: "0"}) is None  # the switch turns it off
    assert (native._load({}) is not None) == native.native_available()


needs_lane = pytest.mark.skipif(
    not native.native_available() and not REQUIRED,
    reason="the C lane is not built here (CI requires it)",
)


def _edge_rows(h: int, seed: int) -> np.ndarray:
    """Rows every lane must treat alike: NaN, infinities, float32 overflow in the scaler,
    subnormals, zeros, signed zeros, huge and tiny scales."""
    rows = _rows(16, seed, scale=40.0)
    rows[0, ::3] = np.nan
    rows[1, 0] = np.inf
    rows[2, -1] = -np.inf
    rows[3] = 3.0e38
    rows[4] = 1e-42
    rows[5] = 0.0
    rows[6] = -0.0
    rows[7] *= 1e6
    rows[8] *= 1e-6
    return rows


@needs_lane
@pytest.mark.parametrize("name", sorted(FORMS))
def test_the_c_lane_scales_and_decides_as_the_python_lane(name: str, tmp_path: Path) -> None:
    fast, slow = _bundle(tmp_path, name, **dict(FORMS[name]))
    plan = fast._plan
    lane = plan._lane
    assert lane is not None, f"{name}: the C lane was not made for this plan"
    h = plan.hidden_size
    rows = np.concatenate([_rows(400, 21), _rows(100, 22, scale=30.0), _edge_rows(h, 23)])
    decided = declined = 0
    for tau in (0.5, 0.6, 0.9):
        for row in rows:
            with np.errstate(all="ignore"):
                want_x = np.asarray(plan.scaler.run(row[None]), dtype=np.float32)[0]
            got_x = np.frombuffer(lane.scaled(row), dtype=np.float32)
            nan = np.isnan(want_x)
            assert np.array_equal(np.isnan(got_x), nan)
            assert got_x.view(np.uint32)[~nan].tobytes() == want_x.view(np.uint32)[~nan].tobytes()
            got, want = lane.decide(row, tau), plan._decide_one_python(row, tau)
            if want is None:
                assert got is None
                declined += 1
                continue
            decided += 1
            assert got is not None and got[0] == want[0] and got[2] is want[2] is False
            if want[1] is None:
                assert got[1] is None
            else:
                assert abs(got[1] - want[1]) <= 1e-12
            for no_probe in (0.2, 0.5, 0.8):
                pv = no_probe if want[1] is None else want[1]
                gated = lane.decide_gated(row, tau, no_probe)
                assert gated[0] == want[0] and gated[2] == gate_of(pv, tau)
                assert abs(gated[1] - pv) <= 1e-12
    assert decided > 100 and declined >= 4  # both kinds of rows were met
    # and the lane's decisions are onnxruntime's: each row alone through Bundle.decide
    batch = slow.decide(rows[:64])
    for i in range(64):
        one = fast.decide(rows[i])[0]
        assert (one.domain_index, one.gate) == (int(batch.domain_index[i]), int(batch.gate[i]))


@needs_lane
@pytest.mark.parametrize("hidden", [1, 7, 255, 256, 257, 1000])
def test_chunk_and_partial_sum_edges(hidden: int, tmp_path: Path) -> None:
    """Hidden sizes around the lane's chunk (256) and partial-sum width (8)."""
    path = make_test_bundle(tmp_path / "b", hidden_size=hidden, domains=("a", "b", "c"), seed=4)
    plan = load_bundle(path)._plan
    assert plan._lane is not None
    rng = np.random.default_rng(hidden)
    for _ in range(200):
        row = (rng.standard_normal(hidden) * rng.uniform(0.1, 5.0)).astype(np.float32)
        got, want = plan._lane.decide(row, 0.6), plan._decide_one_python(row, 0.6)
        assert (got is None) == (want is None)
        if got is not None:
            assert got[0] == want[0] and abs(got[1] - want[1]) <= 1e-12


@needs_lane
def test_rows_the_lane_does_not_take(tmp_path: Path) -> None:
    """Not C-contiguous float32 of the hidden size: NotImplemented (and ``decide_one``
    decides them with the Python lane); never a read past the row."""
    fast, _ = _bundle(tmp_path, "default", **dict(FORMS["default"]))
    plan = fast._plan
    lane = plan._lane
    h = plan.hidden_size
    row = _rows(1, 3)[0]
    wide = np.zeros((3, 2 * h), dtype=np.float32)
    wide[1, ::2] = row
    refused: list[Any] = [
        wide[1, ::2],  # strided
        row.astype(np.float64),
        row.astype(np.float16),
        row[:-1],
        np.concatenate([row, row]),
        row.astype(">f4"),  # non-native byte order
        b"\x00" * (4 * h),  # bytes: format 'B'
        "not a buffer",
        None,
    ]
    for bad in refused:
        assert lane.decide(bad, 0.6) is NotImplemented
        assert lane.decide_gated(bad, 0.6, 0.5) is NotImplemented
        assert lane.scaled(bad) is None
    assert plan.decide_one(wide[1, ::2], 0.6) == plan._decide_one_python(row, 0.6)
    assert plan.decide_one(row[None], 0.6) == lane.decide(row, 0.6)  # [1, H] is taken
    with pytest.raises(TypeError):
        lane.decide(row)
    with pytest.raises(TypeError):
        lane.decide(row, "0.6")


@needs_lane
def test_the_lane_refuses_specs_it_cannot_hold(tmp_path: Path) -> None:
    """Hostile or malformed constructor arguments are refused with an exception, never
    read out of bounds; ``compile_lane`` then leaves the Python lane."""
    fast, _ = _bundle(tmp_path, "default", **dict(FORMS["default"]))
    plan = fast._plan
    spec = native._spec(plan)
    assert spec is not None
    h, steps, weights, router, probes = spec
    module = native._LANE_MODULE
    module.Lane(*spec)  # the real one is accepted
    u = weights.size // h
    bad_router_column = (router[0], router[1], router[2], router[3], [(u, 1.0, 0.0)] * 3)
    broken = [
        (h, steps, weights[:-1], router, probes),  # not a multiple of H
        (h, steps, weights.astype(np.float32), router, probes),
        (h, steps, np.zeros(h * 300), router, probes),  # too many heads
        (h, steps, weights, bad_router_column, probes),
        (h, steps, weights, router, probes[:-1]),  # a probe entry missing
        (h, steps, weights, (9, 0, 0.0, 0.0, router[4]), probes),  # unknown form
        (h, [(1, 0, np.zeros(h - 1, np.float32))], weights, router, probes),  # short constant
        (h, [(1, 1, np.zeros(h, np.float64))], weights, router, probes),  # dtype mismatch
        (h, [(0, 1, None)], weights, router, probes),  # ends in float64
        (0, steps, weights, router, probes),
        (h, steps, weights, router, [(2, 0, 0.0, 0.0, [(0, 1.0, 0.0)] * 2)] * len(probes)),
    ]
    for args in broken:
        with pytest.raises((ValueError, TypeError)):
            module.Lane(*args)
    fresh = module.Lane.__new__(module.Lane)  # never initialised
    with pytest.raises(RuntimeError):
        fresh.decide(_rows(1, 1)[0], 0.6)


@needs_lane
def test_a_lane_that_disagrees_is_never_used(tmp_path: Path) -> None:
    fast, _ = _bundle(tmp_path, "default", **dict(FORMS["default"]))
    plan = fast._plan
    rows = _lane_check_rows(plan.hidden_size)
    assert native.compile_lane(plan, plan._decide_one_python, rows) is not None

    def shifted(row: np.ndarray, tau: float) -> Any:
        got = plan._decide_one_python(row, tau)
        return None if got is None else (got[0], None if got[1] is None else got[1] + 1e-6, False)

    def other_domain(row: np.ndarray, tau: float) -> Any:
        got = plan._decide_one_python(row, tau)
        return None if got is None else ((got[0] + 1) % 3, got[1], False)

    for reference in (shifted, other_domain, lambda row, tau: None):
        assert native.compile_lane(plan, reference, rows) is None


@needs_lane
def test_threads_share_a_lane(tmp_path: Path) -> None:
    fast, _ = _bundle(tmp_path, "six_domains", **dict(FORMS["six_domains"]))
    plan = fast._plan
    rows = _rows(64, 9)
    want = [plan._lane.decide(r, 0.6) for r in rows]
    got: dict[int, list[Any]] = {}

    def work(k: int) -> None:
        got[k] = [plan._lane.decide(r, 0.6) for _ in range(50) for r in rows]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[k] == want * 50 for k in range(4))


def test_without_the_lane_the_python_lane_decides(tmp_path: Path, monkeypatch: Any) -> None:
    """No C lane (not built, or ASA_NATIVE_LANE=0): the plan decides with Python, the same."""
    monkeypatch.setattr(native, "_LANE_MODULE", None)
    fast, slow = _bundle(tmp_path, "default", **dict(FORMS["default"]))
    assert fast._plan._lane is None
    rows = _rows(40, 5)
    batch = slow.decide(rows)
    for i, row in enumerate(rows):
        one = fast.decide(row)[0]
        assert (one.domain_index, one.gate) == (int(batch.domain_index[i]), int(batch.gate[i]))


@needs_lane
def test_a_row_read_where_it_lies(tmp_path: Path) -> None:
    """``decide_gated(hidden, tau, no_probe, b, p)`` reads row ``(b, p)`` of a ``[B, T, H]``
    float32 buffer, any outer strides: the row's own decision. Rows that are not contiguous,
    other ranks and dtypes are not taken; indices out of range raise IndexError."""
    fast, _ = _bundle(tmp_path, "six_domains", **dict(FORMS["six_domains"]))
    plan = fast._plan
    lane = plan._lane
    h = plan.hidden_size
    hidden = _rows(3 * 5, 12, scale=4.0).reshape(3, 5, h)
    views = [
        hidden,
        hidden[::-1],  # negative outer stride
        np.ascontiguousarray(hidden.transpose(1, 0, 2)).transpose(1, 0, 2),  # outer strides swapped
        np.stack([hidden, hidden], axis=1)[:, 1],  # a strided slice
    ]
    for view in views:
        for b in range(3):
            for p in range(5):
                row = np.ascontiguousarray(view[b, p])
                assert lane.decide_gated(view, 0.6, 0.5, b, p) == lane.decide_gated(row, 0.6, 0.5)
                assert plan.decide_gated(view, b, p, 0.6, 0.5) == lane.decide_gated(row, 0.6, 0.5)
    refused: list[Any] = [
        np.repeat(hidden, 2, axis=2)[:, :, ::2],  # rows not contiguous
        hidden[0],  # rank 2
        hidden[None],  # rank 4
        hidden.astype(np.float64),
        np.zeros((3, 5, h + 1), np.float32),
    ]
    for bad in refused:
        assert lane.decide_gated(bad, 0.6, 0.5, 0, 0) is NotImplemented
    # the Python lane decides a strided row the C lane does not take
    strided = np.repeat(hidden, 2, axis=2)[:, :, ::2]
    want = plan._decide_one_python(np.ascontiguousarray(hidden[1, 2]), 0.6)
    got = plan.decide_gated(strided, 1, 2, 0.6, 0.5)
    assert (got is None) == (want is None)
    if got is not None:
        pv = 0.5 if want[1] is None else want[1]
        assert (got[0], got[1], got[2]) == (want[0], pv, gate_of(pv, 0.6))
    for b, p in ((3, 0), (0, 5), (-1, 0), (0, -1), (2**62, 0)):
        with pytest.raises(IndexError):
            lane.decide_gated(hidden, 0.6, 0.5, b, p)
    with pytest.raises(TypeError):
        lane.decide_gated(hidden, 0.6, 0.5, 1.0, 0)
    with pytest.raises(TypeError):
        lane.decide_gated(hidden, 0.6, 0.5, 1)


def test_host_view_is_the_hook_tensor_or_its_widened_row() -> None:
    """``steering._host_view``: a float32 tensor as a NumPy view of itself (no copy), other
    dtypes as the row widened exactly, as ``[1, 1, H]`` with indices (0, 0)."""
    torch = pytest.importorskip("torch")
    from asa_format.runtime.steering import _host_row, _host_view

    hidden = torch.randn(2, 4, 16)
    view, b, p = _host_view(hidden, 1, 3)
    assert (b, p) == (1, 3) and np.shares_memory(view, hidden.numpy())
    assert view[b, p].tobytes() == hidden[1, 3].numpy().tobytes()
    leaf = hidden.clone().requires_grad_(True)
    view, b, p = _host_view(leaf, 1, 3)
    assert view[b, p].tobytes() == hidden[1, 3].numpy().tobytes()
    for dtype in (torch.bfloat16, torch.float16):
        low = hidden.to(dtype)
        view, b, p = _host_view(low, 1, 2)
        assert (b, p, view.shape, view.dtype) == (0, 0, (1, 1, 16), np.float32)
        assert view[0, 0].tobytes() == _host_row(low, 1, 2).tobytes()
        assert view[0, 0].tobytes() == low[1, 2].float().numpy().tobytes()
