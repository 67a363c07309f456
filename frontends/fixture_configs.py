"""Tiny fixture configs: the sizes of every fixture architecture and the ``config.json``
each format writes (HF hub, PaddleNLP, PaddleFormers), plus ``generation_config.json``.

See frontends/fixtures.py for the architectures and formats these describe.
"""

from __future__ import annotations

from typing import Any

ARCHES = [
    "llama",
    "llama_gqa",
    "llama_rope_scaling",
    "baichuan2_7b",
    "baichuan2_13b",
    "chinese_llama2",
]
FORMATS = ["hf", "hf-numpy", "hf-sharded", "paddle", "paddle-tp2", "paddle-fused", "paddleformers"]

LLAMA_ARCHES = ("llama", "llama_gqa", "llama_rope_scaling", "chinese_llama2")
BAICHUAN_ARCHES = ("baichuan2_7b", "baichuan2_13b")

PADDLEFORMERS_VERSION = "1.2.0"
BAICHUAN_USER_TOKEN_ID = 195
BAICHUAN_ASSISTANT_TOKEN_ID = 196

_DIMS: dict[str, dict[str, Any]] = {
    "llama": dict(
        hidden=64, layers=2, heads=4, kv_heads=4, inter=176, vocab=256, eps=1e-5, theta=10000.0
    ),
    "llama_gqa": dict(
        hidden=64, layers=3, heads=8, kv_heads=2, inter=128, vocab=256, eps=1e-5, theta=500000.0
    ),
    "llama_rope_scaling": dict(
        hidden=64, layers=2, heads=4, kv_heads=4, inter=176, vocab=256, eps=1e-5, theta=10000.0
    ),
    "baichuan2_7b": dict(
        hidden=64, layers=2, heads=4, kv_heads=4, inter=176, vocab=256, eps=1e-6, theta=10000.0
    ),
    "baichuan2_13b": dict(
        hidden=96, layers=2, heads=6, kv_heads=6, inter=256, vocab=256, eps=1e-6, theta=None
    ),
    "chinese_llama2": dict(
        hidden=16, layers=2, heads=2, kv_heads=2, inter=48, vocab=55296, eps=1e-5, theta=10000.0
    ),
}
MAX_POSITIONS = 512
_ROPE_SCALING = {"type": "linear", "factor": 2.0}


# --------------------------------------------------------------------------- configs


def dims(arch: str) -> dict[str, Any]:
    """The sizes of ``arch``: hidden, layers, heads, kv_heads, inter, vocab, eps, theta."""
    if arch not in _DIMS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")
    return _DIMS[arch]


def tiny_config(arch: str, tied: bool = False) -> dict[str, Any]:
    """Return the ``config.json`` dict of ``arch`` in its real (hub) format, tiny sizes.

    ``tied`` sets ``tie_word_embeddings`` (llama family only)."""
    d = dims(arch)
    if arch in BAICHUAN_ARCHES:
        _no_tied_baichuan(arch, tied)
        return _baichuan_config(arch, d)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "max_position_embeddings": MAX_POSITIONS,
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "num_key_value_heads": d["kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": d["eps"],
        "rope_scaling": dict(_ROPE_SCALING) if arch == "llama_rope_scaling" else None,
        "rope_theta": d["theta"],
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
    }
    if arch == "llama":
        del cfg["pad_token_id"]
    return cfg


def _no_tied_baichuan(arch: str, tied: bool) -> None:
    if tied and arch in BAICHUAN_ARCHES:
        raise ValueError(f"{arch}: Baichuan2's NormHead is never tied to the embedding")


def _baichuan_config(arch: str, d: dict[str, Any]) -> dict[str, Any]:
    cfg = {
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "tokenizer_class": "BaichuanTokenizer",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "model_max_length": MAX_POSITIONS,
        "model_type": "baichuan",
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "rms_norm_eps": d["eps"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
        "z_loss_weight": 0,
    }
    if arch == "baichuan2_7b":
        cfg["max_position_embeddings"] = MAX_POSITIONS
    else:
        cfg["gradient_checkpointing"] = False
    return dict(sorted(cfg.items()))


def uses_alibi(config: dict[str, Any]) -> bool:
    """Whether a config (HF Baichuan, PaddleNLP or PaddleFormers form) uses ALiBi, not RoPE."""
    if config.get("alibi"):
        return True
    if config.get("model_type") == "baichuan":
        return "max_position_embeddings" not in config
    return False


def paddle_config(arch: str, tp: int = 1, fuse_qkv: bool = False,
                  tied: bool = False) -> dict[str, Any]:
    """PaddleNLP ``config.json``: Llama architecture, Baichuan2 in PaddleNLP's converted form."""
    d = dims(arch)
    _no_tied_baichuan(arch, tied)
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "tokenizer_class": "LlamaTokenizer",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "gradient_checkpointing": False,
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "llama",
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "pad_token_id": 0,
        "rms_norm_eps": d["eps"],
        "tie_word_embeddings": tied,
        "dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
    }
    if arch in LLAMA_ARCHES:
        cfg["num_key_value_heads"] = d["kv_heads"]
        cfg["rope_theta"] = d["theta"]
    if arch == "llama_rope_scaling":
        cfg["rope_scaling_type"] = _ROPE_SCALING["type"]
        cfg["rope_scaling_factor"] = _ROPE_SCALING["factor"]
    if uses_alibi(tiny_config(arch)):
        cfg["alibi"] = True
    if fuse_qkv:
        cfg["fuse_attention_qkv"] = True
    if tp > 1:
        cfg["tensor_parallel_degree"] = tp
    return cfg


def paddleformers_config(arch: str) -> dict[str, Any]:
    """PaddleFormers 1.x ``config.json`` as written by ``LlamaForCausalLM.save_pretrained``.

    Baichuan2 is written in its Llama-converted form (PaddleFormers 1.2 has no Baichuan
    model); the 13B variant carries PaddleNLP's ``"alibi": true`` marker, which PaddleFormers
    itself does not implement.
    """
    d = dims(arch)
    theta = d["theta"] or 10000.0
    rope = {"rope_theta": theta, "rope_type": "default"}
    if arch == "llama_rope_scaling":
        rope = {
            "factor": _ROPE_SCALING["factor"],
            "rope_theta": theta,
            "rope_type": "linear",
            "type": "linear",
        }
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": d["hidden"] // d["heads"],
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "max_position_embeddings": MAX_POSITIONS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "num_key_value_heads": d["kv_heads"],
        "pad_token_id": 0,
        "paddleformers_version": PADDLEFORMERS_VERSION,
        "rms_norm_eps": d["eps"],
        "rope_parameters": rope,
        "rope_scaling": dict(rope) if arch == "llama_rope_scaling" else None,
        "rope_theta": theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
    }
    if arch == "baichuan2_13b":
        cfg["alibi"] = True
    return cfg



def generation_config(arch: str) -> dict[str, Any]:
    """``generation_config.json`` of ``arch`` (Baichuan2 adds its chat role token ids)."""
    cfg: dict[str, Any] = {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "do_sample": False,
    }
    if arch in BAICHUAN_ARCHES:
        cfg.update(
            user_token_id=BAICHUAN_USER_TOKEN_ID,
            assistant_token_id=BAICHUAN_ASSISTANT_TOKEN_ID,
            max_new_tokens=64,
            repetition_penalty=1.0,
        )
    return cfg

