"""Tiny configs for every causal-LM type of transformers, built generically.

:func:`tiny_config` starts from a type's default config and shrinks it by
walking its attributes (nested text / vision / audio configs included):
hidden sizes, layer counts (at least 2), heads, intermediate and expert
sizes, vocabularies. Special token ids that would fall outside the shrunk
vocabulary are moved to distinct ids at its top. :data:`OVERRIDES` holds the
few per-type fixes generic shrinking cannot find. Shrinking never grows a
value: every rule is a ``min``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "HIDDEN",
    "LAYERS",
    "OVERRIDES",
    "POST_BUILD",
    "VOCAB",
    "prepare_model",
    "shrink_dict",
    "tiny_config",
]

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
LAYERS = 2
VOCAB = 512
INTERMEDIATE = 128
EXPERTS = 4
RANK = 16
MAX_POSITIONS = 512

# (pattern on the attribute name, cap). First match wins; a value is only ever lowered.
_RULES: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    (re.compile(p), cap)
    for p, cap in (
        (
            r"^(num_key_value_heads|n_kv_heads?|num_kv_heads|multi_query_group_num|n_head_kv|num_kv)\Z",
            KV_HEADS,
        ),
        (r"(^|_)(num_attention_heads|n_heads?|num_heads|attention_heads|heads)\Z", HEADS),
        (r"^rotary_dim\Z", HEAD_DIM),
        (r"head_dim\Z|headdim\Z|d_head\Z|^attention_head_size\Z|^kv_channels\Z", HEAD_DIM),
        (
            r"(^|_)(hidden_size|d_model|n_embd|embed_dim|embedding_size|dim|hidden_dim|width|projection_dim|n_embed|word_embed_proj_dim|adapter_input_size)\Z",
            HIDDEN,
        ),
        (
            r"intermediate_size|ffn_dim|(^|_)d_ff\Z|^n_inner\Z|mlp_dim|ffn_hidden_size|^d_inner\Z|feed_forward_proj_dim",
            INTERMEDIATE,
        ),
        (
            r"(^|_)(num_hidden_layers|n_layers?|num_layers|decoder_layers|encoder_layers|num_decoder_layers|num_encoder_layers|depth|num_blocks|num_layers_per_stack)\Z",
            LAYERS,
        ),
        (
            r"experts_per_tok\Z|experts_per_token\Z|^top_k\Z|^moe_topk\Z|^num_selected_experts\Z|^moe_k\Z",
            2,
        ),
        (r"shared_experts\Z", 1),
        (r"experts\Z", EXPERTS),
        (
            r"^(n_group|topk_group|num_expert_groups?|num_groups_topk|n_groups|mamba_ngroups|mamba_n_groups)\Z",
            1,
        ),
        (r"^(mamba_)?expand\Z", 1),
        (r"lora_rank\Z|^time_step_rank\Z", RANK),
        (r"^(d_state|state_size|ssm_state_size|mamba_d_state)\Z", RANK),
        (r"vocab_size|_vocab\Z", VOCAB),
        (r"^(max_position_embeddings|n_positions|n_ctx|max_seq_len)\Z", MAX_POSITIONS),
    )
)
_TOKEN_ID = re.compile(r"(token_id|token_index|token_ids)\Z")
_SKIP_KEYS = frozenset(
    {"id2label", "label2id", "rope_parameters", "rope_scaling", "task_specific_params"}
)
_KV_KEYS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "n_head_kv")
_LAYER_KEYS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "decoder_layers",
    "num_decoder_layers",
)


def _cap(name: str) -> int | None:
    for pattern, cap in _RULES:
        if pattern.search(name):
            return cap
    return None


def _layer_count(d: dict[str, Any]) -> int | None:
    for key in _LAYER_KEYS:
        value = d.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _key(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


def _keep_indices(lists: list[list[Any]], old: int, new: int) -> list[int]:
    """Layer indices to keep: the first layer of every distinct per-layer value, then the
    first layers, up to ``new`` (more when there are more distinct values than ``new``)."""
    keep: set[int] = set()
    for values in lists:
        seen: set[Any] = set()
        for i, v in enumerate(values):
            if _key(v) not in seen:
                seen.add(_key(v))
                keep.add(i)
    i = 0
    while len(keep) < new and i < old:
        keep.add(i)
        i += 1
    return sorted(keep)


def _index_dict(value: Any, old: int) -> bool:
    """A dict keyed by layer indices (``per_layer_config``)."""
    if not isinstance(value, dict) or not value:
        return False
    try:
        return all(0 <= int(k) < old for k in value)
    except (TypeError, ValueError):
        return False


def shrink_dict(d: dict[str, Any]) -> dict[str, Any]:
    """Shrink one config dict (and the config dicts nested in it) in place; return it."""
    old_layers = _layer_count(d)
    same_heads = [k for k in _KV_KEYS if k in d and d[k] == d.get("num_attention_heads")]
    for key, value in list(d.items()):
        if key in _SKIP_KEYS:
            continue
        if old_layers and _index_dict(value, old_layers):
            for item in value.values():  # per-layer overrides (per_layer_config)
                if isinstance(item, dict):
                    shrink_dict(item)
        elif isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            shrink_dict(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            cap = _cap(key)
            if cap is not None and value > cap:
                d[key] = cap
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and not _TOKEN_ID.search(key)
        ):
            cap = _cap(key)  # per-layer sizes (gemma3n's intermediate_size list)
            if cap is not None:
                d[key] = [min(v, cap) for v in value]
    for k in same_heads:  # multi-head attention stays multi-head
        d[k] = d["num_attention_heads"]
    if isinstance(d.get("qk_nope_head_dim"), int) and isinstance(d.get("qk_rope_head_dim"), int):
        d["qk_head_dim"] = d["qk_nope_head_dim"] + d["qk_rope_head_dim"]  # derived (MLA)
    new_layers = _layer_count(d)
    if old_layers is not None and new_layers is not None and new_layers != old_layers:
        # Per-layer lists (layer_types, mlp_layer_types, ...) and layer-indexed dicts follow
        # the layer count; every kind of layer keeps at least one representative.
        per_layer = [
            k
            for k, v in d.items()
            if isinstance(v, list) and len(v) == old_layers and k not in _LAYER_KEYS
        ]
        keep = _keep_indices([d[k] for k in per_layer], old_layers, new_layers)
        for k in per_layer:
            d[k] = [d[k][i] for i in keep]
        position = {old: new for new, old in enumerate(keep)}
        for k, v in list(d.items()):
            if _index_dict(v, old_layers):
                d[k] = {
                    (
                        f"{position[int(key)]:0{len(key)}d}"
                        if isinstance(key, str)
                        else position[int(key)]
                    ): item
                    for key, item in v.items()
                    if int(key) in position
                }
        if len(keep) != new_layers:
            for k in _LAYER_KEYS:
                if d.get(k) == new_layers:
                    d[k] = len(keep)
    if "is_decoder" in d and not d.get("is_encoder_decoder"):
        d["is_decoder"] = True  # BERT-family models are causal LMs only as decoders
    return d


def _token_ids(d: dict[str, Any], found: list[tuple[dict[str, Any], str]]) -> None:
    for key, value in d.items():
        if key in _SKIP_KEYS:
            continue
        if isinstance(value, dict):
            _token_ids(value, found)
        elif _TOKEN_ID.search(key) and (
            (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, list) and value and all(isinstance(v, int) for v in value))
        ):
            found.append((d, key))


def remap_token_ids(d: dict[str, Any], vocab: int) -> None:
    """Move special token ids at or above ``vocab`` to distinct ids at the top of it."""
    found: list[tuple[dict[str, Any], str]] = []
    _token_ids(d, found)
    big = sorted(
        {
            v
            for owner, key in found
            for v in (owner[key] if isinstance(owner[key], list) else [owner[key]])
            if v >= vocab
        }
    )
    new = {v: vocab - 1 - i for i, v in enumerate(big)}
    for owner, key in found:
        value = owner[key]
        owner[key] = (
            [new.get(v, v) for v in value] if isinstance(value, list) else new.get(value, value)
        )


def _min_vocab(d: dict[str, Any]) -> int:
    sizes = [v for k, v in d.items() if k == "vocab_size" and isinstance(v, int)]
    for v in d.values():
        if isinstance(v, dict):
            inner = _min_vocab(v)
            if inner:
                sizes.append(inner)
    return min(sizes) if sizes else 0


# --- per-type fixes ---------------------------------------------------------------------------

Fix = Callable[[dict[str, Any]], None]


def _set(**values: Any) -> Fix:
    def fix(d: dict[str, Any]) -> None:
        d.update(values)

    return fix


def _zamba2(d: dict[str, Any]) -> None:
    d.update(
        num_hidden_layers=2,
        layers_block_type=["linear_attention", "hybrid"],
        hybrid_layer_ids=[1],
        attention_hidden_size=2 * HIDDEN,
        attention_head_dim=2 * HIDDEN // HEADS,
    )


def _dbrx(d: dict[str, Any]) -> None:
    d["attn_config"]["rope_theta"] = 10000.0  # the default attention config lacks it


OVERRIDES: dict[str, Fix] = {
    "dbrx": _dbrx,
    "reformer": _set(axial_pos_embds_dim=[HIDDEN // 2, HIDDEN // 2]),
    "deepseek_v2": _set(num_experts_per_tok=2),  # the default config leaves it None
    "dots3_note": lambda d: d["text_config"].update(head_dim=2 * HEAD_DIM),
    "dots3_note_text": _set(head_dim=2 * HEAD_DIM),
    "falcon_h1": lambda d: d.update(mamba_d_ssm=d["mamba_n_heads"] * d["mamba_d_head"]),
    "gemma3n_text": _set(num_kv_shared_layers=0),
    # Its "indexed_attention" layers need budgets the default config leaves None.
    "qwen4_exp": lambda d: d["text_config"].update(layer_types=["linear_attention"] * LAYERS),
    "qwen4_exp_text": _set(layer_types=["linear_attention"] * LAYERS),
    "zamba": _set(
        num_hidden_layers=3,
        attn_layer_period=1,
        attn_layer_offset=1,
        layers_block_type=["linear_attention", "hybrid", "hybrid"],
        attention_hidden_size=2 * HIDDEN,
        attention_head_dim=2 * HIDDEN // HEADS,
    ),
    "zamba2": _zamba2,
}


def tiny_config(model_type: str) -> Any:
    """The default config of ``model_type``, shrunk (a ``PreTrainedConfig``)."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    d = default.to_dict()
    shrink_dict(d)
    fix = OVERRIDES.get(model_type)
    if fix is not None:
        fix(d)
    vocab = _min_vocab(d)
    if vocab:
        remap_token_ids(d, vocab)
    for key in ("transformers_version", "model_type"):
        d.pop(key, None)
    return type(default).from_dict(d)


def _xmod(model: Any) -> None:
    languages = list(getattr(model.config, "languages", None) or [])
    if languages:
        model.set_default_language(languages[0])  # X-MOD runs only with a language set


# Per-type steps after building, for models that need a setting before any forward pass.
POST_BUILD: dict[str, Callable[[Any], None]] = {"xmod": _xmod}


def prepare_model(model_type: str, model: Any) -> Any:
    """Apply :data:`POST_BUILD` to a freshly built model of ``model_type``; return it."""
    step = POST_BUILD.get(model_type)
    if step is not None:
        step(model)
    return model
