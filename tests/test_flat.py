"""The flattened-batch simulation (asa_format.runtime.flat) equals each sequence steered alone."""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import asa_format
from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import DecisionError
from asa_format.runtime.flat import RequestSteering, finish, steer_flat
from asa_format.runtime.torch_decide import TorchDecider
from asa_format.testing import make_test_contents

H = 16


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out: dict[str, Any] = {}
    specs = [
        (("a", "b", "c"), C.POLICY_PREFILL_LAST_TOKEN, 3.0, 1),
        (("x", "y"), C.POLICY_GENERATED_TOKENS, -2.5, 2),
        (("p", "q", "r", "s"), C.POLICY_ALL_TOKENS, 6.0, 3),
    ]
    for names, policy, alpha, seed in specs:
        contents = make_test_contents(
            hidden_size=H,
            domains=names,
            policy=policy,
            alpha=alpha,
            probe_scale=1.0,
            tau=0.6,
            seed=seed,
        )
        bundle = load_bundle(
            asa_format.save_bundle(contents, tmp_path_factory.mktemp("b") / "bundle")
        )
        out[bundle.root_digest] = bundle
    return out


@dataclass
class Request:
    rid: str
    digest: str | None
    hidden: torch.Tensor  # [prompt + generated, H]: the block's output at every position
    prompt_len: int


def _expected(req: Request, registry: dict[str, Any], policy: str | None) -> torch.Tensor:
    """The request alone: Bundle.decide on its last prompt token, then the policy's positions."""
    if req.digest is None:
        return req.hidden.clone()
    bundle = registry[req.digest]
    pol = policy or bundle.manifest.steering.policy
    p = req.prompt_len
    d = bundle.decide(req.hidden[p - 1].to(torch.float32).numpy())[0]
    out = req.hidden.clone()
    if d.gate == 0:
        return out
    delta = torch.from_numpy(
        np.float32(d.gate * bundle.manifest.steering.alpha) * bundle.steering_vector(d.domain)
    ).to(req.hidden.dtype)
    if pol == C.POLICY_ALL_TOKENS:
        positions = range(out.shape[0])
    elif pol == C.POLICY_GENERATED_TOKENS:
        positions = range(p - 1, out.shape[0])
    else:
        positions = range(p - 1, p)
    for t in positions:
        out[t] = req.hidden[t] + delta
    return out


def _requests(
    rng: np.random.Generator, registry: dict[str, Any], n: int, dtype: torch.dtype, tag: str
) -> list[Request]:
    digests: list[str | None] = [*registry, None]
    out = []
    for i in range(n):
        p = int(rng.integers(1, 12))
        g = int(rng.integers(0, 6))
        hidden = torch.from_numpy(
            rng.standard_normal((p + g, H)).astype(np.float32) * rng.uniform(0.5, 4.0)
        ).to(dtype)
        hidden[0, 0] = -0.0  # a negative zero must survive wherever nothing is added
        out.append(Request(f"{tag}-{i}", digests[int(rng.integers(0, len(digests)))], hidden, p))
    return out


def _run(
    requests: list[Request],
    registry: dict[str, Any],
    policy: str | None,
    rng: np.random.Generator,
    state: dict[str, RequestSteering],
    deciders: dict[str, Any] | None = None,
) -> list[torch.Tensor]:
    """Schedule the requests in steps of random chunks, as a serving engine does, and collect the outputs."""
    done = [0] * len(requests)
    outputs = [torch.full_like(r.hidden, float("nan")) for r in requests]
    while any(done[i] < r.hidden.shape[0] for i, r in enumerate(requests)):
        active = [
            i for i, r in enumerate(requests) if done[i] < r.hidden.shape[0] and rng.uniform() < 0.8
        ]
        rng.shuffle(active)
        chunks = []
        for i in active:
            r = requests[i]
            pol = policy or (registry[r.digest].manifest.steering.policy if r.digest else None)
            left = r.hidden.shape[0] - done[i]
            if done[i] < r.prompt_len and pol == C.POLICY_ALL_TOKENS:
                n = r.prompt_len  # this policy needs the prompt in one chunk
            elif done[i] < r.prompt_len:
                n = int(rng.integers(1, r.prompt_len - done[i] + 1)) + int(
                    rng.integers(0, 2)
                )  # may run past the prompt
            else:
                n = int(rng.integers(1, 3))  # a decode step (two tokens: speculative decoding)
            chunks.append((i, min(n, left)))
        if not chunks:
            continue
        rows = [requests[i].hidden[done[i] : done[i] + n] for i, n in chunks]
        pad = torch.from_numpy(
            rng.standard_normal((int(rng.integers(0, 3)), H)).astype(np.float32)
        ).to(requests[0].hidden.dtype)
        flat = torch.cat([*rows, pad])
        qsl = np.cumsum([0, *[n for _, n in chunks]])
        before = flat.clone()
        out = steer_flat(
            flat,
            torch.from_numpy(qsl),
            [done[i] for i, _ in chunks],
            np.array([requests[i].prompt_len for i, _ in chunks]),
            [requests[i].digest for i, _ in chunks],
            registry,
            policy,
            state,
            [requests[i].rid for i, _ in chunks],
            deciders=deciders,
        )
        assert torch.equal(
            flat.view(torch.int16) if flat.dtype == torch.bfloat16 else flat,
            before.view(torch.int16) if flat.dtype == torch.bfloat16 else before,
        )
        if pad.shape[0]:
            assert torch.equal(out[qsl[-1] :], flat[qsl[-1] :])
        for (i, n), a in zip(chunks, qsl[:-1], strict=True):
            outputs[i][done[i] : done[i] + n] = out[a : a + n]
            done[i] += n
    finish(state, [r.rid for r in requests])
    return outputs


