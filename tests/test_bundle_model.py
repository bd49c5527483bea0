"""One bundle model: every kind loads, attaches, is chosen per row, runs and inspects alike.

The references here are independent of the runtime: plain forward hooks
written in this file, from the assets' own arrays (the legacy pickles'
arithmetic, a GGUF file read with ggml's ``gguf`` reader, a condition
vector), applied to each row run alone.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import gguf  # the interop extra: conftest marks this module "interop"
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asa_format
from asa_format import load_bundle
from asa_format.cli import cli
from asa_format.converters.convert import convert_legacy
from asa_format.converters.legacy import read_legacy_bundle
from asa_format.converters.semantics import legacy_decide, legacy_steering_vector
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.interventions import ConditionGate
from asa_format.format.manifest import ModelBinding
from asa_format.interop import ImportBinding, import_file
from asa_format.runtime import attach
from tiny_models import first_tensor, save_tiny_model_and_tokenizer, spread_llama, token_batch

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "fixtures" / "legacy" / "sk16_np2_published_p4"  # hidden 48, L* 4
HIDDEN, LAYERS = 48, 6
CV_BLOCKS = (1, 3)
CV_COEFFICIENT = 0.75
ROWS = [[5, 6, 7, 8, 9, 10, 11], [21, 22, 23, 24], [31, 32, 33, 34, 35]]


def _tiny_llama() -> Any:
    return spread_llama(HIDDEN, LAYERS)


def _write_gguf(
    path: Path, hidden: int = HIDDEN, blocks: tuple[int, ...] = CV_BLOCKS
) -> dict[int, np.ndarray]:
    """A llama.cpp control vector in repeng's layout, written with ggml's own writer."""
    rng = np.random.default_rng(11)
    directions = {b: (rng.standard_normal(hidden) * 2.0).astype(np.float32) for b in blocks}
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(directions))
    for block in sorted(directions):
        writer.add_tensor(f"direction.{block}", directions[block])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return directions


def _read_gguf(path: Path) -> dict[int, np.ndarray]:
    """The directions as llama.cpp reads them: tensor ``direction.N`` steers block N."""
    reader = gguf.GGUFReader(str(path))
    return {int(t.name.split(".")[1]): np.array(t.data, dtype=np.float32) for t in reader.tensors}


class _ControlVectorReference:
    """repeng's ControlModel / llama.cpp: ``coefficient * direction[b]`` added to block b's output
    at every position of every pass."""

    def __init__(self, model: Any, directions: dict[int, np.ndarray], coefficient: float) -> None:
        self.handles = []
        for block, vec in directions.items():
            delta = torch.from_numpy(vec * np.float32(coefficient))

            def hook(_m: Any, _a: Any, out: Any, delta: torch.Tensor = delta) -> Any:
                h = first_tensor(out)
                new = h + delta.to(h.dtype)
                return new if isinstance(out, torch.Tensor) else (new, *out[1:])

            self.handles.append(model.model.layers[block].register_forward_hook(hook))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _LegacyAsaReference:
    """The published ASA hook, from the legacy arrays: on the prefill, decide on the last
    position's hidden state of block L* and add ``gate * alpha * v`` there (float32 v)."""

    def __init__(self, model: Any, assets: Any) -> None:
        self.assets = assets
        self.gates: list[int] = []
        self.handle = model.model.layers[assets.layer].register_forward_hook(self)

    def __call__(self, _m: Any, _a: Any, out: Any) -> Any:
        h = first_tensor(out)
        if h.shape[1] == 1:  # a decode step: not modified
            return None
        index, _, gate = legacy_decide(self.assets, h[:, -1].detach().float().numpy())
        new = h.clone()
        for i in range(h.shape[0]):
            self.gates.append(int(gate[i]))
            if gate[i] != 0:
                v = legacy_steering_vector(self.assets, self.assets.domains[int(index[i])])
                d = torch.from_numpy(v.astype(np.float32)) * float(
                    np.float32(gate[i] * self.assets.alpha)
                )
                new[i, -1] += d.to(h.dtype)
        return new if isinstance(out, torch.Tensor) else (new, *out[1:])

    def remove(self) -> None:
        self.handle.remove()


def _greedy(model: Any, ids: torch.Tensor, mask: torch.Tensor, steps: int = 5) -> Any:
    """Greedy tokens after the prompt ``[B, steps]`` and every step's logits ``[steps, B, V]``."""
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("assets")
    asa_path = tmp / "asa"
    convert_legacy(LEGACY, asa_path, samples=64)
    gguf_path = tmp / "cv.gguf"
    _write_gguf(gguf_path)
    cv_path = import_file(
        gguf_path,
        tmp / "cv",
        ImportBinding(num_layers=LAYERS, hidden_size=HIDDEN),
        coefficient=CV_COEFFICIENT,
    )
    return {"asa": asa_path, "cv": cv_path, "gguf": gguf_path}


