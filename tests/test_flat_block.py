"""steer_flat_block (every intervention kind in the flattened layout) equals each sequence alone.

The reference below is written from the spec (sections 3.7.1, 4.6, 14.1,
14.4), not from the runtime: per request alone, every block's reads (the
condition similarities, the ASA decision) on the block output at the prefill,
then at each position the float32 sum of the deltas whose policy steers it
(per policy in the order of the policy list, each policy's terms in manifest
order), cast once and added. Requests are scheduled in random chunks (chunked
prefill, decode steps, padding rows), mixed with unsteered requests.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import asa_format
from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import DecisionError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.interventions import ConditionGate
from asa_format.format.manifest import ModelBinding
from asa_format.runtime.flat import FlatState, steer_flat_block
from asa_format.runtime.program import Program
from asa_format.testing import make_test_contents

H = 16
BLOCKS = 4
MODEL = ModelBinding(hidden_size=H, type="llama", num_layers=BLOCKS)


def _vec(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(H) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Program]:
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("flat_block")
    made: list[BundleContents] = [
        BundleContents(
            model=MODEL,
            interventions=[InterventionData("cv", {1: _vec(rng), 3: _vec(rng)}, coefficient=1.5)],
        ),
        BundleContents(
            model=MODEL,
            interventions=[
                InterventionData("gen", {2: _vec(rng)}, policy=C.POLICY_GENERATED_TOKENS),
                InterventionData("last", {2: _vec(rng)}, 0.5, C.POLICY_PREFILL_LAST_TOKEN),
                InterventionData("all", {2: _vec(rng, 1e-3)}, 3.0, C.POLICY_ALL_TOKENS),
            ],
        ),
        BundleContents(
            model=MODEL,
            interventions=[
                InterventionData(
                    "mean",
                    {2: _vec(rng)},
                    policy=C.POLICY_GENERATED_TOKENS,
                    condition=ConditionGate((1,), "greater_than", 0.0, "mean"),
                    conditions={1: _vec(rng)},
                ),
                InterventionData(
                    "lastcond",
                    {3: _vec(rng)},
                    policy=C.POLICY_PREFILL_LAST_TOKEN,
                    condition=ConditionGate((1, 2), "less_than", 0.2, "last"),
                    conditions={1: _vec(rng), 2: _vec(rng)},
                ),
            ],
        ),
        dataclasses.replace(  # asa and always on the same block
            make_test_contents(
                hidden_size=H,
                layer=2,
                policy=C.POLICY_GENERATED_TOKENS,
                probe_scale=3.0,
                num_layers=BLOCKS,
                seed=2,
            ),
            interventions=[InterventionData("add", {2: _vec(rng, 0.3), 0: _vec(rng)})],
        ),
        make_test_contents(
            hidden_size=H, layer=1, policy=C.POLICY_ALL_TOKENS, probe_scale=3.0, seed=3
        ),
        make_test_contents(
            hidden_size=H, layer=3, policy=C.POLICY_PREFILL_LAST_TOKEN, probe_scale=3.0, seed=4
        ),
    ]
    out = {}
    for i, contents in enumerate(made):
        bundle = load_bundle(asa_format.save_bundle(contents, root / f"b{i}"))
        out[bundle.root_digest] = Program(bundle)
    return out


@dataclass
class Request:
    rid: str
    digest: str | None
    hidden: list[torch.Tensor]  # per block: [prompt + generated, H], the block output
    prompt_len: int


def _steers(policy: str, position: int, prompt_len: int) -> bool:
    if position == prompt_len - 1:
        return True
    if position < prompt_len:
        return policy == C.POLICY_ALL_TOKENS
    return policy in (C.POLICY_ALL_TOKENS, C.POLICY_GENERATED_TOKENS)


def _cos(h: np.ndarray, c: np.ndarray) -> float:
    nh, nc = math.sqrt(float(h @ h)), math.sqrt(float(c @ c))
    return 0.0 if nh == 0.0 else float(h @ c) / (nh * nc)


def _expected(req: Request, programs: dict[str, Program]) -> list[torch.Tensor]:
    """Each block's output for the request alone, from the spec."""
    if req.digest is None:
        return [h.clone() for h in req.hidden]
    program = programs[req.digest]
    bundle = program.bundle
    p = req.prompt_len
    fires: dict[str, bool] = {}
    asa_delta: np.ndarray | None = None
    outs = []
    for b in range(BLOCKS):
        h64 = req.hidden[b][:p].double().numpy()
        for iv in bundle.interventions:
            gate = iv.spec.condition
            if gate is None or b not in gate.blocks:
                continue
            agg = h64.mean(axis=0) if gate.aggregate == "mean" else h64[p - 1]
            s = _cos(agg, iv.conditions[b].astype(np.float64))
            ok = s > gate.threshold if gate.comparator == "greater_than" else s < gate.threshold
            fires[iv.name] = fires.get(iv.name, True) and bool(ok)
        if bundle.has_asa and bundle.manifest.layer.index == b:
            d = bundle.decide(req.hidden[b][p - 1].float().numpy())[0]
            asa_delta = None
            if d.gate != 0:
                alpha = bundle.manifest.steering.alpha
                asa_delta = np.float32(d.gate * alpha) * bundle.steering_vector(d.domain)
        per_policy: dict[str, np.ndarray] = {}
        for iv in bundle.interventions:  # manifest order
            if iv.kind == C.GATE_ASA:
                if bundle.manifest.layer.index != b or asa_delta is None:
                    continue
                policy, delta = bundle.manifest.steering.policy, asa_delta
            else:
                if b not in iv.directions or (iv.spec.condition and not fires[iv.name]):
                    continue
                policy = iv.spec.policy
                delta = iv.directions[b] * np.float32(iv.spec.coefficient)
            prev = per_policy.get(policy)
            per_policy[policy] = delta.astype(np.float32) if prev is None else prev + delta
        out = req.hidden[b].clone()
        for t in range(out.shape[0]):
            applying = [q for q in C.POLICIES if q in per_policy and _steers(q, t, p)]
            if not applying:
                continue
            total = per_policy[applying[0]]
            for q in applying[1:]:
                total = total + per_policy[q]
            out[t] = req.hidden[b][t] + torch.from_numpy(total).to(out.dtype)
        outs.append(out)
    return outs


