"""What every command shares: exit codes, error lines, extras, signals.

The convention (also in docs/cli.md):

* the report goes to stdout (text, or one JSON document with ``--json``);
  diagnostics (usage and environment errors, warnings, notes) go to stderr;
* exit 0 ok, 1 a check failed or an input was refused, 2 usage or
  environment error (bad arguments, unreadable key, missing extra), 130 on
  SIGINT, 143 on SIGTERM; the same fault gives the same code in every command;
* hints name command-line flags, never Python keywords.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError, UsageError, problems_of
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


def fail(error: AsaError) -> NoReturn:
    """Print an AsaError for a person (stderr) and exit with its code."""
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
        click.echo(f"error: {error.message}", err=True)
        raise SystemExit(EXIT_USAGE)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so that clean-up code runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):  # not the main thread, or no SIGTERM here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> NoReturn:
    """Run a click command with this project's exit codes and signal handling."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with _sigterm_raises():
            result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = EXIT_USAGE if isinstance(exc, click.UsageError) else EXIT_FAILED
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted (SIGINT); nothing was left half-written", err=True)
        code = EXIT_INTERRUPTED
    except Terminated:
        click.echo("terminated (SIGTERM); nothing was left half-written", err=True)
        code = EXIT_TERMINATED
    except AsaError as exc:
        fail(exc)
    except (
        ModuleNotFoundError
    ) as exc:  # an extra's module vanished between the check and the import
        for extra, modules in EXTRAS.items():
            if exc.name and exc.name.split(".")[0] in modules:
                click.echo(
                    f"error: {extra_error(extra, prog_name, [exc.name.split('.')[0]]).message}",
                    err=True,
                )
                raise SystemExit(EXIT_USAGE) from None
        code = _unexpected(exc)
    except Exception as exc:  # last resort, for every command: a message, never a traceback
        code = _unexpected(exc)
    raise SystemExit(code)


def _unexpected(exc: BaseException) -> int:
    click.echo(f"error: {type(exc).__name__}: {safe_text(str(exc))}", err=True)
    return EXIT_FAILED
