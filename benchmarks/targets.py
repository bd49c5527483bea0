"""The issue's targets, evaluated on a results document."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Target", "evaluate_targets"]

GROWTH_LINEAR_MAX = 1.2  # log-log slope accepted as linear growth


@dataclass(frozen=True)
class Target:
    section: str
    name: str
    value: float | None
    display: str
    target: str
    met: bool | None  # None: not measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(doc: dict[str, Any], *keys: str) -> Any:
    cur: Any = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def _cmp(value: float | None, op: str, limit: float) -> bool | None:
    if value is None:
        return None
    return value >= limit if op == ">=" else value <= limit if op == "<=" else value < limit


def evaluate_targets(doc: dict[str, Any]) -> list[Target]:
    out: list[Target] = []

    def add(
        section: str, name: str, value: float | None, fmt: str, op: str, limit: float, target: str
    ) -> None:
        display = "n/a" if value is None else fmt.format(value)
        out.append(Target(section, name, value, display, target, _cmp(value, op, limit)))

    r = _get(doc, "decision", "ratios") or {}
    blocks = _get(doc, "decision", "protocol") or {}
    add(
        "1",
        "decision batch 1: legacy / ours (median of 7 interleaved blocks)",
        _get(blocks, "legacy_over_ours_batch1", "median") or r.get("legacy_over_ours_batch1"),
        "{:.1f}x",
        ">=",
        20.0,
        ">= 20x",
    )
    add(
        "1",
        "decision batch 1: ours / fused NumPy floor",
        r.get("ours_over_floor_batch1"),
        "{:.2f}x",
        "<=",
        3.0,
        "<= 3x",
    )
    add(
        "1",
        "decision batch 64: legacy / ours (median of 7 interleaved blocks)",
        _get(blocks, "legacy_over_ours_batch", "median")
        or r.get("ours_over_legacy_rows_per_s_batch"),
        "{:.0f}x",
        ">=",
        50.0,
        ">= 50x",
    )
    add(
        "2",
        "generate: attached / detached (median of paired ratios)",
        _get(doc, "generation", "ratio"),
        "{:.3f}",
        "<=",
        1.02,
        "<= 1.02",
    )
    add(
        "2",
        "generate: 1 + time inside the hooks / generation (direct)",
        _get(doc, "generation", "hook_time_share", "ratio_estimate"),
        "{:.4f}",
        "<=",
        1.02,
        "<= 1.02",
    )
    add(
        "3",
        "load_bundle with verification (median)",
        _get(doc, "load", "ms", "load_bundle", "median"),
        "{:.1f} ms",
        "<",
        30.0,
        "< 30 ms",
    )
    add(
        "4",
        "asa validate wall time (median)",
        _get(doc, "cli", "validate", "wall_s", "median"),
        "{:.2f} s",
        "<",
        0.5,
        "< 0.5 s",
    )
    add(
        "4",
        "asa-convert wall time (median, self-check included)",
        _get(doc, "cli", "convert", "wall_s", "median"),
        "{:.2f} s",
        "<",
        4.0,
        "< 4 s",
    )
    add(
        "4",
        "asa validate CPU time / python -c 'import numpy' (example bundle, median of 7 pairs)",
        _get(doc, "cli", "validate_cpu", "pair_ratio", "median"),
        "{:.2f}x",
        "<=",
        2.5,
        "<= 2.5x",
    )
    forbidden = _get(doc, "cli", "validate_imports", "forbidden_imported")
    out.append(
        Target(
            "4",
            "asa validate imports onnx / ml_dtypes / onnxruntime / torch / transformers / sklearn",
            None if forbidden is None else float(len(forbidden)),
            "n/a" if forbidden is None else (", ".join(forbidden) if forbidden else "none"),
            "none",
            None if forbidden is None else not forbidden,
        )
    )
    scale = doc.get("scale") or {}
    point = next(
        (p for p in scale.get("points", []) if p["hidden"] == scale.get("target_hidden")), None
    )
    label = f"{scale.get('target_hidden')}x{scale.get('domains')}"
    wall = None if point is None else point["wall_s"]["median"]
    add("5", f"asa validate {label} wall time (median)", wall, "{:.2f} s", "<", 2.0, "< 2 s")
    if point is not None:
        rss = point["peak_rss_mb"]["median"]
        limit = point["rss_limit_mb"]
        out.append(
            Target(
                "5",
                f"asa validate {label} peak RSS vs 3 x bundle + baseline",
                rss,
                f"{rss:.0f} MB (limit {limit:.0f} MB)",
                "< 3 x size + baseline",
                rss < limit,
            )
        )
    else:
        out.append(
            Target(
                "5", f"asa validate {label} peak RSS", None, "n/a", "< 3 x size + baseline", None
            )
        )
    add(
        "5",
        "validate time growth (log-log slope, in process)",
        scale.get("time_growth_exponent"),
        "{:.2f}",
        "<=",
        GROWTH_LINEAR_MAX,
        f"linear (<= {GROWTH_LINEAR_MAX})",
    )
    add(
        "5",
        "validate memory growth (log-log slope above baseline)",
        scale.get("rss_growth_exponent"),
        "{:.2f}",
        "<=",
        GROWTH_LINEAR_MAX,
        f"linear (<= {GROWTH_LINEAR_MAX})",
    )
    return out