def _whole_prompt(program: Program) -> bool:
    return any(
        t.kind != C.GATE_ALWAYS and t.policy == C.POLICY_ALL_TOKENS
        for terms in program.terms.values()
        for t in terms
    )


def _requests(
    rng: np.random.Generator, programs: dict[str, Program], n: int, dtype: torch.dtype
) -> list[Request]:
    digests: list[str | None] = [*programs, None]
    out = []
    for i in range(n):
        p, g = int(rng.integers(1, 12)), int(rng.integers(0, 6))
        hidden = [
            torch.from_numpy(rng.standard_normal((p + g, H)).astype(np.float32) * 2).to(dtype)
            for _ in range(BLOCKS)
        ]
        hidden[0][0, 0] = -0.0
        out.append(Request(f"r{i}", digests[int(rng.integers(0, len(digests)))], hidden, p))
    return out


def _run(
    requests: list[Request],
    programs: dict[str, Program],
    rng: np.random.Generator,
    state: FlatState,
) -> list[list[torch.Tensor]]:
    done = [0] * len(requests)
    outputs = [[torch.full_like(h, float("nan")) for h in r.hidden] for r in requests]
    while any(done[i] < r.hidden[0].shape[0] for i, r in enumerate(requests)):
        active = [
            i
            for i, r in enumerate(requests)
            if done[i] < r.hidden[0].shape[0] and rng.uniform() < 0.8
        ]
        rng.shuffle(active)
        chunks = []
        for i in active:
            r = requests[i]
            left = r.hidden[0].shape[0] - done[i]
            whole = r.digest is not None and _whole_prompt(programs[r.digest])
            if done[i] < r.prompt_len and whole:
                n = r.prompt_len
            elif done[i] < r.prompt_len:
                n = int(rng.integers(1, r.prompt_len - done[i] + 1)) + int(rng.integers(0, 2))
            else:
                n = 1
            chunks.append((i, min(n, left)))
        if not chunks:
            continue
        qsl = np.cumsum([0, *[n for _, n in chunks]])
        pad = int(rng.integers(0, 3))
        for b in range(BLOCKS):
            rows = [requests[i].hidden[b][done[i] : done[i] + n] for i, n in chunks]
            padding = torch.randn(pad, H).to(rows[0].dtype)
            flat = torch.cat([*rows, padding])
            before = flat.clone()
            out, mask = steer_flat_block(
                flat,
                b,
                qsl,
                [done[i] for i, _ in chunks],
                [requests[i].prompt_len for i, _ in chunks],
                [requests[i].digest for i, _ in chunks],
                programs,
                state,
                [requests[i].rid for i, _ in chunks],
            )
            assert torch.equal(_bits(flat), _bits(before))  # the input is not modified
            if mask is None:
                assert out is flat
            else:
                assert torch.equal(_bits(out[~mask]), _bits(flat[~mask]))
                assert not bool(mask[qsl[-1] :].any())
            for (i, n), a in zip(chunks, qsl[:-1], strict=True):
                outputs[i][b][done[i] : done[i] + n] = out[a : a + n]
        for i, n in chunks:
            done[i] += n
    state.finish([r.rid for r in requests])
    return outputs


