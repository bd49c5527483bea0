"""What the runtime decided, per generation: kept for inspection and logging."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GenerationRecord", "RecordLog"]


@dataclass(frozen=True)
class GenerationRecord:
    """The decisions taken on the prefill of one generation.

    ``rows[i]`` is the asa decision of batch row ``i`` (a ``Decision`` with
    ``domain``, ``domain_index``, ``probability`` and ``gate``), or ``None``
    when the row's bundle has no asa intervention or no bundle was selected;
    ``bundles[i]`` names its bundle; ``interventions[i]`` maps each
    intervention of that bundle to its outcome for the row (the asa gate, a
    condition's True/False, ``True`` for always); ``positions[i]`` is the
    position whose hidden state was read for that row (its last real,
    non-padding token).
    """

    generation: int  # sequence number within the handle, from 1
    policy: str
    layer: int
    alpha: float
    rows: list[Any]
    positions: list[int]
    thread: str
    bundles: list[str | None] = field(default_factory=list)  # per row: the bundle, or None
    interventions: list[dict[str, Any] | None] = field(default_factory=list)  # per row
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gates(self) -> list[int]:
        """Per row (0 for a row no bundle steers)."""
        return [0 if r is None else int(r.gate) for r in self.rows]

    @property
    def domains(self) -> list[str | None]:
        return [None if r is None else str(r.domain) for r in self.rows]

    @property
    def probabilities(self) -> list[float]:
        return [float("nan") if r is None else float(r.probability) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for i, (r, p, b) in enumerate(
            zip(self.rows, self.positions, self.bundles or [None] * len(self.rows), strict=True)
        ):
            row: dict[str, Any] = {"bundle": b, "position": int(p)}
            if r is not None:
                row.update(
                    domain=str(r.domain),
                    domain_index=int(r.domain_index),
                    probability=float(r.probability),
                    gate=int(r.gate),
                )
            outcomes = self.interventions[i] if i < len(self.interventions) else None
            if outcomes is not None:
                row["interventions"] = dict(outcomes)
            rows.append(row)
        return {
            "generation": self.generation,
            "policy": self.policy,
            "layer": self.layer,
            "alpha": None if self.alpha != self.alpha else self.alpha,  # NaN: no asa part
            "rows": rows,
        }


class RecordLog:
    """A thread-safe bounded log of :class:`GenerationRecord` objects."""

    def __init__(self, max_records: int) -> None:
        self._lock = threading.Lock()
        self._records: deque[GenerationRecord] = deque(maxlen=max(1, int(max_records)))
        self._counter = 0

    def next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def append(self, record: GenerationRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[GenerationRecord]:
        with self._lock:
            return list(self._records)

    @property
    def last(self) -> GenerationRecord | None:
        with self._lock:
            return self._records[-1] if self._records else None

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def drop_newest(self, count: int) -> None:
        """Forget the ``count`` most recent records (the self-test's own)."""
        with self._lock:
            for _ in range(max(0, min(count, len(self._records)))):
                self._records.pop()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __iter__(self) -> Iterator[GenerationRecord]:
        return iter(self.snapshot())
