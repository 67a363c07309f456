"""HF llama safetensors -> F32 GGUF (llama architecture) for llama.cpp, written with the
``gguf`` package. Weights are copied unquantised; q/k rows are permuted to llama.cpp's rope
layout (GGML's rope rotates adjacent pairs, HF's rotate_half rotates the two halves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import vocab_tokens
from .common import progress

# HF per-layer suffix -> GGUF per-block name
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def rope_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's output rows from HF's half-split rope layout (first half of the
    head dim paired with the second half) to interleaved pairs (row 2i with row 2i+1)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return (
        weight.reshape(n_heads, 2, half, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of HF parameter ``hf_name``."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"]:
        raise ValueError(f"unexpected tensor {hf_name}")
    return f"blk.{parts[2]}." + LAYER_NAMES[".".join(parts[3:])]


def _write_metadata(writer: Any, cfg: dict[str, Any]) -> None:
    import gguf

    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer.add_name("llmc-bench-random")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_rope_dimension_count(cfg["hidden_size"] // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_theta"])
    tokens = vocab_tokens(cfg["vocab_size"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0 if i < 259 else -float(i) for i in range(len(tokens))])
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    writer.add_token_types(types + [gguf.TokenType.NORMAL] * (len(tokens) - len(types)))
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)


def convert(hf_dir: Path, out_path: Path) -> Path:
    """Write ``out_path`` (F32 GGUF) from the HF llama checkpoint in ``hf_dir``; reused when
    it is newer than the checkpoint."""
    import gguf
    from safetensors import safe_open

    weights_path = hf_dir / "model.safetensors"
    if out_path.exists() and out_path.stat().st_mtime >= weights_path.stat().st_mtime:
        return out_path
    progress(f"converting {hf_dir} to F32 GGUF {out_path}")
    cfg = json.loads((hf_dir / "config.json").read_text())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    _write_metadata(writer, cfg)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    with safe_open(str(weights_path), framework="numpy") as f:
        for name in f.keys():
            w = f.get_tensor(name).astype(np.float32, copy=False)
            if name.endswith("self_attn.q_proj.weight"):
                w = rope_permute(w, heads)
            elif name.endswith("self_attn.k_proj.weight"):
                w = rope_permute(w, kv_heads)
            writer.add_tensor(gguf_name(name), np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return out_path
