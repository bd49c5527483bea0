"""``attach(..., self_test=True)``: prove, through the real hooks, that steering works.

A short greedy generation (two prompts, the shorter one left-padded) runs on
the attached model, once per attached bundle. Independent hooks capture the
output of every block the bundle reads or steers, before and after the
handle's hook. The self-test then checks, for every pass and block:

* the pass kinds: one prefill, then one decode step per further token, and
  no pass left unclassified;
* the positions the handle chose equal the ones each policy names (spec
  section 3.7.1), computed here from the prompt lengths alone;
* the change to the block's output is exactly the sum of the row's deltas
  there (``gate * alpha * v`` for the asa intervention, ``coefficient *
  direction`` for an always one, and for a condition one when its condition
  held) and zero elsewhere (bit-identical rows where nothing is due);
* the asa decisions equal ``bundle.decide``, and the condition outcomes the
  spec's rule (14.4), on the captured hidden states.

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
from asa_format.format.interventions import condition_fires, condition_similarity
from asa_format.runtime.program import Term
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
        blocks = entry.program.blocks
        raw: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
        steered: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}

        def keep(into: list[torch.Tensor]) -> Any:
            return lambda m, a, o: into.append(split_output(o)[0].detach().clone())

        hooks = []
        for b in blocks:
            layer = handle.layers.layers[b]
            hooks.append(layer.register_forward_hook(keep(raw[b]), prepend=True))
            hooks.append(layer.register_forward_hook(keep(steered[b])))
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
            trace = list(steerer.trace)
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
    raw: dict[int, list[torch.Tensor]],
    steered: dict[int, list[torch.Tensor]],
    before: int,
    mask: torch.Tensor,
) -> SelfTestReport:
    entry = handle._steerer.entries[name]
    program = entry.program
    records = handle._steerer.log.snapshot()[before:]
    if len(records) != 1:
        raise _fail(f"{len(records)} decisions were recorded for one generation")
    record = records[0]
    width = mask.shape[1]
    lengths = [int(n) for n in mask.sum(dim=1).tolist()]
    wanted = ["prefill"] + ["decode"] * (NEW_TOKENS - 1)
    if record.positions != [width - 1] * len(lengths):
        raise _fail(f"decision positions {record.positions}, expected {[width - 1] * 2}")

    for block in program.blocks:
        passes = [t for t in trace if t["block"] == block]
        kinds = [t["kind"] for t in passes]
        if kinds != wanted:
            reasons = "; ".join(sorted({t["reason"] for t in passes if t["reason"]}))
            raise _fail(
                f"block {block}: the passes were classified {kinds}, expected {wanted}"
                + (f" ({reasons})" if reasons else "")
            )
        if len(raw[block]) != len(passes) or len(steered[block]) != len(passes):
            raise _fail(
                f"block {block} ran {len(raw[block])} times for {len(passes)} classified passes"
            )

    # Decisions: the asa part equals bundle.decide, conditions the spec's rule, on the
    # hidden states captured before the handle's hook at each block.
    if program.asa_block is not None:
        rows = raw[program.asa_block][0][:, width - 1].to(torch.float32).cpu().numpy()
        expected = list(entry.bundle.decide(rows))
        for i, (got, want) in enumerate(zip(record.rows, expected, strict=True)):
            if got is None or got.domain != want.domain or int(got.gate) != int(want.gate):
                raise _fail(f"row {i}: the hook decided {got}, bundle.decide gives {want}")
            if not np.isclose(float(got.probability), float(want.probability), rtol=0, atol=1e-9):
                raise _fail(f"row {i}: probability {got.probability} vs {want.probability}")
    for iv, gate in program.conditions.items():
        for row, length in enumerate(lengths):
            sims = []
            for block in gate.blocks:
                h = raw[block][0][row].to(torch.float64)
                agg = h[width - 1] if gate.aggregate == "last" else h[width - length :].mean(dim=0)
                read = next(r for r in program.reads[block] if r.intervention == iv)
                sims.append(condition_similarity(agg.cpu().numpy(), read.vector))
            want_fires = condition_fires(sims, gate)
            got_fires = (record.interventions[row] or {}).get(iv)
            if got_fires is not want_fires:
                raise _fail(
                    f"row {row}: condition {iv!r} decided {got_fires}, the rule gives {want_fires}"
                )

    selected = changed = 0
    for block in program.blocks:
        passes = [t for t in trace if t["block"] == block]
        terms = program.terms.get(block, [])
        for step, (t, r, s) in enumerate(zip(passes, raw[block], steered[block], strict=True)):
            for row, length in enumerate(lengths):
                expected_delta = torch.zeros(r.shape[1:], dtype=torch.float32)
                for policy in sorted({term.policy for term in terms}):
                    want = _expected(policy, t["kind"], r.shape[1], length, width)
                    delta = torch.zeros(r.shape[-1], dtype=torch.float32)
                    any_term = False
                    for term in terms:
                        if term.policy != policy:
                            continue
                        d = _term_delta(entry, record, row, term)
                        if d is not None:
                            delta += d
                            any_term = True
                    got = (t["where"] or {}).get(policy)
                    due = want if any_term else torch.zeros_like(want)
                    if got is None or not torch.equal(got[row], due):
                        shown = [] if got is None else torch.nonzero(got[row]).flatten().tolist()
                        raise _fail(
                            f"block {block}, pass {step} ({t['kind']}), row {row}: steered "
                            f"positions {shown}, the {policy} policy names "
                            f"{torch.nonzero(due).flatten().tolist()}"
                        )
                    selected += int(want.sum())
                    if any_term:
                        expected_delta[due] += delta
                diff = (s[row] - r[row]).to(torch.float32).cpu()
                due_any = expected_delta.abs().sum(dim=-1) > 0
                if not bool(due_any.any()):
                    if torch.count_nonzero(diff) != 0:
                        raise _fail(
                            f"block {block}, pass {step}, row {row}: changed although nothing is due"
                        )
                    continue
                want_delta = expected_delta.to(s.dtype).to(torch.float32)
                tol = 1e-5 if s.dtype == torch.float32 else 2e-2
                scale = tol * (1.0 + float(r[row].abs().max()))
                if not torch.allclose(diff[due_any], want_delta[due_any], rtol=0, atol=scale):
                    raise _fail(
                        f"block {block}, pass {step}, row {row}: the change is not the sum of "
                        "the row's deltas"
                    )
                if torch.count_nonzero(diff[~due_any]) != 0:
                    raise _fail(
                        f"block {block}, pass {step}, row {row}: positions outside the policy changed"
                    )
                changed += int(due_any.sum())
    return SelfTestReport(name, len(trace), selected, changed, record.gates)


def _term_delta(entry: Any, record: Any, row: int, term: Term) -> torch.Tensor | None:
    """The float32 delta one term adds to one row, recomputed from the record."""
    outcomes = record.interventions[row] or {}
    if term.kind == C.GATE_ASA:
        decision = record.rows[row]
        if decision is None or int(decision.gate) == 0:
            return None
        v = np.asarray(entry.bundle.steering_vector(decision.domain), dtype=np.float32)
        scale = np.float32(int(decision.gate) * entry.program.asa_alpha)
        return torch.from_numpy((v * scale).astype(np.float32))
    if term.kind == C.GATE_CONDITION and not outcomes.get(term.intervention):
        return None
    assert term.vector is not None
    return torch.from_numpy(np.array(term.vector, dtype=np.float32))
