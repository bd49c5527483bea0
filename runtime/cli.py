"""``asa run``: generate with a local model, steered by a bundle.

The model and tokenizer are loaded with ``local_files_only=True``: the
command never downloads anything. Errors are reported on stderr with their
code and the command exits with status 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from asa_format import constants as C
from asa_format.cli import fail
from asa_format.errors import AsaError, RuntimeCompatError, UsageError

__all__ = ["run_command"]

_DTYPES = ("float32", "float16", "bfloat16")


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else names a local path.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or (
        os.sep != "/" and os.sep in model
    )


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
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            source, local_files_only=True, dtype=dtype
        )
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


def _encode(tokenizer: Any, prompt: str, raw: bool, device: Any) -> dict[str, Any]:
    if not raw and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tokenizer(prompt, return_tensors="pt")
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
        raise UsageError(f"unknown device {name!r}", hint="use cpu, cuda, cuda:0, mps, ...") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was given but CUDA is not available", hint="use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was given but MPS is not available", hint="use --device cpu")
    return device


@click.command("run")
@click.option("--model", "model_path", required=True, help="Local model directory (never downloaded).")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(), help="Bundle directory.")
@click.option("--prompt", required=True, help="Prompt text (the chat template is applied if the tokenizer has one).")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps, ...")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(_DTYPES))
@click.option("--policy", default=None, type=click.Choice(C.POLICIES), help="Override the bundle's injection policy.")
@click.option("--alpha", default=None, type=float, help="Override the bundle's steering strength.")
@click.option("--layers-path", default=None, help="Dotted path of the decoder block list, e.g. model.layers.")
@click.option("--expected-digest", default=None, help="Refuse the bundle unless its root digest is this.")
@click.option("--no-strict", is_flag=True, help="Only warn when the model type or id differs from the bundle's.")
@click.option("--raw", is_flag=True, help="Do not apply the tokenizer's chat template.")
@click.option("--compare", is_flag=True, help="Also generate without steering and show both.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run_command(**options: Any) -> None:
    """Generate from PROMPT with MODEL, steered by BUNDLE."""
    try:
        _run(**options)
    except AsaError as exc:
        fail(exc)
    except Exception as exc:  # last resort: a message, never a traceback
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


def _run(
    model_path: str,
    bundle_path: str,
    prompt: str,
    max_new_tokens: int,
    device: str,
    dtype: str,
    policy: str | None,
    alpha: float | None,
    layers_path: str | None,
    expected_digest: str | None,
    no_strict: bool,
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
    torch_device = _device(device)
    torch_dtype = getattr(torch, dtype)
    bundle = load_bundle(bundle_path, verify=True, expected_digest=expected_digest)
    tokenizer, model = _load_model(model_path, torch_device, torch_dtype)
    enc = _encode(tokenizer, prompt, raw, torch_device)

    baseline = _generate(model, tokenizer, enc, max_new_tokens) if compare else None
    with attach(
        model, bundle, policy=policy, alpha=alpha, layers_path=layers_path,
        strict_model_match=not no_strict,
    ) as handle:
        steered = _generate(model, tokenizer, enc, max_new_tokens)
        record = handle.last
    if record is None:  # pragma: no cover - generate always runs a prefill
        raise RuntimeCompatError("the steered layer never ran", code="LAYERS_NOT_FOUND")
    row = record.rows[0]
    decision = {
        "domain": str(row.domain),
        "probability": float(row.probability),
        "gate": int(row.gate),
    }
    if as_json:
        payload: dict[str, Any] = {
            "model": model_path,
            "bundle": str(bundle_path),
            "layer": record.layer,
            "layer_path": handle.layer_path,
            "policy": record.policy,
            "alpha": record.alpha,
            "decision": decision,
            "steered": steered,
        }
        if baseline is not None:
            payload["baseline"] = baseline
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    gate = {1: "+1", 0: "0", -1: "-1"}[int(row.gate)]
    click.echo(
        f"decision: domain={decision['domain']} p={decision['probability']:.4f} "
        f"gate={gate}  (layer {handle.layer_path}, policy {record.policy}, "
        f"alpha {record.alpha:g})"
    )
    if baseline is not None:
        click.echo("--- baseline ---")
        click.echo(baseline)
    click.echo("--- steered ---")
    click.echo(steered)
