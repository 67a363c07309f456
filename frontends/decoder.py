"""The decoder layer, written once for both graph forms (docs/graph-forms.md).

The full form is HF-eager-shaped and decomposed into core ops; the inference form
is PaddleNLP's block-attention structure. Projections come from a `Family`
(frontends/llama.py), which knows the checkpoint's names, layout and fusions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llmc.compiler.builder import Builder
from llmc.compiler.ir import DType, Value

from .config import ModelConfig
from .naming import Naming

F32 = DType.f32


class Family(Protocol):
    """What the layer builders need from an architecture family."""

    cfg: ModelConfig
    names: Naming
    b: Builder
    decomposed: bool

    def linear(self, x: Value, name: str, out_features: int, in_features: int) -> Value: ...

    def qkv(self, x: Value, layer: int) -> tuple[Value, Value, Value]: ...

    def packed_linear(self, x: Value, names: list[str], outs: list[int],
                      in_features: int) -> Value: ...

    def qkv_names(self, layer: int) -> tuple[list[str], list[int]]: ...

    def packed_qkv(self, x: Value, layer: int) -> Value: ...

    def weight(self, name: str, shape: tuple[int, ...]) -> Value: ...


def const(b: Builder, value: float | list[float], shape: tuple[int, ...] = ()) -> Value:
    """An f32 constant (a scalar unless `shape` is given)."""
    vals = [float(v) for v in np.atleast_1d(value)]
    return b.constant(value=vals, shape=shape, dtype=F32)


# ---- full form ---------------------------------------------------------------------
def rms_norm(b: Builder, x: Value, w: Value, eps: float) -> Value:
    """HF LlamaRMSNorm, decomposed: x * rsqrt(mean(x*x) + eps) * w."""
    var = b.reduce_mean(b.mul(x, x), axes=[-1], keepdims=True)
    return b.mul(b.mul(x, b.rsqrt(b.add(var, const(b, eps)))), w)


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """Rope inverse frequencies, computed in f32 the way HF does."""
    exps = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exps)).astype(np.float32)


def rope_tables(b: Builder, cfg: ModelConfig, position_ids: Value) -> tuple[Value, Value]:
    """cos and sin tables [batch, seq, 1, head_dim], computed once per graph."""
    d = cfg.head_dim
    pos = b.cast(position_ids, dtype=F32)
    if cfg.rope_scaling_factor != 1.0:
        pos = b.div(pos, const(b, cfg.rope_scaling_factor))
    table = const(b, list(inv_freq(d, cfg.rope_theta)), (d // 2,))
    freqs = b.mul(b.unsqueeze(pos, axes=[2]), table)
    emb = b.concat(freqs, freqs, axis=-1)
    return (b.unsqueeze(b.cos(emb), axes=[2], name="rope_cos"),
            b.unsqueeze(b.sin(emb), axes=[2], name="rope_sin"))


def apply_rope(b: Builder, x: Value, cos: Value, sin: Value, head_dim: int) -> Value:
    """x * cos + rotate_half(x) * sin on [batch, seq, heads, head_dim]."""
    h = head_dim // 2
    lo = b.slice(x, axes=[3], starts=[0], ends=[h])
    hi = b.slice(x, axes=[3], starts=[h], ends=[head_dim])
    rot = b.concat(b.neg(hi), lo, axis=3)
    return b.add(b.mul(x, cos), b.mul(rot, sin))


def causal_mask(b: Builder, cfg: ModelConfig, position_ids: Value, input_ids: Value) -> Value:
    """Additive mask [1 or batch, 1 or heads, seq, seq]: -inf where a key comes after the query.

    As HF, causality is by sequence index (`cache_position`, 0..seq-1 from the input_ids
    shape), not by position id; ALiBi's bias still reads the position ids."""
    idx = b.seq_index(input_ids, axis=1)
    later = b.less(b.unsqueeze(idx, axes=[1]), b.unsqueeze(idx, axes=[0]))
    mask = b.unsqueeze(b.where(later, const(b, -math.inf), const(b, 0.0)), axes=[0, 1])
    if cfg.position == "alibi":
        mask = b.add(mask, b.alibi_bias(position_ids, num_heads=cfg.num_heads))
    return mask


def repeat_kv(b: Builder, x: Value, cfg: ModelConfig) -> Value:
    """[batch, kv_heads, seq, d] -> [batch, heads, seq, d] (GQA), as HF `repeat_kv`."""
    rep = cfg.num_heads // cfg.num_kv_heads
    if rep == 1:
        return x
    u = b.unsqueeze(x, axes=[2])
    return b.reshape(b.concat(*([u] * rep), axis=2), shape=[0, cfg.num_heads, -1, cfg.head_dim])


@dataclass
class FullInputs:
    """Values every layer of the full form reads: positions, mask, rope tables."""

    position_ids: Value
    mask: Value
    rope: tuple[Value, Value] | None  # cos/sin tables; None with ALiBi or fused rope


def self_attention(f: Family, x: Value, layer: int, ins: FullInputs) -> Value:
    """HF eager attention: projections, rope, scores, softmax, o_proj."""
    b, cfg = f.b, f.cfg
    d = cfg.head_dim
    q, k, v = _heads(f, x, layer)
    if ins.rope is not None:
        q, k = apply_rope(b, q, *ins.rope, d), apply_rope(b, k, *ins.rope, d)
    q, k, v = (b.transpose(t, perm=[0, 2, 1, 3]) for t in (q, k, v))
    k, v = repeat_kv(b, k, cfg), repeat_kv(b, v, cfg)
    scores = b.mul(b.matmul(q, k, transpose_b=True), const(b, 1.0 / math.sqrt(d)))
    probs = b.softmax(b.add(scores, ins.mask), axis=-1)
    o = b.transpose(b.matmul(probs, v), perm=[0, 2, 1, 3])
    return _o_proj(f, o, layer)