def _bits(t: torch.Tensor) -> torch.Tensor:
    return (
        t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t.view(torch.int32)
    )


def _check(
    requests: list[Request],
    outputs: list[torch.Tensor],
    registry: dict[str, Any],
    policy: str | None,
) -> None:
    for r, got in zip(requests, outputs, strict=True):
        assert torch.equal(_bits(got), _bits(_expected(r, registry, policy))), r.rid


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(
    "policy", [None, C.POLICY_PREFILL_LAST_TOKEN, C.POLICY_GENERATED_TOKENS, C.POLICY_ALL_TOKENS]
)
def test_mixed_batches_equal_each_sequence_alone(
    registry: dict[str, Any], dtype: torch.dtype, policy: str | None
) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{dtype}-{policy}".encode()))
    requests = _requests(rng, registry, 48, dtype, "r")
    state: dict[str, RequestSteering] = {}
    outputs = _run(requests, registry, policy, rng, state)
    _check(requests, outputs, registry, policy)
    assert state == {}
    gates = {
        registry[r.digest].decide(r.hidden[r.prompt_len - 1].float().numpy())[0].gate
        for r in requests
        if r.digest
    }
    assert gates == {-1, 0, 1}, "the requests exercise every gate"


def test_torch_deciders_give_the_same_batches(registry: dict[str, Any]) -> None:
    deciders = {k: TorchDecider.for_bundle(b) for k, b in registry.items()}
    assert all(d is not None for d in deciders.values())
    rng = np.random.default_rng(7)
    requests = _requests(rng, registry, 30, torch.float16, "t")
    outputs = _run(requests, registry, None, rng, {}, deciders=deciders)
    _check(requests, outputs, registry, None)


def test_eight_threads_with_their_own_state(registry: dict[str, Any]) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            rng = np.random.default_rng(100 + k)
            dtype = (torch.float32, torch.bfloat16)[k % 2]
            requests = _requests(rng, registry, 16, dtype, f"th{k}")
            _check(requests, _run(requests, registry, None, rng, {}), registry, None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _one(
    registry: dict[str, Any],
    digest: str,
    hidden: torch.Tensor,
    computed: int,
    prompt_len: int,
    state: dict[str, RequestSteering],
    rid: str = "r",
) -> torch.Tensor:
    return steer_flat(
        hidden,
        [0, hidden.shape[0]],
        [computed],
        [prompt_len],
        [digest],
        registry,
        None,
        state,
        [rid],
    )


def test_refusals_change_nothing(registry: dict[str, Any]) -> None:
    by_policy = {b.manifest.steering.policy: k for k, b in registry.items()}
    rows = torch.randn(6, H)
    state: dict[str, RequestSteering] = {}
    with pytest.raises(DecisionError) as err:
        _one(registry, "sha256:" + "0" * 64, rows, 0, 6, state)
    assert err.value.code == "DECISION_INPUT"
    with pytest.raises(DecisionError) as err:  # all_tokens with the prompt split in chunks
        _one(registry, by_policy[C.POLICY_ALL_TOKENS], rows[:3], 0, 6, state)
    assert err.value.code == "DECISION_FAILED"
    with pytest.raises(DecisionError) as err:  # a decode step without a decision
        _one(registry, by_policy[C.POLICY_GENERATED_TOKENS], rows[:1], 6, 6, state)
    assert err.value.code == "DECISION_FAILED"
    bad = rows.clone()
    bad[5, 2] = float("inf")
    with pytest.raises(DecisionError) as err:  # a non-finite decision row
        _one(registry, by_policy[C.POLICY_GENERATED_TOKENS], bad, 0, 6, state)
    assert err.value.code == "DECISION_INPUT"
    assert state == {}
    _one(registry, by_policy[C.POLICY_GENERATED_TOKENS], rows, 0, 6, state)
    assert set(state) == {"r"}
    with pytest.raises(DecisionError):  # the same request naming another bundle
        _one(registry, by_policy[C.POLICY_PREFILL_LAST_TOKEN], rows[:1], 6, 6, state)
    with pytest.raises(DecisionError):
        steer_flat(rows, [0, 3, 2], [0, 0], [3, 3], [None, None], registry, None, state, ["a", "b"])
    with pytest.raises(DecisionError):
        steer_flat(rows, [0, 6], [0], [6], [None], registry, "every_token", state, ["a"])


def test_padding_and_unsteered_rows_are_bit_identical(
    registry: dict[str, Any], tmp_path: Path
) -> None:
    always = make_test_contents(
        hidden_size=H, probe_bias=20.0, probe_scale=0.0, policy=C.POLICY_ALL_TOKENS
    )
    bundle = load_bundle(asa_format.save_bundle(always, tmp_path / "always"))
    reg = {**registry, bundle.root_digest: bundle}
    hidden = torch.randn(9, H, dtype=torch.bfloat16)
    hidden[0] = -0.0
    hidden[6:] = torch.tensor(float("nan"), dtype=torch.bfloat16)
    hidden[6:, 0] = -0.0
    out = steer_flat(
        hidden, [0, 2, 6], [0, 0], [2, 4], [None, bundle.root_digest], reg, None, {}, ["u", "s"]
    )
    assert torch.equal(_bits(out[:2]), _bits(hidden[:2])) and torch.equal(
        _bits(out[6:]), _bits(hidden[6:])
    )
    assert not torch.equal(out[2:6], hidden[2:6])
