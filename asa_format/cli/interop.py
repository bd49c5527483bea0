"""``asa import`` and ``asa export``: steering files in and out of bundles.

Both follow the command-line convention of ``asa_format.cli.support``: the
report on stdout (text, or the JSON envelope of ``asa_format.cli.report`` with
``--json``), a refused input as a failed result (exit 1; a missing input
path too), usage and environment errors (a missing extra) on stderr (exit 2;
with ``--json`` also the envelope on stdout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from asa_format.cli.report import Result, failed_result, write_report
from asa_format.cli.support import exit_code_for, fail, require_extra
from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError, UsageError
from asa_format.storage.destination import inside, normalized, recover

__all__ = ["export_command", "import_command"]


@click.command("import")
@click.argument("source", type=click.Path())
@click.argument("destination", type=click.Path())
@click.option("--name", help="Intervention name (default: from the file name).")
@click.option(
    "--coefficient",
    type=float,
    default=1.0,
    show_default=True,
    help="Strength the vectors are added with.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(),
    help="Model directory: its config.json gives the binding (nothing else is read).",
)
@click.option("--model-type", help="The transformers model_type the vectors belong to.")
@click.option("--model-id", help="The model id, e.g. a hub id.")
@click.option("--num-layers", type=click.IntRange(min=1), help="The model's decoder block count.")
@click.option(
    "--hidden-size",
    type=click.IntRange(min=1),
    help="The model's hidden size (checked against the vectors).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace DESTINATION if it is an asa bundle (never another directory).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report as JSON (the shape asa validate uses).",
)
def import_command(
    source: str,
    destination: str,
    name: str | None,
    coefficient: float,
    model_dir: str | None,
    model_type: str | None,
    model_id: str | None,
    num_layers: int | None,
    hidden_size: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Import a llama.cpp control vector (GGUF) or an activation-steering .svec file.

    The kind is detected from the content, not the extension; the source is
    read bounded, and only if it is a regular file. The bundle holds one 'always' intervention that adds
    COEFFICIENT x direction to the output of every block the source names, at
    every token. Exit 0 imported, 1 refused (nothing written), 2 usage or
    environment error.
    """
    from asa_format.interop import ImportBinding, import_file
    from asa_format.storage.writer import check_destination

    try:
        if not (os.path.exists(source) or os.path.islink(source)):
            raise UsageError(
                f"the file to import, {source!r}, does not exist",
                code="SOURCE_NOT_FOUND",
                file=source,
                hint="pass the path of a .gguf control vector or a .svec file",
            )
        if inside(Path(source), Path(destination)):
            raise UsageError(
                f"destination {destination!r} holds the file to import; "
                "writing there would replace it",
                code="DESTINATION_IS_SOURCE",
                file=destination,
                hint="write the bundle to a new directory",
            )
        binding = ImportBinding(  # checked: a model type or id with a newline is a usage error
            model_type=model_type,
            num_layers=num_layers,
            hidden_size=hidden_size,
            model_id=model_id,
            model_dir=model_dir,
        )
        for note in check_destination(destination, force=force):
            click.echo(f"note: {safe_text(note)}", err=True)
        path = import_file(
            source, destination, binding, name=name, coefficient=coefficient, force=force
        )
    except AsaError as exc:
        if exit_code_for(exc) != 1:
            fail(exc)
        result = failed_result(source, exc, destination=destination)
    else:
        result = Result(
            path=source, fields={"destination": str(path)}, text=f"imported {source} -> {path}\n"
        )
    raise SystemExit(write_report("import", [result], as_json, sys.stdout))


def _sign(value: str | None) -> int | None:
    if value is None:
        return None
    if value not in ("+1", "1", "-1"):
        raise click.BadParameter("use +1 or -1", param_hint="--sign")
    return -1 if value == "-1" else 1


@click.command("export")
@click.argument("bundle", type=click.Path())
@click.argument("destination", type=click.Path())
@click.option("--to", "target", type=click.Choice(["gguf"]), required=True, help="Target format.")
@click.option(
    "--intervention",
    "interventions",
    multiple=True,
    help="Export only these interventions (repeatable).",
)
@click.option("--domain", help="For an asa bundle: the domain whose vector is exported.")
@click.option("--sign", help="For an asa bundle: +1 (encourage) or -1 (discourage).")
@click.option(
    "--model-hint", help="controlvector.model_hint when the bundle's model type is unknown."
)
@click.option("--strict", is_flag=True, help="Refuse if anything about the steering would be lost.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing GGUF control vector (never another file, a directory, or a "
    "file inside the bundle).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report as JSON (the shape asa validate uses).",
)
def export_command(
    bundle: str,
    destination: str,
    target: str,
    interventions: tuple[str, ...],
    domain: str | None,
    sign: str | None,
    model_hint: str | None,
    strict: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Export a bundle as a llama.cpp control vector; report what is lost.

    Exit 0 written, 1 refused (nothing written; with --strict, any loss),
    2 usage or environment error (the GGUF writer needs the interop extra).
    """
    require_extra("interop", "asa export")
    from asa_format.bundle import load_bundle
    from asa_format.interop.export import export_gguf

    try:
        loaded = load_bundle(bundle)
        for note in recover(normalized(Path(destination))):
            click.echo(f"note: {safe_text(note)}", err=True)
        report = export_gguf(
            bundle,
            destination,
            interventions=list(interventions) or None,
            domain=domain,
            sign=_sign(sign),
            model_hint=model_hint,
            strict=strict,
            force=force,
            bundle=loaded,
        )
    except AsaError as exc:
        if exit_code_for(exc) != 1:
            fail(exc)
        result = failed_result(bundle, exc, destination=destination)
    else:
        fields = {
            "destination": destination,
            "blocks": sorted(report.directions),
            "model_hint": report.model_hint,
            "losses": [{"kind": k, "detail": d} for k, d in report.losses],
            "notes": list(report.notes),
        }
        result = Result(path=bundle, fields=fields, text=report.text() + f"wrote {destination}\n")
    raise SystemExit(write_report("export", [result], as_json, sys.stdout))