def test_mixed_batch_matches_each_row_alone_with_its_reference(assets: dict[str, Any]) -> None:
    model = _tiny_llama()
    legacy = read_legacy_bundle(LEGACY)
    directions = _read_gguf(assets["gguf"])
    selection = ["cv", "asa", None]
    ids, mask = token_batch(ROWS, side="left")
    handle = attach(model, bundles={"cv": assets["cv"], "asa": assets["asa"]}, self_test=True)
    assert handle.blocks == sorted({*CV_BLOCKS, legacy.layer})
    for block in range(LAYERS):  # one hook per steered block, whatever the number of bundles
        n = len(model.model.layers[block]._forward_hooks)
        assert n == (1 if block in handle.blocks else 0)
    try:
        with handle.select(selection):
            tokens, logits = _greedy(model, ids, mask)
            logits = logits[0]
        record = handle.last
    finally:
        handle.remove()
    assert record is not None and record.bundles == selection
    assert record.interventions[0] == {"cv": True}
    assert record.interventions[2] is None
    for row, (tokens_row, name) in enumerate(zip(ROWS, selection, strict=True)):
        one = torch.tensor([tokens_row])
        if name == "cv":
            ref: Any = _ControlVectorReference(model, directions, CV_COEFFICIENT)
        elif name == "asa":
            ref = _LegacyAsaReference(model, legacy)
        else:
            ref = None
        try:
            ref_tokens, ref_logits = _greedy(model, one, torch.ones_like(one))
        finally:
            if ref is not None:
                ref.remove()
        assert torch.equal(tokens[row], ref_tokens[0]), f"row {row} ({name}): greedy tokens differ"
        torch.testing.assert_close(logits[row], ref_logits[0][0], atol=1e-3, rtol=0)
        if name == "asa":
            assert record.gates[row] == ref.gates[0] != 0, "the asa row's gate must fire"
    plain_logits = _greedy(model, ids, mask)[1][0]
    for row in (0, 1):  # steering visibly changed the steered rows
        assert not torch.allclose(plain_logits[row], logits[row], atol=1e-3)
    torch.testing.assert_close(plain_logits[2], logits[2], atol=0, rtol=0)


def _condition_bundle(path: Path, model: Any, fires_on: list[int], other: list[int]) -> Path:
    """A condition intervention whose condition holds for ``fires_on`` and not for ``other``."""
    hidden: dict[str, torch.Tensor] = {}
    hook = model.model.layers[1].register_forward_hook(
        lambda m, a, o: hidden.__setitem__("h", first_tensor(o).detach())
    )
    with torch.no_grad():
        model(input_ids=torch.tensor([fires_on]))
        a = hidden["h"][0].double().mean(dim=0).numpy()
        model(input_ids=torch.tensor([other]))
        b = hidden["h"][0].double().mean(dim=0).numpy()
    hook.remove()
    cond = a - b

    def cos(x: np.ndarray) -> float:
        return float(x @ cond / (np.linalg.norm(x) * np.linalg.norm(cond)))

    assert cos(a) > cos(b)
    gate = ConditionGate((1,), "greater_than", (cos(a) + cos(b)) / 2, "mean")
    direction = np.random.default_rng(5).standard_normal(HIDDEN).astype(np.float32) * 3.0
    contents = BundleContents(
        model=ModelBinding(hidden_size=HIDDEN, type="llama", num_layers=LAYERS),
        interventions=[
            InterventionData("refuse", {2: direction}, condition=gate, conditions={1: cond})
        ],
    )
    asa_format.save_bundle(contents, path)
    return path


def test_condition_gates_are_decided_per_generation(tmp_path: Path) -> None:
    """Two interleaved generations in one thread, with different condition outcomes."""
    from transformers import DynamicCache

    model = _tiny_llama()
    first, second = ROWS[0], ROWS[1]
    path = _condition_bundle(tmp_path / "cond", model, first, second)
    direction = load_bundle(path)["refuse"].directions[2]

    def new_cache() -> Any:
        try:  # transformers >= 4.56 sizes the cache from the config
            return DynamicCache(config=model.config)
        except TypeError:  # the oldest supported release (4.45) takes no arguments
            return DynamicCache()

    def step(ids: list[int], cache: Any) -> torch.Tensor:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
        return out.logits[0, -1]

    def run_interleaved() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        caches = [new_cache(), new_cache()]
        logits: list[list[torch.Tensor]] = [[], []]
        logits[0].append(step(first, caches[0]))  # prefill of generation A
        logits[1].append(step(second, caches[1]))  # prefill of generation B
        for _ in range(3):  # decode steps, alternating
            for g in (0, 1):
                token = int(logits[g][-1].argmax())
                logits[g].append(step([token], caches[g]))
        return logits[0], logits[1]

    def run_alone(ids: list[int], steered: bool) -> list[torch.Tensor]:
        ref = _ControlVectorReference(model, {2: direction}, 1.0) if steered else None
        try:
            cache = new_cache()
            out = [step(ids, cache)]
            for _ in range(3):
                out.append(step([int(out[-1].argmax())], cache))
        finally:
            if ref is not None:
                ref.remove()
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values renamed in 5.24
        with attach(model, path) as handle:
            got_a, got_b = run_interleaved()
            assert [r.interventions[0] for r in handle.records] == [
                {"refuse": True},
                {"refuse": False},
            ]
        want_a, want_b = run_alone(first, True), run_alone(second, False)
    for got, want in ((got_a, want_a), (got_b, want_b)):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=0)
    assert not torch.allclose(got_a[0], run_alone(first, False)[0], atol=1e-3)


