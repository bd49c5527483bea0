"""Where a benchmark writes its results.

``--out DIR`` writes to DIR. Without it, a fresh directory is created (in the
system's temporary folder) and its path printed. The committed results under
``benchmarks/results/`` change only with ``--update-results``: that flag makes
them the default output, and an ``--out`` inside them is refused without it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["RESULTS_DIR", "add_output_options", "output_dir"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_output_options(parser: argparse.ArgumentParser, files: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder for {files} (default: a fresh folder, created and printed; "
        "with --update-results: benchmarks/results)",
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help="write into the committed results under benchmarks/results "
        "(otherwise an --out there is refused)",
    )


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def output_dir(
    parser: argparse.ArgumentParser, args: argparse.Namespace, label: str, *, subdir: str = ""
) -> Path:
    """The folder to write to (created), or a usage error (exit 2) for a refused ``--out``."""
    out: Path | None = args.out
    if out is None:
        if args.update_results:
            out = RESULTS_DIR / subdir if subdir else RESULTS_DIR
        else:
            out = Path(tempfile.mkdtemp(prefix=f"asa-benchmarks-{label}-"))
            print(f"[benchmarks] writing to the new folder {out}", file=sys.stderr, flush=True)
    elif _inside(out, RESULTS_DIR) and not args.update_results:
        parser.error(
            f"--out {out} is inside the committed results ({RESULTS_DIR}); "
            "pass --update-results to replace them, or choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out
