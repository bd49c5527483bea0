"""Which positions of a layer's output are real tokens, from the attention mask."""

from __future__ import annotations

import torch

from asa_format.errors import DecisionError

__all__ = ["last_real_positions", "real_token_mask"]


def real_token_mask(
    attention_mask: torch.Tensor | None, batch: int, seq: int, device: torch.device
) -> torch.Tensor:
    """Bool ``[batch, seq]``: True where the layer's position ``t`` is a real token.

    ``attention_mask`` is the 2-D mask given to the top-level model; it covers
    the cached tokens too, so its last ``seq`` columns describe this call.
    Without a mask every position is real.
    """
    if attention_mask is None:
        return torch.ones((batch, seq), dtype=torch.bool, device=device)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else None
        raise DecisionError(
            f"cannot locate the real tokens: the attention mask has shape {shape}, expected a "
            "2-D [batch, sequence] mask of 0/1",
            code="DECISION_INPUT",
            hint="pass a 2-D attention_mask (as tokenizers return it) to the model",
        )
    if attention_mask.shape[0] != batch or attention_mask.shape[1] < seq:
        raise DecisionError(
            f"the attention mask has shape {tuple(attention_mask.shape)} but the steered layer "
            f"sees a batch of {batch} rows of {seq} positions",
            code="DECISION_INPUT",
            hint="pass the attention_mask that belongs to the input_ids",
        )
    return attention_mask[:, attention_mask.shape[1] - seq :].to(device=device) != 0


def last_real_positions(real: torch.Tensor) -> torch.Tensor:
    """Int64 ``[batch]``: index of the last True of each row (last index if none)."""
    seq = real.shape[1]
    idx = torch.arange(seq, device=real.device).expand_as(real)
    last = torch.where(real, idx, torch.full_like(idx, -1)).max(dim=1).values
    return torch.where(last < 0, torch.full_like(last, seq - 1), last)
