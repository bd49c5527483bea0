"""``asa-convert SRC_DIR DST_DIR`` (also ``asa convert``): legacy pickles -> bundle.

Exit status: 0 converted, 1 refused input / destination / failed export /
failed parity (nothing written), 2 usage or environment error (the
``convert`` extra missing), 130 / 143 interrupted. The report goes to stdout
(``--json``: the envelope of ``asa_format.cli.report``), diagnostics to stderr.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click

from asa_format._version import __version__
from asa_format.cli.report import Result, failed_result, write_report
from asa_format.cli.support import exit_code_for, fail, require_extra, run_main
from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError

__all__ = ["convert_command", "main"]


@click.command("convert", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path())
@click.argument("destination", type=click.Path())
@click.option(
    "--model-id",
    help="Hugging Face model id the assets were fitted on (overrides config.json's 'model').",
)
@click.option(
    "--model-type", help="transformers model_type of that model (e.g. lfm2, qwen2, llama)."
)
@click.option(
    "--num-layers", type=click.IntRange(min=1), help="Number of decoder layers of that model."
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace DESTINATION if it is an asa bundle (never another directory, nor the source or a folder holding it).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=16, max=1_000_000),
    default=4096,
    show_default=True,
    help="Hidden states compared in the parity self-check.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the conversion report as JSON (the shape asa validate uses).",
)
@click.version_option(__version__, "-V", "--version", prog_name="asa-convert")
def convert_command(
    source: str,
    destination: str,
    model_id: str | None,
    model_type: str | None,
    num_layers: int | None,
    force: bool,
    samples: int,
    as_json: bool,
) -> None:
    """Convert a legacy ASA bundle (pickles + npz) in SOURCE into an asa bundle at DESTINATION.

    No code from the pickles is ever executed: they are read opcode by opcode
    against an allowlist. The result is checked against the legacy decision
    function before it is moved into place. Exit 0 converted, 1 refused
    (nothing written), 2 usage or environment error.
    """
    require_extra("convert", "asa-convert")
    from asa_format.converters.convert import check_not_source, convert_legacy
    from asa_format.storage.writer import check_destination

    try:
        check_not_source(source, destination)
        for note in check_destination(destination, force=force):
            click.echo(f"note: {safe_text(note)}", err=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skl2onnx / sklearn chatter
            report = convert_legacy(
                source,
                destination,
                model_id=model_id,
                model_type=model_type,
                num_layers=num_layers,
                force=force,
                samples=samples,
            )
    except AsaError as exc:
        if exit_code_for(exc) != 1:
            fail(exc)
        result = failed_result(source, exc, destination=destination)
    else:
        result = Result(path=source, fields=report.to_dict(), text=report.text())
    raise SystemExit(write_report("convert", [result], as_json, sys.stdout))


def main(argv: list[str] | None = None) -> Any:
    run_main(convert_command, argv, "asa-convert")


if __name__ == "__main__":  # pragma: no cover
    main()
