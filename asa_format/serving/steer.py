"""The steering semantics of one serving step: the one module a serving plugin calls for them.

Engine-neutral: a step is described by a :class:`StepLayout` (the flattened
batch of vLLM and similar engines), a block's output by the residual stream
``[T, H]`` after the block. What each request's bundle adds there is the
semantics of ``attach`` / ``attach_interventions`` for that request alone,
computed by :func:`asa_format.runtime.flat.steer_flat_rows` with the
per-row rules of :mod:`asa_format.runtime.program` (those of ``attach``):

* ``always``: ``float32(coefficient) x direction`` at the positions of its
  policy, on every step;
* ``condition``: decided once per request at its prefill (spec 14.4), on the
  mean of its prompt positions or its last one, aggregated across prefill
  chunks; then as ``always`` where it fired;
* ``asa``: decided once per request on its last prompt token, in whichever
  step that token is computed (chunked prefill), kept for its decode steps;
  ``gate * alpha * v`` at the positions of its policy.

Also here: the prefix-cache salt of a steered request (:func:`cache_salt`)
and what a bundle needs of the engine (:func:`needs_whole_prompt`), since
both follow from the same semantics.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from asa_format import constants as C
from asa_format.runtime.flat import FlatState, steer_flat_rows
from asa_format.runtime.program import Program

__all__ = [
    "SALT_PREFIX",
    "Steering",
    "StepLayout",
    "cache_salt",
    "needs_whole_prompt",
    "salt_parts",
]

SALT_PREFIX = "asa"


@dataclass(frozen=True)
class StepLayout:
    """The sequences of one step's flattened batch (rows of sequence s: qsl[s] .. qsl[s+1]-1)."""

    query_start_loc: list[int]  # [S+1]
    num_computed_tokens: list[int]  # [S]: position of sequence s's first row in its request
    prompt_lens: list[int]  # [S]
    selections: list[str | None]  # [S]: a served root digest, or None (not steered)
    request_ids: list[str]  # [S]


class Steering:
    """The steering of one engine process: the served bundles and every request's decisions."""

    def __init__(self, programs: Mapping[str, Program]) -> None:
        self.programs = dict(programs)  # root digest -> compiled bundle
        self.state = FlatState()
        self.blocks: tuple[int, ...] = tuple(
            sorted({b for p in self.programs.values() for b in p.blocks})
        )

    def steer(
        self, block: int, stream: torch.Tensor, layout: StepLayout
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rows of the stream after ``block`` that get a delta, and their new values.

        ``(index [n], stream[index] + delta)``, or None when no row changes.
        Prompt positions served from a prefix cache were computed with the
        request's own steering: :func:`cache_salt` keeps every other
        request's blocks apart.
        """
        return steer_flat_rows(
            stream,
            block,
            layout.query_start_loc,
            layout.num_computed_tokens,
            layout.prompt_lens,
            layout.selections,
            self.programs,
            self.state,
            layout.request_ids,
            cached_prefix_steered=True,
        )

    def has_state(self) -> bool:
        return bool(self.state.bound or self.state.outcomes or self.state.sums)

    def request_ids(self) -> set[str]:
        return self.state.request_ids()

    def finish(self, request_ids: Iterable[str]) -> None:
        self.state.finish(request_ids)


def needs_whole_prompt(program: Program) -> bool:
    """Whether the bundle's requests must be computed in one prefill chunk.

    A gated intervention (asa, condition) with policy ``all_tokens`` steers
    the first prompt tokens with a decision taken on the whole prompt.
    """
    return any(
        t.kind != C.GATE_ALWAYS and t.policy == C.POLICY_ALL_TOKENS
        for terms in program.terms.values()
        for t in terms
    )


def _mean_condition(program: Program) -> bool:
    return any(g.aggregate == "mean" for g in program.conditions.values())


def salt_parts(program: Program) -> tuple[bool, bool, bool]:
    """(prompt length, prompt hash, per-request nonce): what a steered request's cache salt holds.

    Blocks of two requests may share KV only when both computed them with
    the same steering. The prefix cache already keys a block on every token
    up to its end; the salt adds the rest:

    * the bundle's root digest, always;
    * the prompt length, unless every intervention steers every position
      (``always`` with ``all_tokens``): the policies steer the last prompt
      token apart from the others, and gated interventions decide there;
    * a hash of the whole prompt when a gated intervention steers every
      prompt token (its earliest blocks depend on the last prompt token);
    * a per-request nonce when a condition takes the mean of the prompt
      positions: its decision needs every position computed, so such
      requests never reuse a prefix.
    """
    uniform = (
        program.asa_name is None
        and not program.conditions
        and set(program.policies) <= {C.POLICY_ALL_TOKENS}
    )
    return (not uniform, needs_whole_prompt(program), _mean_condition(program))


def cache_salt(
    program: Program, prompt_token_ids: Sequence[int], user_salt: str | None = None
) -> str:
    """The prefix-cache salt of a request steered by ``program``'s bundle (``user_salt`` last)."""
    with_len, with_hash, with_nonce = salt_parts(program)
    parts = [SALT_PREFIX, str(program.bundle.root_digest).removeprefix("sha256:")]
    if with_len:
        parts.append(f"n{len(prompt_token_ids)}")
    if with_hash:
        h = hashlib.sha256()
        for t in prompt_token_ids:
            h.update(int(t).to_bytes(8, "little", signed=True))
        parts.append("p" + h.hexdigest()[:32])
    if with_nonce:
        parts.append("r" + secrets.token_hex(16))
    salt = "-".join(parts)
    return salt if user_salt is None else f"{salt}-{user_salt}"
