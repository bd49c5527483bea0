"""Which transformers causal-LM types the runtime can attach to.

``python -m benchmarks.causal_lm_coverage`` builds, for every type of
``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, a tiny random-weight model from a shrunk
default config (:mod:`benchmarks.tiny_configs`; torch, CPU, eval, seeded) and
records:

* whether it builds (and why not);
* the path :func:`asa_format.runtime.resolve_layers` finds (or its refusal),
  and whether the list's length equals the text config's layer count;
* whether a forward hook on each resolved block sees a first output tensor
  ``[batch, sequence, hidden]``, and what
  :func:`asa_format.runtime.block_output.check_block_output` says;
* whether ``attach`` of a test bundle, one forward pass and ``remove`` work.

Each type runs in a worker process with a time cap; a type that times out,
cannot be built, or is not tiny (> ``--max-params``) is skipped with its
reason. Writes ``causal_lm_coverage.json`` and ``causal_lm_coverage.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .output import add_output_options, output_dir

__all__ = ["CATEGORIES", "main", "probe_type", "summarize"]

JSON_NAME = "causal_lm_coverage.json"
MD_NAME = "causal_lm_coverage.md"
BATCH, SEQ = 2, 5
SEED = 0
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_PARAMS = 50_000_000

# Outcome of one type, worst last.
CATEGORIES = {
    "attachable": "resolved with the text layer count, [batch, seq, hidden] blocks, attach works",
    "refused": "refused with a specific error by resolve_layers (LAYERS_NOT_FOUND) or check_block_output (BLOCK_OUTPUT_LAYOUT)",
    "forward_failed": "built and resolved, but a forward pass on input_ids alone fails",
    "attach_failed": "resolved and probed fine, but attach or the steered forward pass raises",
    "not_built": "cannot be built tiny on CPU (config or build error, too large, timeout)",
    "wrong": "resolved a list whose length or block output is wrong, and nothing refused",
}


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text[:400]


def _text_layer_counts(config: Any) -> list[int]:
    from asa_format.runtime.layers import text_layer_counts

    return list(text_layer_counts(config))


def _build(model_type: str, max_params: int) -> tuple[Any, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    from .tiny_configs import prepare_model, tiny_config

    rec: dict[str, Any] = {}
    try:
        config = tiny_config(model_type)
    except Exception as exc:
        rec.update(built=False, reason=f"config: {_error(exc)}")
        return None, rec
    try:
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
        n_params = sum(p.numel() for p in meta.parameters())
        del meta
    except Exception as exc:
        rec.update(built=False, reason=f"build: {_error(exc)}")
        return None, rec
    rec["params"] = int(n_params)
    if n_params > max_params:
        rec.update(
            built=False, reason=f"not tiny: {n_params / 1e6:.1f}M parameters after shrinking"
        )
        return None, rec
    try:
        torch.manual_seed(SEED)
        model = prepare_model(model_type, AutoModelForCausalLM.from_config(config).eval())
    except Exception as exc:
        rec.update(built=False, reason=f"build: {_error(exc)}")
        return None, rec
    rec.update(built=True, model_class=type(model).__name__)
    return model, rec


def _forward(model: Any, vocab: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(SEED)
    low = min(3, vocab - 1)
    ids = torch.randint(low, max(low + 1, min(vocab, 64)), (BATCH, SEQ), generator=g)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def _attach(
    model: Any, path: str, n_layers: int, hidden: int, work: Path
) -> tuple[bool, str | None]:
    from asa_format.runtime import attach
    from asa_format.testing import make_test_bundle

    layer = min(1, n_layers - 1)
    bundle = make_test_bundle(
        work / f"bundle-{hidden}-{n_layers}",
        hidden_size=hidden,
        layer=layer,
        model_type=str(getattr(model.config, "model_type", "unknown")),
        num_layers=n_layers,
    )
    try:
        handle = attach(model, bundle, layers_path=path, strict_model_match=False)
    except Exception as exc:
        return False, _error(exc)
    try:
        _forward(model, int(model.get_input_embeddings().weight.shape[0]))
    except Exception as exc:
        return False, f"steered forward: {_error(exc)}"
    finally:
        handle.remove()
    return True, None


def probe_type(model_type: str, max_params: int = DEFAULT_MAX_PARAMS) -> dict[str, Any]:
    """Build ``model_type`` tiny and record what the runtime makes of it."""
    from asa_format.errors import AsaError
    from asa_format.runtime.block_output import check_block_output
    from asa_format.runtime.layers import resolve_layers

    start = time.perf_counter()
    model, rec = _build(model_type, max_params)
    rec["model_type"] = model_type
    if model is None:
        rec["category"] = "not_built"
        rec["seconds"] = round(time.perf_counter() - start, 2)
        return rec
    text = model.config.get_text_config()
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    expected = _text_layer_counts(model.config)
    rec.update(hidden_size=hidden, text_layers=expected)
    try:
        resolved = resolve_layers(model)
    except AsaError as exc:
        rec.update(resolved=False, resolve_code=exc.code, resolve_error=str(exc))
        rec["category"] = "refused"
        rec["seconds"] = round(time.perf_counter() - start, 2)
        return rec
    rec.update(resolved=True, path=resolved.path, source=resolved.source, length=len(resolved))
    rec["length_ok"] = len(resolved) in expected

    shapes: dict[int, list[int]] = {}
    handles = []
    for i, block in enumerate(resolved.layers):

        def hook(module: Any, args: Any, output: Any, i: int = i) -> None:
            first = (
                output if not isinstance(output, (tuple, list)) else (output[0] if output else None)
            )
            shape = getattr(first, "shape", None)
            shapes.setdefault(i, list(shape) if shape is not None else [])

        handles.append(block.register_forward_hook(hook))
    try:
        vocab = int(model.get_input_embeddings().weight.shape[0])
        _forward(model, vocab)
        rec["forward_ok"] = True
    except Exception as exc:
        rec.update(forward_ok=False, forward_error=_error(exc))
    finally:
        for h in handles:
            h.remove()
    rec["block_shapes"] = sorted({tuple(s) for s in shapes.values()})
    rec["blocks_seen"] = len(shapes)
    rec["shape_ok"] = (
        bool(shapes)
        and len(shapes) == len(resolved)
        and all(s == [BATCH, SEQ, hidden] for s in shapes.values())
    )
    index = min(1, len(resolved) - 1)
    try:
        rec["probe_shape"] = list(check_block_output(model, resolved, index, hidden_size=hidden))
        rec["probe_ok"] = True
    except AsaError as exc:
        rec.update(probe_ok=False, probe_code=exc.code, probe_error=str(exc))

    if rec.get("probe_ok") and rec["length_ok"] and rec["shape_ok"]:
        with tempfile.TemporaryDirectory(prefix="asa-coverage-") as work:
            ok, err = _attach(model, resolved.path, len(resolved), hidden, Path(work))
        rec.update(attach_ok=ok, attach_error=err)
    else:
        rec["attach_ok"] = False
        if rec.get("forward_ok") and rec["length_ok"]:
            # What attach does when nothing probes the layout first (before the runtime
            # calls check_block_output): an error at the first forward pass, or nothing.
            with tempfile.TemporaryDirectory(prefix="asa-coverage-") as work:
                ok, err = _attach(model, resolved.path, len(resolved), hidden, Path(work))
            rec["attach_unprobed"] = "runs without error" if ok else err

    if rec["attach_ok"]:
        rec["category"] = "attachable"
    elif (
        not rec.get("probe_ok")
        and rec.get("probe_code") == "BLOCK_OUTPUT_LAYOUT"
        and rec.get("forward_ok")
    ):
        rec["category"] = "refused"
    elif not rec.get("forward_ok"):
        rec["category"] = "forward_failed"
    elif rec.get("probe_ok") and rec["length_ok"] and rec["shape_ok"]:
        rec["category"] = "attach_failed"
    else:
        rec["category"] = "wrong"
    rec["seconds"] = round(time.perf_counter() - start, 2)
    return rec


def _worker(conn: Any, max_params: int) -> None:
    _quiet()
    while True:
        model_type = conn.recv()
        if model_type is None:
            return
        try:
            rec = probe_type(model_type, max_params)
        except BaseException as exc:  # report, never kill the sweep
            rec = {
                "model_type": model_type,
                "category": "not_built",
                "built": False,
                "reason": f"crash: {_error(exc)}",
                "traceback": traceback.format_exc()[-2000:],
            }
        conn.send(rec)


class _Pool:
    """One worker process at a time; killed and replaced when a type overruns its cap."""

    def __init__(self, max_params: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.max_params = max_params
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.max_params), daemon=True)
        self.proc.start()
        self.conn = parent

    def run(self, model_type: str, timeout: float) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(model_type)
        if self.conn.poll(timeout):
            try:
                result: dict[str, Any] = self.conn.recv()
                return result
            except EOFError:
                pass
            reason = f"worker died (exit code {self.proc.exitcode})"
        else:
            reason = f"timeout: more than {timeout:.0f} s"
        self.stop(kill=True)
        return {"model_type": model_type, "category": "not_built", "built": False, "reason": reason}

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.proc.join(10)
        self.proc = None


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {c: sum(r["category"] == c for r in results) for c in CATEGORIES}
    built = sum(bool(r.get("built")) for r in results)
    return {
        "types": len(results),
        "built": built,
        "resolved": sum(bool(r.get("resolved")) for r in results),
        "resolved_length_ok": sum(bool(r.get("length_ok")) for r in results),
        "by_category": counts,
    }


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    lines = [
        "# Causal-LM coverage of `asa_format.runtime.attach`",
        "",
        f"transformers {doc['transformers']}, torch {doc['torch']}; {s['types']} types in "
        f"`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`; {s['built']} build tiny on CPU; "
        f"{s['resolved']} resolve a block list ({s['resolved_length_ok']} with the text layer count).",
        "",
        "| category | count | meaning |",
        "| --- | --- | --- |",
    ]
    for cat, meaning in CATEGORIES.items():
        lines.append(f"| {cat} | {s['by_category'][cat]} | {meaning} |")
    lines += [
        "",
        "`attach` unprobed: what `attach` does with a refused layout when nothing calls "
        "`check_block_output` first.",
        "",
        "| type | category | params | layers path | length / text layers | block output | note | `attach` unprobed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["results"]:
        params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else ""
        path = f"`{r['path']}`" if r.get("path") else ""
        length = f"{r.get('length')} / {r.get('text_layers')}" if r.get("resolved") else ""
        shapes = ", ".join(str(list(x)) for x in r.get("block_shapes", []))
        note = (
            r.get("reason")
            or r.get("resolve_error")
            or r.get("probe_error")
            or r.get("forward_error")
            or r.get("attach_error")
            or ""
        )
        lines.append(
            f"| {r['model_type']} | {r['category']} | {params} | {path} | {length} | {shapes} "
            f"| {_cell(note)[:300]} | {_cell(r.get('attach_unprobed', ''))[:160]} |"
        )
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.causal_lm_coverage", description=__doc__.split("\n\n")[0]
    )
    add_output_options(p, "causal_lm_coverage.json and .md")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds per type (default: %(default)s)",
    )
    p.add_argument(
        "--max-params",
        type=int,
        default=DEFAULT_MAX_PARAMS,
        help="largest tiny model (default: %(default)s)",
    )
    p.add_argument("--only", action="append", help="run only these types (repeatable)")
    args = p.parse_args(argv)
    out = output_dir(p, args, "coverage")
    _quiet()
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if args.only:
        unknown = sorted(set(args.only) - set(types))
        if unknown:
            print(f"error: not causal-LM types: {', '.join(unknown)}", file=sys.stderr)
            return 2
        types = [t for t in types if t in args.only]
    pool = _Pool(args.max_params)
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for n, model_type in enumerate(types, 1):
            rec = pool.run(model_type, args.timeout)
            results.append(rec)
            print(
                f"[coverage] {n}/{len(types)} {model_type}: {rec['category']}"
                f" {rec.get('path') or rec.get('reason') or rec.get('resolve_error') or ''}"[:200],
                file=sys.stderr,
                flush=True,
            )
    finally:
        pool.stop()
    doc = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "settings": {
            "batch": BATCH,
            "sequence": SEQ,
            "seed": SEED,
            "timeout_s": args.timeout,
            "max_params": args.max_params,
        },
        "elapsed_s": round(time.perf_counter() - start, 1),
        "summary": summarize(results),
        "results": results,
    }
    _write(out / JSON_NAME, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    _write(out / MD_NAME, markdown(doc))
    print(json.dumps(doc["summary"], indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
