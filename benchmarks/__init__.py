"""Performance measurements of asa-format against the legacy pickle path.

Run everything with ``python -m benchmarks`` (``--quick`` for a smoke run,
``--out DIR`` for the output folder, default a fresh one; ``--update-results`` to
replace the committed ``benchmarks/results/``; ``--repeats N`` for whole-run repeats).
It writes ``results.json`` and ``results.md`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from .cli import main as _main

    return _main(argv)
