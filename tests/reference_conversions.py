"""Checkpoint conversions for the torch references (test-only code): PaddleNLP state dicts
(TP shards, fused qkv, [in, out] layout) back to HF Llama naming, and a Baichuan2-7B
checkpoint to its ``LlamaForCausalLM`` equivalent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:
    from frontends import fixtures
except ImportError:  # installed as the llmc package
    from llmc.frontends import fixtures


def _read_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def load_paddlenlp_as_hf(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Read a PaddleNLP fixture (single, TP-sharded and/or fused qkv) back into HF Llama naming."""
    import paddle

    model_dir = Path(model_dir)
    cfg = _read_config(model_dir)
    files = sorted(model_dir.glob("model_state.tp*.pdparams")) or [
        model_dir / "model_state.pdparams"
    ]
    shards = [paddle.load(str(f), return_numpy=True) for f in files]
    state = merge_paddlenlp_tp(shards, cfg) if len(shards) > 1 else shards[0]
    state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if cfg.get("fuse_attention_qkv"):
        state = unfuse_paddlenlp_qkv(state, cfg)
    out = {}
    for name, w in state.items():
        hf_name = "model." + name[len("llama.") :] if name.startswith("llama.") else name
        transpose = w.ndim == 2 and not name.endswith("embed_tokens.weight")
        out[hf_name] = np.ascontiguousarray(w.T) if transpose else w
    return out


def merge_paddlenlp_tp(shards: list[dict], cfg: dict) -> dict[str, np.ndarray]:
    """Concatenate PaddleNLP TP rank state dicts: column-parallel on the last axis, row-parallel
    (o/down proj, embedding) on axis 0, replicated tensors taken from rank 0."""
    tp = len(shards)
    vocab_ok = cfg["vocab_size"] % tp == 0
    kv_ok = (cfg.get("num_key_value_heads") or cfg["num_attention_heads"]) % tp == 0
    merged = {}
    for name, w0 in shards[0].items():
        if not isinstance(w0, np.ndarray):
            continue
        if (name.endswith("embed_tokens.weight") and vocab_ok) or any(
            s in name for s in (".o_proj.", ".down_proj.")
        ):
            axis = 0
        elif (
            (name == "lm_head.weight" and vocab_ok)
            or any(s in name for s in (".q_proj.", ".qkv_proj.", ".gate_proj.", ".up_proj."))
            or (kv_ok and any(s in name for s in (".k_proj.", ".v_proj.")))
        ):
            axis = 1
        else:
            merged[name] = w0
            continue
        merged[name] = np.concatenate([s[name] for s in shards], axis=axis)
    return merged


def unfuse_paddlenlp_qkv(state: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """Split PaddleNLP ``qkv_proj`` (per KV head: query heads of the group, k, v) into q/k/v."""
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    group = heads // kv_heads
    out = {}
    for name, w in state.items():
        if not name.endswith("qkv_proj.weight"):
            out[name] = w
            continue
        blocks = np.split(w, heads + 2 * kv_heads, axis=1)
        q, k, v = [], [], []
        for g in range(kv_heads):
            chunk = blocks[g * (group + 2) : (g + 1) * (group + 2)]
            q += chunk[:group]
            k.append(chunk[group])
            v.append(chunk[group + 1])
        prefix = name[: -len("qkv_proj.weight")]
        for proj, parts in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            out[f"{prefix}{proj}.weight"] = np.concatenate(parts, axis=1)
    return out


def baichuan7b_as_llama(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a Baichuan2-7B checkpoint to an equivalent HF ``LlamaForCausalLM`` checkpoint
    (``W_pack`` split into q/k/v, ``lm_head`` rows L2-normalised, RoPE theta 1e4)."""
    cfg = _read_config(model_dir)
    if cfg.get("model_type") != "baichuan" or "max_position_embeddings" not in cfg:
        raise ValueError(f"{model_dir}: not a Baichuan2-7B checkpoint (13B's ALiBi has no Llama "
                         "equivalent)")
    h = cfg["hidden_size"]
    llama = fixtures.baichuan_to_llama_weights(fixtures.read_safetensors_dir(model_dir), h)
    out = Path(out_dir)
    fixtures.write_safetensors(out, llama, metadata={"format": "pt"})
    llama_cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_attention_heads"],
        "hidden_act": cfg.get("hidden_act", "silu"),
        "max_position_embeddings": cfg.get("max_position_embeddings", cfg.get("model_max_length")),
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "vocab_size": cfg["vocab_size"],
        "torch_dtype": "float32",
        "bos_token_id": cfg.get("bos_token_id", 1),
        "eos_token_id": cfg.get("eos_token_id", 2),
        "pad_token_id": cfg.get("pad_token_id", 0),
    }
    (out / "config.json").write_text(json.dumps(llama_cfg, indent=2) + "\n")
    return out
