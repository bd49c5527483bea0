"""Steering during real generation, checked against an independent reference hook.

Every test here compares the runtime with what spec section 3.7 says, worked
out from the test's own knowledge of the prompt (its length, which call is the
first of a generation), never from the runtime's classification. They cover
greedy decoding, sampling, beam search, ``use_cache=False``, static caches,
assisted generation, manual decode loops and interleaved generations, on
several architectures, whatever keyword the installed transformers uses for
the cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import DecisionError, RuntimeCompatError
from asa_format.runtime import SteeringSkippedWarning, attach, resolve_layers
from asa_format.testing import make_test_bundle
from tiny_models import SPECS, available, build_model, first_tensor, token_batch

pytestmark = pytest.mark.runtime

# Every architecture the installed transformers has (lfm2 and gemma3 are newer than 4.45).
ARCHS = tuple(
    a
    for a in (
        "llama",
        "qwen2",
        "mistral",
        "gemma",
        "gpt2",
        "gpt_neox",
        "opt",
        "phi",
        "falcon",
        "lfm2",
    )
    if available(a)
)
ALPHA = 3.0


class CountingBundle:
    """A loaded bundle that counts its decide() calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.domains = inner.domains
        self.root_digest = inner.root_digest
        self.calls = 0

    def decide(self, hidden: np.ndarray) -> Any:
        self.calls += 1
        return self.inner.decide(hidden)

    def steering_vector(self, domain: str | int) -> np.ndarray:
        return np.asarray(self.inner.steering_vector(domain))


def _bundle(tmp: Path, arch: str, policy: str, gate: int = 1) -> CountingBundle:
    spec = SPECS[arch]
    path = make_test_bundle(
        tmp / f"{arch}-{policy}-{gate}",
        hidden_size=spec.hidden_size,
        layer=1,
        num_layers=spec.num_layers,
        model_type=spec.model_type,
        alpha=ALPHA,
        policy=policy,
        probe_scale=0.0,
        probe_bias=20.0 * gate,
        route_to="search",
    )
    return CountingBundle(load_bundle(path))


def _delta(bundle: CountingBundle, gate: int = 1) -> torch.Tensor:
    v = torch.from_numpy(np.array(bundle.steering_vector("search"), dtype=np.float32))
    return v * float(np.float32(gate * ALPHA))


def _reference_where(
    policy: str, call: int, query: int, prompt_len: int, cached: bool
) -> torch.Tensor:
    """Where spec 3.7.1 adds the delta on call ``call`` of a one-prompt generation."""
    where = torch.zeros(query, dtype=torch.bool)
    if call == 0 or not cached:  # the pass starts at position 0
        where[prompt_len - 1] = True
        if policy == C.POLICY_ALL_TOKENS:
            where[:] = True
        elif policy == C.POLICY_GENERATED_TOKENS:
            where[prompt_len - 1 :] = True
    elif policy != C.POLICY_PREFILL_LAST_TOKEN:
        where[:] = True
    return where


@contextmanager
def reference_hook(
    model: Any, block: Any, delta: torch.Tensor, policy: str, prompt_len: int, cached: bool
) -> Iterator[list[int]]:
    """The spec's behaviour for one prompt (any number of beams), written out by hand."""
    calls: list[int] = []

    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = first_tensor(output)
        where = _reference_where(policy, len(calls), hidden.shape[1], prompt_len, cached)
        calls.append(hidden.shape[1])
        new = hidden.clone()
        new[:, where] += delta.to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _generate(model: Any, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", SteeringSkippedWarning)
        new = kwargs.pop("max_new_tokens", 5)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pad_token_id=0,
            max_new_tokens=new,
            min_new_tokens=new,
            **kwargs,
        )
    return out[:, ids.shape[1] :]


PROMPT = [5, 17, 23, 9, 41, 7]


@pytest.mark.parametrize("policy", C.POLICIES)
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_matches_reference_on_architectures(
    arch: str, policy: str, tmp_path: Path
) -> None:
    model = build_model(arch, seed=3)
    bundle = _bundle(tmp_path, arch, policy)
    block = resolve_layers(model).layers[1]
    ids = torch.tensor([PROMPT])
    with reference_hook(model, block, _delta(bundle), policy, len(PROMPT), cached=True):
        expected = _generate(model, ids, do_sample=False)
    with attach(model, bundle) as handle:
        got = _generate(model, ids, do_sample=False)
    assert torch.equal(got, expected)
    assert bundle.calls == 1  # decided once per generation, never on a decode step
    assert len(handle.records) == 1 and handle.last is not None and handle.last.gates == [1]
    assert handle.skipped == 0


STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 0, "temperature": 1.0},
    "beam_search": {"do_sample": False, "num_beams": 3},
    "no_cache": {"do_sample": False, "use_cache": False},
    "static_cache": {"do_sample": False, "cache_implementation": "static"},
}


