"""Tiny fixture weights: one deterministic random weight set per ``(arch, seed)`` and its
PaddleNLP form (``llama.*`` names, ``[in, out]`` Linear layout, fused qkv, TP splits).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from .fixture_configs import BAICHUAN_ARCHES, dims

def hf_param_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of ``arch`` in its HF checkpoint (Linear = ``[out, in]``)."""
    d = dims(arch)
    h, inter, vocab = d["hidden"], d["inter"], d["vocab"]
    head_dim = h // d["heads"]
    kv = d["kv_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(d["layers"]):
        p = f"model.layers.{i}."
        if arch in BAICHUAN_ARCHES:
            shapes[p + "self_attn.W_pack.weight"] = (3 * h, h)
        else:
            shapes[p + "self_attn.q_proj.weight"] = (h, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab, h)
    return shapes


def _init_tensor(name: str, shape: tuple[int, ...], seed: int, arch: str) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if len(shape) == 1:
        out = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith("embed_tokens.weight"):
        out = rng.standard_normal(shape)
    else:
        out = rng.standard_normal(shape) / math.sqrt(shape[1])
        if name == "lm_head.weight" and arch in BAICHUAN_ARCHES:
            out *= rng.uniform(0.5, 2.0, size=(shape[0], 1))
    return out.astype(np.float32)


def random_weights(arch: str, seed: int = 0, *, tied: bool = False,
                   hidden_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights of ``arch`` in HF naming and layout.

    Norm weights are ``1 + 0.1 N(0,1)``, embeddings ``N(0,1)``, Linear weights
    ``N(0, 1/fan_in)``.  Each tensor has its own generator seeded by ``(seed, crc32(name))``.
    Baichuan ``lm_head`` rows get random norms in [0.5, 2] (NormHead stores them
    un-normalised), so forgetting the normalisation changes the logits.

    ``tied``: ``lm_head.weight`` is a copy of the embedding (a tied checkpoint that still
    stores both names, as PaddleNLP and older torch saves do).  ``hidden_scale`` scales the
    embedding and the two projections that write the residual stream (``o_proj``,
    ``down_proj``), so the hidden states entering every RMSNorm have that size instead of
    ~1: at 1e-2 their mean square (1e-4) is comparable to eps (1e-5), where
    ``sqrt(ms + eps)`` and ``sqrt(ms) + eps`` differ by ~5%.
    """
    out = {n: _init_tensor(n, s, seed, arch) for n, s in hf_param_shapes(arch).items()}
    if tied:
        if arch in BAICHUAN_ARCHES:
            raise ValueError(f"{arch}: Baichuan2's NormHead is never tied to the embedding")
        out["lm_head.weight"] = out["model.embed_tokens.weight"].copy()
    if hidden_scale != 1.0:
        for name, w in out.items():
            if name.endswith(_RESIDUAL_WRITERS):
                out[name] = (w * np.float32(hidden_scale)).astype(np.float32)
    return out


_RESIDUAL_WRITERS = ("embed_tokens.weight", "o_proj.weight", "down_proj.weight")


def normalize_rows(w: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise the rows of ``w`` like ``torch.nn.functional.normalize(w, dim=1)``."""
    norms = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=1, keepdims=True))
    return (w / np.maximum(norms, eps)).astype(w.dtype)


