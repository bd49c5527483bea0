"""Builders for the vLLM plugin tests: a tiny Llama, bundles of every kind, a transformers reference.

The reference (:func:`reference_tokens`) runs one prompt alone in
transformers with hooks written here from the published semantics, not
from the runtime:

* a control vector (llama.cpp ``direction.N``, repeng's ControlModel):
  ``coefficient * direction`` added to the output of block N at every
  position of every forward pass;
* an ASA bundle (the legacy hook, spec section 11.3): on the
  prefill pass, the StandardScaler / router / probe objects decide on the
  output of block L at the last prompt token, and ``gate * alpha * v``
  (``v`` the normalised mix of the domain and global vectors) is added at
  the positions of the policy. The legacy code casts ``v`` to float16 first;
  the format computes ``float32(gate * alpha) * v`` in float32 (spec 4.6),
  which is what this reference does;
* a condition (CAST): the cosine similarity of the mean (or last) prompt
  hidden state at each condition block with its condition vector, compared
  with the threshold; when every comparison holds, the intervention's
  vectors are added as a control vector's, at the positions of its policy.

At one block (spec 14.1): the conditions and the ASA decision read the
block output as the model produced it (with the deltas of earlier blocks);
the deltas that apply at a position are summed in float32 and added once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

HIDDEN = 128
LAYERS = 4
VOCAB = 128
POLICY_LAST = "prefill_last_token"
POLICY_GEN = "generated_tokens"
POLICY_ALL = "all_tokens"


def _config(family: str) -> Any:
    common: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=256,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "qwen2":
        return transformers.Qwen2Config(**common)
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=64, **common)
    if family == "lfm2":
        return transformers.Lfm2Config(
            layer_types=["conv", "full_attention", "conv", "full_attention"],
            block_auto_adjust_ff_dim=False,
            # read by vLLM's LFM2 (as in the published configs); transformers keeps them as is
            conv_dim=HIDDEN,
            conv_dim_out=HIDDEN,
            block_dim=HIDDEN,
            block_multiple_of=256,
            block_ffn_dim_multiplier=1.0,
            **common,
        )
    raise ValueError(family)


def make_tiny_llama(directory: Path, seed: int = 0, family: str = "llama") -> Path:
    """A random model (hidden 128, 2 heads: head_dim 64, vLLM's smallest on CPU) and a word tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"])}
    for i in range(len(vocab), VOCAB):
        vocab[f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    config = _config(family)
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def block_outputs(model: Any, ids: Sequence[int]) -> list[np.ndarray]:
    """The output of every decoder block at every position of ``ids`` ([LAYERS] of [P, H], float64)."""
    captured: list[np.ndarray] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _a, o: captured.append(_first(o)[0].double().numpy().copy())
        )
        for layer in model.model.layers
    ]
    try:
        with torch.no_grad():
            model(torch.tensor([list(ids)]))
    finally:
        for h in hooks:
            h.remove()
    return captured


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# --------------------------------------------------------------------------- reference items


@dataclass
class Always:
    """A control vector: coefficient x direction at blocks, at the positions of the policy."""

    directions: dict[int, np.ndarray]
    coefficient: float
    policy: str = POLICY_ALL
    condition: Condition | None = None


@dataclass
class Condition:
    vectors: dict[int, np.ndarray]  # condition block -> vector
    comparator: str
    threshold: float
    aggregate: str  # "mean" or "last"
    similarities: dict[int, float] = field(default_factory=dict)

    def fires(self) -> bool:
        sims = [self.similarities[b] for b in sorted(self.vectors)]
        if self.comparator == "greater_than":
            return all(s > self.threshold for s in sims)
        return all(s < self.threshold for s in sims)


