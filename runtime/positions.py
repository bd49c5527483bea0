"""Which positions of a block's output are real tokens, from the attention mask."""

from __future__ import annotations

import numpy as np
import torch

from asa_format.errors import DecisionError

__all__ = ["last_real_positions", "real_token_mask"]


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of a mask: True where attending is allowed."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():  # additive masks: 0 allowed, a large negative value masked
        return mask == 0
    return mask != 0


def real_token_mask(
    attention_mask: torch.Tensor | None,
    batch: int,
    seq: int,
    device: torch.device,
    past: int = 0,
) -> torch.Tensor:
    """Bool ``[batch, seq]``: True where the block's position ``t`` is a real token.

    A 2-D mask covers the cached tokens too, so its last ``seq`` columns
    describe this pass. A 4-D mask ``[batch, 1, seq, keys]`` (static caches)
    tells whether query ``t`` may attend to its own key ``past + t``: a
    padding token may not. Without a mask every position is real.
    """
    if attention_mask is None:
        return torch.ones((batch, seq), dtype=torch.bool, device=device)
    mask = attention_mask
    if mask.dim() == 2 and mask.shape[0] == batch and mask.shape[1] >= seq:
        return _allowed(mask[:, mask.shape[1] - seq :]).to(device=device)
    if mask.dim() == 4 and mask.shape[0] == batch and mask.shape[-2] == seq:
        if mask.shape[-1] >= past + seq:
            idx = torch.arange(seq, device=mask.device)
            diagonal = mask[:, 0, idx, past + idx]
            return _allowed(diagonal).to(device=device)
    raise DecisionError(
        f"the attention mask has shape {tuple(mask.shape)} but the steered block sees a batch "
        f"of {batch} rows of {seq} positions after {past} cached ones",
        code="DECISION_INPUT",
        hint="pass the attention_mask that belongs to the input_ids",
    )


def last_real_positions(real: torch.Tensor) -> torch.Tensor:
    """Int64 ``[batch]``: index of the last True of each row (last index if none).

    In host memory with NumPy: torch's reductions enter its thread pool even on a few
    hundred elements, and a hook that waits there on a busy CPU spins for milliseconds."""
    seq = real.shape[1]
    if real.device.type == "cpu" and real.dtype == torch.bool and real.dim() == 2 and seq > 0:
        # the first True from the end; a row without one gives argmax 0, hence seq - 1
        flipped = real.detach().numpy()[:, ::-1]
        return torch.from_numpy((seq - 1 - flipped.argmax(axis=1)).astype(np.int64))
    idx = torch.arange(seq, device=real.device).expand_as(real)
    last = torch.where(real, idx, torch.full_like(idx, -1)).max(dim=1).values
    return torch.where(last < 0, torch.full_like(last, seq - 1), last)