def baichuan_to_llama_weights(weights: dict[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    """HF Baichuan weights -> equivalent HF Llama weights (split W_pack, normalise lm_head)."""
    h = hidden
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if name.endswith("self_attn.W_pack.weight"):
            prefix = name[: -len("W_pack.weight")]
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{prefix}{proj}.weight"] = np.ascontiguousarray(w[i * h : (i + 1) * h])
        elif name == "lm_head.weight":
            out[name] = normalize_rows(w)
        else:
            out[name] = w
    return out


def llama_weights(arch: str, seed: int = 0, **options: Any) -> dict[str, np.ndarray]:
    """HF Llama-layout weights of ``arch`` (Baichuan via :func:`baichuan_to_llama_weights`);
    ``options`` as :func:`random_weights`."""
    weights = random_weights(arch, seed, **options)
    if arch not in BAICHUAN_ARCHES:
        return weights
    return baichuan_to_llama_weights(weights, dims(arch)["hidden"])


_PADDLE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def paddlenlp_weights(arch: str, seed: int = 0, fuse_qkv: bool = False,
                      **options: Any) -> dict[str, np.ndarray]:
    """PaddleNLP ``LlamaForCausalLM`` state dict: ``llama.*`` names, Linear ``[in, out]``.

    ``lm_head.weight`` is ``[hidden, vocab]`` (untied ``LlamaLMHead``), or ``[vocab, hidden]``
    with ``tied=True`` (the tied head keeps the embedding's layout, ``transpose_y``).
    Baichuan2 is stored converted: q/k/v split from ``W_pack`` and ``lm_head`` rows already
    L2-normalised.
    With ``fuse_qkv`` q/k/v become ``qkv_proj`` ``[hidden, (heads + 2 kv_heads) * head_dim]``,
    columns grouped per KV head as ``[q of the group's query heads, k, v]``.
    """
    out: dict[str, np.ndarray] = {}
    tied = options.get("tied", False)
    for name, w in llama_weights(arch, seed, **options).items():
        pname = "llama." + name[len("model.") :] if name.startswith("model.") else name
        is_linear = any(f".{p}." in name for p in _PADDLE_LINEARS) or (
            name == "lm_head.weight" and not tied)
        out[pname] = np.ascontiguousarray(w.T) if is_linear else w
    if fuse_qkv:
        _fuse_qkv(out, arch)
    return out


def _fuse_qkv(state: dict[str, np.ndarray], arch: str) -> None:
    d = dims(arch)
    head_dim = d["hidden"] // d["heads"]
    group = d["heads"] // d["kv_heads"]
    for i in range(d["layers"]):
        p = f"llama.layers.{i}.self_attn."
        q = np.split(state.pop(p + "q_proj.weight"), d["heads"], axis=1)
        k = np.split(state.pop(p + "k_proj.weight"), d["kv_heads"], axis=1)
        v = np.split(state.pop(p + "v_proj.weight"), d["kv_heads"], axis=1)
        parts = []
        for g in range(d["kv_heads"]):
            parts += q[g * group : (g + 1) * group] + [k[g], v[g]]
        assert all(x.shape[1] == head_dim for x in parts)
        state[p + "qkv_proj.weight"] = np.concatenate(parts, axis=1)


def paddlenlp_tp_split_axis(name: str, arch: str, tp: int, tied: bool = False) -> int | None:
    """Axis along which PaddleNLP's Llama tensor parallelism splits ``name`` (None: replicated).

    From ``LlamaPretrainedModel._get_tensor_parallel_mappings`` and ``normal_fuse_split_tp``:
    column-parallel weights (q/k/v/qkv/gate/up and the untied ``lm_head``) split the last
    (output) axis, row-parallel weights (o/down and the ``VocabParallelEmbedding``) split
    axis 0; k/v only when ``num_key_value_heads % tp == 0``; embedding and ``lm_head`` only
    when ``vocab_size % tp == 0``; a tied ``lm_head`` (``[vocab, hidden]``) splits axis 0.
    1-D norm weights are replicated.
    """
    d = dims(arch)
    vocab_ok = d["vocab"] % tp == 0
    if name.endswith("embed_tokens.weight"):
        return 0 if vocab_ok else None
    if name == "lm_head.weight":
        return (0 if tied else 1) if vocab_ok else None
    if any(f".{p}." in name for p in ("k_proj", "v_proj")):
        return 1 if d["kv_heads"] % tp == 0 else None
    if any(f".{p}." in name for p in ("q_proj", "qkv_proj", "gate_proj", "up_proj")):
        return 1
    if any(f".{p}." in name for p in ("o_proj", "down_proj")):
        return 0
    return None


def paddlenlp_tp_split(
    state: dict[str, np.ndarray], arch: str, tp: int, tied: bool = False
) -> list[dict[str, np.ndarray]]:
    """Split a PaddleNLP state dict into ``tp`` rank state dicts (contiguous equal chunks)."""
    ranks: list[dict[str, np.ndarray]] = [{} for _ in range(tp)]
    for name, w in state.items():
        axis = paddlenlp_tp_split_axis(name, arch, tp, tied)
        chunks = [w] * tp if axis is None else np.split(w, tp, axis=axis)
        for rank, chunk in enumerate(chunks):
            ranks[rank][name] = np.ascontiguousarray(chunk)
    return ranks
