"""Hidden states for fitting: each decoder block's output at a prompt's positions.

One forward pass per prompt gives the reference values: the output of every
decoder block at the last position (``last``) and, where asked, the float64
mean over all positions (``mean``, the condition gate's aggregate). Batching
is used only where it gives those same values:

* by default prompts of **equal token length** are batched (no padding, so no
  attention mask changes anything). The first batch is checked row by row
  against one-at-a-time passes, and one row of every later batch; a single
  difference (some kernels pick another reduction order for another batch
  size) switches the whole extraction to one prompt at a time, and says so;
* ``padded=True`` (opt-in) batches prompts of different lengths with left
  padding. In float16 padding changes the values and can move a fit: the
  first batch is compared with one-at-a-time passes and the largest
  difference is reported.

A progress line is drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from asa_format.errors import FitError

__all__ = ["Extraction", "HiddenStates", "extract_hidden_states"]


@dataclass
class HiddenStates:
    """``last[l, i]``: block ``l``'s output at prompt ``i``'s last position (float32);
    ``mean[l, i]``: its mean over the prompt's positions (float64), when asked."""

    last: np.ndarray  # [blocks, prompts, hidden] float32
    mean: np.ndarray | None = None  # [blocks, prompts, hidden] float64


@dataclass
class Extraction:
    """How the hidden states were computed (for the report)."""

    prompts: int
    mode: str  # "equal-length batches", "one at a time", "padded batches", "cache"
    batch_size: int
    forward_passes: int = 0
    batched_prompts: int = 0
    checked_rows: int = 0
    fallback: str | None = None  # why batching was abandoned
    padded_max_abs_diff: float | None = None  # padded: max |padded - exact| on the checked rows
    padded_max_rel_diff: float | None = None
    seconds: float = 0.0
    cached: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "forward_passes": self.forward_passes,
            "batched_prompts": self.batched_prompts,
            "checked_rows": self.checked_rows,
            "fallback": self.fallback,
            "padded_max_abs_diff": self.padded_max_abs_diff,
            "padded_max_rel_diff": self.padded_max_rel_diff,
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
            "notes": list(self.notes),
        }


class _Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream if stream is not None and stream.isatty() else None
        self.last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(
                f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
            )
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()


def _dtype_error(dtype: str, detail: str) -> FitError:
    return FitError(
        f"the model does not run in {dtype}: {detail}",
        code="FIT_DTYPE_UNSUPPORTED",
        hint="choose another dtype (float32 runs everywhere)",
    )