@pytest.mark.parametrize("policy", C.POLICIES)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("arch", ("llama", "gpt2"))
def test_generation_strategies_match_reference(
    arch: str, strategy: str, policy: str, tmp_path: Path
) -> None:
    model = build_model(arch, seed=4)
    bundle = _bundle(tmp_path, arch, policy)
    block = resolve_layers(model).layers[1]
    ids = torch.tensor([PROMPT])
    kwargs = STRATEGIES[strategy]
    cached = kwargs.get("use_cache", True)
    with reference_hook(model, block, _delta(bundle), policy, len(PROMPT), cached) as calls:
        torch.manual_seed(11)
        expected = _generate(model, ids, **kwargs)
    with attach(model, bundle) as handle:
        torch.manual_seed(11)
        got = _generate(model, ids, **kwargs)
    assert len(calls) >= 3
    assert torch.equal(got, expected), f"{strategy}: {got.tolist()} != {expected.tolist()}"
    assert bundle.calls == 1
    assert len(handle.records) == 1 and handle.skipped == 0


@pytest.mark.parametrize("policy", C.POLICIES)
def test_assisted_generation_matches_reference(policy: str, tmp_path: Path) -> None:
    model = build_model("llama", seed=5)
    assistant = build_model("llama", seed=6)
    bundle = _bundle(tmp_path, "llama", policy)
    block = resolve_layers(model).layers[1]
    ids = torch.tensor([PROMPT])
    with reference_hook(model, block, _delta(bundle), policy, len(PROMPT), True) as calls:
        expected = _generate(
            model, ids, do_sample=False, assistant_model=assistant, max_new_tokens=8
        )
    with attach(model, bundle) as handle:
        got = _generate(model, ids, do_sample=False, assistant_model=assistant, max_new_tokens=8)
    assert calls[0] > len(PROMPT)  # the first pass carried candidate tokens after the prompt
    assert torch.equal(got, expected)
    assert bundle.calls == 1 and handle.last is not None
    assert handle.last.positions == [len(PROMPT) - 1]


def test_beam_search_on_a_batch_decides_each_prompt(tmp_path: Path) -> None:
    model = build_model("llama", seed=7)
    bundle = _bundle(tmp_path, "llama", C.POLICY_GENERATED_TOKENS)
    ids, mask = token_batch([PROMPT, PROMPT[:4]], side="left")
    with attach(model, bundle) as handle, torch.no_grad():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=2,
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
        )
    assert handle.last is not None and handle.last.gates == [1, 1, 1, 1]
    assert handle.last.positions == [ids.shape[1] - 1] * 4
    assert bundle.calls == 1 and handle.skipped == 0


def test_use_cache_false_rereads_continue_the_generation(tmp_path: Path) -> None:
    """Without a cache every pass re-reads the sequence; the prefill's decision is reused."""
    model = build_model("llama", seed=8)
    bundle = _bundle(tmp_path, "llama", C.POLICY_GENERATED_TOKENS)
    block = resolve_layers(model).layers[1]
    ids, mask = token_batch([PROMPT, PROMPT[:3]], side="left")
    raw: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    try:
        with attach(model, bundle) as handle:  # (attach probes the block once: hook after it)
            block.register_forward_hook(lambda m, a, o: raw.append(first_tensor(o)), prepend=True)
            block.register_forward_hook(lambda m, a, o: steered.append(first_tensor(o)))
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=3,
                    min_new_tokens=3,
                    do_sample=False,
                    pad_token_id=0,
                    use_cache=False,
                )
    finally:
        block._forward_hooks.clear()
    delta = _delta(bundle)
    width = ids.shape[1]
    assert [r.shape[1] for r in raw] == [width, width + 1, width + 2]
    for r, s in zip(raw, steered, strict=True):
        diff = s - r
        for row in range(2):
            changed = diff[row].abs().sum(-1) > 0
            expected = torch.zeros(r.shape[1], dtype=torch.bool)
            expected[width - 1 :] = True  # decision position, then every generated token
            assert torch.equal(changed, expected)
            torch.testing.assert_close(diff[row, width - 1], delta, atol=1e-5, rtol=0)
    assert bundle.calls == 1 and len(handle.records) == 1


