"""Section 5: ``asa validate`` time and peak memory against bundle size.

Bundles generated with ``asa_format.testing.make_test_contents`` for several
hidden sizes at a fixed domain count are validated as whole processes; the
baseline is the same command on a tiny bundle. Growth is judged by the
log-log slope against size over the three largest points: of the in-process
``validate_bundle`` time (no interpreter start-up to subtract) and of the
process's peak RSS above the baseline.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from .fixtures import bundle_size, write_scale_bundle
from .processes import cli_command, run_process
from .settings import Settings
from .stats import summarize

__all__ = ["growth_exponent", "linear_fit", "run_scale"]


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares ``(slope, intercept)`` of ``ys`` on ``xs``; None if undefined."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return slope, my - slope * mx


def growth_exponent(sizes: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) on log(size) (1.0 = linear); None if undefined."""
    pts = [
        (math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if s > 0 and v > 0
    ]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    if var == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var


def _in_process(path: Path, repeats: int) -> dict[str, Any]:
    """``validate_bundle`` in this process (after imports): time without interpreter start-up."""
    from asa_format.validate import validate_bundle

    validate_bundle(path)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        report = validate_bundle(path)
        times.append(time.perf_counter() - t0)
        if not report.ok:
            raise RuntimeError(f"generated bundle {path} does not validate: {report.problems}")
    return summarize(times, "s")


def _validate(path: Path, repeats: int) -> dict[str, Any]:
    cmd = [*cli_command("asa"), "validate", str(path)]
    run_process(cmd)  # warm the page cache
    runs = [run_process(cmd) for _ in range(repeats)]
    return {
        "wall_s": summarize([r.wall_s for r in runs], "s"),
        "peak_rss_mb": summarize([r.peak_rss_mb for r in runs], "MB"),
        "exit_codes": sorted({r.returncode for r in runs}),
    }


def run_scale(settings: Settings, work: Path) -> dict[str, Any]:
    tiny = write_scale_bundle(work / "scale-tiny", 16, 3)
    base = _validate(tiny, settings.repeats)
    base_wall = base["wall_s"]["median"]
    base_rss = base["peak_rss_mb"]["median"]
    points: list[dict[str, Any]] = []
    for hidden in settings.scale_hidden:
        path = write_scale_bundle(work / f"scale-{hidden}", hidden, settings.scale_domains)
        size_mb = bundle_size(path) / 1e6
        res = _validate(path, settings.repeats)
        res["in_process_s"] = _in_process(path, settings.repeats)
        wall = res["wall_s"]["median"]
        rss = res["peak_rss_mb"]["median"]
        points.append(
            {
                "hidden": hidden,
                "domains": settings.scale_domains,
                "bundle_mb": size_mb,
                **res,
                "wall_above_baseline_s": wall - base_wall,
                "rss_above_baseline_mb": rss - base_rss,
                "rss_above_baseline_per_bundle_mb": (rss - base_rss) / size_mb,
                "rss_limit_mb": 3 * size_mb + base_rss,
            }
        )
    top = points[-3:] if len(points) >= 3 else points
    sizes = [p["bundle_mb"] for p in top]
    fit = linear_fit(sizes, [p["peak_rss_mb"]["median"] for p in top])
    return {
        # peak RSS ~ intercept + slope x bundle size over the largest points: the slope is the
        # memory used per byte of bundle, the intercept what does not grow with hidden size
        "rss_fit": None if fit is None else {"mb_per_bundle_mb": fit[0], "intercept_mb": fit[1]},
        "domains": settings.scale_domains,
        "baseline": {
            "bundle": "hidden 16, 3 domains",
            "bundle_mb": bundle_size(tiny) / 1e6,
            **base,
        },
        "points": points,
        "growth_points": [p["hidden"] for p in top],
        "time_growth_exponent": growth_exponent(sizes, [p["in_process_s"]["median"] for p in top]),
        "rss_growth_exponent": growth_exponent(sizes, [p["rss_above_baseline_mb"] for p in top]),
        "target_hidden": settings.scale_target_hidden,
    }