class _Runner:
    """Forward passes with hooks on every decoder block."""

    def __init__(self, loaded: Any, with_mean: bool) -> None:
        self.loaded = loaded
        self.with_mean = with_mean
        self.passes = 0

    def run(self, ids: list[list[int]], *, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass over ``ids`` (left-padded when lengths differ)."""
        import torch

        width = max(len(r) for r in ids)
        batch = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            batch[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        padded = any(len(r) != width for r in ids)
        kwargs: dict[str, Any] = {"input_ids": batch.to(self.loaded.device)}
        kwargs["attention_mask"] = mask.to(self.loaded.device)
        if padded:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.loaded.device)
        lasts: list[np.ndarray] = []
        means: list[np.ndarray] = []
        real = mask.bool()

        def hook(_module: Any, _args: Any, output: Any) -> None:
            h = output if isinstance(output, torch.Tensor) else output[0]
            h = h.detach()
            lasts.append(h[:, -1, :].float().cpu().numpy())
            if self.with_mean:
                hd = h.double().cpu()
                rows = [hd[r, real[r]].mean(dim=0) for r in range(hd.shape[0])]
                means.append(torch.stack(rows).numpy())

        handles = [block.register_forward_hook(hook) for block in self.loaded.layers.layers]
        try:
            with torch.no_grad():
                self.loaded.model(**kwargs, use_cache=False)
        except (RuntimeError, NotImplementedError) as exc:
            if "out of memory" in str(exc).lower():
                raise  # not a dtype matter: reported as it is
            raise _dtype_error(self.loaded.dtype, str(exc).splitlines()[0]) from exc
        finally:
            for handle in handles:
                handle.remove()
        self.passes += 1
        n_blocks = len(self.loaded.layers)
        if len(lasts) != n_blocks:  # pragma: no cover - a block ran twice or not at all
            raise FitError(
                f"{len(lasts)} block outputs seen for {n_blocks} decoder blocks in one pass",
                code="FIT_DTYPE_UNSUPPORTED",
                hint="this architecture calls its blocks unusually; name its decoder block list (layers path)",
            )
        last = np.stack(lasts)
        if not np.all(np.isfinite(last)):
            raise _dtype_error(
                self.loaded.dtype, "its hidden states hold NaN or infinity (overflow)"
            )
        return last, (np.stack(means) if self.with_mean else None)


def extract_hidden_states(
    loaded: Any,
    encoded: Sequence[list[int]],
    *,
    batch_size: int = 8,
    padded: bool = False,
    with_mean: bool = False,
    progress: TextIO | None = None,
    label: str = "hidden states",
) -> tuple[HiddenStates, Extraction]:
    """Hidden states of every prompt at every decoder block (see the module docstring)."""
    start = time.perf_counter()
    n = len(encoded)
    runner = _Runner(loaded, with_mean)
    store: dict[str, np.ndarray] = {}
    bar = _Progress(n, label, progress)
    pad_id = loaded.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = loaded.tokenizer.eos_token_id if loaded.tokenizer.eos_token_id is not None else 0
    report = Extraction(prompts=n, mode="one at a time", batch_size=max(1, batch_size))

    def put(rows: list[int], values: tuple[np.ndarray, np.ndarray | None]) -> None:
        if not store:  # shapes from the first pass: [blocks, rows, hidden]
            blocks, _, hidden = values[0].shape
            store["last"] = np.zeros((blocks, n, hidden), dtype=np.float32)
            if with_mean:
                store["mean"] = np.zeros((blocks, n, hidden), dtype=np.float64)
        store["last"][:, rows] = values[0]
        if with_mean and values[1] is not None:
            store["mean"][:, rows] = values[1]

    def single(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        return runner.run([list(encoded[i])], pad_id=pad_id)

    if batch_size <= 1 or n <= 1:
        for i in range(n):
            put([i], single(i))
            bar.advance(1)
    elif padded:
        report.mode = "padded batches"
        order = sorted(range(n), key=lambda i: (len(encoded[i]), i))
        batches = [order[k : k + batch_size] for k in range(0, n, batch_size)]
        mixed = next((b for b in batches if len({len(encoded[i]) for i in b}) > 1), batches[0])
        exact = {i: single(i) for i in mixed}
        for b in batches:
            values = runner.run([list(encoded[i]) for i in b], pad_id=pad_id)
            put(b, values)
            report.batched_prompts += len(b) if len(b) > 1 else 0
            bar.advance(len(b))
        diffs = [np.abs(store["last"][:, i] - exact[i][0][:, 0]) for i in mixed]
        scale = max(float(np.abs(exact[i][0]).max()) for i in mixed) or 1.0
        report.checked_rows = len(mixed)
        report.padded_max_abs_diff = float(max(float(d.max()) for d in diffs))
        report.padded_max_rel_diff = report.padded_max_abs_diff / scale
    else:
        report.mode = "equal-length batches"
        groups: dict[int, list[int]] = {}
        for i in range(n):
            groups.setdefault(len(encoded[i]), []).append(i)
        batches = [
            g[k : k + batch_size]
            for _, g in sorted(groups.items())
            for k in range(0, len(g), batch_size)
        ]
        first_checked = False
        for b in batches:
            if len(b) == 1:
                put(b, single(b[0]))
                bar.advance(1)
                continue
            values = runner.run([list(encoded[i]) for i in b], pad_id=pad_id)
            check = b if not first_checked else [b[-1]]
            first_checked = True
            mismatch = None
            for i in check:
                alone = single(i)
                report.checked_rows += 1
                j = b.index(i)
                same = np.array_equal(values[0][:, j], alone[0][:, 0]) and (
                    values[1] is None
                    or alone[1] is None
                    or np.array_equal(values[1][:, j], alone[1][:, 0])
                )
                if not same:
                    mismatch = float(np.abs(values[0][:, j] - alone[0][:, 0]).max())
                    break
            if mismatch is not None:
                report.fallback = (
                    f"a batch of {len(b)} prompts of {len(encoded[b[0]])} tokens gave other values than "
                    f"one prompt at a time (max |difference| {mismatch:.3g}); every prompt was then "
                    "run alone"
                )
                report.mode = "one at a time"
                report.batched_prompts = 0
                bar = _Progress(n, label + " (one at a time)", progress)
                for i in range(n):
                    put([i], single(i))
                    bar.advance(1)
                break
            put(b, values)
            report.batched_prompts += len(b)
            bar.advance(len(b))
    report.forward_passes = runner.passes
    report.seconds = time.perf_counter() - start
    return HiddenStates(last=store["last"], mean=store.get("mean")), report
