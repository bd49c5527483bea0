"""``asa run``: generate with a local model, steered by a bundle.

The model and tokenizer are loaded with ``local_files_only=True``: the
command never downloads anything. The conversation is ``--prompt`` (a user
message), optionally after ``--system`` and the messages of ``--messages FILE``
(a chat-messages JSON list, or ``{"messages": [...], "tools": [...]}`` as the
pipeline writes them); the tokenizer's chat template renders it. The model
runs in its own dtype unless ``--dtype`` says otherwise. Errors go to stderr
with their code; exit 1 for a refused bundle or model, 2 for usage or
environment errors (the ``runtime`` extra missing), 130 / 143 interrupted.
With ``--json`` stdout holds one document, the envelope of
``asa_format.cli.report`` (the result's ``path`` is the bundle; its fields the
decision, the texts and the model), on success and on every error.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from asa_format import constants as C
from asa_format.cli.report import Result, write_report
from asa_format.cli.support import fail, require_extra
from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError, RuntimeCompatError, UsageError
from asa_format.format.jsonio import loads_strict
from asa_format.hints import for_cli
from asa_format.runtime.notes import BindingNote
from asa_format.storage.inputs import MAX_JSON_INPUT_BYTES, check_model_dir, read_input

__all__ = ["run_command"]

_DTYPES = ("auto", "float32", "float16", "bfloat16")


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else names a local path.
    return (
        model.startswith((".", "/", "~"))
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


def _from_pretrained(transformers: Any, source: str, dtype: Any) -> Any:
    """Load with ``dtype=`` (transformers 5) or, where that keyword is unknown, ``torch_dtype=``."""
    auto = transformers.AutoModelForCausalLM
    try:
        return auto.from_pretrained(source, local_files_only=True, dtype=dtype)
    except TypeError as exc:
        if "dtype" not in str(exc):
            raise
    return auto.from_pretrained(source, local_files_only=True, torch_dtype=dtype)


def _load_model(model: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    import transformers

    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise RuntimeCompatError(
            f"model {model!r} is a file, not a model directory",
            code="MODEL_NOT_FOUND",
            hint="pass the directory written by save_pretrained (config.json, weights, tokenizer)",
        )
    if not path.exists() and _looks_like_path(model):
        raise RuntimeCompatError(
            f"model directory {model!r} does not exist",
            code="MODEL_NOT_FOUND",
            hint="pass a local model directory; asa run never downloads models",
        )
    source = str(path) if path.exists() else model
    if path.is_dir():
        check_model_dir(
            path
        )  # no FIFO, device or oversized config.json for the loaders to block on
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
        loaded = _from_pretrained(transformers, source, dtype)
    except (OSError, ValueError, KeyError) as exc:
        if path.exists():
            detail = str(exc).strip().split("\n")[0]
            message = f"could not load a causal LM and tokenizer from {model!r}: {detail}"
        else:
            message = (
                f"model {model!r} is neither a local directory nor in the local Hugging Face cache"
            )
        raise RuntimeCompatError(
            message,
            code="MODEL_NOT_FOUND",
            hint="pass a local directory holding a causal LM and its tokenizer; asa run never "
            "downloads models",
        ) from exc
    return tokenizer, loaded.to(device).eval()


def _read_messages(path: str) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """(messages, tools) from a chat-messages JSON file."""
    # a regular file under the cap, opened without blocking: never /dev/zero or a FIFO
    data = read_input(path, what="the --messages file", cap=MAX_JSON_INPUT_BYTES)
    try:
        doc = loads_strict(data.decode("utf-8"))  # depth, digits, text checked
    except ValueError as exc:  # UnicodeDecodeError included
        raise UsageError(
            f"--messages file {path!r} is not valid JSON: {exc}",
            file=path,
            hint="pass a JSON file of chat messages",
        ) from exc
    tools: list[Any] | None = None
    if isinstance(doc, dict):
        tools = doc.get("tools")
        doc = doc.get("messages")
    shape_hint = (
        'a list of {"role": ..., "content": ...} objects, or {"messages": [...], "tools": [...]}'
    )
    if not isinstance(doc, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in doc
    ):
        raise UsageError(
            f"--messages file {path!r} holds no list of chat messages", file=path, hint=shape_hint
        )
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise UsageError(
            f'"tools" in --messages file {path!r} is not a list of objects',
            file=path,
            hint=shape_hint,
        )
    return list(doc), tools


def _conversation(
    prompt: str | None, system: str | None, messages_file: str | None
) -> tuple[list[dict[str, Any]], list[Any] | None]:
    messages, tools = _read_messages(messages_file) if messages_file else ([], None)
    if system is not None:
        if any(m.get("role") == "system" for m in messages):
            raise UsageError(
                "--system was given but the --messages file already has a system message",
                hint="pass the system prompt once",
            )
        messages.insert(0, {"role": "system", "content": system})
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
    if not any(m.get("role") == "user" for m in messages):
        raise UsageError(
            "nothing to answer: no --prompt and no user message in --messages",
            hint="pass --prompt TEXT, or a --messages file with a user message",
        )
    return messages, tools


def _encode(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any] | None, raw: bool, device: Any
) -> dict[str, Any]:
    plain = len(messages) == 1 and tools is None
    if raw or not getattr(tokenizer, "chat_template", None):
        if not plain:
            raise UsageError(
                "--system and --messages need a chat template, and "
                + ("--raw was given" if raw else "the model's tokenizer has none"),
                hint="pass only --prompt, or use a model whose tokenizer has a chat template",
            )
        enc = tokenizer(str(messages[0].get("content") or ""), return_tensors="pt")
    else:
        extra = {"tools": tools} if tools is not None else {}
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **extra
        )
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    if enc["input_ids"].shape[1] == 0:
        raise UsageError("the prompt encodes to no tokens", hint="pass a non-empty --prompt")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def _generate(model: Any, tokenizer: Any, enc: dict[str, Any], max_new_tokens: int) -> str:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
    new_tokens = out[0, enc["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True))


def _device(name: str) -> Any:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(
            f"unknown device {name!r}", hint="use cpu, cuda, cuda:0, mps, ..."
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was given but CUDA is not available", hint="use --device cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was given but MPS is not available", hint="use --device cpu")
    return device


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", required=False, type=click.Path())
@click.option(
    "--bundle",
    "bundle_option",
    default=None,
    type=click.Path(),
    help="Bundle directory (same as the BUNDLE argument).",
)
@click.option(
    "--model", "model_path", required=True, help="Local model directory (never downloaded)."
)
@click.option(
    "--prompt",
    default=None,
    help="User message (the chat template is applied if the tokenizer has one).",
)
@click.option("--system", default=None, help="System prompt, placed before the other messages.")
@click.option(
    "--messages",
    "messages_file",
    default=None,
    type=click.Path(dir_okay=False),
    help='Chat-messages JSON: a list of {"role", "content"} or {"messages": [...], "tools": [...]}.',
)
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps, ...")
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(_DTYPES),
    help="auto: the dtype the model was saved in.",
)
@click.option(
    "--policy",
    default=None,
    type=click.Choice(C.POLICIES),
    help="Override the bundle's injection policy.",
)
@click.option("--alpha", default=None, type=float, help="Override the bundle's steering strength.")
@click.option(
    "--layers-path", default=None, help="Dotted path of the decoder block list, e.g. model.layers."
)
@click.option(
    "--expected-digest", default=None, help="Refuse the bundle unless its root digest is this."
)
@click.option(
    "--no-strict",
    is_flag=True,
    help="Only warn when the model type or id differs from the bundle's.",
)
@click.option("--self-test", is_flag=True, help="Check the hooks on the model before generating.")
@click.option(
    "--on-unclassified",
    default="warn",
    show_default=True,
    type=click.Choice(["warn", "raise"]),
    help="A forward pass that cannot be classified is never steered: warn, or fail.",
)
@click.option(
    "--raw", is_flag=True, help="Do not apply the tokenizer's chat template (--prompt only)."
)
@click.option("--compare", is_flag=True, help="Also generate without steering and show both.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report as one JSON document (the shape asa validate uses), errors included.",
)
def run_command(bundle: str | None, bundle_option: str | None, **options: Any) -> None:
    """Generate with MODEL, steered by BUNDLE (a local model directory; nothing is downloaded).

    A local model whose config matches the bundle's binding (model type,
    layer count, hidden size) is accepted; a different model id is then
    reported as a note. Exit 0 ok, 1 refused bundle or model, 2 usage or
    environment error.
    """
    if bundle is not None and bundle_option is not None and bundle != bundle_option:
        raise click.UsageError("BUNDLE and --bundle name different bundles; pass one")
    path = bundle if bundle is not None else bundle_option
    if path is None:
        raise click.UsageError("missing the bundle: asa run BUNDLE --model DIR --prompt TEXT")
    require_extra("runtime", "asa run")
    try:
        _run(bundle_path=path, **options)
    except AsaError as exc:
        fail(exc, path=path)


def _report_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        kind = "note" if issubclass(w.category, BindingNote) else "warning"
        click.echo(f"{kind}: {safe_text(for_cli(str(w.message)))}", err=True)


def _run(
    model_path: str,
    bundle_path: str,
    prompt: str | None,
    system: str | None,
    messages_file: str | None,
    max_new_tokens: int,
    device: str,
    dtype: str,
    policy: str | None,
    alpha: float | None,
    layers_path: str | None,
    expected_digest: str | None,
    no_strict: bool,
    self_test: bool,
    on_unclassified: str,
    raw: bool,
    compare: bool,
    as_json: bool,
) -> None:
    import torch
    import transformers

    from asa_format import load_bundle
    from asa_format.runtime.handle import attach

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    messages, tools = _conversation(prompt, system, messages_file)
    torch_device = _device(device)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    bundle = load_bundle(bundle_path, verify=True, expected_digest=expected_digest)
    tokenizer, model = _load_model(model_path, torch_device, torch_dtype)
    enc = _encode(tokenizer, messages, tools, raw, torch_device)

    baseline = _generate(model, tokenizer, enc, max_new_tokens) if compare else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            handle_cm = attach(
                model,
                bundle,
                policy=policy,
                alpha=alpha,
                layers_path=layers_path,
                strict_model_match=not no_strict,
                self_test=self_test,
                on_unclassified=on_unclassified,
            )
        finally:
            _report_warnings(
                [w for w in caught if issubclass(w.category, (RuntimeWarning, BindingNote))]
            )
    with handle_cm as handle, warnings.catch_warnings(record=True) as during:
        warnings.simplefilter("always")
        try:
            steered = _generate(model, tokenizer, enc, max_new_tokens)
        finally:
            _report_warnings([w for w in during if issubclass(w.category, RuntimeWarning)])
        record = handle.last
    if record is None:  # pragma: no cover - generate always runs a prefill
        raise RuntimeCompatError("the steered layer never ran", code="LAYERS_NOT_FOUND")
    from asa_format.validate import describe_interventions, intervention_text

    row = record.rows[0]
    outcomes = (record.interventions[0] if record.interventions else None) or {}
    items = describe_interventions(bundle.manifest)
    for item in items:
        item["outcome"] = outcomes.get(item["name"])
    decision = (
        None
        if row is None
        else {
            "domain": str(row.domain),
            "probability": float(row.probability),
            "gate": int(row.gate),
        }
    )
    if as_json:
        payload: dict[str, Any] = {
            "model": model_path,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "input_tokens": int(enc["input_ids"].shape[1]),
            "bundle": str(bundle_path),
            "layer": record.layer,
            "layer_path": handle.layer_path,
            "policy": record.policy,
            "alpha": None if record.alpha != record.alpha else record.alpha,
            "decision": decision,
            "interventions": items,
            "steered": steered,
        }
        if baseline is not None:
            payload["baseline"] = baseline
        payload.pop("bundle")
        write_report("run", [Result(path=str(bundle_path), fields=payload)], True, sys.stdout)
        return
    if row is not None and decision is not None:
        gate = {1: "+1", 0: "0", -1: "-1"}[int(row.gate)]
        click.echo(
            f"decision: domain={safe_text(decision['domain'])} p={decision['probability']:.4f} "
            f"gate={gate}  (layer {handle.layer_path}, policy {record.policy}, "
            f"alpha {record.alpha:g})"
        )
    for item in items:
        if item["kind"] == "asa":
            continue
        outcome = item["outcome"]
        said = {True: "applied", False: "not applied (condition did not hold)", None: "undecided"}
        click.echo(
            f"intervention {safe_text(intervention_text(item))}, coefficient "
            f"{item['coefficient']:g}, policy {item['policy']}: {said[outcome]}"
        )
    if baseline is not None:
        click.echo("--- baseline ---")
        click.echo(baseline)
    click.echo("--- steered ---")
    click.echo(steered)
