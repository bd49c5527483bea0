"""What every command shares: exit codes, error lines, extras, signals, ``--json``.

The convention (``docs/cli.md``):

* the report goes to stdout (text, or one JSON document with ``--json``);
  diagnostics (usage and environment errors, warnings, notes) go to stderr;
* exit 0 ok, 1 a check failed or an input was refused (a missing input path
  included, with a report), 2 usage or environment error (bad arguments,
  unreadable key, missing extra), 130 on SIGINT, 143 on SIGTERM, never a
  traceback; the same fault gives the same code in every command;
* ``--json`` prints exactly one JSON document on stdout, whatever the
  outcome: the command's report, or (usage and environment errors, signals,
  a failure before any report) the same envelope with one failed result;
* hints name command-line flags, never Python keywords.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError, Problem, UsageError, problems_of
from asa_format.hints import problem_for_cli

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "EXTRAS",
    "Terminated",
    "exit_code_for",
    "fail",
    "missing_modules",
    "require_extra",
    "run_main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

# Codes that mean "fix the command line or the environment", not "the input failed a check".
USAGE_CODES = frozenset({"USAGE", "SIGNATURE_KEY_INVALID", "EXTRA_MISSING"})

# extra name -> (import names it provides, what to tell a person)
EXTRAS: dict[str, tuple[str, ...]] = {
    "convert": ("sklearn", "skl2onnx"),
    "runtime": ("torch", "transformers"),
    "interop": ("gguf",),
    "hub": ("huggingface_hub",),
}
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def exit_code_for(error: AsaError) -> int:
    """2 for usage and environment errors, 1 for every failed check or refused input."""
    return EXIT_USAGE if error.code in USAGE_CODES else EXIT_FAILED


def error_lines(error: AsaError) -> list[str]:
    """``error: [CODE] file: message (hint)`` lines, hints written for the command line
    (strings from the input escaped, :mod:`asa_format.cli.textsafe`)."""
    return [f"error: {safe_text(problem_for_cli(p))}" for p in problems_of(error)]


@dataclass
class Invocation:
    """What ``run_main`` knows about the running command, for its one JSON document."""

    command: str = "asa"
    json: bool = False
    written_before: int = 0  # JSON documents written by earlier invocations in this process
    problems: list[Problem] = field(default_factory=list)  # why it failed, for the envelope
    path: str | None = None  # the path the failure concerns, if any


_invocation = Invocation()


def fail(error: AsaError, path: str | None = None) -> NoReturn:
    """Print an AsaError for a person (stderr) and exit with its code.

    With ``--json``, ``run_main`` also writes the envelope holding it to stdout.
    """
    _invocation.problems = problems_of(error)
    _invocation.path = path
    for line in error_lines(error):
        click.echo(line, err=True)
    raise SystemExit(exit_code_for(error))


def missing_modules(names: Sequence[str]) -> list[str]:
    """The modules of ``names`` that cannot be imported here (found without importing them)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def extra_error(extra: str, command: str, missing: Sequence[str]) -> AsaError:
    what = ", ".join(_DISTRIBUTIONS.get(m, m) for m in missing)
    return UsageError(
        f"{command} needs {what}, which {'is' if len(missing) == 1 else 'are'} not installed: "
        f'pip install "asa-format[{extra}]"',
        code="EXTRA_MISSING",
    )


def require_extra(extra: str, command: str) -> None:
    """Exit 2 with one line naming the extra if its modules are not installed."""
    missing = missing_modules(EXTRAS[extra])
    if missing:
        error = extra_error(extra, command, missing)
        _invocation.problems = [error.problem]
        click.echo(f"error: {error.message}", err=True)
        raise SystemExit(EXIT_USAGE)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so that clean-up code runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM Terminated, so that clean-up code runs
    (replacing the start-up handlers of ``asa_format.entry``); restored on the way out."""
    previous: dict[signal.Signals, Any] = {}
    for sig, handler in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, _raise_terminated),
    ):
        if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # started with SIGINT ignored (nohup, a background job): keep it so
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread, or no such signal here
            pass
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _json_requested(args: Sequence[str]) -> bool:
    args = list(args)
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _command_name(command: click.Command, args: Sequence[str], prog_name: str) -> str:
    if isinstance(command, click.Group):
        names = command.list_commands(click.Context(command))
        return next((a for a in args if a in names), prog_name)
    return command.name or prog_name


def _json_written() -> bool:
    """Whether the command's own report (one JSON document) is already on stdout."""
    from asa_format.cli.report import JSON_WRITTEN

    return len(JSON_WRITTEN) > _invocation.written_before


