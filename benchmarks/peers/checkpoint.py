"""Random fp32 HF LlamaForCausalLM checkpoints (safetensors + config + a word-level
tokenizer) written with numpy into benchmarks/.cache, once per config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .common import CACHE_DIR, MODEL_CONFIGS, progress

INIT_STD = 0.02
MAX_POSITIONS = 2048
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def hf_config(name: str) -> dict[str, Any]:
    """The config.json of benchmark model ``name`` (llama, rope 10000, untied lm_head)."""
    dims = MODEL_CONFIGS[name]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **dims,
        "head_dim": dims["hidden_size"] // dims["num_attention_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


def dims_config(a) -> dict[str, Any]:
    """An HF llama config.json of the dims on a benchmark's command line (`a.hidden`,
    `a.inter`, `a.heads`, `a.kv_heads`, `a.layers`, `a.vocab`)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
            "intermediate_size": a.inter, "num_attention_heads": a.heads,
            "num_key_value_heads": a.kv_heads, "num_hidden_layers": a.layers,
            "vocab_size": a.vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32"}


def tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes of a llama config."""
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head_dim = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab, h)
    return shapes


def decode_weight_bytes(cfg: dict[str, Any]) -> int:
    """Bytes a decode step must stream from memory: every fp32 weight except the embedding
    table (a step reads one row of it); the untied lm_head counts in full."""
    shapes = tensor_shapes(cfg)
    shapes.pop("model.embed_tokens.weight")
    return 4 * sum(int(np.prod(s)) for s in shapes.values())


def random_weights(cfg: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Normal(0, INIT_STD) matrices, norm weights near 1: fp32, reproducible per seed."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in tensor_shapes(cfg).items():
        if len(shape) == 1:
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32))
        else:
            out[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
    return out


def vocab_tokens(vocab_size: int) -> list[str]:
    """Llama-style token strings: specials, the 256 byte tokens, then ``▁w<i>`` words."""
    tokens = SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(vocab_size - len(tokens))]
    return tokens[:vocab_size]


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level fast tokenizer over :func:`vocab_tokens` (prompts are token ids; the
    onnxruntime-genai builder only needs AutoTokenizer to load)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(vocab_tokens(vocab_size))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
              "model_max_length": MAX_POSITIONS, "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))


def write_checkpoint(name: str, root: Path = CACHE_DIR, seed: int = 0) -> Path:
    """``root/name/hf``: the HF checkpoint of config ``name``, reused when its config.json
    matches (delete the folder to force a rewrite)."""
    from safetensors.numpy import save_file

    out = root / name / "hf"
    cfg = hf_config(name)
    cfg_path = out / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) == cfg and (
        out / "model.safetensors"
    ).exists():
        return out
    progress(f"writing random fp32 checkpoint {name} to {out}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(random_weights(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(out, cfg["vocab_size"])
    gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=1))
    cfg_path.write_text(json.dumps(cfg, indent=1))
    return out
