"""read_legacy_bundle: legacy asset directories written with the installed sklearn/numpy."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from asa_format.converters.legacy import read_legacy_bundle
from asa_format.errors import LegacyFormatError, UnsafePickleError

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
HIDDEN = 12
DOMAINS = ["web_search", "calculator", "calendar"]


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=HIDDEN).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def write_bundle(
    directory: Path,
    *,
    domains: list[str] | None = None,
    classes: str = "int",
    skip_probe: str | None = None,
    config: dict[str, Any] | None = None,
    protocol: int = 4,
) -> dict[str, Any]:
    """Fit a tiny pipeline and write it as a legacy bundle; return the estimators."""
    domains = list(DOMAINS if domains is None else domains)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, HIDDEN))
    y = np.arange(90) % len(domains)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    labels = y if classes == "int" else np.array(domains)[y]
    router = LogisticRegression(max_iter=300).fit(xs, labels)
    probes = {}
    for name in domains:
        if name == skip_probe:
            continue
        probes[name] = LogisticRegression(max_iter=300).fit(
            xs, (rng.random(90) < 0.5).astype(np.int64)
        )
    directory.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"L_star": 5, "alpha": 4.0, "tau": 0.6, "beta": 0.3, "domains": domains}
    if config is not None:
        cfg = config
    (directory / "config.json").write_text(json.dumps(cfg))
    vectors = {name: _unit(rng) for name in [*domains, "global"]}
    np.savez(directory / "steering_vectors.npz", **vectors)  # type: ignore[arg-type]
    (directory / "scaler.pkl").write_bytes(pickle.dumps(scaler, protocol=protocol))
    (directory / "router.pkl").write_bytes(pickle.dumps(router, protocol=protocol))
    (directory / "probes.pkl").write_bytes(pickle.dumps(probes, protocol=protocol))
    return {"scaler": scaler, "router": router, "probes": probes, "vectors": vectors}


def _error(path: Path) -> LegacyFormatError:
    with pytest.raises(LegacyFormatError) as info:
        read_legacy_bundle(path)
    return info.value


# --------------------------------------------------------------------------
# good bundles
# --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_reads_int_classes_bundle(tmp_path: Path, protocol: int) -> None:
    fitted = write_bundle(tmp_path / "a", protocol=protocol)
    assets = read_legacy_bundle(tmp_path / "a")
    assert assets.domains == DOMAINS
    assert (assets.layer, assets.alpha, assets.tau, assets.beta) == (5, 4.0, 0.6, 0.3)
    assert assets.model_id is None and assets.extra_config == {}
    assert assets.hidden_size == HIDDEN
    assert np.array_equal(assets.scaler.mean, fitted["scaler"].mean_)
    assert np.array_equal(assets.scaler.scale, fitted["scaler"].scale_)
    assert np.array_equal(assets.router.coef, fitted["router"].coef_)
    assert np.array_equal(assets.router.intercept, fitted["router"].intercept_)
    assert assets.router.classes.tolist() == [0, 1, 2]
    assert list(assets.probes) == DOMAINS
    for name, probe in assets.probes.items():
        assert np.array_equal(probe.coef, fitted["probes"][name].coef_)
    assert set(assets.vectors) == {*DOMAINS, "global"}
    for name, vector in assets.vectors.items():
        assert vector.dtype == np.float32 and np.array_equal(vector, fitted["vectors"][name])


def test_sources_hash_the_files(tmp_path: Path) -> None:
    write_bundle(tmp_path)
    assets = read_legacy_bundle(tmp_path)
    names = [s.name for s in assets.sources]
    assert names == sorted(
        ["config.json", "steering_vectors.npz", "scaler.pkl", "router.pkl", "probes.pkl"]
    )
    for source in assets.sources:
        data = (tmp_path / source.name).read_bytes()
        assert source.size == len(data)
        assert source.sha256 == hashlib.sha256(data).hexdigest()


def test_string_classes_and_missing_probe(tmp_path: Path) -> None:
    write_bundle(tmp_path, classes="str", skip_probe="calculator")
    assets = read_legacy_bundle(tmp_path)
    assert sorted(assets.router.classes.tolist()) == sorted(DOMAINS)
    assert assets.router.classes.dtype.kind == "U"
    assert list(assets.probes) == ["web_search", "calendar"]


def test_two_domains_router_has_one_row(tmp_path: Path) -> None:
    write_bundle(tmp_path, domains=["math", "search"])
    assets = read_legacy_bundle(tmp_path)
    assert assets.router.coef.shape == (1, HIDDEN)


def test_full_config_extra_keys_are_json_safe(tmp_path: Path) -> None:
    config = {
        "L_star": 3,
        "alpha": 2,
        "tau": 1,
        "beta": 0,
        "domains": DOMAINS,
        "model": "LiquidAI/LFM2.5-1.2B-Instruct",
        "probe_aucs": {"3": 0.9},
        "test_asa": {"f1": float("nan"), "fpr": float("inf"), "neg": float("-inf")},
        "system_prompt": "You are",
    }
    write_bundle(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))  # json writes NaN / Infinity
    assets = read_legacy_bundle(tmp_path)
    assert assets.model_id == "LiquidAI/LFM2.5-1.2B-Instruct"
    assert assets.alpha == 2.0 and isinstance(assets.alpha, float)
    assert assets.extra_config == {
        "probe_aucs": {"3": 0.9},
        "test_asa": {"f1": "NaN", "fpr": "Infinity", "neg": "-Infinity"},
        "system_prompt": "You are",
    }
    json.dumps(assets.extra_config, allow_nan=False)
    assert assets.config["system_prompt"] == "You are"


def test_every_committed_legacy_fixture_reads() -> None:
    cases = sorted(p for p in LEGACY.iterdir() if (p / "config.json").is_file())
    assert len(cases) >= 5
    for case in cases:
        meta = json.loads((case / "case.json").read_text())
        assets = read_legacy_bundle(case)
        assert assets.domains == meta["domains"], case.name
        assert assets.hidden_size == meta["hidden"], case.name
        assert sorted(assets.probes) == sorted(meta["probes"]), case.name
        assert assets.router.classes.tolist() == meta["router_classes"], case.name
        assert assets.tau == meta["tau"], case.name


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing", ["config.json", "steering_vectors.npz", "scaler.pkl", "router.pkl", "probes.pkl"]
)
def test_missing_file(tmp_path: Path, missing: str) -> None:
    write_bundle(tmp_path)
    (tmp_path / missing).unlink()
    error = _error(tmp_path)
    assert error.code == "LEGACY_MISSING_FILE" and error.file == missing


def test_missing_directory(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope").code == "LEGACY_MISSING_FILE"


BASE = {"L_star": 5, "alpha": 4.0, "tau": 0.6, "beta": 0.3, "domains": DOMAINS}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level"),
        ('{"L_star": 1, "L_star": 2}', "twice"),
        (json.dumps({k: v for k, v in BASE.items() if k != "tau"}), "tau"),
        (json.dumps({**BASE, "tau": 0.4}), "tau"),
        (json.dumps({**BASE, "tau": 1.5}), "tau"),
        (json.dumps({**BASE, "tau": "0.6"}), "tau"),
        (json.dumps({**BASE, "alpha": float("nan")}), "alpha"),
        (json.dumps({**BASE, "beta": 2.0}), "beta"),
        (json.dumps({**BASE, "L_star": -1}), "L_star"),
        (json.dumps({**BASE, "L_star": True}), "L_star"),
        (json.dumps({**BASE, "L_star": 2.0}), "L_star"),
        (json.dumps({**BASE, "domains": []}), "domains"),
        (json.dumps({**BASE, "domains": ["a", "a"]}), "twice"),
        (json.dumps({**BASE, "domains": ["a", ""]}), "non-empty"),
        (json.dumps({**BASE, "domains": ["a", 3]}), "non-empty"),
        (json.dumps({**BASE, "domains": ["a", "global"]}), "reserved"),
        (json.dumps({**BASE, "model": 7}), "model"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, needle: str) -> None:
    write_bundle(tmp_path)
    (tmp_path / "config.json").write_text(text)
    error = _error(tmp_path)
    assert error.code == "LEGACY_CONFIG" and error.file == "config.json"
    assert needle in error.message
    assert error.hint


def test_bad_config_encoding(tmp_path: Path) -> None:
    write_bundle(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff"}')
    assert _error(tmp_path).code == "LEGACY_CONFIG"


def _rewrite_npz(path: Path, arrays: dict[str, Any], **kwargs: Any) -> None:
    np.savez(path / "steering_vectors.npz", **arrays, **kwargs)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("drop_global", "missing vector(s): 'global'"),
        ("drop_domain", "'calendar'"),
        ("extra", "'unknown'"),
        ("float64", "float32"),
        ("object", "object"),
        ("not_unit", "'calculator' has L2 norm"),
        ("nan", "NaN"),
        ("shape2d", "1-D"),
        ("size", "has size"),
        ("not_zip", "zip"),
        ("not_npy", "not a .npy"),
        ("trailing", "data bytes"),
    ],
)
def test_bad_npz(tmp_path: Path, change: str, needle: str) -> None:
    fitted = write_bundle(tmp_path)
    vectors: dict[str, Any] = dict(fitted["vectors"])
    target = tmp_path / "steering_vectors.npz"
    if change == "drop_global":
        del vectors["global"]
    elif change == "drop_domain":
        del vectors["calendar"]
    elif change == "extra":
        vectors["unknown"] = vectors["global"]
    elif change == "float64":
        vectors["global"] = vectors["global"].astype(np.float64)
    elif change == "object":
        vectors["global"] = np.array(["x", "y"], dtype=object)
    elif change == "not_unit":
        vectors["calculator"] = vectors["calculator"] * 1.01
    elif change == "nan":
        vectors["calculator"] = np.full(HIDDEN, np.nan, dtype=np.float32)
    elif change == "shape2d":
        vectors["global"] = vectors["global"].reshape(3, 4)
    elif change == "size":
        vectors["calendar"] = (np.ones(HIDDEN + 1) / np.sqrt(HIDDEN + 1)).astype(np.float32)
    if change == "not_zip":
        target.write_bytes(b"PK\x03\x04 not really")
    elif change == "not_npy":
        with zipfile.ZipFile(target, "w") as archive:
            archive.writestr("global.npy", b"hello")
    elif change == "trailing":
        buffer = io.BytesIO()
        np.save(buffer, vectors["global"])
        _rewrite_npz(tmp_path, {k: v for k, v in vectors.items() if k != "global"})
        with zipfile.ZipFile(target, "a") as archive:
            archive.writestr("global.npy", buffer.getvalue() + b"\x00\x00\x00\x00")
    else:
        _rewrite_npz(tmp_path, vectors)
    error = _error(tmp_path)
    assert error.code == "NPZ_INVALID" and error.file == "steering_vectors.npz"
    assert needle in error.message


def test_compressed_npz_reads(tmp_path: Path) -> None:
    fitted = write_bundle(tmp_path)
    np.savez_compressed(tmp_path / "steering_vectors.npz", **fitted["vectors"])
    assets = read_legacy_bundle(tmp_path)
    assert np.array_equal(assets.vectors["global"], fitted["vectors"]["global"])


def test_unknown_probe_key(tmp_path: Path) -> None:
    fitted = write_bundle(tmp_path)
    probes = dict(fitted["probes"])
    probes["weather"] = probes["calculator"]
    (tmp_path / "probes.pkl").write_bytes(pickle.dumps(probes))
    error = _error(tmp_path)
    assert (
        error.code == "LEGACY_CONTENT"
        and error.file == "probes.pkl"
        and "'weather'" in error.message
    )


def test_router_classes_do_not_match_domains(tmp_path: Path) -> None:
    write_bundle(tmp_path, classes="str")
    config = {**BASE, "domains": ["web_search", "calculator", "weather"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    fitted_vectors = dict(np.load(tmp_path / "steering_vectors.npz"))
    fitted_vectors["weather"] = fitted_vectors.pop("calendar")
    np.savez(tmp_path / "steering_vectors.npz", **fitted_vectors)
    (tmp_path / "probes.pkl").write_bytes(pickle.dumps({}))
    error = _error(tmp_path)
    assert error.code == "LEGACY_CONTENT" and error.file == "router.pkl"
    assert "'calendar'" in error.message and "'weather'" in error.message


def test_router_class_count_mismatch(tmp_path: Path) -> None:
    write_bundle(tmp_path, domains=["a", "b"])
    other = tmp_path / "other"
    write_bundle(other)
    (tmp_path / "router.pkl").write_bytes((other / "router.pkl").read_bytes())
    error = _error(tmp_path)
    assert error.code == "LEGACY_CONTENT" and "3 classes" in error.message


def test_hidden_size_mismatch(tmp_path: Path) -> None:
    write_bundle(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "scaler.pkl").write_bytes(
        pickle.dumps(StandardScaler().fit(rng.normal(size=(10, HIDDEN + 2))))
    )
    error = _error(tmp_path)
    assert error.code == "LEGACY_CONTENT" and str(HIDDEN + 2) in error.message


def test_probe_with_other_classes(tmp_path: Path) -> None:
    fitted = write_bundle(tmp_path)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, HIDDEN))
    probes = dict(fitted["probes"])
    probes["calendar"] = LogisticRegression().fit(x, np.arange(20) % 2 + 1)
    (tmp_path / "probes.pkl").write_bytes(pickle.dumps(probes))
    error = _error(tmp_path)
    assert (
        error.code == "LEGACY_CONTENT"
        and "'calendar'" in error.message
        and "[1, 2]" in error.message
    )


def test_probes_not_a_dict(tmp_path: Path) -> None:
    fitted = write_bundle(tmp_path)
    (tmp_path / "probes.pkl").write_bytes(pickle.dumps(list(fitted["probes"].values())))
    error = _error(tmp_path)
    assert error.code == "LEGACY_CONTENT" and "dict" in error.message


def test_scaler_file_holds_a_router(tmp_path: Path) -> None:
    write_bundle(tmp_path)
    (tmp_path / "scaler.pkl").write_bytes((tmp_path / "router.pkl").read_bytes())
    error = _error(tmp_path)
    assert error.code == "LEGACY_CONTENT" and error.file == "scaler.pkl"
    assert "StandardScaler" in error.message


@pytest.mark.parametrize("target", ["scaler.pkl", "router.pkl", "probes.pkl"])
def test_hostile_pickle_in_bundle(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle)
    (bundle / target).write_bytes((HOSTILE / "os_system.pkl").read_bytes())
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UnsafePickleError) as info:
        read_legacy_bundle(bundle)
    assert info.value.code == "PICKLE_FORBIDDEN_GLOBAL" and info.value.file == target
    assert "'os.system'" in info.value.message
    assert list(work.iterdir()) == []