@dataclass
class Asa:
    """The legacy ASA assets as fitted objects."""

    layer: int
    scaler: Any
    router: Any
    probes: dict[str, Any]
    vectors: dict[str, np.ndarray]  # unit domain vectors and "global"
    domains: list[str]
    alpha: float
    tau: float
    beta: float
    policy: str = POLICY_LAST

    def decide(self, h: np.ndarray) -> tuple[str, float, int]:
        x = self.scaler.transform(np.asarray(h, dtype=np.float32).reshape(1, -1))
        label = self.router.predict(x)[0]
        domain = label if isinstance(label, str) else self.domains[int(label)]
        probe = self.probes.get(domain)
        p = 0.5 if probe is None else float(probe.predict_proba(x)[0, 1])
        gate = 1 if p >= self.tau else (-1 if p <= 1 - self.tau else 0)
        return domain, p, gate

    def delta(self, domain: str, gate: int) -> np.ndarray:
        v = (1 - self.beta) * self.vectors[domain].astype(np.float64) + self.beta * self.vectors[
            "global"
        ].astype(np.float64)
        v = (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)
        return np.float32(gate * self.alpha) * v


def _steers(policy: str, prefill: bool, position: int, last: int) -> bool:
    if prefill:
        return policy == POLICY_ALL or position == last
    return policy != POLICY_LAST


class _Hooks:
    """The reference for one request: one hook per block, applying ``items`` in order."""

    def __init__(self, model: Any, items: Sequence[Always | Asa]) -> None:
        self.items = list(items)
        self.prefill = True
        self.asa_deltas: dict[int, np.ndarray | None] = {}
        self.decisions: list[tuple[str, float, int]] = []
        self.handles = [
            layer.register_forward_hook(self._hook(b)) for b, layer in enumerate(model.model.layers)
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, block: int) -> Any:
        def hook(_m: Any, _a: Any, output: Any) -> Any:
            out = _first(output)
            seq = out.shape[1]
            last = seq - 1
            rows = out[0].double().numpy()
            if self.prefill:  # the reads of this block, on its output as the model produced it
                for i, item in enumerate(self.items):
                    cond = item.condition if isinstance(item, Always) else None
                    if cond is not None and block in cond.vectors:
                        agg = rows.mean(axis=0) if cond.aggregate == "mean" else rows[-1]
                        c = cond.vectors[block].astype(np.float64)
                        nh, nc = math.sqrt(float(agg @ agg)), math.sqrt(float(c @ c))
                        cond.similarities[block] = 0.0 if nh == 0 else float(agg @ c) / (nh * nc)
                    if isinstance(item, Asa) and item.layer == block:
                        domain, p, gate = item.decide(out[0, last].float().numpy())
                        self.decisions.append((domain, p, gate))
                        self.asa_deltas[i] = None if gate == 0 else item.delta(domain, gate)
            total = np.zeros((seq, out.shape[-1]), dtype=np.float32)
            touched = np.zeros(seq, dtype=bool)
            for i, item in enumerate(self.items):
                delta: np.ndarray | None = None
                if isinstance(item, Always) and block in item.directions:
                    if item.condition is None or item.condition.fires():
                        delta = (item.directions[block] * np.float32(item.coefficient)).astype(
                            np.float32
                        )
                elif isinstance(item, Asa) and item.layer == block:
                    delta = self.asa_deltas[i]
                if delta is None:
                    continue
                for t in range(seq):
                    if _steers(item.policy, self.prefill, t, last):
                        total[t] += delta
                        touched[t] = True
            if not touched.any():
                return output
            new = out.clone()
            add = torch.from_numpy(total).to(out.dtype)
            for t in np.flatnonzero(touched):
                new[0, t] = out[0, t] + add[t]
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook


def reference_tokens(
    model: Any, prompt: Sequence[int], max_new: int, items: Sequence[Always | Asa] = ()
) -> tuple[list[int], list[tuple[str, float, int]], list[bool]]:
    """Greedy tokens of ``prompt`` alone with the reference hooks; also the ASA decisions and conditions."""
    import copy

    items = copy.deepcopy(list(items))
    hooks = _Hooks(model, items)
    try:
        with torch.no_grad():
            out = model(torch.tensor([list(prompt)]), use_cache=True)
            hooks.prefill = False
            tokens: list[int] = []
            for _ in range(max_new):
                nxt = int(out.logits[0, -1].argmax())
                tokens.append(nxt)
                out = model(
                    torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True
                )
    finally:
        hooks.remove()
    fired = [
        item.condition.fires()
        for item in items
        if isinstance(item, Always) and item.condition is not None
    ]
    return tokens, hooks.decisions, fired


# --------------------------------------------------------------------------- bundle builders