def _emit_failure_envelope(code: int) -> None:
    """The one JSON document of a command that ended before writing its report."""
    from asa_format.cli.report import Result, write_report

    problems = _invocation.problems
    if not problems:
        if code == EXIT_INTERRUPTED or code == EXIT_TERMINATED:
            word = "SIGINT" if code == EXIT_INTERRUPTED else "SIGTERM"
            problems = [
                Problem(
                    "INTERRUPTED",
                    f"interrupted by {word}; nothing was left half-written",
                    None,
                    None,
                )
            ]
        else:
            problems = [Problem("USAGE", "the command ended with an error (see stderr)")]
    result = Result(path=_invocation.path, problems=list(problems))
    write_report(_invocation.command, [result], True, sys.stdout)


def run_main(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> NoReturn:
    """Run a click command with this project's exit codes, signal handling and ``--json``."""
    global _invocation
    args = list(sys.argv[1:] if argv is None else argv)
    from asa_format.cli.report import JSON_WRITTEN

    _invocation = Invocation(
        command=_command_name(command, args, prog_name),
        json=_json_requested(args),
        written_before=len(JSON_WRITTEN),
    )
    with _signals_raise():
        try:
            code = _run(command, args, prog_name)
            if _invocation.json and not _json_written() and code != EXIT_OK:
                _emit_failure_envelope(code)
        except KeyboardInterrupt:  # a second signal while finishing: leave quietly
            code = EXIT_INTERRUPTED
        except Terminated:
            code = EXIT_TERMINATED
    raise SystemExit(code)


def _run(command: click.Command, args: list[str], prog_name: str) -> int:
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except SystemExit as exc:  # a command's own exit (its report is written, or fail() ran)
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        usage = isinstance(exc, click.UsageError)
        _invocation.problems = [Problem("USAGE" if usage else "IO_ERROR", exc.format_message())]
        return EXIT_USAGE if usage else EXIT_FAILED
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted (SIGINT); nothing was left half-written", err=True)
        return EXIT_INTERRUPTED
    except Terminated:
        click.echo("terminated (SIGTERM); nothing was left half-written", err=True)
        return EXIT_TERMINATED
    except AsaError as exc:
        return _error_code(exc)
    except ModuleNotFoundError as exc:  # an extra's module vanished since the check
        return _missing_module(exc, prog_name)
    except Exception as exc:  # last resort, for every command: a message, never a traceback
        return _unexpected(exc)


def _error_code(exc: AsaError) -> int:
    _invocation.problems = problems_of(exc)
    for line in error_lines(exc):
        click.echo(line, err=True)
    return exit_code_for(exc)


def _missing_module(exc: ModuleNotFoundError, prog_name: str) -> int:
    for extra, modules in EXTRAS.items():
        if exc.name and exc.name.split(".")[0] in modules:
            error = extra_error(extra, prog_name, [exc.name.split(".")[0]])
            _invocation.problems = [error.problem]
            click.echo(f"error: {error.message}", err=True)
            return EXIT_USAGE
    return _unexpected(exc)


def _unexpected(exc: BaseException) -> int:
    message = f"{type(exc).__name__}: {safe_text(str(exc))}"
    _invocation.problems = [
        Problem("INTERNAL_ERROR", message, None, "please report this with the command you ran")
    ]
    click.echo(f"error: {message}", err=True)
    return EXIT_FAILED
