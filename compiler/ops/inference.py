"""Paddle inference ops: the packed-token, paged-KV-cache graph PaddleNLP exports.

Semantics follow PaddleNLP's custom ops (`get_padding_offset`, `rebuild_padding_v2`)
and Paddle's incubate fused ops (`blha_get_max_len`, `fused_rms_norm`,
`block_multihead_attention`, `fused_bias_act`, `fused_bias_residual_layernorm`).
Tokens of a batch are packed without padding: sequence `b` owns rows
`cu_seqlens_q[b] : cu_seqlens_q[b + 1]`. Caches are functional: the attention op
returns updated copies instead of writing in place.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import DType, TensorType
from .arith import gelu, layer_norm, rms_norm
from .nn import alibi_slopes, rope_cos_sin, rotate
from .registry import AttrSpec, OpError, defop
from .shapes import expect_dim, expect_float, expect_int, expect_rank

I32 = DType.i32


def _i32(shape) -> TensorType:
    return TensorType(I32, tuple(shape))


def _plus_one(d):
    return d + 1 if isinstance(d, int) else "?"


# ---- packing ----------------------------------------------------------------------
def _gpo_infer(ids: TensorType, cum_offsets: TensorType, token_num: TensorType,
               seq_lens: TensorType):
    op = "get_padding_offset"
    expect_rank(op, "input_ids", ids, 2)
    for what, t in (("input_ids", ids), ("cum_offsets", cum_offsets),
                    ("token_num", token_num), ("seq_lens", seq_lens)):
        expect_int(op, what, t)
    expect_dim(op, "cum_offsets length", cum_offsets.shape[0], ids.shape[0])
    expect_dim(op, "seq_lens length", seq_lens.shape[0], ids.shape[0])
    b = ids.shape[0]
    return (ids.with_shape(("tokens",)), _i32((b,)), _i32(("tokens",)),
            _i32((_plus_one(b),)), _i32((_plus_one(b),)))


@defop("get_padding_offset", ("input_ids", "cum_offsets", "token_num", "seq_lens"),
       outputs=("x_remove_padding", "cum_offsets_out", "padding_offset", "cu_seqlens_q",
                "cu_seqlens_k"),
       infer=_gpo_infer)
def get_padding_offset(ids, cum_offsets, token_num, seq_lens):
    """Pack the first seq_lens[b] ids of each row of input_ids [batch, max_len].

    cum_offsets[b] is the padding up to and including row b; cum_offsets_out[b] the
    padding before row b, which padding_offset repeats for each of b's tokens.
    """
    bsz, max_len = ids.shape
    lens = seq_lens.reshape(-1).astype(np.int64)
    before = np.concatenate([[0], cum_offsets.reshape(-1)[:-1]]).astype(np.int32)
    n = int(np.asarray(token_num).reshape(-1)[0])
    if n != int(lens.sum()):
        raise ValueError(f"token_num {n} != sum(seq_lens) {int(lens.sum())}")
    rows = np.repeat(np.arange(bsz), lens)
    cols = np.concatenate([np.arange(k) for k in lens]) if bsz else np.zeros(0, np.int64)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    return (ids[rows, cols.astype(np.int64)], before, before[rows].astype(np.int32), cu, cu.copy())


def _rebuild_infer(h: TensorType, cum_offsets: TensorType, dec: TensorType, enc: TensorType,
                   max_len: TensorType):
    expect_rank("rebuild_padding", "h", h, 2)
    for what, t in (("cum_offsets", cum_offsets), ("seq_lens_decoder", dec),
                    ("seq_lens_encoder", enc), ("max_len", max_len)):
        expect_int("rebuild_padding", what, t)
    return h.with_shape((cum_offsets.shape[0], h.shape[1]))


@defop("rebuild_padding", ("h", "cum_offsets", "seq_lens_decoder", "seq_lens_encoder", "max_len"),
       infer=_rebuild_infer)
def rebuild_padding(h, cum_offsets, dec, enc, max_len):
    """One row per sequence of packed h [tokens, hidden]: the last prompt token for a
    prefill (decoder length 0), the first token for a decode, zeros for a stopped one.

    `max_len` is input_ids' padded width (PaddleNLP's `max_input_length` attribute).
    """
    bsz = cum_offsets.shape[0]
    width = int(np.asarray(max_len).reshape(-1)[0])
    out = np.zeros((bsz, h.shape[1]), dtype=h.dtype)
    for b in range(bsz):
        if dec[b] == 0 and enc[b] == 0:
            continue
        seq_id = enc[b] - 1 if dec[b] == 0 else 0
        out[b] = h[b * width - cum_offsets[b] + seq_id]
    return out


def _max_len_infer(enc: TensorType, dec: TensorType, batch: TensorType):
    for what, t in (("seq_lens_encoder", enc), ("seq_lens_decoder", dec)):
        expect_int("blha_get_max_len", what, t)
    return _i32((1,)), _i32((1,))


@defop("blha_get_max_len", ("seq_lens_encoder", "seq_lens_decoder", "batch_size"),
       outputs=("max_enc_len_this_time", "max_dec_len_this_time"), infer=_max_len_infer)
def blha_get_max_len(enc, dec, batch):
    """Max encoder and decoder lengths over the first len(batch_size) sequences."""
    n = batch.shape[0]
    return (np.asarray([enc[:n].max(initial=0)], np.int32),
            np.asarray([dec[:n].max(initial=0)], np.int32))


# ---- norms and activations ----------------------------------------------------------
def _frn_infer(x: TensorType, w: TensorType, residual: TensorType | None = None, epsilon=1e-6):
    expect_float("fused_rms_norm", x)
    expect_dim("fused_rms_norm", "weight length", w.shape[-1], x.shape[-1])
    if residual is not None:
        expect_dim("fused_rms_norm", "residual width", residual.shape[-1], x.shape[-1])
    return x, x


@defop("fused_rms_norm", ("x", "w", "residual?"), outputs=("out", "residual_out"),
       attrs={"epsilon": AttrSpec("float", 1e-6)}, infer=_frn_infer)
def fused_rms_norm(x, w, residual=None, epsilon=1e-6):
    """residual_out = x + residual (x alone without one); out = rms_norm(residual_out) * w."""
    r = x if residual is None else (x + residual).astype(x.dtype)
    return rms_norm(r, w, epsilon), r


def _fbrl_infer(x: TensorType, residual: TensorType, norm_weight: TensorType | None = None,
                norm_bias: TensorType | None = None, epsilon=1e-5, residual_alpha=1.0):
    expect_float("fused_bias_residual_layernorm", x)
    expect_dim("fused_bias_residual_layernorm", "residual width", residual.shape[-1], x.shape[-1])
    return x, x


@defop("fused_bias_residual_layernorm", ("x", "residual", "norm_weight?", "norm_bias?"),
       outputs=("out", "residual_out"),
       attrs={"epsilon": AttrSpec("float", 1e-5), "residual_alpha": AttrSpec("float", 1.0)},
       infer=_fbrl_infer)
def fused_bias_residual_layernorm(x, residual, norm_weight=None, norm_bias=None, epsilon=1e-5,
                                  residual_alpha=1.0):
    """residual_out = x + alpha * residual; out = layer_norm(residual_out) when a norm
    weight is given, else residual_out itself (Paddle's plain residual-add mode)."""
    r = (x + np.float32(residual_alpha) * residual).astype(x.dtype)
    if norm_weight is None:
        return r, r
    return layer_norm(r, norm_weight, norm_bias, epsilon=epsilon), r


ACTS = ("swiglu", "geglu", "gelu", "silu", "relu")


def _fba_infer(x: TensorType, bias: TensorType | None = None, act_method="gelu"):
    expect_float("fused_bias_act", x)
    if act_method not in ACTS:
        raise OpError(f"op 'fused_bias_act': act_method must be one of {', '.join(ACTS)}, "
                      f"got '{act_method}'")
    if bias is not None:
        expect_dim("fused_bias_act", "bias length", bias.shape[-1], x.shape[-1])
    last = x.shape[-1]
    if act_method in ("swiglu", "geglu"):
        if isinstance(last, int) and last % 2:
            raise OpError(f"op 'fused_bias_act': {act_method} needs an even last dim, got {x}")
        last = last // 2 if isinstance(last, int) else "?"
    return x.with_shape(x.shape[:-1] + (last,))


@defop("fused_bias_act", ("x", "bias?"), attrs={"act_method": AttrSpec("str", "gelu")},
       infer=_fba_infer)
def fused_bias_act(x, bias=None, act_method="gelu"):
    """act(x + bias); the gated ones (swiglu, geglu) split x into [gate | up] halves."""
    y = (x + bias if bias is not None else x).astype(np.float32)
    if act_method in ("swiglu", "geglu"):
        gate, up = np.split(y, 2, axis=-1)
        act = gate / (1.0 + np.exp(-gate)) if act_method == "swiglu" else gelu(gate, "none")
        return (act * up).astype(x.dtype)
    if act_method == "silu":
        return (y / (1.0 + np.exp(-y))).astype(x.dtype)
    if act_method == "relu":
        return np.maximum(y, 0).astype(x.dtype)
    return gelu(y, "none").astype(x.dtype)


# ---- paged attention -----------------------------------------------------------------
BLHA_INPUTS = ("qkv", "cache_k", "cache_v", "seq_lens_encoder", "seq_lens_decoder",
               "seq_lens_this_time", "padding_offset", "cum_offsets", "cu_seqlens_q",
               "cu_seqlens_k", "block_tables", "max_enc_len_this_time", "max_dec_len_this_time",
               "alibi_slopes?")
BLHA_ATTRS = {
    "num_heads": AttrSpec("int"), "kv_heads": AttrSpec("int"), "head_dim": AttrSpec("int"),
    "block_size": AttrSpec("int"), "max_seq_len": AttrSpec("int"),
    "rope_theta": AttrSpec("float", 10000.0), "rope_scaling_factor": AttrSpec("float", 1.0),
    "use_neox_style": AttrSpec("bool", True), "use_alibi": AttrSpec("bool", False),
}


def _blha_infer(qkv: TensorType, cache_k: TensorType, cache_v: TensorType, *rest: TensorType,
                num_heads, kv_heads, head_dim, block_size, use_alibi, **_):
    op = "block_multihead_attention"
    if num_heads < 1 or kv_heads < 1 or num_heads % kv_heads:
        raise OpError(f"op '{op}': num_heads {num_heads} is not a multiple of kv_heads {kv_heads}")
    expect_rank(op, "qkv", qkv, 2)
    expect_float(op, qkv)
    expect_dim(op, "qkv width", qkv.shape[1], (num_heads + 2 * kv_heads) * head_dim)
    for what, c in (("cache_k", cache_k), ("cache_v", cache_v)):
        expect_rank(op, what, c, 4)
        expect_dim(op, f"{what} heads", c.shape[1], kv_heads)
        expect_dim(op, f"{what} block size", c.shape[2], block_size)
        expect_dim(op, f"{what} head dim", c.shape[3], head_dim)
    batch, slopes = rest[:10], rest[10:]
    expect_rank(op, "block_tables", batch[7], 2)
    for name, t in zip(BLHA_INPUTS[3:], batch):
        expect_int(op, name, t)
    if slopes:
        _check_slopes(op, slopes[0], num_heads, use_alibi)
    return qkv.with_shape((qkv.shape[0], num_heads * head_dim)), cache_k, cache_v


def _check_slopes(op: str, slopes: TensorType, num_heads: int, use_alibi: bool) -> None:
    if not use_alibi:
        raise OpError(f"op '{op}': an alibi_slopes operand needs use_alibi = true")
    expect_rank(op, "alibi_slopes", slopes, 1)
    expect_float(op, slopes)
    expect_dim(op, "alibi_slopes length", slopes.shape[0], num_heads)


@defop("block_multihead_attention", BLHA_INPUTS, outputs=("out", "cache_k_out", "cache_v_out"),
       attrs=BLHA_ATTRS, infer=_blha_infer)
def block_multihead_attention(qkv, cache_k, cache_v, enc, dec, this_time, padding_offset,
                              cum_offsets, cu_q, cu_k, block_tables, max_enc, max_dec,
                              slopes=None, *,
                              num_heads, kv_heads, head_dim, block_size, max_seq_len, rope_theta,
                              rope_scaling_factor, use_neox_style, use_alibi):
    """Causal attention over a paged KV cache for packed tokens [tokens, (H + 2 KV) * D].

    A prefill sequence (seq_lens_encoder > 0) holds positions 0..n-1; a decode one the
    single position seq_lens_decoder. Rope (or ALiBi) is applied to the new q/k, the
    new k/v are written to slot pos % block_size of block block_tables[b, pos //
    block_size], and each query attends to the cache positions up to its own.

    ALiBi slopes are those of a model of num_heads heads, or, given `alibi_slopes`
    [num_heads], those values: a tensor-parallel rank's heads keep the slopes they have in
    the whole model (PaddleNLP's inference models pass their slopes as a tensor too).
    """
    ck, cv = cache_k.copy(), cache_v.copy()
    q_all, k_all, v_all = _split_heads(qkv, num_heads, kv_heads, head_dim)
    out = np.zeros((qkv.shape[0], num_heads, head_dim), dtype=qkv.dtype)
    if not use_alibi:
        slopes = None
    else:
        slopes = alibi_slopes(num_heads) if slopes is None else slopes.astype(np.float32)
    for b in range(len(this_time)):
        n = int(this_time[b])
        if n == 0:
            continue
        past = 0 if enc[b] > 0 else int(dec[b])
        if past + n > min(max_seq_len, block_tables.shape[1] * block_size):
            raise ValueError(f"sequence {b} needs {past + n} positions; the block table "
                             f"holds {block_tables.shape[1] * block_size}, "
                             f"max_seq_len {max_seq_len}")
        rows = slice(int(cu_q[b]), int(cu_q[b]) + n)
        pos = np.arange(past, past + n)
        q, k = q_all[rows], k_all[rows]
        if not use_alibi:
            q, k = (_rope(t, pos, rope_theta, rope_scaling_factor, use_neox_style) for t in (q, k))
        blocks, slots = block_tables[b, pos // block_size], pos % block_size
        ck[blocks, :, slots], cv[blocks, :, slots] = k, v_all[rows]
        kpos = np.arange(past + n)
        keys = ck[block_tables[b, kpos // block_size], :, kpos % block_size]
        vals = cv[block_tables[b, kpos // block_size], :, kpos % block_size]
        out[rows] = _attend(q, keys, vals, pos, kpos, slopes)
    return out.reshape(qkv.shape[0], num_heads * head_dim), ck, cv


def _split_heads(qkv, h: int, kv: int, d: int):
    t = qkv.shape[0]
    q = qkv[:, : h * d].reshape(t, h, d)
    k = qkv[:, h * d: (h + kv) * d].reshape(t, kv, d)
    v = qkv[:, (h + kv) * d:].reshape(t, kv, d)
    return q, k, v


def _rope(x, pos, theta: float, factor: float, neox: bool):
    """Rotary embedding of x [n, heads, d] at positions pos [n]."""
    cos, sin = rope_cos_sin(pos, x.shape[-1], theta, factor)
    return rotate(x, cos[:, None, :], sin[:, None, :], neox)


def _attend(q, keys, vals, qpos, kpos, slopes):
    """Softmax attention of q [n, H, D] over keys/vals [m, KV, D] (GQA by head groups)."""
    rep = q.shape[1] // keys.shape[1]
    k = np.repeat(keys.astype(np.float32), rep, axis=1).transpose(1, 2, 0)
    v = np.repeat(vals.astype(np.float32), rep, axis=1).transpose(1, 0, 2)
    scale = np.float32(1 / math.sqrt(q.shape[2]))
    s = np.matmul(q.astype(np.float32).transpose(1, 0, 2), k) * scale
    if slopes is not None:
        s = s + slopes[:, None, None] * (kpos[None, :] - qpos[:, None]).astype(np.float32)
    s = np.where(kpos[None, :] <= qpos[:, None], s, np.float32(-np.inf))
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.matmul(p, v).transpose(1, 0, 2).astype(q.dtype)