def fit_asa(
    h_a: np.ndarray, h_b: np.ndarray, layer: int, alpha: float, policy: str, seed: int
) -> Asa:
    """Fitted scikit-learn objects: the router sends h_a to 'x', h_b to 'y'; gate +1 at h_a, -1 at h_b."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    spread = float(np.linalg.norm(h_a - h_b)) / math.sqrt(h_a.size)
    noise = lambda n: rng.standard_normal((n, h_a.size)) * 0.2 * spread  # noqa: E731
    offset = rng.standard_normal(h_a.size) * 2.0 * spread
    xa, xb = h_a + noise(120), h_b + noise(120)
    xa_far, xb_far = h_a + offset + noise(120), h_b + offset + noise(120)
    data = np.concatenate([xa, xb, xa_far, xb_far]).astype(np.float32)
    scaler = StandardScaler().fit(data)
    tx = lambda a: scaler.transform(a.astype(np.float32))  # noqa: E731
    router = LogisticRegression(max_iter=2000).fit(
        tx(np.concatenate([xa, xa_far, xb, xb_far])), ["x"] * 240 + ["y"] * 240
    )
    probe_x = LogisticRegression(max_iter=2000).fit(
        tx(np.concatenate([xa, xa_far])), [1] * 120 + [0] * 120
    )
    probe_y = LogisticRegression(max_iter=2000).fit(
        tx(np.concatenate([xb, xb_far])), [0] * 120 + [1] * 120
    )
    vectors = {}
    for name in ("x", "y", "global"):
        v = rng.standard_normal(h_a.size)
        vectors[name] = (v / np.linalg.norm(v)).astype(np.float32)
    return Asa(
        layer=layer,
        scaler=scaler,
        router=router,
        probes={"x": probe_x, "y": probe_y},
        vectors=vectors,
        domains=["x", "y"],
        alpha=alpha,
        tau=0.7,
        beta=0.25,
        policy=policy,
    )


def save_asa(asa: Asa, destination: Path, model_dir: Path) -> Path:
    from asa_format.converters import build_bundle

    path, parity = build_bundle(
        destination,
        scaler=asa.scaler,
        router=asa.router,
        probes=asa.probes,
        vectors=asa.vectors,
        domains=asa.domains,
        layer=asa.layer,
        alpha=asa.alpha,
        tau=asa.tau,
        beta=asa.beta,
        model_id=str(model_dir),
        model_type="llama",
        num_layers=LAYERS,
        policy=asa.policy,
        samples=256,
    )
    assert parity.ok
    return path


def write_control_vector(path: Path, directions: dict[int, np.ndarray]) -> Path:
    """A llama.cpp control vector, written with ggml's gguf package as repeng's export_gguf does."""
    import gguf

    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", len(directions))
    for block in sorted(directions):
        w.add_tensor(f"direction.{block}", directions[block].astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def save_interventions(
    destination: Path,
    model_dir: Path,
    items: dict[str, Always],
    asa_dir: Path | None = None,
    model_type: str = "llama",
) -> Path:
    """A format 1.1 bundle of always/condition interventions (and an asa one from ``asa_dir``)."""
    import dataclasses

    import asa_format
    from asa_format.bundle import read_bundle_contents
    from asa_format.format.contents import BundleContents, InterventionData
    from asa_format.format.interventions import ConditionGate
    from asa_format.format.manifest import ModelBinding

    data = []
    for name, item in items.items():
        cond = item.condition
        data.append(
            InterventionData(
                name,
                item.directions,
                coefficient=item.coefficient,
                policy=item.policy,
                condition=None
                if cond is None
                else ConditionGate(
                    tuple(sorted(cond.vectors)), cond.comparator, cond.threshold, cond.aggregate
                ),
                conditions={} if cond is None else cond.vectors,
            )
        )
    model = ModelBinding(hidden_size=HIDDEN, id=str(model_dir), type=model_type, num_layers=LAYERS)
    if asa_dir is None:
        contents = BundleContents(model=model, interventions=data)
    else:  # the asa part first, then the others (manifest order)
        contents = dataclasses.replace(
            read_bundle_contents(asa_dir), interventions=data, format_version=None
        )
    return asa_format.save_bundle(contents, destination)
