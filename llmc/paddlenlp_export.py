"""Weights in PaddleNLP's `model_state.pdparams` layout, for `llmc train --save-format`.

PaddleNLP's `LlamaForCausalLM` state dict (what its `save_pretrained` writes, and what
frontends/paddle_ckpt.py reads): `llama.`-prefixed names, Linear weights `[in, out]`, an
untied `lm_head.weight` `[hidden, vocab]`, a tied head stored by the embedding alone.
Baichuan2 goes the way PaddleNLP converts it: `W_pack` split into q/k/v, the NormHead's rows
stored already L2-normalised (a plain head then computes the same logits), ALiBi as
`"alibi": true`. A checkpoint that already is PaddleNLP's (`llama.` names) keeps its tensors
as they are (a fused `qkv_proj` included). The file is written by `paddle.save` of
`{name: paddle.Tensor}`, as PaddleNLP does.

    state = to_paddlenlp(weights, cfg, naming)         # by graph name -> PaddleNLP's
    weights = from_paddlenlp(state, cfg, naming)       # back (resume from such a checkpoint)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.frontends.config import ModelConfig
from llmc.frontends.naming import PADDLE, Naming

PDPARAMS_FILE = "model_state.pdparams"
_LINEAR = re.compile(r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$")


def is_paddlenlp(naming: Naming) -> bool:
    """Whether a checkpoint with this naming is already in PaddleNLP's layout."""
    return naming.prefix == PADDLE.prefix


def invertible(cfg: ModelConfig, naming: Naming) -> bool:
    """Whether `from_paddlenlp` gets the graph's weights back exactly (not so for a NormHead,
    whose rows are stored normalised)."""
    return is_paddlenlp(naming) or not cfg.norm_head


def _paddle_name(name: str, naming: Naming) -> str:
    return PADDLE.prefix + name[len(naming.prefix):] if name.startswith(naming.prefix) else name


def _normalised_rows(w: np.ndarray) -> np.ndarray:
    """NormHead's rows: w / max(||row||, 1e-12) (the graph's l2_normalize)."""
    norm = np.sqrt(np.sum(w.astype(np.float32) ** 2, axis=1, keepdims=True))
    return (w / np.maximum(norm, 1e-12)).astype(w.dtype)


def to_paddlenlp(weights: Mapping[str, np.ndarray], cfg: ModelConfig,
                 naming: Naming) -> dict[str, np.ndarray]:
    """The graph's weights (by the source checkpoint's names) as PaddleNLP's state dict."""
    if is_paddlenlp(naming):
        return {n: np.ascontiguousarray(w) for n, w in weights.items()}
    out: dict[str, np.ndarray] = {}
    h = cfg.hidden_size
    for name, w in weights.items():
        target = _paddle_name(name, naming)
        if name.endswith("self_attn.W_pack.weight"):
            stem = target[: -len("W_pack.weight")]
            for part, rows in zip("qkv", np.split(np.asarray(w), [h, 2 * h])):
                out[f"{stem}{part}_proj.weight"] = np.ascontiguousarray(rows.T)
        elif _LINEAR.search(name):
            out[target] = np.ascontiguousarray(np.asarray(w).T)
        elif name == naming.lm_head:
            head = _normalised_rows(np.asarray(w)) if cfg.norm_head else np.asarray(w)
            out[PADDLE.lm_head] = np.ascontiguousarray(head.T)
        else:
            out[target] = np.ascontiguousarray(w)
    return out


def from_paddlenlp(state: Mapping[str, np.ndarray], cfg: ModelConfig, naming: Naming,
                   names: list[str]) -> dict[str, np.ndarray]:
    """Graph weights `names` (the source checkpoint's names) back from `to_paddlenlp`'s
    state; a NormHead source cannot come back (its rows were normalised)."""
    if not invertible(cfg, naming):
        raise LlmcError("a PaddleNLP-layout checkpoint of a NormHead model (Baichuan2) holds "
                        "the head's rows normalised; it cannot give the trained weights back")
    try:
        return _graph_weights(state, naming, names)
    except KeyError as e:
        raise LlmcError(f"{PDPARAMS_FILE}: tensor {e} is missing") from None


def _graph_weights(state: Mapping[str, np.ndarray], naming: Naming,
                   names: list[str]) -> dict[str, np.ndarray]:
    if is_paddlenlp(naming):
        return {n: np.asarray(state[n]) for n in names}
    out = {}
    for name in names:
        target = _paddle_name(name, naming)
        if name.endswith("self_attn.W_pack.weight"):
            stem = target[: -len("W_pack.weight")]
            out[name] = np.concatenate([np.asarray(state[f"{stem}{p}_proj.weight"]).T
                                        for p in "qkv"])
        elif _LINEAR.search(name) or name == naming.lm_head:
            out[name] = np.ascontiguousarray(np.asarray(state[PADDLE.lm_head if name ==
                                                              naming.lm_head else target]).T)
        else:
            out[name] = np.asarray(state[target])
    return out


def paddlenlp_config(cfg: ModelConfig, naming: Naming) -> dict:
    """A PaddleNLP `LlamaForCausalLM` config.json for the model (Baichuan2 converted)."""
    eos = list(cfg.eos_token_ids)
    out = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "num_hidden_layers": cfg.num_layers, "rms_norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings, "rope_theta": cfg.rope_theta,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": cfg.pad_token_id, "dtype": "float32",
    }
    if cfg.position == "alibi":
        out["alibi"] = True
    if cfg.rope_scaling_factor != 1.0:
        out["rope_scaling_type"], out["rope_scaling_factor"] = "linear", cfg.rope_scaling_factor
    if naming.fused_qkv:
        out["fuse_attention_qkv"] = True
    return out


def save_pdparams(path: Path, state: Mapping[str, np.ndarray]) -> None:
    """`paddle.save` of the state as `{name: paddle.Tensor}`, PaddleNLP's own file format."""
    from llmc.runtime.paddle import import_paddle

    paddle = import_paddle()
    paddle.save({n: paddle.to_tensor(np.ascontiguousarray(w)) for n, w in state.items()},
                str(path))


def load_pdparams(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a `.pdparams` file, read by llmc's own restricted reader (no pickle
    code runs, no Paddle import)."""
    from llmc.frontends.paddle_ckpt import read_pdparams_file

    return {n: np.array(e.load()) for n, e in read_pdparams_file(Path(path)).items()}