def test_the_cli_treats_an_imported_bundle_like_any_other(
    assets: dict[str, Any], tmp_path: Path
) -> None:
    runner = CliRunner()
    cv = str(assets["cv"])
    validate = runner.invoke(cli, ["validate", cv])
    assert validate.exit_code == 0, validate.output
    assert "None" not in validate.stdout and "always, blocks 1,3" in validate.stdout
    inspect = runner.invoke(cli, ["inspect", cv])
    assert inspect.exit_code == 0 and "None" not in inspect.stdout
    model_dir = save_tiny_model_and_tokenizer("llama", tmp_path / "tiny-llama")
    config = json.loads((model_dir / "config.json").read_text())
    _write_gguf(tmp_path / "tone.gguf", config["hidden_size"], (1, 2))
    imported = tmp_path / "cv-llama"
    made = runner.invoke(
        cli,
        ["import", str(tmp_path / "tone.gguf"), str(imported), "--model", str(model_dir)],
    )
    assert made.exit_code == 0, made.output
    run = runner.invoke(
        cli,
        [
            "run",
            str(imported),
            "--model",
            str(model_dir),
            "--prompt",
            "hello",
            "--max-new-tokens",
            "3",
        ],
    )
    assert run.exit_code == 0, run.output
    assert "None" not in run.stdout and "applied" in run.stdout
    as_json = runner.invoke(
        cli,
        [
            "run",
            str(imported),
            "--model",
            str(model_dir),
            "--prompt",
            "hello",
            "--max-new-tokens",
            "3",
            "--json",
        ],
    )
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)["results"][0]  # the envelope every command writes
    assert payload["decision"] is None and payload["interventions"][0]["outcome"] is True


def test_deprecated_names_warn_and_name_their_replacement(assets: dict[str, Any]) -> None:
    for name, replacement in (
        ("load_interventions", "asa_format.load_bundle"),
        ("InterventionBundle", "asa_format.Bundle"),
        ("InterventionContents", "asa_format.BundleContents"),
    ):
        with pytest.warns(DeprecationWarning, match=replacement):
            value = getattr(asa_format, name)
        assert value is not None
    with pytest.warns(DeprecationWarning, match="asa_format.load_bundle"):
        bundle = asa_format.load_interventions(assets["cv"])
    assert isinstance(bundle, asa_format.Bundle) and bundle.kinds == ["always"]
    from asa_format.runtime import attach_interventions

    model = _tiny_llama()
    with pytest.warns(DeprecationWarning, match="asa_format.runtime.attach"):
        handle = attach_interventions(model, assets["cv"])
    handle.remove()


