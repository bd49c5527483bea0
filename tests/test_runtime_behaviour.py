"""Injection policies, per-row decisions in padded batches, dtypes, errors and observability."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asa_format import constants as C
from asa_format import load_bundle
from asa_format.errors import DecisionError, DigestMismatchError, UsageError
from asa_format.runtime import GenerationRecord, attach, resolve_layers
from asa_format.testing import make_test_bundle
from tiny_models import (
    build_model,
    first_tensor,
    last_hidden_rows,
    separating_bundle,
    token_batch,
)

pytestmark = pytest.mark.runtime

ALPHA = 2.5
PROMPTS = {"search": [5, 6, 7, 8, 9], "math": [10, 11, 12], "chat": [13, 14, 15, 16]}
EXPECTED_GATES = {"search": 1, "math": -1, "chat": 0}
ORDER = ["search", "math", "chat"]


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model("llama", seed=1)


@pytest.fixture(scope="module")
def routed_bundle(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle sending each prompt of PROMPTS to its own domain (gates +1, -1, 0)."""
    block = resolve_layers(model).layers[1]
    centroids = {}
    for domain, row in PROMPTS.items():
        ids, mask = token_batch([row])
        centroids[domain] = last_hidden_rows(model, block, ids, mask)[0].astype(np.float64)
    return separating_bundle(
        tmp_path_factory.mktemp("routed") / "bundle",
        centroids,
        layer=1,
        alpha=ALPHA,
        tau=0.9,
        beta=0.2,
        model_type="llama",
        num_layers=3,
    )


class Capture:
    """Raw and steered outputs of one block, per forward call."""

    def __init__(self, block: torch.nn.Module) -> None:
        self.block = block
        self.raw: list[torch.Tensor] = []
        self.steered: list[torch.Tensor] = []
        self.hooks: list[Any] = []

    def __enter__(self) -> Capture:
        # The raw hook must be registered before attach() and the steered one after.
        return self

    def raw_hook(self) -> None:
        self.hooks.append(
            self.block.register_forward_hook(lambda m, a, o: self.raw.append(first_tensor(o)))
        )

    def steered_hook(self) -> None:
        self.raw.clear()  # attach probed the block's output layout with one short forward
        self.hooks.append(
            self.block.register_forward_hook(lambda m, a, o: self.steered.append(first_tensor(o)))
        )

    def __exit__(self, *exc: object) -> None:
        for h in self.hooks:
            h.remove()

    def diffs(self) -> list[torch.Tensor]:
        return [s - r for s, r in zip(self.steered, self.raw, strict=True)]


def _delta(bundle: Any, domain: str) -> torch.Tensor:
    return EXPECTED_GATES[domain] * ALPHA * torch.tensor(bundle.steering_vector(domain))


