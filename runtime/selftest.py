"""``attach(..., self_test=True)``: prove, through the real hooks, that steering works.

A short greedy generation (two prompts, the shorter one left-padded) runs on
the attached model, once per attached bundle. Independent hooks capture each
steered block's output before and after the handle's hook. The self-test then
checks, for every pass:

* the pass kinds: one prefill, then one decode step per further token, and
  no pass left unclassified;
* the positions the handle chose equal the ones the policy names (spec
  section 3.7.1), computed here from the prompt lengths alone;
* the change to the block's output is exactly ``gate * alpha * v`` there and
  zero elsewhere (bit-identical rows where the gate is 0);
* the decisions equal ``bundle.decide`` on the captured hidden states.

Any difference raises :class:`RuntimeCompatError` (``SELF_TEST_FAILED``) with
what was expected and what happened; ``attach`` then removes its hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from asa_format import constants as C
from asa_format.errors import RuntimeCompatError
from asa_format.runtime.steering import split_output

if TYPE_CHECKING:
    from asa_format.runtime.handle import SteeringHandle

__all__ = ["SelfTestReport", "run_self_test"]

NEW_TOKENS = 3
PROMPT_LENGTHS = (6, 4)


@dataclass(frozen=True)
class SelfTestReport:
    bundle: str
    passes: int
    steered_positions: int  # positions the policy selects (gate 0 rows included)
    changed_positions: int  # positions actually changed (gated rows)
    gates: list[int]


def _fail(message: str) -> RuntimeCompatError:
    return RuntimeCompatError(
        f"self-test failed: {message}",
        code="SELF_TEST_FAILED",
        hint="steering would not be applied as the bundle declares on this model; report the "
        "model type and transformers version, or pass layers_path=... if the block list is wrong",
    )


def _prompt(model: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    emb = model.get_input_embeddings()
    vocab = int(getattr(emb, "num_embeddings", 0) or getattr(model.config, "vocab_size", 0))
    if vocab < 8:
        raise _fail(f"the model's vocabulary ({vocab}) is too small for the test prompts")
    config = model.config
    pad = getattr(config, "pad_token_id", None)
    if not isinstance(pad, int):
        eos = getattr(config, "eos_token_id", None)
        pad = eos if isinstance(eos, int) else 0
    gen = torch.Generator().manual_seed(1234)
    width = max(PROMPT_LENGTHS)
    ids = torch.full((len(PROMPT_LENGTHS), width), pad, dtype=torch.long)
    mask = torch.zeros((len(PROMPT_LENGTHS), width), dtype=torch.long)
    for row, length in enumerate(PROMPT_LENGTHS):
        ids[row, width - length :] = torch.randint(3, vocab, (length,), generator=gen)
        mask[row, width - length :] = 1
    device = next(model.parameters()).device
    return ids.to(device), mask.to(device), pad


def _expected(policy: str, kind: str, query: int, row_len: int, width: int) -> torch.Tensor:
    """Where the policy adds the delta for one row of the test generation."""
    where = torch.zeros(query, dtype=torch.bool)
    if kind == "prefill":
        where[width - 1] = True
        if policy == C.POLICY_ALL_TOKENS:
            where[width - row_len :] = True
    elif policy != C.POLICY_PREFILL_LAST_TOKEN:
        where[:] = True
    return where


def run_self_test(handle: SteeringHandle) -> list[SelfTestReport]:
    """Run the self-test on every bundle of ``handle``; raise on the first mismatch."""
    model: Any = handle.model
    steerer = handle._steerer
    reports = []
    for name, entry in steerer.entries.items():
        block = handle.layers.layers[entry.block]
        raw: list[torch.Tensor] = []
        steered: list[torch.Tensor] = []

        def keep(into: list[torch.Tensor]) -> Any:
            return lambda m, a, o: into.append(split_output(o)[0].detach().clone())

        hooks = [
            block.register_forward_hook(keep(raw), prepend=True),
            block.register_forward_hook(keep(steered)),
        ]
        ids, mask, pad = _prompt(model)
        before = len(steerer.log)
        steerer.trace = []
        try:
            with handle.select(name), torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    pad_token_id=pad,
                    num_beams=1,
                    use_cache=True,
                )
            trace = [t for t in steerer.trace if t["block"] == entry.block]
        finally:
            steerer.trace = None
            for hook in hooks:
                hook.remove()
        reports.append(_check(handle, name, trace, raw, steered, before, mask))
        steerer.log.drop_newest(len(steerer.log) - before)
    return reports


def _check(
    handle: SteeringHandle,
    name: str,
    trace: list[dict[str, Any]],
    raw: list[torch.Tensor],
    steered: list[torch.Tensor],
    before: int,
    mask: torch.Tensor,
) -> SelfTestReport:
    entry = handle._steerer.entries[name]
    kinds = [t["kind"] for t in trace]
    wanted = ["prefill"] + ["decode"] * (NEW_TOKENS - 1)
    if kinds != wanted:
        reasons = "; ".join(sorted({t["reason"] for t in trace if t["reason"]}))
        raise _fail(
            f"the passes were classified {kinds}, expected {wanted}"
            + (f" ({reasons})" if reasons else "")
        )
    if len(raw) != len(trace) or len(steered) != len(trace):
        raise _fail(f"the block ran {len(raw)} times for {len(trace)} classified passes")
    records = handle._steerer.log.snapshot()[before:]
    if len(records) != 1:
        raise _fail(f"{len(records)} decisions were recorded for one generation")
    record = records[0]
    width = mask.shape[1]
    lengths = [int(n) for n in mask.sum(dim=1).tolist()]

    # Decisions equal bundle.decide on the captured prefill hidden states.
    rows = raw[0][:, width - 1].to(torch.float32).cpu().numpy()
    expected = list(entry.bundle.decide(rows))
    for i, (got, want) in enumerate(zip(record.rows, expected, strict=True)):
        if got is None or got.domain != want.domain or int(got.gate) != int(want.gate):
            raise _fail(f"row {i}: the hook decided {got}, bundle.decide gives {want}")
        if not np.isclose(float(got.probability), float(want.probability), rtol=0, atol=1e-9):
            raise _fail(f"row {i}: probability {got.probability} vs {want.probability}")
    if record.positions != [width - 1] * len(lengths):
        raise _fail(f"decision positions {record.positions}, expected {[width - 1] * 2}")

    selected = changed = 0
    for step, (t, r, s) in enumerate(zip(trace, raw, steered, strict=True)):
        for row, length in enumerate(lengths):
            want = _expected(entry.policy, t["kind"], r.shape[1], length, width)
            got = t["where"][row]
            if not torch.equal(got, want):
                raise _fail(
                    f"pass {step} ({t['kind']}), row {row}: steered positions "
                    f"{torch.nonzero(got).flatten().tolist()}, the {entry.policy} policy names "
                    f"{torch.nonzero(want).flatten().tolist()}"
                )
            selected += int(want.sum())
            gate = int(record.rows[row].gate)
            diff = (s[row] - r[row]).to(torch.float32)
            if gate == 0 or not bool(want.any()):
                if torch.count_nonzero(diff) != 0:
                    raise _fail(f"pass {step}, row {row}: changed although nothing is due")
                continue
            vector = entry.vector(record.rows[row].domain, diff.device)
            delta = (vector * float(np.float32(gate * entry.alpha))).to(s.dtype).to(torch.float32)
            tol = 1e-5 if s.dtype == torch.float32 else 2e-2
            scale = tol * (1.0 + float(r[row].abs().max()))
            if not torch.allclose(
                diff[want], delta.expand(int(want.sum()), -1), rtol=0, atol=scale
            ):
                raise _fail(f"pass {step}, row {row}: the change is not gate*alpha*v")
            if torch.count_nonzero(diff[~want]) != 0:
                raise _fail(f"pass {step}, row {row}: positions outside the policy changed")
            changed += int(want.sum())
    return SelfTestReport(name, len(trace), selected, changed, record.gates)
