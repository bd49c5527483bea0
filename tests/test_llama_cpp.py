"""An asa bundle exported to GGUF steers llama.cpp as the runtime steers transformers.

A tiny random Llama is written as a GGUF model with gguf's writer (the tensor
mapping and the Q/K permutation of llama.cpp's convert_hf_to_gguf.py), the
bundle's export is loaded the way llama.cpp's common_control_vector_load
does (``data[(N-1)·n_embd + j] = direction.N[j]``) and applied with
``llama_set_adapter_cvec``. The change of the logits it causes must match the
change the runtime causes on the same weights. Runs where llama-cpp-python is
installed (it builds llama.cpp from source).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

import asa_format
from asa_format.interop.export import export_gguf
from asa_format.interop.gguf_cv import read_control_vector
from asa_format.runtime import attach
from asa_format.testing import make_test_contents

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

N_HEAD, N_KV, HIDDEN, LAYERS = 4, 2, 64, 3
VOCAB = 3 + 256 + 29  # <unk> <s> </s>, byte tokens, a few pieces


def _tiny_llama() -> Any:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).float().eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _write_gguf_model(model: Any, path: Path) -> None:
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(128)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(HIDDEN // N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    tokens = (
        ["<unk>", "<s>", "</s>"]
        + [f"<0x{i:02X}>" for i in range(256)]
        + [f"▁t{i}" for i in range(VOCAB - 259)]
    )
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], N_HEAD))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], N_KV))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_cpp_logits(llm: Any, tokens: list[int], cvec_file: Path | None) -> np.ndarray:
    ctx = llm._ctx.ctx
    if cvec_file is None:
        assert llama_cpp.llama_set_adapter_cvec(ctx, None, 0, HIDDEN, 0, 0) == 0
    else:  # common_control_vector_load_one: data[(N-1)·n_embd + j] += direction.N[j]
        _, dirs, _ = read_control_vector(cvec_file)
        n_layers = max(dirs)
        data = np.zeros(n_layers * HIDDEN, dtype=np.float32)
        for n, vec in dirs.items():
            data[(n - 1) * HIDDEN : n * HIDDEN] += vec
        buf = (ctypes.c_float * data.size).from_buffer_copy(data.tobytes())
        assert llama_cpp.llama_set_adapter_cvec(ctx, buf, data.size, HIDDEN, 1, LAYERS) == 0
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def test_exported_asa_vector_steers_llama_cpp_like_the_runtime(tmp_path: Path) -> None:
    model = _tiny_llama()
    _write_gguf_model(model, tmp_path / "tiny.gguf")
    contents = make_test_contents(
        hidden_size=HIDDEN,
        layer=1,
        alpha=6.0,
        policy="all_tokens",
        route_to="search",
        probe_bias=50.0,
        model_type="llama",
        num_layers=LAYERS,
    )
    bundle_path = asa_format.save_bundle(contents, tmp_path / "asa")
    report = export_gguf(bundle_path, tmp_path / "cv.gguf", domain="search", sign=1)
    assert [k for k, _ in report.losses] == ["gate"]  # policy all_tokens: only the gate is lost

    tokens = [1, 270, 271, 275, 280, 260, 285]
    ids = torch.tensor([tokens])
    with torch.no_grad():
        hf_base = model(input_ids=ids).logits[0].double().numpy()
        with attach(model, bundle_path) as handle:
            hf_steered = model(input_ids=ids).logits[0].double().numpy()
        assert handle.last is not None and list(handle.last.gates) == [1]

    llm = llama_cpp.Llama(
        model_path=str(tmp_path / "tiny.gguf"),
        n_ctx=64,
        n_batch=64,
        logits_all=True,
        verbose=False,
        n_threads=1,
    )
    cpp_base = _llama_cpp_logits(llm, tokens, None)
    cpp_steered = _llama_cpp_logits(llm, tokens, tmp_path / "cv.gguf")

    assert np.abs(cpp_base - hf_base).max() < 1e-3, (
        "the GGUF model reproduces the transformers model"
    )
    hf_delta, cpp_delta = hf_steered - hf_base, cpp_steered - cpp_base
    assert np.abs(hf_delta).max() > 0.05, "the vector changes the logits noticeably"
    assert np.abs(cpp_delta - hf_delta).max() < 1e-3 * max(1.0, float(np.abs(hf_delta).max()))