@pytest.mark.parametrize("policy", C.POLICIES)
def test_policies_during_generation(model: Any, routed_bundle: Path, policy: str) -> None:
    bundle = load_bundle(routed_bundle)
    block = resolve_layers(model).layers[1]
    ids, mask = token_batch([PROMPTS[d] for d in ORDER], side="left")
    with Capture(block) as cap:
        cap.raw_hook()
        with attach(model, bundle, policy=policy) as handle:
            cap.steered_hook()
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=3,
                    do_sample=False,
                    pad_token_id=0,
                )
        diffs = cap.diffs()
    assert len(diffs) == 3  # prefill + 2 decode steps
    record = handle.last
    assert record is not None and record.policy == policy
    assert record.domains == ORDER
    assert record.gates == [EXPECTED_GATES[d] for d in ORDER]
    assert len(handle.records) == 1

    width = ids.shape[1]
    for row, domain in enumerate(ORDER):
        delta = _delta(bundle, domain)
        real = mask[row].bool()
        prefill = diffs[0][row]
        if EXPECTED_GATES[domain] == 0:
            assert all(torch.count_nonzero(d[row]) == 0 for d in diffs)
            continue
        if policy == C.POLICY_ALL_TOKENS:
            expected_positions = real
        else:
            expected_positions = torch.zeros(width, dtype=torch.bool)
            expected_positions[-1] = True
        torch.testing.assert_close(
            prefill[expected_positions],
            delta.expand(int(expected_positions.sum()), -1),
            atol=1e-5,
            rtol=0,
        )
        assert torch.count_nonzero(prefill[~expected_positions]) == 0
        for step in diffs[1:]:
            if policy == C.POLICY_PREFILL_LAST_TOKEN:
                assert torch.count_nonzero(step[row]) == 0
            else:
                torch.testing.assert_close(step[row], delta[None, :], atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", C.POLICIES)
def test_batch_equals_single_rows_in_generation(
    model: Any, routed_bundle: Path, policy: str
) -> None:
    bundle = load_bundle(routed_bundle)

    def generate(rows: list[list[int]]) -> tuple[torch.Tensor, list[torch.Tensor], Any]:
        ids, mask = token_batch(rows, side="left")
        with attach(model, bundle, policy=policy) as handle, torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=0,
                return_dict_in_generate=True,
                output_logits=True,
            )
        return out.sequences[:, ids.shape[1] :], list(out.logits), handle.last

    rows = [PROMPTS[d] for d in ORDER]
    batch_tokens, batch_logits, batch_record = generate(rows)
    for i, row in enumerate(rows):
        tokens, logits, record = generate([row])
        assert record.rows[0].domain == batch_record.rows[i].domain
        assert record.rows[0].gate == batch_record.rows[i].gate
        assert record.rows[0].probability == pytest.approx(batch_record.rows[i].probability)
        assert torch.equal(tokens[0], batch_tokens[i])
        for single_step, batch_step in zip(logits, batch_logits, strict=True):
            torch.testing.assert_close(single_step[0], batch_step[i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_equals_single_rows_in_forward(model: Any, tmp_path: Path, side: str) -> None:
    # Random probes: probabilities depend on the hidden state actually read.
    bundle = load_bundle(
        make_test_bundle(
            tmp_path / "b",
            hidden_size=32,
            layer=1,
            alpha=ALPHA,
            tau=0.55,
            probe_scale=3.0,
            router_scale=3.0,
            model_type="llama",
        )
    )
    block = resolve_layers(model).layers[1]
    rows = [PROMPTS[d] for d in ORDER]
    ids, mask = token_batch(rows, side=side)
    raw_rows = last_hidden_rows(model, block, ids, mask)
    with Capture(block) as cap:
        with attach(model, bundle) as handle:
            cap.steered_hook()
            with torch.no_grad():
                batch_logits = model(input_ids=ids, attention_mask=mask).logits
        batch_steered = cap.steered[0]
    record = handle.last
    lengths = [len(r) for r in rows]
    width = ids.shape[1]
    expected_positions = [width - 1] * len(rows) if side == "left" else [n - 1 for n in lengths]
    assert record.positions == expected_positions
    # The decision is taken on the (float32) raw hidden state at the last real token.
    reference = bundle.decide(raw_rows)
    assert record.gates == [int(g) for g in reference.gate]
    assert record.probabilities == [float(p) for p in reference.probability]

    for i, row in enumerate(rows):
        single_ids, single_mask = token_batch([row])
        with Capture(block) as cap:
            with attach(model, bundle) as single:
                cap.steered_hook()
                with torch.no_grad():
                    logits = model(input_ids=single_ids, attention_mask=single_mask).logits
        single_record = single.last
        assert single_record.rows[0].domain == record.rows[i].domain
        assert single_record.rows[0].gate == record.rows[i].gate
        assert single_record.rows[0].probability == pytest.approx(
            record.rows[i].probability, abs=1e-6
        )
        real = mask[i].bool()
        torch.testing.assert_close(cap.steered[0][0], batch_steered[i][real], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[0], batch_logits[i][real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["llama", "falcon"])
def test_low_precision_dtypes(name: str, dtype: torch.dtype, tmp_path: Path) -> None:
    model = build_model(name, dtype=dtype)
    n_layers = len(resolve_layers(model))
    bundle = load_bundle(
        make_test_bundle(
            tmp_path / "b",
            hidden_size=32,
            layer=1,
            alpha=ALPHA,
            route_to="math",
            probe_bias=-20.0,
            probe_scale=0.0,
            model_type=name,
            num_layers=n_layers,
        )
    )
    block = resolve_layers(model).layers[1]
    ids, mask = token_batch([PROMPTS["search"], PROMPTS["math"]], side="left")
    with torch.no_grad():
        baseline = model(input_ids=ids, attention_mask=mask).logits
    with Capture(block) as cap:
        cap.raw_hook()
        with attach(model, bundle) as handle:
            cap.steered_hook()
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
        raw, steered = cap.raw[0], cap.steered[0]
    assert handle.last.gates == [-1, -1]
    assert steered.dtype == dtype
    # gate * alpha * v in float32, cast to the model's dtype once (spec, decision step 6)
    delta = (torch.tensor(bundle.steering_vector("math")) * np.float32(-ALPHA)).to(dtype)
    expected = raw[:, -1] + delta
    assert torch.equal(steered[:, -1], expected)
    assert torch.equal(steered[:, :-1], raw[:, :-1])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, baseline)


def test_manual_decode_loop_keeps_generation_state(model: Any, routed_bundle: Path) -> None:
    bundle = load_bundle(routed_bundle)
    block = resolve_layers(model).layers[1]
    ids, mask = token_batch([PROMPTS["search"]])
    with Capture(block) as cap:
        cap.raw_hook()
        with attach(model, bundle, policy=C.POLICY_ALL_TOKENS) as handle:
            cap.steered_hook()
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask, use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                mask2 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
                model(input_ids=nxt, attention_mask=mask2, past_key_values=out.past_key_values)
        diffs = cap.diffs()
    assert len(handle.records) == 1  # the second call continued the same generation
    delta = _delta(bundle, "search")
    torch.testing.assert_close(diffs[1][0], delta[None, :], atol=1e-5, rtol=0)


class _FailingBundle:
    """A real bundle whose decide() can be made to fail."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.domains = inner.domains
        self.fail = True

    def decide(self, hidden: np.ndarray) -> Any:
        if self.fail:
            raise RuntimeError("graph exploded")
        return self.inner.decide(hidden)

    def steering_vector(self, domain: str | int) -> np.ndarray:
        return np.asarray(self.inner.steering_vector(domain))


def test_decision_failure_raises_and_changes_nothing(model: Any, routed_bundle: Path) -> None:
    bundle = _FailingBundle(load_bundle(routed_bundle))
    ids, mask = token_batch([PROMPTS["search"], PROMPTS["math"]])
    with torch.no_grad():
        baseline = model(input_ids=ids, attention_mask=mask).logits
    seen: list[GenerationRecord] = []
    handle = attach(model, bundle, on_decision=seen.append)
    try:
        with pytest.raises(DecisionError) as info, torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=2,
                pad_token_id=0,
                do_sample=False,
            )
        assert info.value.code == "DECISION_FAILED"
        assert "graph exploded" in str(info.value)
        assert len(handle.records) == 0 and seen == []
        assert handle._steerer.calls.current() is None  # the call context was closed
        assert handle.active  # hooks stay until remove(): steering is not silently dropped
        bundle.fail = False
        with torch.no_grad():
            steered = model(input_ids=ids, attention_mask=mask).logits
        assert handle.last is not None and handle.last.gates == [1, -1]
        assert seen == [handle.last]
        assert not torch.allclose(steered, baseline)
    finally:
        handle.remove()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, baseline)


def test_callback_failure_is_a_decision_error(model: Any, routed_bundle: Path) -> None:
    def boom(record: GenerationRecord) -> None:
        raise ValueError("callback bug")

    ids, mask = token_batch([PROMPTS["search"]])
    with attach(model, routed_bundle, on_decision=boom), pytest.raises(DecisionError) as info:
        model(input_ids=ids, attention_mask=mask)
    assert "callback bug" in str(info.value)


def test_records_are_bounded_and_logged(
    model: Any, routed_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids, mask = token_batch([PROMPTS["math"]])
    with caplog.at_level(logging.DEBUG, logger="asa_format.runtime"):
        with attach(model, routed_bundle, max_records=2) as handle, torch.no_grad():
            for _ in range(3):
                model(input_ids=ids, attention_mask=mask)
    assert [r.generation for r in handle.records] == [2, 3]
    assert handle.last is not None and handle.last.generation == 3
    assert handle.last.to_dict()["rows"][0]["gate"] == -1
    messages = [r.getMessage() for r in caplog.records if r.name == "asa_format.runtime"]
    assert any("attached" in m for m in messages)
    assert any("domain=math" in m and "gate=-1" in m for m in messages)
    assert any("removed" in m for m in messages)


def test_policy_and_alpha_overrides(model: Any, routed_bundle: Path) -> None:
    with pytest.raises(UsageError):
        attach(model, routed_bundle, policy="every_other_token")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    bundle = load_bundle(routed_bundle)
    block = resolve_layers(model).layers[1]
    ids, mask = token_batch([PROMPTS["search"]])
    with Capture(block) as cap:
        cap.raw_hook()
        with attach(model, bundle, alpha=7.0) as handle:
            cap.steered_hook()
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
        diff = cap.diffs()[0]
    assert handle.alpha == 7.0 and handle.policy == C.POLICY_PREFILL_LAST_TOKEN
    v = torch.tensor(bundle.steering_vector("search"))
    torch.testing.assert_close(diff[0, -1], 7.0 * v, atol=1e-5, rtol=0)


def test_positional_arguments_and_right_padding(model: Any, routed_bundle: Path) -> None:
    ids, mask = token_batch([PROMPTS["math"], PROMPTS["search"]], side="right")
    with attach(model, routed_bundle) as handle, torch.no_grad():
        model(ids, mask)  # attention_mask given positionally
    assert handle.last is not None
    assert handle.last.positions == [len(PROMPTS["math"]) - 1, len(PROMPTS["search"]) - 1]
    assert handle.last.gates == [-1, 1]


def test_loaded_bundle_digest_and_stacking_warning(
    model: Any, routed_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = load_bundle(routed_bundle)
    with pytest.raises(DigestMismatchError):
        attach(model, bundle, expected_digest="sha256:" + "0" * 64)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with caplog.at_level(logging.WARNING, logger="asa_format.runtime"):
        with attach(model, bundle, expected_digest=bundle.root_digest):
            assert "already steered" not in caplog.text
            with attach(model, bundle):
                assert "already steered" in caplog.text
        caplog.clear()
        with attach(model, bundle):
            assert "already steered" not in caplog.text
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_the_host_gather_is_the_exact_float32_of_every_dtype() -> None:
    from asa_format.runtime.steering import _host_rows

    gen = torch.Generator().manual_seed(5)
    base = torch.randn(4, 7, 40, generator=gen, dtype=torch.float64) * 1e3
    base[0, 2, :6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-42])
    base[1, 5, :3] = torch.tensor([6.0e-8, -3.0e-45, 3.4e38])  # subnormals, near the max
    positions = [2, 5, 0, 6]
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        full = base.to(dtype)
        for hidden in (full, full.transpose(0, 1).contiguous().transpose(0, 1)):  # strided too
            got = _host_rows(hidden, positions)
            want = hidden[torch.arange(4), torch.tensor(positions)].to(torch.float32).numpy()
            assert got.dtype == np.float32 and got.flags.c_contiguous
            assert got.tobytes() == want.tobytes(), dtype  # bit for bit, NaN and -0.0 included


def test_last_real_positions_on_the_host_equal_the_torch_reduction() -> None:
    """The host path (NumPy) of ``last_real_positions`` gives the torch reduction's index of
    every row: padding on either side, rows without a real token, one column."""
    from asa_format.runtime.positions import last_real_positions

    def by_torch(real: torch.Tensor) -> torch.Tensor:
        seq = real.shape[1]
        idx = torch.arange(seq).expand_as(real)
        last = torch.where(real, idx, torch.full_like(idx, -1)).max(dim=1).values
        return torch.where(last < 0, torch.full_like(last, seq - 1), last)

    gen = torch.Generator().manual_seed(8)
    for batch, seq in ((1, 1), (5, 1), (7, 6), (64, 9)):
        real = torch.rand(batch, seq, generator=gen) > 0.4
        real[0] = False  # no real token at all
        if batch > 2:
            real[1] = True
            real[2, :] = False
            real[2, 0] = True  # right padding
        got = last_real_positions(real)
        assert got.dtype == torch.int64 and torch.equal(got, by_torch(real)), (batch, seq)
        assert torch.equal(last_real_positions(real.t().contiguous().t()), by_torch(real))


def test_the_lone_row_gather_is_the_batch_gather() -> None:
    """``_host_row`` (a bundle's only row, the runtime's one-row lane) gives the bits of
    ``_host_rows`` for every dtype and layout, grad-requiring tensors included."""
    from asa_format.runtime.steering import _host_row, _host_rows

    gen = torch.Generator().manual_seed(6)
    base = torch.randn(3, 5, 40, generator=gen, dtype=torch.float64) * 1e3
    base[2, 4, :6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-42])
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        full = base.to(dtype)
        for hidden in (full, full.transpose(0, 1).contiguous().transpose(0, 1)):
            for b, pos in ((0, 0), (1, 3), (2, 4)):
                want = _host_rows(hidden, [pos] * 3)[b]
                got = _host_row(hidden, b, pos)
                assert got.dtype == np.float32 and got.shape == (40,)
                assert got.tobytes() == want.tobytes(), (dtype, b, pos)
        leaf = full.clone().requires_grad_(dtype.is_floating_point)
        assert _host_row(leaf, 1, 2).tobytes() == _host_rows(full, [2] * 3)[1].tobytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_each_row_is_decided_on_its_hidden_state_in_the_models_dtype(
    dtype: torch.dtype, tmp_path: Path
) -> None:
    model = build_model("llama", dtype=dtype)
    layers = resolve_layers(model)
    bundle = load_bundle(
        make_test_bundle(
            tmp_path / "b",
            hidden_size=32,
            layer=1,
            alpha=ALPHA,
            probe_scale=3.0,
            model_type="llama",
            num_layers=len(layers),
            seed=3,
        )
    )
    ids, mask = token_batch([PROMPTS[k] for k in ORDER], side="left")
    expected = list(bundle.decide(last_hidden_rows(model, layers.layers[1], ids, mask)))
    with attach(model, bundle) as handle, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    record = handle.last
    assert record is not None
    got = [(r.domain, r.probability, r.gate) for r in record.rows]
    assert got == [(d.domain, d.probability, d.gate) for d in expected]  # exactly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_the_host_add_equals_the_whole_tensor_select(dtype: torch.dtype) -> None:
    from asa_format.runtime.steering import CPU_BLOCK_ELEMENTS, _apply

    gen = torch.Generator().manual_seed(7)
    width = 48
    step = CPU_BLOCK_ELEMENTS // width
    for batch, seq, where in (
        (3, 5, "last"),  # a prefill: one position per row
        (2 * step + 3, 1, "all"),  # a decode step over several row blocks
        (2, 4, "all"),  # every position (all_tokens)
        (4, 6, "none"),
    ):
        hidden = (torch.randn(batch, seq, width, generator=gen) * 50).to(dtype)
        hidden[0, 0, :3] = torch.tensor([float("inf"), -0.0, 1e-30]).to(dtype)
        hidden[:, :, 3] = float("inf")  # inf + -inf below: a NaN made by the sum itself
        hidden[:, :, 4] = float("nan")  # a NaN operand (its payload propagates)
        hidden[:, :, 5] = -float("nan")
        delta = (torch.randn(batch, width, generator=gen) * 3).to(dtype)
        delta[:, 3] = -float("inf")
        delta[:, 6] = float("nan")
        add = torch.zeros(batch, seq, dtype=torch.bool)
        if where == "last":
            add[:, -1] = True
            add[1, -1] = False
        elif where == "all":
            add[:] = True
        want = torch.where(add.unsqueeze(-1), hidden + delta[:, None, :], hidden)
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[hidden.element_size()]
        for h in (hidden, hidden.transpose(0, 1).contiguous().transpose(0, 1)):
            before = h.clone()
            got = _apply(h, delta, add)
            assert got.dtype == dtype and got.shape == h.shape
            if dtype.itemsize >= 4:  # bit for bit, NaN payloads included
                assert torch.equal(got.view(bits), want.view(bits)), (dtype, where)
            else:  # bit for bit but NaN payloads: torch's own half-precision kernels give a
                # made NaN one payload in vector lanes and another in scalar ones
                nan = torch.isnan(want)
                assert torch.equal(torch.isnan(got), nan), (dtype, where)
                assert torch.equal(got.view(bits)[~nan], want.view(bits)[~nan]), (dtype, where)
            assert torch.equal(h.view(bits), before.view(bits))  # the input is not changed


def test_the_host_add_keeps_autograd() -> None:
    from asa_format.runtime.steering import _apply

    hidden = torch.randn(2, 3, 8, requires_grad=True)
    add = torch.zeros(2, 3, dtype=torch.bool)
    add[:, -1] = True
    out = _apply(hidden, torch.ones(2, 8), add)
    out.sum().backward()
    assert hidden.grad is not None and torch.equal(hidden.grad, torch.ones(2, 3, 8))
