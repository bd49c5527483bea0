"""The serving configuration, registry and cache salts (asa_format.serving), without vLLM.

The plugin's behaviour inside vLLM is tested by tests/test_vllm_plugin.py
(in the virtualenv .ci/vllm.sh builds); this file checks the parts that need
no engine: the environment parsing, loading with every check, the model
binding, request resolution and the prefix-cache salt rules.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import transformers
from test_hub import COMMIT, _cache

import asa_format
from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import AsaError, UsageError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.interventions import ConditionGate
from asa_format.format.manifest import ModelBinding
from asa_format.runtime.program import Program
from asa_format.serving.registry import (
    check_model,
    config_model,
    load_registry,
    read_config,
)
from asa_format.serving.steer import cache_salt, needs_whole_prompt, salt_parts
from asa_format.signing import load_private_key, sign_bundle
from asa_format.testing import make_test_contents

H = 16
MODEL = ModelBinding(hidden_size=H, type="llama", num_layers=4)


def _always(policy: str = C.POLICY_ALL_TOKENS, model: ModelBinding = MODEL) -> BundleContents:
    rng = np.random.default_rng(1)
    return BundleContents(
        model=model,
        interventions=[InterventionData("cv", {1: rng.standard_normal(H)}, policy=policy)],
    )


def _condition(aggregate: str, policy: str) -> BundleContents:
    rng = np.random.default_rng(2)
    return BundleContents(
        model=MODEL,
        interventions=[
            InterventionData(
                "c",
                {2: rng.standard_normal(H)},
                policy=policy,
                condition=ConditionGate((1,), "greater_than", 0.1, aggregate),
                conditions={1: rng.standard_normal(H)},
            )
        ],
    )


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    made = {
        "cv": _always(),
        "cv_last": _always(C.POLICY_PREFILL_LAST_TOKEN),
        "asa": make_test_contents(hidden_size=H, num_layers=4),
        "asa_all": make_test_contents(hidden_size=H, num_layers=4, policy=C.POLICY_ALL_TOKENS),
        "mean": _condition("mean", C.POLICY_GENERATED_TOKENS),
        "last_all": _condition("last", C.POLICY_ALL_TOKENS),
        "six": _always(model=ModelBinding(hidden_size=H, type="llama", num_layers=6)),
        "qwen": _always(model=ModelBinding(hidden_size=H, type="qwen2", num_layers=4)),
        "wide": BundleContents(
            model=ModelBinding(hidden_size=2 * H, type="llama", num_layers=4),
            interventions=[InterventionData("w", {1: np.ones(2 * H)})],
        ),
    }
    return {name: asa_format.save_bundle(c, root / name) for name, c in made.items()}


def _env(**bundles: Path | str) -> dict[str, str]:
    return {"ASA_VLLM_BUNDLES": json.dumps({k: str(v) for k, v in bundles.items()})}


def _code(fn: object) -> tuple[str, str]:
    with pytest.raises(AsaError) as info:
        fn()  # type: ignore[operator]
    return info.value.code, info.value.message


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        "[]",
        '{"a/b": "/x"}',
        '{"": "/x"}',
        '{"a": 3}',
        '{"a": ""}',
        json.dumps({f"b{i}": "/x" for i in range(65)}),
    ],
)
def test_bad_configuration_is_refused(value: str) -> None:
    code, _ = _code(lambda: read_config({"ASA_VLLM_BUNDLES": value}))
    assert code == "SERVING_CONFIG"


@pytest.mark.parametrize("value", ["[]", '"key.pub"', '[""]', "[1]", "{"])
def test_bad_trusted_keys_are_refused(value: str) -> None:
    env = {"ASA_VLLM_BUNDLES": '{"a": "/x"}', "ASA_VLLM_TRUSTED_KEYS": value}
    assert _code(lambda: read_config(env))[0] == "SERVING_CONFIG"


def test_unset_means_no_bundles() -> None:
    assert read_config({}).bundles == {} and read_config({"ASA_VLLM_BUNDLES": "  "}).bundles == {}
    assert not load_registry({})


def test_registry_resolves_names_and_digests_only(bundles: dict[str, Path]) -> None:
    registry = load_registry(_env(cv=bundles["cv"], tools=bundles["asa"], again=bundles["asa"]))
    digest = load_bundle(bundles["asa"]).root_digest
    assert registry.resolve("tools").digest == digest == registry.resolve(digest).digest
    assert registry.resolve("again").digest == digest
    assert registry.pins() == {
        "again": digest,
        "cv": load_bundle(bundles["cv"]).root_digest,
        "tools": digest,
    }
    for bad in (
        "nope",
        "sha256:" + "0" * 64,
        digest.upper(),
        3,
        None,
        ["tools"],
        str(bundles["cv"]),
    ):
        with pytest.raises(UsageError) as info:
            registry.resolve(bad)
        assert info.value.code == "SERVING_BUNDLE_UNKNOWN"
        assert "again, cv, tools" in info.value.message


def test_a_bad_bundle_stops_loading_and_is_named(bundles: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundles["cv"], bad)
    (bad / "extra.txt").write_text("x")
    code, message = _code(lambda: load_registry(_env(fine=bundles["asa"], broken=bad)))
    assert code == "FILE_UNLISTED" and "bundle 'broken'" in message
    code, message = _code(lambda: load_registry(_env(gone=tmp_path / "missing")))
    assert code == "BUNDLE_NOT_FOUND" and "bundle 'gone'" in message


def test_pinned_digests(bundles: dict[str, Path]) -> None:
    env = _env(cv=bundles["cv"])
    digest = load_bundle(bundles["cv"]).root_digest
    assert load_registry(env, pinned={"cv": digest}).resolve("cv").digest == digest
    code, message = _code(lambda: load_registry(env, pinned={"cv": "sha256:" + "1" * 64}))
    assert code == "DIGEST_MISMATCH" and "bundle 'cv'" in message
    assert _code(lambda: load_registry(env, pinned={"other": digest}))[0] == "SERVING_CONFIG"


def test_trusted_keys(bundles: dict[str, Path], tmp_path: Path, keys: dict) -> None:  # type: ignore[type-arg]
    signed = tmp_path / "signed"
    shutil.copytree(bundles["cv"], signed)
    sign_bundle(signed, load_private_key(keys["alice"][0]))
    env = {**_env(s=signed), "ASA_VLLM_TRUSTED_KEYS": json.dumps([str(keys["alice"][1])])}
    assert load_registry(env).resolve("s").digest == load_bundle(signed).root_digest
    env["ASA_VLLM_TRUSTED_KEYS"] = json.dumps([str(keys["mallory"][1])])
    assert _code(lambda: load_registry(env))[0] == "SIGNATURE_UNTRUSTED_KEY"
    env = {**_env(u=bundles["cv"]), "ASA_VLLM_TRUSTED_KEYS": json.dumps([str(keys["alice"][1])])}
    code, message = _code(lambda: load_registry(env))
    assert code == "SIGNATURE_MISSING" and "bundle 'u'" in message


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("six", "MODEL_LAYER_COUNT"),
        ("qwen", "MODEL_TYPE_MISMATCH"),
        ("wide", "MODEL_HIDDEN_SIZE"),
    ],
)
def test_bundles_bound_to_another_model_are_refused(
    bundles: dict[str, Path], name: str, code: str
) -> None:
    config = transformers.LlamaConfig(
        hidden_size=H, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32
    )
    model, layers = config_model(config)
    check_model(load_registry(_env(cv=bundles["cv"], asa=bundles["asa"])), model, layers)
    got, message = _code(lambda: check_model(load_registry(_env(x=bundles[name])), model, layers))
    assert got == code and "bundle 'x'" in message


def test_deltas_that_overflow_the_dtype_are_refused(tmp_path: Path) -> None:
    huge = asa_format.save_bundle(
        BundleContents(
            model=MODEL, interventions=[InterventionData("h", {1: np.full(H, 1e6)}, 1e5)]
        ),
        tmp_path / "huge",
    )
    config = transformers.LlamaConfig(
        hidden_size=H, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32
    )
    model, layers = config_model(config)
    registry = load_registry(_env(h=huge))
    check_model(registry, model, layers, "float32")
    assert _code(lambda: check_model(registry, model, layers, "float16"))[0] == "VALUE_OVERFLOW"


def test_salts_separate_what_steering_separates(bundles: dict[str, Path]) -> None:
    programs = {n: Program(load_bundle(p)) for n, p in bundles.items()}
    a, b, c = [5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 7, 8, 10]
    # always on every position: the digest alone (blocks are shared across prompt lengths)
    assert salt_parts(programs["cv"]) == (False, False, False)
    assert cache_salt(programs["cv"], a) == cache_salt(programs["cv"], c)
    assert cache_salt(programs["cv"], a) != cache_salt(programs["cv_last"], a)
    # a policy that singles out the last prompt token, or a decision there: the prompt length
    for name in ("cv_last", "asa"):
        assert salt_parts(programs[name]) == (True, False, False)
        assert cache_salt(programs[name], a) == cache_salt(programs[name], b)
        assert cache_salt(programs[name], a) != cache_salt(programs[name], c)
    # a decision that steers every prompt token: the whole prompt
    for name in ("asa_all", "last_all"):
        assert needs_whole_prompt(programs[name])
        assert cache_salt(programs[name], a) != cache_salt(programs[name], b)
        assert cache_salt(programs[name], a) == cache_salt(programs[name], a)
    assert not needs_whole_prompt(programs["asa"]) and not needs_whole_prompt(programs["cv"])
    # a mean condition: never shared
    assert salt_parts(programs["mean"])[2]
    assert cache_salt(programs["mean"], a) != cache_salt(programs["mean"], a)
    # the request's own salt is kept; the bundle's digest is always there
    salt = cache_salt(programs["asa"], a, "tenant7")
    assert salt.endswith("-tenant7") and salt.startswith("asa-")
    digest = load_bundle(bundles["asa"]).root_digest.removeprefix("sha256:")
    assert digest in salt


def test_the_plugin_module_imports_without_vllm() -> None:
    import importlib.util

    from asa_format.serving import vllm_plugin

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: the refusal without it cannot be observed here")
    vllm_plugin.register()  # no vLLM and no configuration: nothing to do, no error
    assert not vllm_plugin._installed


def test_the_plugin_refuses_a_configuration_it_cannot_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from asa_format.serving import vllm_plugin

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: the refusal without it cannot be observed here")
    monkeypatch.setenv("ASA_VLLM_BUNDLES", '{"a": "/x"}')
    assert _code(vllm_plugin.register)[0] == "SERVING_CONFIG"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network; the hub cache in tmp_path (as tests/test_hub.py's fixture)."""
    import socket

    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def no_network(*_a: object, **_k: object) -> None:
        raise AssertionError("the test touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path


def test_hub_references_are_loaded_pinned(bundles: dict[str, Path], offline: Path) -> None:
    """A configured hub reference (a prepared local hub cache, no network) loads with every check."""
    _cache(offline, bundles["cv"])
    digest = load_bundle(bundles["cv"]).root_digest
    registry = load_registry(_env(hub=f"org/steer@{COMMIT}"))
    assert registry.resolve("hub").digest == digest
    # a moving revision is not pinned: refused, naming the bundle
    code, message = _code(lambda: load_registry(_env(moving="org/steer@main")))
    assert code == "HUB_REFERENCE" and "bundle 'moving'" in message
