"""Sizes and repeat counts of a full run and of a ``--quick`` smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Settings", "full_settings", "quick_settings"]


@dataclass(frozen=True)
class Settings:
    quick: bool
    repeats: (
        int  # whole-run repeats: CLI processes and scale points (generation pairs: 2x, loads: 3x)
    )
    # 1. decision latency
    hidden: int = 2048
    domains: int = 4
    train_per_domain: int = 120
    pool_rows: int = 256
    batch1_calls: int = 3000
    batch1_round: int = 20  # calls per method before switching to the next method
    batch: int = 64
    batch_calls: int = 60
    batch_round: int = 3
    # 2. generation overhead
    gen_hidden: int = 2048
    gen_layers: int = 2
    gen_intermediate: int = 8192
    gen_heads: int = 32
    gen_kv_heads: int = 8
    gen_vocab: int = 512
    gen_prompt_tokens: int = 32
    gen_new_tokens: int = 16
    gen_threads: int = 1
    gen_pairs: int = 20
    # 3. load time
    load_repeats: int = 30
    # 4. CLI wall time
    convert_repeats: int = 5
    # 5. scale
    scale_hidden: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    scale_domains: int = 64
    scale_target_hidden: int = 8192
    layer: int = 1  # the steered block (< gen_layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def full_settings(repeats: int | None = None) -> Settings:
    r = 10 if repeats is None else repeats
    return Settings(
        quick=False,
        repeats=r,
        gen_pairs=2 * r,
        load_repeats=max(3 * r, 5),
        convert_repeats=max(r // 2, 1),
    )


def quick_settings(repeats: int | None = None) -> Settings:
    r = 2 if repeats is None else repeats
    return Settings(
        quick=True,
        repeats=r,
        hidden=64,
        train_per_domain=40,
        pool_rows=32,
        batch1_calls=200,
        batch1_round=20,
        batch_calls=6,
        batch_round=2,
        gen_hidden=64,
        gen_layers=2,
        gen_intermediate=128,
        gen_heads=4,
        gen_kv_heads=2,
        gen_vocab=96,
        gen_prompt_tokens=8,
        gen_new_tokens=4,
        gen_pairs=r,
        load_repeats=max(r, 2),
        convert_repeats=1,
        scale_hidden=(64, 128),
        scale_domains=8,
        scale_target_hidden=128,
        layer=1,
    )
