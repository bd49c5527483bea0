"""Fix-it hints that name the interface the user is in.

The library writes a hint once; the command line shows it with flags
(``--no-strict``), Python callers see keywords (``strict_model_match=False``).
Each pair below is (Python keyword, command-line flag).
"""

from __future__ import annotations

import re
from dataclasses import replace

from asa_format.errors import AsaError, BundleError, Problem

__all__ = ["PAIRS", "for_cli", "for_python", "problem_for_cli", "python_error"]

PAIRS: tuple[tuple[str, str], ...] = (
    ("strict_model_match=False", "--no-strict"),
    ("force=True", "--force"),
    ("trusted_keys=[...]", "--public-key"),
    ("signature_path=...", "--signature"),
    ("expected_digest", "--expected-digest"),
    ("layers_path", "--layers-path"),
)


def _swap(hint: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        hint = re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new.replace("\\", "\\\\"), hint)
    # "--force / force=True" style double mentions collapse to one
    return re.sub(r"(\S+) / \1(?!\S)", r"\1", hint)


def for_cli(hint: str | None) -> str | None:
    """The hint with Python keywords replaced by the command-line flags."""
    return None if hint is None else _swap(hint, list(PAIRS))


def for_python(hint: str | None) -> str | None:
    """The hint with command-line flags replaced by the Python keywords."""
    return None if hint is None else _swap(hint, [(flag, kw) for kw, flag in PAIRS])


def problem_for_cli(problem: Problem) -> Problem:
    return replace(problem, hint=for_cli(problem.hint))


def python_error(exc: AsaError) -> AsaError:
    """``exc`` with its hints (and its problems' hints) written for Python callers."""
    exc.hint = for_python(exc.hint)
    if isinstance(exc, BundleError):
        exc.problems = [replace(p, hint=for_python(p.hint)) for p in exc.problems]
    exc.args = (str(exc.problem),)
    return exc
