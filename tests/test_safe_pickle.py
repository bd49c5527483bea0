"""The restricted unpickler: hostile corpus refused, real sklearn pickles read."""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from asa_format.converters import safe_pickle
from asa_format.converters.safe_pickle import (
    EstimatorState,
    safe_load_pickle,
    to_legacy_logistic,
    to_legacy_scaler,
)
from asa_format.errors import LegacyFormatError, UnsafePickleError

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED: dict[str, dict[str, Any]] = json.loads((HOSTILE / "expected.json").read_text())


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_hostile_pickles", HOSTILE / "make_hostile_pickles.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# --------------------------------------------------------------------------
# hostile corpus
# --------------------------------------------------------------------------


def test_corpus_is_committed_and_matches_generator() -> None:
    cases = _load_generator().build_cases()
    assert {case.name for case in cases} == set(EXPECTED)
    assert {p.stem for p in HOSTILE.glob("*.pkl")} == set(EXPECTED)
    for case in cases:
        assert (HOSTILE / f"{case.name}.pkl").read_bytes() == case.data, case.name
        assert EXPECTED[case.name]["code"] == case.code


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_pickle_is_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = EXPECTED[name]
    data = (HOSTILE / f"{name}.pkl").read_bytes()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(data, filename=f"{name}.pkl")
    error = info.value
    assert error.code == expected["code"]
    assert expected["needle"] in error.message
    assert error.file == f"{name}.pkl"
    assert isinstance(error.offset, int) and 0 <= error.offset <= len(data)
    assert f"byte offset {error.offset}" in error.message
    assert error.hint and "never executes" in error.hint
    assert list(tmp_path.iterdir()) == []


def test_forbidden_global_offset_points_at_the_opcode() -> None:
    data = (HOSTILE / "probes_gadget.pkl").read_bytes()
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(data, filename="probes.pkl")
    offset = info.value.offset
    assert offset is not None
    assert data[offset : offset + 1] == b"c"
    assert data[offset + 1 :].startswith(b"os\nsystem\n")


def test_corpus_would_run_code_under_plain_pickle(tmp_path: Path) -> None:
    """The gadgets are real: plain pickle.loads creates their marker files."""
    biting = sorted(name for name, item in EXPECTED.items() if item["bites"])
    assert len(biting) >= 10
    script = textwrap.dedent(
        """
        import pickle, sys
        for path in sys.argv[1:]:
            try:
                pickle.loads(open(path, "rb").read())
            except BaseException:
                pass
        """
    )
    paths = [str(HOSTILE / f"{name}.pkl") for name in biting]
    subprocess.run(
        [sys.executable, "-c", script, *paths],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in biting:
        assert (tmp_path / f"PWNED-{name}").exists(), name


def test_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pickle.dumps({"a": 1}, protocol=4)
    monkeypatch.setattr(safe_pickle, "MAX_PICKLE_BYTES", len(data) - 1)
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(data, filename="big.pkl")
    assert info.value.code == "PICKLE_TOO_LARGE"


def test_allowlist_is_exact() -> None:
    for module, name in safe_pickle.ALLOWED_GLOBALS:
        assert "*" not in module and name.isidentifier()
    # a module allowed for one name does not allow its other names
    data = b"\x80\x02cnumpy\nsave\n."
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(data, filename="x.pkl")
    assert info.value.code == "PICKLE_FORBIDDEN_GLOBAL"
    assert "'numpy.save'" in info.value.message


# --------------------------------------------------------------------------
# benign pickles written by the installed scikit-learn / numpy
# --------------------------------------------------------------------------


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, size=60)
    return x, y


def _estimators() -> dict[str, Any]:
    x, y = _data()
    names = np.array(["calc", "search", "weather"])
    return {
        "scaler": StandardScaler().fit(x),
        "scaler_no_mean": StandardScaler(with_mean=False).fit(x),
        "router_int": LogisticRegression(max_iter=200).fit(x, y),
        "router_str": LogisticRegression(max_iter=200).fit(x, names[y]),
        "probe": LogisticRegression().fit(x, (y == 1).astype(np.int64)),
        "router_fortran": LogisticRegression(max_iter=200).fit(
            np.asfortranarray(x.astype(np.float32)), y
        ),
    }


def _assert_same(value: Any, reference: Any, where: str) -> None:
    if isinstance(reference, np.ndarray):
        assert isinstance(value, np.ndarray), where
        assert value.dtype == reference.dtype, where
        assert value.shape == reference.shape, where
        assert np.array_equal(value, reference), where
    elif isinstance(reference, np.generic):
        assert type(value) is type(reference) and value == reference, where
    else:
        assert value == reference and type(value) is type(reference), where


