"""``asa fit`` reproduces the reference ASA protocol, and twice gives the same bytes.

The reference here is written independently of ``asa_format.converters``,
in the style of the reference notebook: one forward pass per prompt with a
hook on every decoder block, then plain scikit-learn calls (a per-block
probe and its validation AUC, the deepest block on the plateau, mean
differences on cal, scaler / router / probes on train, the tau grid on
valid). The model is a tiny random-weight LFM2 in float16; the data set and
system prompt are the ones shipped in ``examples/``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from asa_format import load_bundle
from asa_format.converters import fit

pytestmark = [pytest.mark.runtime, pytest.mark.convert]

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "fit_data"
SYSTEM = (ROOT / "examples" / "fit_system.txt").read_text(encoding="utf-8")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
SPLITS = ("cal", "train", "valid", "test")


def make_tiny_model(directory: Path, dtype: str) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", ROOT / "examples" / "make_tiny_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.make_tiny_model(directory, dtype=dtype))


def asa_fit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "fit", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
        check=False,
    )


# ----------------------------------------------------------------------------- the reference


def reference_protocol(model_dir: Path) -> dict[str, Any]:
    """The protocol, notebook style: every number the fit must reproduce."""
    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16).eval()
    blocks = list(range(len(model.model.layers)))
    data = {s: json.loads((DATA / f"{s}_data.json").read_text()) for s in SPLITS}

    def hidden(samples: list[dict[str, Any]]) -> dict[int, np.ndarray]:
        seen: dict[int, list[np.ndarray]] = {b: [] for b in blocks}

        def keep(b: int) -> Any:
            def fn(module: Any, args: Any, out: Any) -> None:
                h = out[0] if isinstance(out, tuple) else out
                seen[b].append(h[:, -1, :].detach().cpu().float().numpy())

            return fn

        hooks = [model.model.layers[b].register_forward_hook(keep(b)) for b in blocks]
        try:
            for s in samples:
                messages = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": s["instruction"]},
                ]
                text = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
                enc = tokenizer(text, return_tensors="pt")
                with torch.no_grad():
                    model(**enc)
        finally:
            for h in hooks:
                h.remove()
        return {b: np.concatenate(seen[b]) for b in blocks}

    h = {s: hidden(data[s]) for s in SPLITS}
    y = {s: np.array([r["label"] for r in data[s]]) for s in SPLITS}
    dom = {s: np.array([r["domain"] for r in data[s]]) for s in SPLITS}
    domains = list(dict.fromkeys(dom["train"]))

    aucs = []
    for b in blocks:
        sc = StandardScaler()
        probe = LogisticRegression(max_iter=1000, C=1.0, solver="lbfgs")
        probe.fit(sc.fit_transform(h["train"][b]), y["train"])
        aucs.append(
            roc_auc_score(y["valid"], probe.predict_proba(sc.transform(h["valid"][b]))[:, 1])
        )
    best = max(aucs)
    layer = max(b for b in blocks if aucs[b] >= best - 0.005)

    cal = h["cal"][layer]
    tool = y["cal"] == 1
    vectors = {"global": cal[tool].mean(0) - cal[~tool].mean(0)}
    for d in domains:
        m = dom["cal"] == d
        vectors[d] = cal[m & tool].mean(0) - cal[m & ~tool].mean(0)
    vectors = {k: v / (np.linalg.norm(v) + 1e-8) for k, v in vectors.items()}

    scaler = StandardScaler()
    x = scaler.fit_transform(h["train"][layer])
    router = LogisticRegression(max_iter=2000, C=1.0, solver="lbfgs")
    router.fit(x, np.array([domains.index(d) for d in dom["train"]]))
    probes = {}
    for d in domains:
        m = dom["train"] == d
        probes[d] = LogisticRegression(max_iter=1000, C=1.0, solver="lbfgs").fit(
            x[m], y["train"][m]
        )

    def decide(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = scaler.transform(states)
        index = router.predict(xs)
        prob = np.array(
            [probes[domains[i]].predict_proba(xs[r : r + 1])[0, 1] for r, i in enumerate(index)]
        )
        return index, prob

    _, p_valid = decide(h["valid"][layer])
    f1s = [
        f1_score(y["valid"], (p_valid >= t).astype(int), zero_division=0)
        for t in (0.5, 0.55, 0.6, 0.65, 0.7)
    ]
    tau = [0.5, 0.55, 0.6, 0.65, 0.7][int(np.argmax(f1s))]
    index_test, p_test = decide(h["test"][layer])
    gate = np.where(p_test >= tau, 1, np.where(p_test <= 1 - tau, -1, 0))
    return {
        "aucs": aucs,
        "layer": layer,
        "tau": tau,
        "domains": domains,
        "vectors": vectors,
        "test_hidden": h["test"][layer],
        "test_index": index_test,
        "test_p": p_test,
        "test_gate": gate,
        "test_f1": f1_score(y["test"], (p_test >= tau).astype(int), zero_division=0),
    }


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fit")
    model_dir = make_tiny_model(root / "tiny-lfm2", "float16")
    system_file = ROOT / "examples" / "fit_system.txt"
    common = [
        "--model", str(model_dir), "--data", str(DATA), "--system-file", str(system_file),
        "--alpha", "4", "--beta", "0.25", "--threads", "1",
    ]  # fmt: skip
    first = asa_fit(*common, "--out", str(root / "a"), "--cache", str(root / "cache"), "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    second = asa_fit(*common, "--out", str(root / "c"), "--cache", str(root / "cache"), "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    one_at_a_time = fit(
        model_dir, DATA, root / "b", system=SYSTEM, alpha=4.0, beta=0.25, batch_size=1, threads=1
    )
    return {
        "root": root,
        "model": model_dir,
        "first": json.loads(first.stdout),
        "second": json.loads(second.stdout),
        "one_at_a_time": one_at_a_time,
        "reference": reference_protocol(model_dir),
    }


# ----------------------------------------------------------------------------- tests


def test_fit_reproduces_the_reference_protocol(work: dict[str, Any]) -> None:
    ref = work["reference"]
    result = work["first"]["results"][0]
    assert result["ok"], result
    meta = result["fit"]
    bundle = load_bundle(work["root"] / "a")
    assert bundle.manifest.layer.index == ref["layer"] == meta["layer"]["index"]
    assert bundle.manifest.steering.tau == ref["tau"]
    assert list(bundle.manifest.domain_names) == ref["domains"]
    assert np.allclose(meta["layer_auc"], ref["aucs"], rtol=0, atol=1e-12)
    for name, v in ref["vectors"].items():
        got = bundle.vectors[name].astype(np.float64)
        cos = float(got @ v / (np.linalg.norm(got) * np.linalg.norm(v)))
        assert cos >= 0.99999, (name, cos)
    decisions = bundle.decide(ref["test_hidden"])
    tau = ref["tau"]
    p = ref["test_p"]
    away = (np.abs(p - tau) > 1e-6) & (np.abs(p - (1 - tau)) > 1e-6)
    assert away.sum() >= len(p) - 2  # ties are rare: the comparison covers the split
    assert np.array_equal(decisions.domain_index[away], ref["test_index"][away])
    assert np.array_equal(decisions.gate[away], ref["test_gate"][away])
    assert abs(meta["test"]["f1"] - ref["test_f1"]) < 1e-12


def test_the_bundle_is_bound_to_the_model_and_records_its_provenance(work: dict[str, Any]) -> None:
    ivs = load_bundle(work["root"] / "a")
    m = ivs.manifest
    assert m.model.type == "lfm2" and m.model.hidden_size == 48 and m.model.num_layers == 6
    assert m.model.id == "tiny-lfm2"
    prov = m.provenance
    assert prov is not None and prov.source == "pipeline" and prov.tool is not None
    assert prov.tool.name == "asa fit"
    assert set(prov.inputs) == {f"{s}_data.json" for s in SPLITS}
    assert "scikit-learn" in prov.library_versions and "torch" in prov.library_versions
    meta = prov.metadata
    assert meta["model"]["dtype"] == "float16"
    assert meta["rendering"]["mode"] == "chat" and meta["rendering"]["system_prompt_sha256"]
    assert [r["tau"] for r in meta["tau"]["sweep"]] == [0.5, 0.55, 0.6, 0.65, 0.7]
    assert set(meta["test"]) == {"f1", "precision", "recall", "fpr", "accuracy"}
    assert meta["alpha_beta"]["chosen_by"] == "given"
    card = ivs.card
    assert card is not None and "## How this bundle was fitted" in card
    assert meta["data"]["digest"] in card and f"{meta['test']['f1']:.4f}" in card


def test_two_runs_give_the_same_bytes(work: dict[str, Any]) -> None:
    a = work["first"]["results"][0]
    c = work["second"]["results"][0]
    b = work["one_at_a_time"]
    assert a["digest"] == c["digest"] == b.digest
    for name in sorted(os.listdir(work["root"] / "a")):
        assert (work["root"] / "a" / name).read_bytes() == (work["root"] / "b" / name).read_bytes()
    # the first run batched prompts of equal length (checked against single passes);
    # the second read the cache; the API run went one prompt at a time
    assert a["extraction"]["batched_prompts"] > 0 and a["extraction"]["checked_rows"] > 0
    assert a["extraction"]["fallback"] is None
    assert c["extraction"]["cached"] is True and c["extraction"]["forward_passes"] == 0
    assert b.extraction["mode"] == "one at a time" and b.extraction["batched_prompts"] == 0


def test_the_text_report_names_the_sweeps_and_the_digest(work: dict[str, Any]) -> None:
    text = work["one_at_a_time"].text()
    assert work["one_at_a_time"].digest in text
    for word in ("layer sweep", "<- L*", "tau sweep", "test ", "alpha, beta  4, 0.25 (given)"):
        assert word in text, word


def test_a_jsonl_file_with_a_split_field_fits_the_same_bundle(
    work: dict[str, Any], tmp_path: Path
) -> None:
    lines = []
    for s in SPLITS:
        for row in json.loads((DATA / f"{s}_data.json").read_text()):
            lines.append(json.dumps({**row, "split": s}))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    report = fit(
        work["model"], data, tmp_path / "out", system=SYSTEM, alpha=4.0, beta=0.25, threads=1
    )
    ref = load_bundle(work["root"] / "a")
    got = load_bundle(tmp_path / "out")
    assert got.manifest.provenance is not None and ref.manifest.provenance is not None
    assert (
        got.manifest.provenance.metadata["data"]["digest"]
        == ref.manifest.provenance.metadata["data"]["digest"]
    )
    # the graphs and vectors are the same bytes; only the provenance (file names) differs
    for name in ("vectors.safetensors", "scaler.onnx", "router.onnx", "probe_0.onnx"):
        assert (tmp_path / "out" / name).read_bytes() == (work["root"] / "a" / name).read_bytes()
    assert report.digest != work["one_at_a_time"].digest


def test_padded_batching_is_opt_in_and_reports_its_effect(
    work: dict[str, Any], tmp_path: Path
) -> None:
    report = fit(
        work["model"], DATA, tmp_path / "padded", system=SYSTEM, alpha=4.0, beta=0.25,
        batch_size=16, pad_batches=True, threads=1,
    )  # fmt: skip
    ex = report.extraction
    assert ex["mode"] == "padded batches" and ex["checked_rows"] > 1
    assert ex["padded_max_abs_diff"] is not None and ex["padded_max_abs_diff"] >= 0.0
    assert "padded batching changed the hidden states by up to" in report.text()
    meta = load_bundle(tmp_path / "padded").manifest.provenance
    assert meta is not None and "padded" in meta.metadata["extraction"]["values"]


def test_alpha_and_beta_chosen_by_the_trigger_measurement(
    work: dict[str, Any], tmp_path: Path
) -> None:
    """The sweep's F1 is recomputed here by generating through the runtime directly."""
    from asa_format.runtime import attach

    report = fit(
        work["model"],
        DATA,
        tmp_path / "trig",
        system=SYSTEM,
        trigger="translate",
        threads=1,
        beta=0.3,
    )
    ab = report.metadata["alpha_beta"]
    assert ab["chosen_by"].startswith("trigger F1 on valid")
    assert [r["alpha"] for r in ab["alpha_sweep"]][:3] == [1.0, 2.0, 3.0] and ab["beta_sweep"] == []
    best = max(r["f1"] for r in ab["alpha_sweep"])
    assert ab["alpha"] == next(r["alpha"] for r in ab["alpha_sweep"] if r["f1"] == best)
    # independent check of one candidate: generate each valid prompt alone with the bundle attached
    tokenizer = transformers.AutoTokenizer.from_pretrained(work["model"])
    model = transformers.AutoModelForCausalLM.from_pretrained(work["model"]).eval()
    rows = json.loads((DATA / "valid_data.json").read_text())
    predicted = []
    with attach(model, load_bundle(tmp_path / "trig"), alpha=ab["alpha"]):
        for r in rows:
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": r["instruction"]},
            ]
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(
                    **ids, max_new_tokens=ab["new_tokens"], do_sample=False, pad_token_id=0
                )
            new = tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
            predicted.append(int(new.lstrip().startswith("translate")))
    want = f1_score([r["label"] for r in rows], predicted, zero_division=0)
    assert abs(want - best) < 1e-12 and best > 0.0
