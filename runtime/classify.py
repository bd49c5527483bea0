"""Classify one forward pass from its evidence (spec section 3.7.2).

A pass is one of:

* ``PREFILL``: the first pass of a generation. The cache (if any) held no
  token before the pass, or no cache was given and the pass does not
  continue an earlier cache-less pass. The decision is taken here.
* ``DECODE``: a later pass of a generation whose cache this handle saw
  start (the cache held ``past > 0`` tokens before the pass).
* ``REREAD``: a cache-less pass (``use_cache=False``) that re-reads the
  sequence of the previous cache-less pass of the same thread, extended by
  new tokens; the decision of that sequence's prefill applies.
* ``SKIP``: the pass cannot be classified (the sources of the past length
  disagree, a cache cannot be read, a decode step of a generation whose
  prefill this handle never saw, ...). It is **not** steered, and the
  handle reports why.

The past length is read from every source the call carries (the cache's
length before the pass, the 2-D attention mask's width minus the query
length, ``cache_position``); they must agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from asa_format.runtime.evidence import CallEvidence

__all__ = ["PassInfo", "PassKind", "classify"]


class PassKind(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    REREAD = "reread"
    SKIP = "skip"


@dataclass(frozen=True)
class PassInfo:
    kind: PassKind
    past: int = 0  # tokens before this pass's first query position
    query: int = 0  # positions computed by this pass
    candidates: int = 0  # trailing candidate tokens after the prompt (assisted generation)
    reason: str = ""  # why a pass was skipped
    cacheless: bool = False  # no cache object was given to the call


def _skip(reason: str, query: int) -> PassInfo:
    return PassInfo(PassKind.SKIP, query=query, reason=reason)


def classify(ev: CallEvidence, *, batch: int, query: int, known_cache: bool) -> PassInfo:
    """Classify a pass computing ``query`` positions for ``batch`` rows.

    ``known_cache``: whether the handle holds a generation state for the
    call's cache. A cache-less pass is returned as ``PREFILL`` with
    ``cacheless=True``; the caller decides whether it is a ``REREAD``.
    """
    if ev.unreadable:
        return _skip("; ".join(ev.unreadable), query)
    pasts: dict[str, int] = {}
    if ev.cache is not None:
        assert ev.past_from_cache is not None  # an unreadable length is in ev.unreadable
        pasts["the cache's length"] = ev.past_from_cache
    mask = ev.attention_mask
    if mask is not None:
        if mask.shape[0] != batch:
            return _skip(
                f"the attention mask has {mask.shape[0]} rows but the steered block sees {batch}",
                query,
            )
        if mask.dim() == 2:
            if mask.shape[1] < query:
                return _skip(
                    f"the attention mask has {mask.shape[1]} columns for {query} new positions",
                    query,
                )
            pasts["the attention mask"] = int(mask.shape[1]) - query
        elif mask.shape[-2] != query:
            return _skip(
                f"the 4-D attention mask covers {mask.shape[-2]} queries, the block computes "
                f"{query}",
                query,
            )
    if ev.cache_position is not None:
        pos = ev.cache_position
        if pos.numel() != query:
            return _skip(
                f"cache_position has {pos.numel()} entries for {query} new positions", query
            )
        first = int(pos[0].item())
        if query > 1 and int(pos[-1].item()) - first != query - 1:
            return _skip("cache_position is not contiguous", query)
        pasts["cache_position"] = first
    if len(set(pasts.values())) > 1:
        said = ", ".join(f"{k} says {v}" for k, v in pasts.items())
        return _skip(f"the sources of the past length disagree ({said})", query)
    past = next(iter(pasts.values()), 0)

    if ev.cache is None and past != 0:
        return _skip(
            f"no cache object was found in the call, yet {next(iter(pasts))} says {past} tokens "
            "came before it",
            query,
        )
    if past == 0:
        candidates = 0
        keep = ev.logits_to_keep
        if keep is not None and keep > 1:
            if keep > query:
                return _skip(
                    f"the call asks for the logits of {keep} positions but computes {query}",
                    query,
                )
            candidates = keep - 1
        return PassInfo(
            PassKind.PREFILL,
            past=0,
            query=query,
            candidates=candidates,
            cacheless=ev.cache is None,
        )
    if not known_cache:
        return PassInfo(
            PassKind.SKIP,
            past=past,
            query=query,
            reason=f"a decode step ({past} tokens already in the cache) of a generation whose "
            "prefill this handle did not see (a cache filled before attach, or by another handle)",
        )
    return PassInfo(PassKind.DECODE, past=past, query=query)
