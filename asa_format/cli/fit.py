"""``asa fit --model DIR --data PATH --out BUNDLE``: fit a bundle for your own model.

Exit status: 0 fitted, 1 refused data, model or destination, or a failed
self-check (nothing written), 2 usage or environment error (an extra
missing, options that do not fit together), 130 interrupted. The report
goes to stdout (``--json``: the envelope of ``asa_format.cli.report``, one
result for the data path), diagnostics and the progress bar to stderr.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from asa_format.cli.report import Result, failed_result, write_report
from asa_format.cli.support import exit_code_for, fail, require_extra
from asa_format.errors import AsaError, UsageError

__all__ = ["fit_command"]


def _blocks(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of block indices"
        ) from None


def _auto_int(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a block index") from None


def _auto_float(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number") from None


@click.command("fit", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    "model",
    required=True,
    type=click.Path(),
    help="Local model directory (config, weights, tokenizer).",
)
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(),
    help="Data: a directory with cal/train/valid/test_data.json, or a .jsonl / .json file with a 'split' field.",
)
@click.option("--out", "out", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option(
    "--kind",
    type=click.Choice(["asa", "always", "condition"]),
    default="asa",
    show_default=True,
    help="What to fit: the asa protocol, an always-on control vector, or a CAST condition gate.",
)
@click.option("--system", "system", help="System prompt (chat template: [system, user]).")
@click.option(
    "--system-file", type=click.Path(), help="Read the system prompt from this UTF-8 file."
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    help="Run the model in this dtype (default: its own).",
)
@click.option(
    "--layer",
    default="auto",
    show_default=True,
    help="asa: the decoder block (auto: the protocol's layer sweep).",
)
@click.option(
    "--tau",
    default="auto",
    show_default=True,
    help="asa: the gate threshold (auto: the valid F1 sweep).",
)
@click.option("--alpha", type=float, help="asa: steering strength (else chosen with --trigger).")
@click.option(
    "--beta", type=float, help="asa: weight of the global vector (else chosen with --trigger)."
)
@click.option(
    "--domains", help="asa: router domain order, comma-separated (default: first seen in train)."
)
@click.option(
    "--trigger",
    help="asa: text that starts a tool call; alpha and beta are then chosen by the F1 of triggered generations on valid.",
)
@click.option(
    "--method",
    type=click.Choice(["mean_diff", "pca_center"]),
    help="always/condition: how directions are computed (default mean_diff).",
)
@click.option(
    "--blocks",
    help="always/condition: steered blocks, comma-separated (default: every block but the first).",
)
@click.option(
    "--coefficient",
    type=float,
    help="always/condition: strength the directions are added with (default 1).",
)
@click.option("--name", help="always/condition: the intervention's name (default: the kind).")
@click.option(
    "--condition-block", type=int, help="condition: the condition block (default: chosen on valid)."
)
@click.option(
    "--aggregate",
    type=click.Choice(["mean", "last"]),
    help="condition: hidden state compared (default mean over the prompt).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Prompts per forward pass (equal token lengths only, unless --pad-batches).",
)
@click.option(
    "--pad-batches",
    is_flag=True,
    help="Batch prompts of different lengths with padding (faster; changes float16 values; the effect is reported).",
)
@click.option(
    "--cache",
    type=click.Path(),
    help="Cache directory for hidden states (keyed by model files, prompts, rendering, dtype).",
)
@click.option(
    "--model-id",
    help="model.id to bind the bundle to (default: the directory's name, or the hub id of a hub-cache snapshot).",
)
@click.option(
    "--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:0, mps)."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="torch CPU threads for the forward passes (default: torch's).",
)
@click.option(
    "--raw", is_flag=True, help="Tokenize instructions as they are, without the chat template."
)
@click.option(
    "--add-special-tokens",
    is_flag=True,
    help="Add the tokenizer's special tokens after the chat template (as the reference notebook does).",
)
@click.option("--layers-path", help="Dotted path of the decoder block list, if it cannot be found.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON report (the shape asa validate uses)."
)
@click.option(
    "--force", is_flag=True, help="Replace OUT if it is an asa bundle (never another directory)."
)
def fit_command(
    model: str,
    data: str,
    out: str,
    kind: str,
    system: str | None,
    system_file: str | None,
    dtype: str | None,
    layer: str,
    tau: str,
    alpha: float | None,
    beta: float | None,
    domains: str | None,
    trigger: str | None,
    method: str | None,
    blocks: str | None,
    coefficient: float | None,
    name: str | None,
    condition_block: int | None,
    aggregate: str | None,
    batch_size: int,
    pad_batches: bool,
    cache: str | None,
    model_id: str | None,
    device: str,
    threads: int | None,
    raw: bool,
    add_special_tokens: bool,
    layers_path: str | None,
    as_json: bool,
    force: bool,
) -> None:
    """Fit a bundle for the model in --model from labelled prompts in --data.

    The asa protocol reproduces the reference pipeline (layer sweep, cal
    vectors, scaler/router/probes on train, tau on valid, scores on test);
    the same model, data, system prompt and dtype give the same bytes.
    Exit 0 fitted, 1 refused (nothing written), 2 usage or environment error.
    """
    require_extra("convert", "asa fit")
    require_extra("runtime", "asa fit")
    import transformers

    from asa_format.converters.fitting import fit

    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]

    layer_value = _auto_int(layer)
    tau_value = _auto_float(tau)
    try:
        if system is not None and system_file is not None:
            raise UsageError(
                "--system and --system-file both give a system prompt", hint="pass one of them"
            )
        if system_file is not None:
            try:
                system = Path(system_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(
                    f"cannot read --system-file {system_file!r}: {getattr(exc, 'strerror', None) or exc}",
                    hint="pass a UTF-8 text file",
                ) from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skl2onnx / transformers chatter
            report = fit(
                model,
                data,
                out,
                kind=kind,
                system=system,
                dtype=dtype,
                layer=layer_value,
                tau=tau_value,
                alpha=alpha,
                beta=beta,
                domains=[d.strip() for d in domains.split(",")] if domains else None,
                trigger=trigger,
                method=method,
                blocks=_blocks(blocks),
                coefficient=coefficient,
                name=name,
                condition_block=condition_block,
                aggregate=aggregate,
                batch_size=batch_size,
                pad_batches=pad_batches,
                cache=cache,
                model_id=model_id,
                device=device,
                threads=threads,
                raw=raw,
                add_special_tokens=add_special_tokens,
                layers_path=layers_path,
                force=force,
                progress=sys.stderr,
            )
    except AsaError as exc:
        if exit_code_for(exc) != 1:
            fail(exc)
        result = failed_result(data, exc, destination=out)
    else:
        result = Result(path=data, fields=report.to_dict(), text=report.text())
    raise SystemExit(write_report("fit", [result], as_json, sys.stdout))
