"""``asa_format.converters.fit`` (this module: ``fitting``): a model and labelled prompts -> a bundle, reproducibly.

    from asa_format.converters import fit

    report = fit("path/to/model", "path/to/data", "path/to/bundle", system="...",
                 alpha=4.0, beta=0.25)
    print(report.text())

The steps, each in its own module: read and check the data
(``fit_data``), load and bind the model, render and encode the prompts
(``fit_model``), extract hidden states (``fit_hidden``, ``fit_cache``), fit
(``fit_protocol`` for the asa protocol, ``fit_contrastive`` for ``always`` and
``condition`` interventions; ``fit_steer`` chooses alpha and beta), write the
bundle with its provenance and model card (``fit_write``) and report
(``fit_report``). Every refusal is a coded error raised before anything is
written; the bundle is written atomically like every other.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from asa_format import constants as C
from asa_format.converters.fit_data import (
    FitData,
    check_asa_data,
    check_contrastive_data,
    load_data,
)
from asa_format.converters.fit_hidden import Extraction, HiddenStates, extract_hidden_states
from asa_format.converters.fit_model import (
    LoadedModel,
    Renderer,
    load_model,
    model_binding,
    model_files_digest,
)
from asa_format.converters.fit_report import FitReport
from asa_format.errors import ParityError, UsageError
from asa_format.format.interventions import NAME_PATTERN
from asa_format.format.jsonio import dumps_canonical

__all__ = ["KINDS", "fit"]

KINDS = (C.GATE_ASA, C.GATE_ALWAYS, C.GATE_CONDITION)
AGGREGATES = ("mean", "last")
ASA_PROTOCOL = (
    "asa: the reference pipeline (Liquid-ASA ASA_LFM25_Pipeline.ipynb) steps 1-4: per-block probe "
    "AUC on valid, L* = deepest block within 0.005 of the best; cal mean-difference vectors; "
    "StandardScaler, router and per-domain probes on train; tau by valid F1 of gate=+1"
)


def _usage(message: str, hint: str) -> UsageError:
    return UsageError(message, hint=hint)


def _check_options(
    kind: str, options: dict[str, Any], asa_only: Sequence[str], other_only: Sequence[str]
) -> None:
    if kind not in KINDS:
        raise _usage(f"unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")
    wrong = [
        k for k in (asa_only if kind != C.GATE_ASA else other_only) if options.get(k) is not None
    ]
    if wrong:
        raise _usage(
            f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to kind {kind!r}",
            "drop the option, or choose the kind it belongs to",
        )
    tau = options.get("tau")
    if tau is not None and not (0.5 <= float(tau) <= 1.0):
        raise _usage(f"tau {tau} is not in [0.5, 1]", "tau is a gate confidence threshold")
    beta = options.get("beta")
    if beta is not None and not (0.0 <= float(beta) <= 1.0):
        raise _usage(f"beta {beta} is not in [0, 1]", "beta weighs the global vector")
    for key in ("alpha", "coefficient"):
        value = options.get(key)
        if value is not None and not (math.isfinite(float(value)) and abs(float(value)) <= 1e6):
            raise _usage(
                f"{key} {value} is not a finite number within +/-1e6", f"give a finite {key}"
            )
    name = options.get("name")
    if name is not None and not NAME_PATTERN.match(str(name)):
        raise _usage(
            f"intervention name {name!r} is not allowed",
            "use 1-64 characters: letters, digits, '_', '.', '-'",
        )
    if int(options.get("batch_size") or 1) < 1:
        raise _usage("the batch size must be at least 1", "use 1 to run one prompt at a time")


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise _usage("threads must be at least 1", "give a positive thread count")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _prompts_digest(encoded: Sequence[list[int]]) -> str:
    return hashlib.sha256(dumps_canonical([list(map(int, r)) for r in encoded])).hexdigest()


def _hidden_states(
    loaded: LoadedModel,
    renderer: Renderer,
    encoded: Sequence[list[int]],
    *,
    batch_size: int,
    padded: bool,
    with_mean: bool,
    cache: str | os.PathLike[str] | None,
    progress: TextIO | None,
    notes: list[str],
) -> tuple[HiddenStates, Extraction, dict[str, str]]:
    """Hidden states of ``encoded``, from the cache when one holds them."""
    import torch
    import transformers

    files = model_files_digest(loaded.directory)
    parts: dict[str, Any] = {}
    if cache is not None:
        parts = {
            "version": 1,
            "model_files": files,
            "dtype": loaded.dtype,
            "device": str(loaded.device),
            "layers_path": loaded.layers.path,
            "prompts": _prompts_digest(encoded),
            "rendering": renderer.describe(),
            "extraction": {"padded": padded, "batch_size": batch_size if padded else None},
            "with_mean": with_mean,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        from asa_format.converters.fit_cache import read_cache

        found, note = read_cache(Path(cache), parts, (len(loaded.layers), len(encoded)), with_mean)
        if note:
            notes.append(note)
        if found is not None:
            report = Extraction(
                prompts=len(encoded), mode="cache", batch_size=batch_size, cached=True
            )
            return found, report, files
    states, report = extract_hidden_states(
        loaded,
        encoded,
        batch_size=batch_size,
        padded=padded,
        with_mean=with_mean,
        progress=progress,
    )
    if cache is not None:
        from asa_format.converters.fit_cache import write_cache

        note = write_cache(Path(cache), parts, states)
        if note:
            notes.append(note)
    return states, report, files


def _model_meta(loaded: LoadedModel, files: dict[str, str]) -> dict[str, Any]:
    return {
        "dtype": loaded.dtype,
        "layers_path": loaded.layers.path,
        "files_sha256": "sha256:" + hashlib.sha256(dumps_canonical(files)).hexdigest(),
        "files": len(files),
    }


def _data_meta(data: FitData) -> dict[str, Any]:
    rows: dict[str, int] = {}
    items = data.rows if data.kind == "labelled" else data.pairs
    for item in items:
        key = item.split or "all"
        rows[key] = rows.get(key, 0) + 1
    return {"digest": data.digest, "layout": data.layout, "kind": data.kind, "rows": rows}


def _check_blocks(blocks: Sequence[int], n: int, what: str) -> list[int]:
    out = sorted({int(b) for b in blocks})
    bad = [b for b in out if not 0 <= b < n]
    if bad or not out:
        raise _usage(
            f"{what} {bad or 'list is empty'}: the model has decoder blocks 0..{n - 1}",
            "blocks are 0-based decoder block indices",
        )
    return out


def fit(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str = C.GATE_ASA,
    system: str | None = None,
    dtype: str | None = None,
    layer: int | None = None,
    tau: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    domains: Sequence[str] | None = None,
    trigger: str | None = None,
    method: str | None = None,
    blocks: Sequence[int] | None = None,
    coefficient: float | None = None,
    name: str | None = None,
    condition_block: int | None = None,
    aggregate: str | None = None,
    batch_size: int = 8,
    pad_batches: bool = False,
    cache: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    raw: bool = False,
    add_special_tokens: bool = False,
    layers_path: str | None = None,
    force: bool = False,
    progress: TextIO | None = None,
) -> FitReport:
    """Fit a bundle for the model in ``model`` from the data in ``data``; write it to ``out``.

    ``kind`` is ``"asa"`` (the reference protocol: labelled prompts in the
    cal/train/valid/test splits), ``"always"`` (a control vector from
    contrastive pairs or labelled prompts, ``method`` ``"mean_diff"`` or
    ``"pca_center"``, at ``blocks``) or ``"condition"`` (CAST: a condition
    gate chosen on the valid split, plus directions). Nothing is written at
    ``out`` unless every step succeeds; an existing ``out`` is replaced only
    with ``force`` and only when it is an asa bundle.
    """
    from asa_format.converters.convert import check_not_source
    from asa_format.storage.writer import check_destination

    options = {
        "layer": layer,
        "tau": tau,
        "alpha": alpha,
        "beta": beta,
        "domains": domains,
        "trigger": trigger,
        "method": method,
        "blocks": blocks,
        "coefficient": coefficient,
        "name": name,
        "condition_block": condition_block,
        "aggregate": aggregate,
        "batch_size": batch_size,
    }
    _check_options(
        kind,
        options,
        asa_only=("layer", "tau", "alpha", "beta", "domains", "trigger"),
        other_only=("method", "blocks", "coefficient", "name", "condition_block", "aggregate"),
    )
    if kind == C.GATE_ALWAYS and (condition_block is not None or aggregate is not None):
        raise _usage("condition_block and aggregate apply to kind 'condition'", "drop them")
    if kind == C.GATE_ASA and (alpha is None or beta is None) and trigger is None:
        missing = " and ".join(n for n, v in (("alpha", alpha), ("beta", beta)) if v is None)
        raise _usage(  # before anything is loaded: nothing could choose them
            f"{missing} {'are' if ' and ' in missing else 'is'} not given, and without a trigger no "
            "measurement can choose them (the gate-only F1 of the reference notebook does not "
            "depend on them)",
            "give alpha and beta, or a trigger text (the text that starts a tool call) to choose "
            "them by the F1 of triggered generations on the valid split",
        )
    method = method or "mean_diff"
    if method not in ("mean_diff", "pca_center"):
        raise _usage(f"unknown method {method!r}", "use mean_diff or pca_center")
    aggregate = aggregate or "mean"
    if aggregate not in AGGREGATES:
        raise _usage(f"unknown aggregate {aggregate!r}", "use mean or last")
    check_not_source(data, out)
    check_not_source(model, out)
    notes = [f"recovered: {n}" for n in check_destination(out, force=force)]

    fit_data = load_data(data)
    if kind == C.GATE_ASA:
        order = check_asa_data(fit_data, domains)
        fit_split = None
    else:
        order = []
        fit_split = check_contrastive_data(fit_data, kind, method)

    with _torch_threads(threads):
        loaded = load_model(model, dtype, device=device, layers_path=layers_path)
        binding = model_binding(loaded, model_id)
        if fit_data.kind == "pairs":
            renderer = Renderer.for_text(loaded.tokenizer, system)
        else:
            renderer = Renderer.for_instructions(
                loaded.tokenizer, system, raw=raw, add_special_tokens=add_special_tokens
            )
        if kind == C.GATE_ASA:
            return _fit_asa(
                loaded,
                binding,
                renderer,
                fit_data,
                order,
                out,
                layer=layer,
                tau=tau,
                alpha=alpha,
                beta=beta,
                trigger=trigger,
                batch_size=batch_size,
                pad_batches=pad_batches,
                cache=cache,
                force=force,
                progress=progress,
                notes=notes,
            )
        return _fit_contrastive(
            loaded,
            binding,
            renderer,
            fit_data,
            fit_split,
            out,
            kind=kind,
            method=method,
            blocks=blocks,
            coefficient=coefficient,
            name=name,
            condition_block=condition_block,
            aggregate=aggregate,
            batch_size=batch_size,
            pad_batches=pad_batches,
            cache=cache,
            force=force,
            progress=progress,
            notes=notes,
        )


def _special_tokens_note(renderer: Renderer, prompt: str) -> str | None:
    extra = renderer.doubles_specials(prompt)
    if extra and not renderer.add_special_tokens:
        return (
            f"the tokenizer adds {extra} special token(s) to a text by default; after the chat template "
            "they are not added (as asa run encodes prompts); the reference notebook adds them "
            "(add_special_tokens=True, on the command line --add-special-tokens, reproduces it)"
        )
    return None


def _finish(
    path: Path,
    binding: Any,
    kind: str,
    meta: dict[str, Any],
    extraction: Extraction,
    parity: dict[str, Any] | None,
    notes: list[str],
) -> FitReport:
    from asa_format.format.digest import root_digest

    return FitReport(
        destination=str(path),
        digest=root_digest((path / C.MANIFEST_FILE).read_bytes()),
        kind=kind,
        model=binding.to_dict(),
        files={p.name: p.stat().st_size for p in sorted(path.iterdir())},
        metadata=meta,
        extraction=extraction.to_dict(),
        parity=parity,
        notes=notes,
    )


def _extraction_meta(extraction: Extraction, padded: bool, batch_size: int) -> dict[str, Any]:
    if padded:
        return {
            "values": "padded batches (left padding): not identical to one prompt at a time",
            "batch_size": batch_size,
        }
    return {"values": "identical to one forward pass per prompt (equal-length batches checked)"}


def _fit_asa(
    loaded: LoadedModel,
    binding: Any,
    renderer: Renderer,
    fit_data: FitData,
    order: list[str],
    out: str | os.PathLike[str],
    *,
    layer: int | None,
    tau: float | None,
    alpha: float | None,
    beta: float | None,
    trigger: str | None,
    batch_size: int,
    pad_batches: bool,
    cache: str | os.PathLike[str] | None,
    force: bool,
    progress: TextIO | None,
    notes: list[str],
) -> FitReport:
    from asa_format.bundle import load_bundle
    from asa_format.converters.build import _reference
    from asa_format.converters.fit_data import SPLITS
    from asa_format.converters.fit_protocol import ASA_PARAMETERS, run_protocol
    from asa_format.converters.fit_steer import choose_alpha_beta
    from asa_format.converters.fit_write import asa_contents, write_fitted
    from asa_format.converters.parity import (
        FLOAT32_PARITY_TOLERANCE,
        PARITY_TOLERANCE,
        compare,
        sample_hidden_states,
    )
    from asa_format.storage.writer import save_bundle

    n_blocks = len(loaded.layers)
    if layer is not None and not 0 <= int(layer) < n_blocks:
        raise _usage(
            f"layer {layer} is not a decoder block of the model (0..{n_blocks - 1})",
            "blocks are 0-based",
        )
    rows = [r for s in SPLITS for r in fit_data.split_rows(s)]
    encoded = renderer.encode_all([r.instruction for r in rows], [r.id for r in rows])
    note = _special_tokens_note(renderer, rows[0].instruction)
    if note:
        notes.append(note)
    states, extraction, files = _hidden_states(
        loaded,
        renderer,
        encoded,
        batch_size=batch_size,
        padded=pad_batches,
        with_mean=False,
        cache=cache,
        progress=progress,
        notes=notes,
    )
    split_of = np.array([r.split for r in rows])
    hidden = {s: states.last[:, split_of == s] for s in SPLITS}
    labels = {s: np.array([r.label for r in rows if r.split == s]) for s in SPLITS}
    domain_of = {s: np.array([r.domain for r in rows if r.split == s]) for s in SPLITS}
    result = run_protocol(hidden, labels, domain_of, order, layer=layer, tau=tau)

    def contents_for(a: float, b: float) -> Any:
        return asa_contents(
            binding,
            layer=result.layer,
            domains=order,
            vectors=result.vectors,
            scaler=result.scaler,
            router=result.router,
            probes=result.probes,
            alpha=a,
            tau=result.tau,
            beta=b,
        )

    def measurement_bundle(a: float, b: float, directory: Path) -> Path:
        return save_bundle(contents_for(a, b), directory)

    valid_ids = [encoded[i] for i, r in enumerate(rows) if r.split == "valid"]
    ab = choose_alpha_beta(
        loaded,
        measurement_bundle,
        valid_ids,
        labels["valid"],
        alpha=alpha,
        beta=beta,
        trigger=trigger,
        batch_size=1 if extraction.fallback else batch_size,
        progress=progress,
    )
    meta: dict[str, Any] = {
        "kind": C.GATE_ASA,
        "protocol": ASA_PROTOCOL,
        "parameters": ASA_PARAMETERS,
        "data": _data_meta(fit_data),
        "model": _model_meta(loaded, files),
        "rendering": renderer.describe(),
        "extraction": _extraction_meta(extraction, pad_batches, batch_size),
        "layer_auc": result.aucs,
        "layer": {
            "index": result.layer,
            "chosen_by": "given"
            if result.layer_given
            else "deepest block within 0.005 of the best valid AUC",
        },
        "domains": order,
        "router": {
            "valid_accuracy": result.valid_router_accuracy,
            "test_accuracy": result.test_router_accuracy,
        },
        "tau": {
            "value": result.tau,
            "chosen_by": "given"
            if result.tau_given
            else "first tau of the grid with the best valid F1 of gate=+1",
            "sweep": result.tau_rows,
        },
        "alpha_beta": ab.to_dict(),
        "test": result.test,
        "convergence": result.convergence,
    }
    reference = _reference(result.scaler, result.router, result.probes, order, result.tau)
    own = states.last[result.layer]
    sampled = sample_hidden_states(result.scaler.mean_, result.scaler.scale_, own.shape[1], 4096)
    checked = np.concatenate([sampled, own]).astype(np.float32)
    float32 = any(
        np.asarray(est.coef_).dtype == np.float32
        for est in [result.router, *result.probes.values()]
    )
    outcome: dict[str, Any] = {}

    def self_check(tmp: Path) -> None:
        parity = compare(
            load_bundle(tmp),
            reference,
            checked,
            FLOAT32_PARITY_TOLERANCE if float32 else PARITY_TOLERANCE,
            tau=result.tau,
            precision="float32" if float32 else "float64",
        )
        outcome["parity"] = parity.to_dict()
        if not parity.ok:
            raise ParityError(
                f"the written bundle does not decide as the fitted estimators: domain agreement "
                f"{parity.domain_agreement:.4%}, gate agreement {parity.gate_agreement:.4%}, max |dp| "
                f"{parity.max_probability_difference:.3g}",
                hint="nothing was written; please report this with the scikit-learn version",
            )

    path = write_fitted(
        out,
        model=binding,
        asa=contents_for(ab.alpha, ab.beta),
        interventions=[],
        metadata=meta,
        inputs=fit_data.inputs,
        force=force,
        self_check=self_check,
    )
    return _finish(path, binding, C.GATE_ASA, meta, extraction, outcome.get("parity"), notes)


def _fit_contrastive(
    loaded: LoadedModel,
    binding: Any,
    renderer: Renderer,
    fit_data: FitData,
    fit_split: str | None,
    out: str | os.PathLike[str],
    *,
    kind: str,
    method: str,
    blocks: Sequence[int] | None,
    coefficient: float | None,
    name: str | None,
    condition_block: int | None,
    aggregate: str,
    batch_size: int,
    pad_batches: bool,
    cache: str | os.PathLike[str] | None,
    force: bool,
    progress: TextIO | None,
    notes: list[str],
) -> FitReport:
    from asa_format.converters.fit_contrastive import directions, fit_condition
    from asa_format.converters.fit_write import write_fitted
    from asa_format.format.contents import InterventionData
    from asa_format.format.interventions import ConditionGate

    n_blocks = len(loaded.layers)
    if blocks is not None:
        steered = _check_blocks(blocks, n_blocks, "blocks")
    else:
        steered = list(range(1, n_blocks)) if n_blocks > 1 else [0]
    if condition_block is not None:
        _check_blocks([condition_block], n_blocks, "condition block")
        if condition_block > min(steered):
            raise _usage(
                f"the condition block {condition_block} comes after steered block {min(steered)}",
                "a condition intervention steers only blocks at or after its condition block",
            )
    splits = [fit_split] + (["valid", "test"] if kind == C.GATE_CONDITION else [])
    prompts: list[str] = []
    where: list[str] = []
    label: list[int] = []
    split_of: list[str | None] = []
    for split in splits:
        if fit_data.kind == "pairs":
            for p in fit_data.split_pairs(split):
                prompts += [p.positive, p.negative]
                where += [f"{p.id} (positive)", f"{p.id} (negative)"]
                label += [1, 0]
                split_of += [split, split]
        else:
            for r in fit_data.split_rows(split):
                prompts.append(r.instruction)
                where.append(r.id)
                label.append(r.label)
                split_of.append(split)
    encoded = renderer.encode_all(prompts, where)
    note = _special_tokens_note(renderer, prompts[0])
    if note:
        notes.append(note)
    with_mean = kind == C.GATE_CONDITION and aggregate == "mean"
    states, extraction, files = _hidden_states(
        loaded,
        renderer,
        encoded,
        batch_size=batch_size,
        padded=pad_batches,
        with_mean=with_mean,
        cache=cache,
        progress=progress,
        notes=notes,
    )
    y = np.array(label)
    where_split = np.array([s or "" for s in split_of])
    in_fit = where_split == (fit_split or "")
    fit_rows = np.flatnonzero(in_fit)
    positives = [int(i) for i in fit_rows if y[i] == 1]
    negatives = [int(i) for i in fit_rows if y[i] == 0]
    from asa_format.converters.fit_protocol import one_blas_thread

    meta: dict[str, Any] = {
        "kind": kind,
        "protocol": (
            f"{kind}: {method} directions from the last prompt position of each block's output"
            + (
                "; condition: unit mean difference of the aggregated states on train, block, comparator "
                "and threshold by valid F1"
                if kind == C.GATE_CONDITION
                else ""
            )
        ),
        "data": _data_meta(fit_data),
        "model": _model_meta(loaded, files),
        "rendering": renderer.describe(),
        "extraction": _extraction_meta(extraction, pad_batches, batch_size),
        "method": method,
        "fit_split": fit_split,
        "coefficient": float(1.0 if coefficient is None else coefficient),
        "policy": C.POLICY_ALL_TOKENS,
    }
    condition = None
    conditions: dict[int, np.ndarray] = {}
    with one_blas_thread():
        if kind == C.GATE_CONDITION:
            agg = states.mean if with_mean else states.last
            assert agg is not None
            if condition_block is not None:
                candidates = [condition_block]
            elif blocks is not None:  # the condition must be known before the first steered block
                candidates = [b for b in range(n_blocks) if b <= min(steered)]
            else:
                candidates = list(range(n_blocks))
            test_rows = where_split == "test"
            cf = fit_condition(
                agg[:, in_fit],
                y[in_fit],
                agg[:, where_split == "valid"],
                y[where_split == "valid"],
                aggregate=aggregate,
                blocks=candidates,
                test=agg[:, test_rows] if test_rows.any() else None,
                test_y=y[test_rows] if test_rows.any() else None,
            )
            if blocks is None:
                steered = [b for b in steered if b >= cf.block] or [cf.block]
            condition = ConditionGate(
                blocks=(cf.block,),
                comparator=cf.comparator,
                threshold=float(cf.threshold),
                aggregate=aggregate,
            )
            conditions = {cf.block: cf.vector}
            meta["condition"] = {
                "block": cf.block,
                "comparator": cf.comparator,
                "threshold": float(cf.threshold),
                "aggregate": aggregate,
                "chosen_by": "given block"
                if condition_block is not None
                else "best valid F1 over blocks",
                "sweep": cf.block_rows,
                "valid": cf.valid,
                "test": cf.test,
            }
        found = directions(states.last, positives, negatives, steered, method)
    meta["blocks"] = steered
    meta["direction_norms"] = {
        str(b): float(np.linalg.norm(v.astype(np.float64))) for b, v in found.items()
    }
    data_iv = InterventionData(
        name=name or kind,
        directions=found,
        coefficient=float(1.0 if coefficient is None else coefficient),
        policy=C.POLICY_ALL_TOKENS,
        condition=condition,
        conditions=conditions,
    )
    path = write_fitted(
        out,
        model=binding,
        asa=None,
        interventions=[data_iv],
        metadata=meta,
        inputs=fit_data.inputs,
        force=force,
    )
    return _finish(path, binding, kind, meta, extraction, None, notes)
