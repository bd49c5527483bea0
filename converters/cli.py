"""``asa-convert SRC_DIR DST_DIR`` (also ``asa convert``): legacy pickles -> bundle.

Exit status: 0 converted, 1 refused input / failed export / failed parity
(nothing written), 2 usage error. The report goes to stdout (``--json`` for
machines), diagnostics to stderr.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import click

from asa_format.cli import fail
from asa_format.errors import AsaError
from asa_format.textsafe import safe_lines

__all__ = ["convert_command", "main"]


@click.command("convert")
@click.argument("source", type=click.Path(file_okay=False, dir_okay=True))
@click.argument("destination", type=click.Path())
@click.option("--model-id", help="Hugging Face model id the assets were fitted on (overrides config.json's 'model').")
@click.option("--model-type", help="transformers model_type of that model (e.g. lfm2, qwen2, llama).")
@click.option("--num-layers", type=click.IntRange(min=1), help="Number of decoder layers of that model.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at DESTINATION.")
@click.option("--samples", type=click.IntRange(min=16, max=1_000_000), default=4096, show_default=True, help="Hidden states compared in the parity self-check.")
@click.option("--json", "as_json", is_flag=True, help="Print the conversion report as JSON.")
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
    """Convert a legacy ASA bundle (pickles + npz) into an asa bundle, safely.

    No code from the pickles is ever executed: they are read opcode by opcode
    against an allowlist. The result is checked against the legacy decision
    function before it is written.
    """
    from asa_format.converters.convert import convert_legacy

    try:
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
        fail(exc)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(safe_lines(report.text()), nl=False)


def main(argv: list[str] | None = None) -> Any:
    return convert_command.main(args=argv, prog_name="asa-convert")


if __name__ == "__main__":  # pragma: no cover
    main()
