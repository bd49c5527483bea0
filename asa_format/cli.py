"""The ``asa`` command: a thin click layer over the library.

Exit status: 0 success, 1 a failed check or a refused input, 2 usage error.
Diagnostics for people go to stderr; ``--json`` output goes to stdout.
Sub-commands that need heavy dependencies (``convert``: scikit-learn;
``run``: torch and transformers) are imported only when invoked, so
``asa validate`` never imports them.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from asa_format import __version__
from asa_format._lazy_group import LazyGroup
from asa_format.errors import AsaError

__all__ = ["cli", "main"]


def fail(exc: AsaError) -> NoReturn:
    """Print an AsaError for a person (stderr) and exit 1; shared by every command."""
    click.echo(f"error: {exc}", err=True)
    raise SystemExit(1) from None


@click.group(
    cls=LazyGroup,
    lazy_subcommands={
        "convert": "asa_format.converters.cli:convert_command",
        "export": "asa_format.interop_cli:export_command",  # format 1.1 interoperability
        "import": "asa_format.interop_cli:import_command",
        "run": "asa_format.runtime.cli:run_command",
        "sign": "asa_format.signing_cli:sign_command",
        "verify": "asa_format.signing_cli:verify_command",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="asa")
def cli() -> None:
    """Validate, inspect, convert, sign and run activation-steering bundles."""


@cli.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=True, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout (format in the README).")
def validate_command(paths: tuple[str, ...], as_json: bool) -> None:
    """Check bundles: schema, sizes, hashes, file profiles and consistency.

    Exit 0 if every bundle is valid, 1 if any is not, 2 on usage errors.
    """
    from asa_format.report import json_report, text_report
    from asa_format.validate import validate_bundle

    reports = [validate_bundle(p) for p in paths]
    if as_json:
        click.echo(json_report(reports))
    else:
        text_report(reports, sys.stdout, sys.stderr)
    raise SystemExit(0 if all(r.ok for r in reports) else 1)


@cli.command("inspect")
@click.argument("path", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and digest as JSON.")
def inspect_command(path: str, as_json: bool) -> None:
    """Print a readable summary of a bundle (and its root digest)."""
    from asa_format.inspect import describe

    try:
        summary, text = describe(path)
    except AsaError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        click.echo(text, nl=False)


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="asa", standalone_mode=True)
    except AsaError as exc:  # pragma: no cover - commands handle their own errors
        fail(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