def fused_attention(f: Family, x: Value, layer: int, ins: FullInputs) -> Value:
    """The same attention on the core `rope` and `attention` ops."""
    b, cfg = f.b, f.cfg
    q, k, v = _heads(f, x, layer)
    if cfg.position == "rope":
        rope = dict(theta=cfg.rope_theta, scaling_factor=cfg.rope_scaling_factor, style="neox")
        q, k = b.rope(q, ins.position_ids, **rope), b.rope(k, ins.position_ids, **rope)
    return _o_proj(f, b.attention(q, k, v, ins.mask, causal=False), layer)


def _heads(f: Family, x: Value, layer: int) -> tuple[Value, Value, Value]:
    """q, k, v projections split into heads: [batch, seq, heads, head_dim].

    `f.qkv` may return more than three dims (fused qkv_proj: [batch, seq, kv, group, d]);
    `reshape {shape=[0, 0, heads, d]}` flattens those the same way."""
    cfg, d = f.cfg, f.cfg.head_dim
    q, k, v = f.qkv(x, layer)
    return (f.b.reshape(q, shape=[0, 0, cfg.num_heads, d]),
            f.b.reshape(k, shape=[0, 0, cfg.num_kv_heads, d]),
            f.b.reshape(v, shape=[0, 0, cfg.num_kv_heads, d]))


def _o_proj(f: Family, o: Value, layer: int) -> Value:
    h = f.cfg.hidden_size
    return f.linear(f.b.reshape(o, shape=[0, 0, h]), f.names.attn(layer, "o_proj"), h, h)


def mlp(f: Family, x: Value, layer: int) -> Value:
    """SwiGLU MLP: down(silu(gate(x)) * up(x))."""
    cfg, n = f.cfg, f.names
    h, i = cfg.hidden_size, cfg.intermediate_size
    gate = f.linear(x, n.mlp(layer, "gate_proj"), i, h)
    up = f.linear(x, n.mlp(layer, "up_proj"), i, h)
    return f.linear(f.b.mul(f.b.silu(gate), up), n.mlp(layer, "down_proj"), h, i)


def norm(f: Family, x: Value, name: str) -> Value:
    """RMSNorm with weight `name`: decomposed or the core `rms_norm` op, per the family."""
    w = f.weight(name, (f.cfg.hidden_size,))
    if f.decomposed:
        return rms_norm(f.b, x, w, f.cfg.rms_norm_eps)
    return f.b.rms_norm(x, w, epsilon=f.cfg.rms_norm_eps)


def decoder_layer(f: Family, x: Value, layer: int, ins: FullInputs) -> Value:
    """Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(.))."""
    attention = self_attention if f.decomposed else fused_attention
    x = f.b.add(x, attention(f, norm(f, x, f.names.input_norm(layer)), layer, ins))
    return f.b.add(x, mlp(f, norm(f, x, f.names.post_norm(layer)), layer))


# ---- inference form --------------------------------------------------------------------
class Batch:
    """The inference form's per-step values shared by every layer."""

    def __init__(self, seq_lens_encoder: Value, seq_lens_decoder: Value, seq_lens_this_time: Value,
                 padding_offset: Value, cum_offsets: Value, cu_seqlens_q: Value,
                 cu_seqlens_k: Value, block_tables: Value, max_enc_len: Value, max_dec_len: Value):
        self.attn_operands = (seq_lens_encoder, seq_lens_decoder, seq_lens_this_time,
                              padding_offset, cum_offsets, cu_seqlens_q, cu_seqlens_k,
                              block_tables, max_enc_len, max_dec_len)


def inference_layer(f: Family, x: Value, residual: Value | None, layer: int, batch: Batch,
                    caches: tuple[Value, Value], attn_attrs: dict
                    ) -> tuple[Value, Value, Value, Value]:
    """One block-attention layer; returns (mlp out, residual, new cache_k, new cache_v).

    The residual add of the previous layer is folded into this layer's first norm,
    as PaddleNLP's fused transformer does.
    """
    b, cfg, n = f.b, f.cfg, f.names
    hid = (cfg.hidden_size,)
    eps = cfg.rms_norm_eps
    w_in = f.weight(n.input_norm(layer), hid)
    h, residual = b.fused_rms_norm(x, w_in, residual, epsilon=eps)
    qkv = f.packed_qkv(h, layer)
    attn, ck, cv = b.block_multihead_attention(qkv, *caches, *batch.attn_operands, **attn_attrs)
    o = f.linear(attn, n.attn(layer, "o_proj"), cfg.hidden_size, cfg.hidden_size)
    h, residual = b.fused_rms_norm(o, f.weight(n.post_norm(layer), hid), residual, epsilon=eps)
    i = cfg.intermediate_size
    ffn1 = f.packed_linear(h, [n.mlp(layer, "gate_proj"), n.mlp(layer, "up_proj")], [i, i],
                           cfg.hidden_size)
    act = b.fused_bias_act(ffn1, act_method="swiglu")
    return f.linear(act, n.mlp(layer, "down_proj"), cfg.hidden_size, i), residual, ck, cv