def _bits(t: torch.Tensor) -> torch.Tensor:
    return (
        t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t.view(torch.int32)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_mixed_batches_equal_each_request_alone(
    programs: dict[str, Program], dtype: torch.dtype
) -> None:
    rng = np.random.default_rng(zlib.crc32(str(dtype).encode()))
    requests = _requests(rng, programs, 60, dtype)
    state = FlatState()
    outputs = _run(requests, programs, rng, state)
    for r, got in zip(requests, outputs, strict=True):
        for b, (g, e) in enumerate(zip(got, _expected(r, programs), strict=True)):
            assert torch.equal(_bits(g), _bits(e)), (r.rid, r.digest, b)
    assert state.request_ids() == set()
    # the requests exercise both outcomes of each condition and of the gates
    fired = {True: 0, False: 0}
    for r in requests:
        if r.digest is not None and programs[r.digest].conditions:
            h = r.hidden[1][: r.prompt_len].double().numpy().mean(axis=0)
            iv = programs[r.digest].bundle["mean"]
            fired[_cos(h, iv.conditions[1].astype(np.float64)) > 0.0] += 1
    assert min(fired.values()) > 0, fired


def _one(
    programs: dict[str, Program],
    digest: str,
    rows: torch.Tensor,
    block: int,
    computed: int,
    prompt_len: int,
    state: FlatState,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return steer_flat_block(
        rows,
        block,
        [0, rows.shape[0]],
        [computed],
        [prompt_len],
        [digest],
        programs,
        state,
        ["r"],
        **kwargs,
    )


def test_refusals_change_nothing(programs: dict[str, Program]) -> None:
    by_kind = {(*sorted(p.kinds.values()), p.asa_policy or ""): d for d, p in programs.items()}
    asa_all = by_kind[("asa", C.POLICY_ALL_TOKENS)]
    mean = by_kind[("condition", "condition", "")]
    rows = torch.randn(6, H)
    state = FlatState()
    with pytest.raises(DecisionError) as err:  # not served
        _one(programs, "sha256:" + "0" * 64, rows, 1, 0, 6, state)
    assert err.value.code == "DECISION_INPUT"
    with pytest.raises(DecisionError) as err:  # all_tokens asa with the prompt split
        _one(programs, asa_all, rows[:3], 1, 0, 6, state)
    assert err.value.code == "DECISION_FAILED"
    with pytest.raises(DecisionError) as err:  # its decision chunk after a prefix: refused...
        _one(programs, asa_all, rows[:3], 1, 3, 6, state)
    assert err.value.code == "DECISION_FAILED"
    # ...unless the cached prefix was computed with this request's steering (a salted cache)
    out, mask = _one(programs, asa_all, rows[:3], 1, 3, 6, FlatState(), cached_prefix_steered=True)
    assert mask is not None or torch.equal(out, rows[:3])
    with pytest.raises(DecisionError) as err:  # a mean condition after a reused prefix
        _one(programs, mean, rows[:3], 1, 3, 6, state, cached_prefix_steered=True)
    assert err.value.code == "DECISION_FAILED" and "reused prefix" in err.value.message
    with pytest.raises(DecisionError) as err:  # a decode step without a decision
        _one(programs, mean, rows[:1], 2, 6, 6, state)
    assert err.value.code == "DECISION_FAILED"
    assert state.request_ids() == set()
    _one(programs, mean, rows, 1, 0, 6, state)
    assert state.request_ids() == {"r"}
    with pytest.raises(DecisionError):  # the same request with another prompt length
        _one(programs, mean, rows[:1], 2, 7, 7, state)
    with pytest.raises(DecisionError):
        steer_flat_block(
            rows, 1, [0, 3, 2], [0, 0], [3, 3], [None, None], programs, state, ["a", "b"]
        )


def test_a_recomputed_request_decides_again(programs: dict[str, Program]) -> None:
    """After a preemption vLLM computes a request again from position 0: the same outputs."""
    rng = np.random.default_rng(9)
    requests = [r for r in _requests(rng, programs, 40, torch.float32) if r.digest is not None]
    state = FlatState()
    for r in requests:
        expected = _expected(r, programs)
        for _ in range(2):  # the second pass: the state of the first is still there
            p, n = r.prompt_len, r.hidden[0].shape[0]
            whole = _whole_prompt(programs[r.digest])  # type: ignore[index]
            cuts = [0, p, *range(p + 1, n + 1)] if whole else [0, *range(1, n + 1)]
            for a, b in itertools.pairwise(cuts):
                for blk in range(BLOCKS):
                    out, _ = steer_flat_block(
                        r.hidden[blk][a:b],
                        blk,
                        [0, b - a],
                        [a],
                        [p],
                        [r.digest],
                        programs,
                        state,
                        [r.rid],
                    )
                    assert torch.equal(_bits(out), _bits(expected[blk][a:b])), (r.rid, blk, a)
        state.finish([r.rid])
    assert state.request_ids() == set()
