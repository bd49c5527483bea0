"""One report shape for ``asa validate``, ``inspect``, ``verify`` and ``asa-convert``.

JSON (stdout, ``--json``), one document per run, one result per path given
(missing paths included). A command that fails before it has a report (a
usage or environment error, a signal) writes the same envelope with one
failed result whose ``path`` is null or the path concerned::

    {
      "asa_format_version": "0.1.0",
      "command": "validate",
      "ok": false,                                  # every result ok?
      "summary": {"checked": 2, "ok": 1, "failed": 1},
      "results": [
        {"path": "good", "ok": true, "problems": [], "warnings": [],
         "digest": "sha256:...", ...},               # plus the command's own fields
        {"path": "missing", "ok": false,
         "problems": [{"code": "BUNDLE_NOT_FOUND", "file": null,
                       "message": "...", "hint": "..."}],
         "warnings": []}
      ]
    }

Text (stdout): per path an ``ok`` line (or the command's own text), or a
``FAIL`` header and one indented line per problem with its fix; a summary
line when more than one path was given. Hints name command-line flags.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from asa_format._version import __version__
from asa_format.cli.textsafe import safe_lines, safe_text
from asa_format.errors import AsaError, Problem, problems_of
from asa_format.hints import problem_for_cli

__all__ = ["Result", "envelope", "failed_result", "json_report", "text_report", "write_report"]


@dataclass
class Result:
    """What a command found for one path."""

    path: str | None  # None: the failure concerns no path (a usage error, a signal)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)  # the command's own data
    text: str | None = None  # the command's own text for an ok result

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.fields,
            "path": self.path,
            "ok": self.ok,
            "problems": [problem_for_cli(p).to_dict() for p in self.problems],
            "warnings": [problem_for_cli(p).to_dict() for p in self.warnings],
        }


def failed_result(path: str, error: AsaError, **fields: Any) -> Result:
    return Result(path=path, problems=problems_of(error), fields=dict(fields))


def envelope(command: str, results: Sequence[Result]) -> dict[str, Any]:
    ok = sum(r.ok for r in results)
    return {
        "asa_format_version": __version__,
        "command": command,
        "ok": ok == len(results),
        "summary": {"checked": len(results), "ok": ok, "failed": len(results) - ok},
        "results": [r.to_dict() for r in results],
    }


def json_report(command: str, results: Sequence[Result]) -> str:
    return json.dumps(envelope(command, results), indent=2, sort_keys=True)


def _problem_lines(problems: Sequence[Problem], out: TextIO) -> None:
    for p in map(problem_for_cli, problems):
        where = f"{safe_text(p.file)}: " if p.file else ""
        out.write(f"  {p.code:<28} {where}{safe_text(p.message)}\n")
        if p.hint:
            out.write(f"  {'':<28} fix: {safe_text(p.hint)}\n")


def text_report(
    results: Sequence[Result], out: TextIO, noun: str = "bundles", verdict: str = "valid"
) -> None:
    for r in results:
        if r.ok:
            out.write(safe_lines(r.text) if r.text is not None else f"ok    {safe_text(r.path)}\n")
            for w in r.warnings:
                out.write(f"      warning: {safe_text(problem_for_cli(w))}\n")
            continue
        n = len(r.problems)
        out.write(f"FAIL  {safe_text(r.path)}  ({n} problem{'s' if n != 1 else ''})\n")
        _problem_lines(r.problems, out)
        for w in r.warnings:
            out.write(f"  warning: {safe_text(problem_for_cli(w))}\n")
    if len(results) > 1:
        good = sum(r.ok for r in results)
        out.write(f"{good} of {len(results)} {noun} {verdict}\n")


# The commands whose JSON document was written in this process (asa_format.cli.support reads it:
# a command that ends after its report writes no failure envelope of its own).
JSON_WRITTEN: list[str] = []


def write_report(
    command: str, results: Sequence[Result], as_json: bool, out: TextIO, **text_options: str
) -> int:
    """Print the report; return the exit status (0 every result ok, 1 otherwise).

    Strings from bundles and file names are escaped (:mod:`asa_format.cli.textsafe`)
    in the text; the JSON is ASCII (``json.dumps`` escapes every other code point).
    """
    if as_json:
        out.write(json_report(command, results) + "\n")
        JSON_WRITTEN.append(command)  # asa_format.cli.support: no second document after this
    else:
        text_report(results, out, **text_options)
    out.flush()
    return 0 if all(r.ok for r in results) else 1