def test_import_asa_format_stays_light() -> None:
    code = (
        "import sys, asa_format\n"
        "heavy = ('torch', 'transformers', 'sklearn', 'onnxruntime')\n"
        "print([m for m in sys.modules if m.split('.')[0] in heavy])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path: Path, package: str) -> set[str]:
    """Every asa_format module ``path`` imports, at any depth, outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("asa_format"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("asa_format"):
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules: dict[str, Path] = {}
    for folder, package in (
        (ROOT / "asa_format", "asa_format"),
        (ROOT / "converters", "asa_format.converters"),
        (ROOT / "runtime", "asa_format.runtime"),
    ):
        for p in folder.rglob("*.py"):
            if folder.name == "asa_format" and p.relative_to(folder).parts[0] in (
                "converters",
                "runtime",
            ):
                continue
            rel = p.relative_to(folder).with_suffix("")
            parts = [x for x in rel.parts if x != "__init__"]
            modules[".".join([package, *parts])] = p
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "asa_format":
            continue  # the package facade re-exports everything (lazily where heavy)
        graph[name] = {
            m for m in _imports(path, name) if m in modules and m not in (name, "asa_format")
        }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles[:5]}"


@pytest.mark.parametrize(
    ("scale", "coefficient", "dtype"),
    [(3e38, 2.0, torch.float32), (1e5, 1.0, torch.float16), (30000.0, 3.0, torch.float16)],
)
def test_attach_refuses_a_delta_that_is_not_finite(
    tmp_path: Path, scale: float, coefficient: float, dtype: torch.dtype
) -> None:
    """coefficient x direction overflowing float32, or the model's dtype: refused before any hook."""
    model = _tiny_llama().to(dtype)
    direction = np.full(HIDDEN, scale, dtype=np.float32)
    contents = BundleContents(
        model=ModelBinding(hidden_size=HIDDEN, type="llama", num_layers=LAYERS),
        interventions=[InterventionData("loud", {2: direction}, coefficient=coefficient)],
    )
    path = asa_format.save_bundle(contents, tmp_path / "loud")
    with pytest.raises(asa_format.AsaError) as info:
        attach(model, path)
    assert info.value.code == "VALUE_OVERFLOW" and "'loud' block 2" in info.value.message
    assert not model.model.layers[2]._forward_hooks
    assert not model._forward_pre_hooks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("policy", [None, "all_tokens", "generated_tokens"])
def test_the_host_and_torch_paths_steer_to_the_same_bits(
    assets: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
    policy: str | None,
) -> None:
    """Hidden states in host memory are steered with NumPy (``steering.HOST_PATH_ON_CPU``),
    on any other device with torch operations. Both, run here on the CPU on a batch of every
    kind (a control vector, an asa bundle, a condition gate, nothing), give the same tokens,
    the same logits bit for bit and the same records."""
    from asa_format.runtime import steering

    model = _tiny_llama().to(dtype)
    cond = _condition_bundle(tmp_path / "cond", _tiny_llama(), ROWS[0], ROWS[1])
    rows = [*ROWS, [41, 42, 43, 44, 45, 46]]
    ids, mask = token_batch(rows, side="left")
    bundles = {"cv": assets["cv"], "asa": assets["asa"], "cond": cond}

    def run(host: bool) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        monkeypatch.setattr(steering, "HOST_PATH_ON_CPU", host)
        with attach(model, bundles=bundles, policy=policy) as handle:
            with handle.select(["cv", "asa", "cond", None]):
                tokens, logits = _greedy(model, ids, mask, steps=4)
            records = [(r.rows, r.gates, r.interventions) for r in handle.records]
        return tokens, logits, records

    host_tokens, host_logits, host_records = run(True)
    torch_tokens, torch_logits, torch_records = run(False)
    assert torch.equal(host_tokens, torch_tokens)
    assert torch.equal(host_logits.view(torch.uint8), torch_logits.view(torch.uint8))  # bits
    assert host_records == torch_records
    assert host_records[0][1][1] != 0  # the asa row was steered: the comparison means something


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_lone_row_is_decided_by_the_one_row_lane_to_the_same_bits(
    assets: dict[str, Any], monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """A prompt alone (batch 1) is decided by the one-row lane (``decide_host_row``): the
    same tokens, logits bit for bit and records as the torch path, and as the batch path
    it falls back to when the lane declines a row (near a boundary, non-finite)."""
    from asa_format.runtime import steering
    from asa_format.runtime.torch_decide import TorchDecider

    model = _tiny_llama().to(dtype)
    ids, mask = token_batch([ROWS[0]], side="left")
    lane = {"taken": 0}
    real = steering.decide_host_row

    def spy(entry: Any, hidden: np.ndarray, b: int, p: int) -> Any:
        got = real(entry, hidden, b, p)
        lane["taken"] += got is not None
        return got

    monkeypatch.setattr(steering, "decide_host_row", spy)

    def run(host: bool, declines: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        monkeypatch.setattr(steering, "HOST_PATH_ON_CPU", host)
        if declines:
            monkeypatch.setattr(TorchDecider, "decide_host_row", lambda self, h, b, p: None)
        with attach(model, assets["asa"]) as handle:
            tokens, logits = _greedy(model, ids, mask, steps=3)
            records = [(r.rows, r.gates, r.interventions) for r in handle.records]
        return tokens, logits, records

    lane_out = run(True)
    assert lane["taken"] == 1  # one prefill, one decision, by the lane
    torch_out = run(False)
    fallback_out = run(True, declines=True)
    assert lane["taken"] == 1
    for other in (torch_out, fallback_out):
        assert torch.equal(lane_out[0], other[0])
        assert torch.equal(lane_out[1].view(torch.uint8), other[1].view(torch.uint8))
        assert lane_out[2] == other[2]
    assert lane_out[2][0][1][0] != 0  # steered: the comparison means something