def _assert_matches(state: EstimatorState, estimator: Any) -> None:
    assert state.class_name == type(estimator).__name__
    reference = estimator.__getstate__()
    assert set(state.state) == set(reference)
    for key, ref in reference.items():
        _assert_same(state.state[key], ref, key)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_benign_estimators_round_trip(protocol: int) -> None:
    estimators = _estimators()
    for name, estimator in estimators.items():
        result = safe_load_pickle(
            pickle.dumps(estimator, protocol=protocol), filename=f"{name}.pkl"
        )
        assert isinstance(result, EstimatorState), name
        _assert_matches(result, estimator)
    probes = {"calc": estimators["probe"], "search": estimators["probe"]}
    loaded = safe_load_pickle(pickle.dumps(probes, protocol=protocol), filename="probes.pkl")
    assert isinstance(loaded, dict) and list(loaded) == ["calc", "search"]
    for value in loaded.values():
        _assert_matches(value, estimators["probe"])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_benign_plain_values(protocol: int) -> None:
    values = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64_big_endian": np.arange(4, dtype=">f8"),
        "i32": np.array([1, -2, 3], dtype=np.int32),
        "bool": np.array([True, False]),
        "empty": np.zeros((0,), dtype=np.float64),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        "names": np.array(["a", "bb", "ccc"], dtype=object),
        "unicode": np.array(["x", "yz"]),
        "scalar": np.int64(12),
        "nested": [1, 2.5, "s", None, True, (1, 2), {"k": b""}, 10**30],
    }
    loaded = safe_load_pickle(pickle.dumps(values, protocol=protocol), filename="values.pkl")
    assert set(loaded) == set(values)
    for key, ref in values.items():
        if isinstance(ref, np.ndarray):
            assert np.array_equal(loaded[key], ref), key
            assert loaded[key].dtype == ref.dtype.newbyteorder("="), key
            assert loaded[key].flags.c_contiguous and loaded[key].flags.writeable, key
        else:
            assert loaded[key] == ref, key


def test_result_arrays_do_not_alias_the_input() -> None:
    data = bytearray(pickle.dumps(np.arange(3, dtype=np.float64), protocol=5))
    array = safe_load_pickle(bytes(data), filename="a.pkl")
    array[0] = 42.0
    assert np.array_equal(safe_load_pickle(bytes(data), filename="a.pkl"), [0.0, 1.0, 2.0])


def _legacy_pickles() -> list[Path]:
    return sorted(LEGACY.glob("*/*.pkl"))


def test_legacy_fixture_pickles_match_plain_unpickling() -> None:
    """Fixtures written by other scikit-learn/numpy versions read as the real objects.

    The fixtures are trusted files of this repository, so plain pickle gives the
    reference values here.
    """
    paths = _legacy_pickles()
    assert paths, "tests/fixtures/legacy holds no pickles"
    spellings: set[bytes] = set()
    for path in paths:
        data = path.read_bytes()
        spellings.update(s for s in (b"numpy.core.", b"numpy._core.") if s in data)
        loaded = safe_load_pickle(data, filename=path.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pickle.loads(data)
        pairs = (
            list(zip(loaded.values(), reference.values(), strict=True))
            if isinstance(reference, dict)
            else [(loaded, reference)]
        )
        for state, estimator in pairs:
            assert isinstance(state, EstimatorState)
            for key, ref in estimator.__dict__.items():
                _assert_same(state.state[key], ref, f"{path}: {key}")
    assert spellings == {b"numpy.core.", b"numpy._core."}


# --------------------------------------------------------------------------
# stand-ins -> typed records
# --------------------------------------------------------------------------


def test_to_legacy_records() -> None:
    estimators = _estimators()
    scaler = to_legacy_scaler(
        safe_load_pickle(pickle.dumps(estimators["scaler"]), filename="s"), filename="s"
    )
    assert np.array_equal(scaler.mean, estimators["scaler"].mean_)
    assert np.array_equal(scaler.scale, estimators["scaler"].scale_)
    assert scaler.n_features_in == 5 and scaler.with_mean and scaler.with_std
    no_mean = to_legacy_scaler(
        safe_load_pickle(pickle.dumps(estimators["scaler_no_mean"]), filename="s"), filename="s"
    )
    assert no_mean.mean is None and not no_mean.with_mean
    router = to_legacy_logistic(
        safe_load_pickle(pickle.dumps(estimators["router_str"]), filename="r"), filename="r"
    )
    assert router.classes.tolist() == ["calc", "search", "weather"]
    assert np.array_equal(router.coef, estimators["router_str"].coef_)
    assert router.coef.dtype == np.float64 and router.solver == "lbfgs"
    probe = to_legacy_logistic(
        safe_load_pickle(pickle.dumps(estimators["probe"]), filename="p"), filename="p"
    )
    assert probe.coef.shape == (1, 5) and probe.classes.tolist() == [0, 1]


def test_to_legacy_refuses_wrong_estimator_and_unfitted() -> None:
    scaler_state = safe_load_pickle(pickle.dumps(StandardScaler()), filename="s")
    with pytest.raises(LegacyFormatError) as info:
        to_legacy_scaler(scaler_state, filename="scaler.pkl")
    assert info.value.code == "LEGACY_CONTENT" and "mean_" in info.value.message
    with pytest.raises(LegacyFormatError) as info:
        to_legacy_logistic(scaler_state, filename="router.pkl")
    assert "StandardScaler" in info.value.message
    lr = _estimators()["router_int"]
    bad = EstimatorState(
        "LogisticRegression", {**lr.__getstate__(), "coef_": lr.coef_[:2]}, built=True
    )
    with pytest.raises(LegacyFormatError) as info:
        to_legacy_logistic(bad, filename="router.pkl")
    assert "coef_" in info.value.message


def test_reader_sources_never_call_loaders() -> None:
    root = Path(__file__).resolve().parents[1] / "converters"
    names = (
        "safe_pickle.py",
        "pickle_allowlist.py",
        "pickle_arrays.py",
        "pickle_records.py",
        "pickle_resolve.py",
    )
    for name in (*names, "legacy.py"):
        text = (root / name).read_text()
        for banned in (
            "pickle.load",
            "Unpickler",
            "joblib",
            "np.load",
            "numpy.load",
            "torch.load",
            "__import__",
            "importlib",
            "allow_pickle",
        ):
            assert banned not in text, f"{name} contains {banned!r}"
        assert not re.search(r"(?<![\w.])(eval|exec|getattr|compile)\(", text), name