def test_two_generations_interleaved_in_one_thread(tmp_path: Path) -> None:
    model = build_model("llama", seed=9)
    up = _bundle(tmp_path, "llama", C.POLICY_GENERATED_TOKENS, gate=1)
    block = resolve_layers(model).layers[1]

    def manual(ids: torch.Tensor, steps: int) -> list[torch.Tensor]:
        out = model(input_ids=ids, use_cache=True)
        logits = [out.logits[:, -1]]
        cache = out.past_key_values
        for _ in range(steps):
            nxt = logits[-1].argmax(-1, keepdim=True)
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[:, -1])
        return logits

    a, b = torch.tensor([PROMPT]), torch.tensor([PROMPT[::-1]])
    with reference_hook(model, block, _delta(up), C.POLICY_GENERATED_TOKENS, len(PROMPT), True):
        with torch.no_grad():
            ref_a = manual(a, 3)
    with reference_hook(model, block, _delta(up), C.POLICY_GENERATED_TOKENS, len(PROMPT), True):
        with torch.no_grad():
            ref_b = manual(b, 3)
    with attach(model, up) as handle, torch.no_grad():
        out_a = model(input_ids=a, use_cache=True)
        out_b = model(input_ids=b, use_cache=True)
        got_a, got_b = [out_a.logits[:, -1]], [out_b.logits[:, -1]]
        cache_a, cache_b = out_a.past_key_values, out_b.past_key_values
        for _ in range(3):  # alternate the two generations, each with its own cache
            out_a = model(input_ids=got_a[-1].argmax(-1, keepdim=True), past_key_values=cache_a)
            out_b = model(input_ids=got_b[-1].argmax(-1, keepdim=True), past_key_values=cache_b)
            cache_a, cache_b = out_a.past_key_values, out_b.past_key_values
            got_a.append(out_a.logits[:, -1])
            got_b.append(out_b.logits[:, -1])
    for x, y in zip(got_a + got_b, ref_a + ref_b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    assert len(handle.records) == 2 and up.calls == 2 and handle.skipped == 0


def test_unclassifiable_pass_is_not_steered_and_reported(tmp_path: Path) -> None:
    model = build_model("llama", seed=10)
    bundle = _bundle(tmp_path, "llama", C.POLICY_GENERATED_TOKENS)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        pre = model(input_ids=ids, use_cache=True)  # a cache filled before attach
        nxt = pre.logits[:, -1:].argmax(-1)
        baseline = model(input_ids=nxt, past_key_values=pre.past_key_values).logits
        pre = model(input_ids=ids, use_cache=True)
    with attach(model, bundle) as handle, torch.no_grad():
        with pytest.warns(SteeringSkippedWarning, match="did not see"):
            got = model(input_ids=nxt, past_key_values=pre.past_key_values).logits
        assert torch.equal(got, baseline)
        assert handle.skipped >= 1 and bundle.calls == 0
        # No cache, yet a mask wider than the input: something came before this call.
        with pytest.warns(SteeringSkippedWarning, match="no cache object"):
            model(
                input_ids=ids,
                attention_mask=torch.ones(1, len(PROMPT) + 2, dtype=torch.long),
                use_cache=True,
            )
        assert bundle.calls == 0
        # The sources of the past length disagree: the cache holds 6 tokens, the mask says 8.
        out = model(input_ids=ids, use_cache=True)
        assert bundle.calls == 1
        with pytest.warns(SteeringSkippedWarning, match="disagree"):
            model(
                input_ids=nxt,
                past_key_values=out.past_key_values,
                attention_mask=torch.ones(1, len(PROMPT) + 3, dtype=torch.long),
            )
    with attach(model, bundle, on_unclassified="raise"), torch.no_grad():
        pre = model(input_ids=ids, use_cache=True)
    with attach(model, bundle, on_unclassified="raise"), torch.no_grad():
        with pytest.raises(DecisionError) as info:
            model(input_ids=nxt, past_key_values=pre.past_key_values)
        assert info.value.code == "PASS_UNCLASSIFIED"
        assert "on_unclassified" in str(info.value)


def test_block_called_alone_is_not_steered(tmp_path: Path) -> None:
    model = build_model("llama", seed=10)
    bundle = _bundle(tmp_path, "llama", C.POLICY_ALL_TOKENS)
    base = model.model
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        baseline = base(input_ids=ids).last_hidden_state
    with attach(model, bundle) as handle, torch.no_grad():
        with pytest.warns(SteeringSkippedWarning, match="outside the forward"):
            got = base(input_ids=ids).last_hidden_state
    assert torch.equal(got, baseline) and handle.skipped >= 1


@pytest.mark.parametrize("policy", C.POLICIES)
@pytest.mark.parametrize(
    "arch", [a for a in ("llama", "gpt2", "lfm2", "gemma3_vl", "falcon") if available(a)]
)
def test_self_test_passes(arch: str, policy: str, tmp_path: Path) -> None:
    model = build_model(arch, seed=2)
    bundle = _bundle(tmp_path, arch, policy)
    with attach(model, bundle, self_test=True) as handle:
        assert handle.active
        assert len(handle.records) == 0  # the self-test's own record is not kept


def test_self_test_detects_wrong_steering_and_detaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asa_format.runtime import steering

    model = build_model("llama", seed=2)
    bundle = _bundle(tmp_path, "llama", C.POLICY_PREFILL_LAST_TOKEN)
    real_where = steering.Steerer._where

    def every_position(self: Any, *args: Any) -> torch.Tensor:
        where: torch.Tensor = real_where(self, *args)
        return torch.ones_like(where)  # a runtime that steers every token

    monkeypatch.setattr(steering.Steerer, "_where", every_position)
    with pytest.raises(RuntimeCompatError) as info:
        attach(model, bundle, self_test=True)
    assert info.value.code == "SELF_TEST_FAILED"
    assert "policy names" in str(info.value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
