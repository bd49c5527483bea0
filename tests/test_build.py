"""The pipeline API: fitted scikit-learn objects -> bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from asa_format import load_bundle
from asa_format.converters import build_bundle
from asa_format.errors import ConversionError

DOMAINS = ["search", "math", "code"]


def _pipeline(
    hidden: int = 12, labels: str = "str", seed: int = 0, fit_dtype: type = np.float64
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, hidden)) * 3
    y = np.repeat(np.arange(3), 60)
    h = (centers[y] + rng.standard_normal((180, hidden))).astype(np.float32)
    scaler = StandardScaler().fit(h)
    x = scaler.transform(h).astype(fit_dtype)
    router_y = np.array(DOMAINS)[y] if labels == "str" else y
    router = LogisticRegression(max_iter=500).fit(x, router_y)
    probes = {}
    for d, name in enumerate(DOMAINS[:2]):  # "code" has no probe
        rows = y == d
        probes[name] = LogisticRegression(max_iter=500).fit(
            x[rows], (x[rows, 0] > np.median(x[rows, 0])).astype(int)
        )
    vectors = {name: rng.standard_normal(hidden) for name in [*DOMAINS, "global"]}
    return {"scaler": scaler, "router": router, "probes": probes, "vectors": vectors}


@pytest.mark.parametrize("labels", ["str", "int"])
def test_build_bundle_reproduces_estimators(labels: str, tmp_path: Path) -> None:
    objs = _pipeline(labels=labels)
    path, parity = build_bundle(
        tmp_path / "b",
        domains=DOMAINS,
        layer=3,
        alpha=2.0,
        tau=0.7,
        beta=0.2,
        model_id="org/tiny",
        model_type="llama",
        num_layers=4,
        samples=1024,
        **objs,
    )  # type: ignore[arg-type]
    assert parity.ok and parity.tolerance == 1e-9 and parity.max_probability_difference < 1e-9
    bundle = load_bundle(path)
    assert bundle.domains == DOMAINS and bundle.manifest.domains[2].probe is None
    h = np.random.default_rng(1).standard_normal((50, 12)).astype(np.float32)
    x = objs["scaler"].transform(h)  # type: ignore[attr-defined]
    expected = [
        DOMAINS.index(c) if isinstance(c, str) else int(c) for c in objs["router"].predict(x)
    ]  # type: ignore[attr-defined]
    assert bundle.decide(h).domain_index.tolist() == expected
    v = np.asarray(objs["vectors"]["search"])  # type: ignore[index]
    np.testing.assert_allclose(np.linalg.norm(bundle.vectors["search"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(bundle.vectors["search"], v / np.linalg.norm(v), atol=1e-7)


def test_build_bundle_float32_estimators(tmp_path: Path) -> None:
    """scikit-learn >= 1.8 fitted on float32 computes in float32: parity to float32 precision."""
    objs = _pipeline(fit_dtype=np.float32)
    _, parity = build_bundle(
        tmp_path / "b", domains=DOMAINS, layer=1, alpha=1.0, tau=0.6, beta=0.0, samples=1024, **objs
    )  # type: ignore[arg-type]
    assert parity.ok and parity.domain_agreement == 1.0 and parity.gate_agreement == 1.0
    assert parity.max_probability_difference < 1e-6
    if np.asarray(objs["router"].coef_).dtype == np.float32:  # type: ignore[attr-defined]
        assert parity.tolerance == 1e-5


def test_build_bundle_is_deterministic(tmp_path: Path) -> None:
    objs = _pipeline()
    kwargs = dict(domains=DOMAINS, layer=1, alpha=1.0, tau=0.6, beta=0.0, samples=64)
    a, _ = build_bundle(tmp_path / "a", **kwargs, **objs)  # type: ignore[arg-type]
    b, _ = build_bundle(tmp_path / "b", **kwargs, **objs)  # type: ignore[arg-type]
    sha = lambda p: {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in p.iterdir()}  # noqa: E731
    assert sha(a) == sha(b)


def test_build_bundle_other_classifier(tmp_path: Path) -> None:
    objs = _pipeline()
    scaler = objs["scaler"]
    rng = np.random.default_rng(3)
    h = rng.standard_normal((200, 12)).astype(np.float32)
    x = scaler.transform(h)  # type: ignore[attr-defined]
    objs["probes"] = {
        "search": DecisionTreeClassifier(max_depth=3, random_state=0).fit(
            x, (x[:, 1] > 0).astype(int)
        )
    }
    path, parity = build_bundle(
        tmp_path / "b", domains=DOMAINS, layer=0, alpha=1.0, tau=0.6, beta=0.1, samples=512, **objs
    )  # type: ignore[arg-type]
    assert parity.ok
    assert load_bundle(path).manifest.domains[0].probe == "probe_0.onnx"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda o: o["vectors"].pop("global"), "no steering vector for ['global']"),
        (
            lambda o: o["vectors"].__setitem__("search", np.ones(5)),
            "vector 'search' has shape [5], expected [12]",
        ),
        (
            lambda o: o["vectors"].__setitem__("extra", np.ones(12)),
            "steering vectors for unknown names ['extra']",
        ),
        (
            lambda o: o["probes"].__setitem__("nope", o["probes"]["search"]),
            "probes for unknown domains ['nope']",
        ),
        (
            lambda o: o.__setitem__(
                "router",
                LogisticRegression().fit(
                    np.random.default_rng(0).standard_normal((30, 7)), np.arange(30) % 3
                ),
            ),
            "the router expects 7 features, the scaler 12",
        ),
        (
            lambda o: o["vectors"].__setitem__("math", np.zeros(12)),
            "vector 'math' is zero or not finite",
        ),
    ],
)
def test_build_bundle_refuses_inconsistent_inputs(mutate, needle: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    objs = _pipeline()
    mutate(objs)
    with pytest.raises(ConversionError) as info:
        build_bundle(
            tmp_path / "b",
            domains=DOMAINS,
            layer=1,
            alpha=1.0,
            tau=0.6,
            beta=0.0,
            samples=64,
            **objs,
        )
    assert info.value.code == "INPUT_SHAPE" and needle in str(info.value)
    assert not (tmp_path / "b").exists()
