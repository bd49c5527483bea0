"""The ``asa`` command: a thin click layer over the library.

The conventions every command follows (report on stdout, diagnostics on
stderr, one JSON document with ``--json``, exit 0/1/2/130/143) are in
``asa_format.cli.support`` and ``docs/cli.md``. The console script starts in
``asa_format.entry`` (signal handlers before any heavy import).
Sub-commands that need heavy dependencies (``convert``: scikit-learn;
``run``: torch and transformers) are imported only when invoked, so
``asa validate`` never imports them.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from asa_format._version import __version__
from asa_format.cli._lazy_group import LazyGroup
from asa_format.cli.report import Result, failed_result, write_report
from asa_format.cli.support import fail, run_main
from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError

__all__ = ["cli", "fail", "main"]


@click.group(
    cls=LazyGroup,
    lazy_subcommands={
        "convert": "asa_format.cli.convert:convert_command",
        "export": "asa_format.cli.interop:export_command",  # format 1.1 interoperability
        "fit": "asa_format.cli.fit:fit_command",
        "import": "asa_format.cli.interop:import_command",
        "run": "asa_format.cli.run:run_command",
        "sign": "asa_format.cli.sign:sign_command",
        "verify": "asa_format.cli.sign:verify_command",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
)
@click.version_option(__version__, "-V", "--version", prog_name="asa")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Validate, inspect, convert, sign and run activation-steering bundles.

    The report goes to stdout (text, or JSON with --json), diagnostics to
    stderr. Exit 0 ok, 1 a check failed or an input was refused, 2 usage or
    environment error, 130 / 143 interrupted (SIGINT / SIGTERM).
    """
    if ctx.invoked_subcommand is None:  # plain `asa`: the help, and success
        click.echo(ctx.get_help())


def _validation_result(path: str) -> Result:
    from asa_format.validate import intervention_text, validate_bundle

    report = validate_bundle(path)
    result = Result(path=path, problems=list(report.problems), warnings=list(report.warnings))
    result.fields = {"digest": report.digest}
    if report.ok:
        s = report.summary
        model = s.get("model", {})
        what = safe_text(model.get("id") or model.get("type") or "model unknown")
        items = s.get("interventions", [])
        result.fields["interventions"] = items
        if [i["kind"] for i in items] == ["asa"]:  # one asa intervention (every 1.0 bundle)
            steers = f"layer {s.get('layer')}, {len(s.get('domains', []))} domains"
        else:
            steers = "; ".join(safe_text(intervention_text(i)) for i in items)
        result.text = (
            f"ok    {safe_text(path)}  ({what}, hidden {model.get('hidden_size')}, {steers}, "
            f"{report.digest})\n"
        )
    return result


@cli.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON report on stdout (format: docs/cli.md).",
)
def validate_command(paths: tuple[str, ...], as_json: bool) -> None:
    """Check bundles: schema, sizes, hashes, file profiles and consistency.

    Every path is reported (a missing one as BUNDLE_NOT_FOUND). Exit 0 if
    every bundle is valid, 1 if any is not, 2 on usage errors.
    """
    results = [_validation_result(p) for p in paths]
    raise SystemExit(write_report("validate", results, as_json, sys.stdout))


@cli.command("inspect")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--json", "as_json", is_flag=True, help="Print the manifests and digests as one JSON report."
)
def inspect_command(paths: tuple[str, ...], as_json: bool) -> None:
    """Print a readable summary of bundles (and their root digests).

    Exit 0 if every bundle could be read, 1 if any could not, 2 on usage errors.
    """
    from asa_format.inspect import describe

    results = []
    for path in paths:
        try:
            summary, text = describe(path)
        except AsaError as exc:
            results.append(failed_result(path, exc))
            continue
        summary.pop("path", None)
        results.append(Result(path=path, fields=summary, text=text))
    raise SystemExit(write_report("inspect", results, as_json, sys.stdout, verdict="read"))


def main(argv: list[str] | None = None) -> Any:
    run_main(cli, argv, "asa")


if __name__ == "__main__":  # pragma: no cover
    main()
