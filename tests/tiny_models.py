"""Tiny random-weight causal language models, built offline from configs.

Every factory returns a seeded model in eval mode with a small vocabulary,
hidden size 32-64 and 2-4 decoder blocks, so tests can run many
architectures on a CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

VOCAB = 96
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2


@dataclass(frozen=True)
class TinySpec:
    """How to build one tiny model and where its decoder blocks live."""

    name: str
    build: Callable[[], Any]
    hidden_size: int
    num_layers: int
    layers_path: str
    model_type: str


def _common() -> dict[str, Any]:
    return {
        "vocab_size": VOCAB,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def _llama() -> Any:
    return transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **_common(),
    )


def _qwen2() -> Any:
    return transformers.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **_common(),
    )


def _mistral() -> Any:
    return transformers.MistralConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=None,
        **_common(),
    )


def _gemma() -> Any:
    return transformers.GemmaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=128,
        **_common(),
    )


def _gpt2() -> Any:
    return transformers.GPT2Config(
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_positions=128,
        **_common(),
    )


def _gpt_neox() -> Any:
    return transformers.GPTNeoXConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        **_common(),
    )


def _opt() -> Any:
    return transformers.OPTConfig(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
        **_common(),
    )


def _phi() -> Any:
    return transformers.PhiConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        **_common(),
    )


def _falcon() -> Any:
    return transformers.FalconConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        **_common(),
    )


def _lfm2() -> Any:
    return transformers.Lfm2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        block_auto_adjust_ff_dim=False,
        **_common(),
    )


def _gemma3_vl() -> Any:
    vision = transformers.SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    text = transformers.Gemma3TextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=16,
        **_common(),
    )
    return transformers.Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=VOCAB - 3,
        eoi_token_index=VOCAB - 2,
        image_token_index=VOCAB - 1,
    )


SPECS: dict[str, TinySpec] = {
    s.name: s
    for s in (
        TinySpec("llama", _llama, 32, 3, "model.layers", "llama"),
        TinySpec("qwen2", _qwen2, 32, 2, "model.layers", "qwen2"),
        TinySpec("mistral", _mistral, 32, 2, "model.layers", "mistral"),
        TinySpec("gemma", _gemma, 32, 2, "model.layers", "gemma"),
        TinySpec("gpt2", _gpt2, 32, 3, "transformer.h", "gpt2"),
        TinySpec("gpt_neox", _gpt_neox, 32, 2, "gpt_neox.layers", "gpt_neox"),
        TinySpec("opt", _opt, 32, 2, "model.decoder.layers", "opt"),
        TinySpec("phi", _phi, 32, 2, "model.layers", "phi"),
        TinySpec("falcon", _falcon, 32, 2, "transformer.h", "falcon"),
        TinySpec("lfm2", _lfm2, 32, 4, "model.layers", "lfm2"),
        TinySpec("gemma3_vl", _gemma3_vl, 32, 3, "model.language_model.layers", "gemma3"),
    )
}

ARCHITECTURES = tuple(SPECS)


def _available_now() -> tuple[str, ...]:
    return tuple(n for n in SPECS if available(n))


def available(name: str) -> bool:
    """Whether the installed transformers has the architecture ``name``."""
    try:
        SPECS[name].build()
    except (AttributeError, ImportError):
        return False
    return True


def build_model(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """Build the tiny model ``name`` with seeded random weights, in eval mode."""
    spec = SPECS[name]
    config = spec.build()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.to(dtype).eval()
    return model


def token_batch(rows: list[list[int]], *, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id rows to one batch; returns (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "left":
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        else:
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
    return ids, mask


WORDS = [
    "hello",
    "world",
    "what",
    "is",
    "the",
    "weather",
    "in",
    "paris",
    "call",
    "tool",
    "search",
    "for",
    "me",
    "please",
    "tell",
    "a",
    "joke",
    "about",
    "cats",
    "today",
]


def save_tiny_model_and_tokenizer(name: str, directory: Path, *, seed: int = 0) -> Path:
    """Save a tiny model and a word-level tokenizer built in code to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, "<unk>": 3}
    for word in WORDS:
        vocab[word] = len(vocab)
    for i in range(len(vocab), VOCAB):
        vocab[f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    model = build_model(name, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# --- bundles for runtime tests ---------------------------------------------------------


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder block's output (tensor or tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def last_hidden_rows(
    model: Any, block: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> np.ndarray:
    """Float32 [B, H]: ``block``'s output at each row's last real token (no steering)."""
    seen: list[torch.Tensor] = []
    hook = block.register_forward_hook(lambda m, a, o: seen.append(first_tensor(o).detach()))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        hook.remove()
    hidden = seen[0]
    mask = attention_mask.bool()
    last = torch.where(mask, torch.arange(mask.shape[1]), -1).max(dim=1).values
    return hidden[torch.arange(hidden.shape[0]), last].float().numpy()


def separating_bundle(
    destination: Path,
    centroids: dict[str, np.ndarray],
    *,
    domains: tuple[str, ...] = ("search", "math", "chat"),
    probe_bias: dict[str, float] | None = None,
    **kwargs: Any,
) -> Path:
    """A real bundle whose router sends each centroid to its domain (nearest centroid).

    The scaler is the identity and the probes are constant (``probe_bias``:
    +20 gives gate +1, -20 gate -1, 0 with tau > 0.5 gate 0), so each prompt
    whose hidden state is a centroid gets a known domain and gate.
    """
    import dataclasses

    from asa_format.storage.writer import save_bundle
    from asa_format.testing import linear_router_graph, make_test_contents, scaler_graph

    biases = probe_bias or {"search": 20.0, "math": -20.0, "chat": 0.0}
    hidden = len(next(iter(centroids.values())))
    contents = make_test_contents(
        hidden_size=hidden, domains=domains, probe_scale=0.0, probe_bias=biases, **kwargs
    )
    weights = np.zeros((hidden, len(domains)))
    bias = np.full(len(domains), -1e6)
    for name, c in centroids.items():
        j = domains.index(name)
        weights[:, j] = c
        bias[j] = -0.5 * float(np.dot(c, c))
    contents = dataclasses.replace(
        contents,
        scaler=scaler_graph(np.zeros(hidden, np.float32), np.ones(hidden, np.float32)),
        router=linear_router_graph(weights, bias),
    )
    return save_bundle(contents, destination)


def legacy_reference_delta(
    h_last: np.ndarray,
    *,
    mean: np.ndarray,
    scale: np.ndarray,
    router_coef: np.ndarray,
    router_intercept: np.ndarray,
    probes: dict[str, tuple[np.ndarray, float]],
    vectors: dict[str, np.ndarray],
    domains: list[str],
    alpha: float,
    tau: float,
    beta: float,
) -> tuple[str, float, int, np.ndarray]:
    """The legacy hook's decision and delta for one last-token row, from raw arrays.

    Returns (domain, p, gate, delta) with delta = gate * alpha * v in float32
    (the legacy code's float16 cast is left to the caller).
    """
    x = (h_last.astype(np.float32).astype(np.float64) - mean) / scale
    d = domains[int(np.argmax(x @ router_coef.T + router_intercept))]
    if d in probes:
        coef, intercept = probes[d]
        p = float(1.0 / (1.0 + np.exp(-(x @ coef.reshape(-1) + intercept))))
    else:
        p = 0.5
    gate = 1 if p >= tau else (-1 if p <= 1 - tau else 0)
    v = (1 - beta) * vectors[d].astype(np.float32) + beta * vectors["global"].astype(np.float32)
    v = (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)
    return d, p, gate, (gate * alpha * v).astype(np.float32)


def no_hooks(model: torch.nn.Module) -> bool:
    """Whether no forward hook of any kind is left on ``model``."""
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not getattr(m, "_forward_hooks_with_kwargs", {})
        for m in model.modules()
    )


# The architectures the installed transformers has (LFM2 and Gemma3 are newer than 4.45).
AVAILABLE = _available_now()
NEEDS_GEMMA3 = "gemma3_vl not in the installed transformers (added after 4.45)"


def spread_llama(hidden: int, n_layers: int) -> Any:
    """A tiny random Llama whose embeddings are scaled by 25, so that rows spread over an
    asa bundle's domains and gates (the converted legacy fixtures' hidden sizes)."""
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(25.0)
    return model
