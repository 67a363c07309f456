"""ONNX lowerings of the norms, rotary embedding, ALiBi and attention ops, on ONNX Runtime's
fused kernels where it has them: RMSNormalization, SkipSimplifiedLayerNormalization
(com.microsoft; its 4th output is the residual sum), RotaryEmbedding and
GroupQueryAttention (com.microsoft; the KV buffers are its past and present, shared when
the caller binds one buffer to both)."""

from __future__ import annotations

import math

import numpy as np

from llmc.compiler.ops.nn import alibi_slopes, rope_cos_sin

from .core_ops import dim_of
from .lower import MS_DOMAIN, Lowering, LoweringError, lowers


def _static_dims(op, v, *axes) -> list[int]:
    dims = [v.type.shape[a] for a in axes]
    if not all(isinstance(d, int) for d in dims):
        raise LoweringError(f"op '{op.kind}': {v.ref} needs static head dims, got {v.type}")
    return dims


@lowers("rms_norm")
def rms_norm(ctx, op, outs):
    x, w = (ctx.tensor(v) for v in op.inputs)
    ctx.node("RMSNormalization", [x, w], outs, axis=-1, epsilon=op.attrs["epsilon"])


@lowers("add_rms_norm")
def add_rms_norm(ctx, op, outs):
    x, r, w = (ctx.tensor(v) for v in op.inputs)
    eps = op.attrs["epsilon"]
    if op.inputs[0].type.rank in (2, 3) and op.inputs[0].type == op.inputs[1].type:
        ctx.node("SkipSimplifiedLayerNormalization", [x, r, w], [outs[0], "", "", outs[1]],
                 domain=MS_DOMAIN, epsilon=eps)
        return
    s = ctx.one("Add", [x, r], outs[1])
    ctx.node("RMSNormalization", [s, w], [outs[0]], axis=-1, epsilon=eps)


@lowers("lm_head")
def lm_head(ctx, op, outs):
    x, norm_w, w = op.inputs
    n = ctx.one("RMSNormalization", [ctx.tensor(x), ctx.tensor(norm_w)], axis=-1,
                epsilon=op.attrs["epsilon"])
    ctx.node("MatMul", [n, ctx.matmul_weight(w, op.attrs["transpose_w"])], outs)


def rope_caches(ctx: Lowering, head_dim: int, theta: float, factor: float) -> tuple[str, str]:
    """cos / sin tables [max_positions, head_dim / 2], as the reference kernel computes them."""
    key = ("rope", head_dim, theta, factor)
    if key not in ctx.memo:
        cos, sin = rope_cos_sin(np.arange(ctx.max_positions), head_dim, theta, factor)
        ctx.memo[key] = (ctx.const(cos.astype(np.float32), "rope_cos"),
                         ctx.const(sin.astype(np.float32), "rope_sin"))
    return ctx.memo[key]


@lowers("rope")
def rope(ctx, op, outs):
    x, pos = op.inputs
    heads, d = _static_dims(op, x, 2, 3)
    cos, sin = rope_caches(ctx, d, op.attrs["theta"], op.attrs["scaling_factor"])
    xn = ctx.tensor(x)
    p = ctx.tensor(pos)
    if pos.type.rank == 1:
        lead = ctx.one("Shape", [xn], start=0, end=2)
        p = ctx.one("Expand", [ctx.one("Unsqueeze", [p, ctx.ints(0)]), lead])
    x3 = ctx.one("Reshape", [xn, ctx.ints(0, 0, -1)])
    y = ctx.one("RotaryEmbedding", [x3, cos, sin, p], num_heads=heads,
                interleaved=int(op.attrs["style"] == "interleaved"))
    ctx.node("Reshape", [y, ctx.ints(0, 0, heads, d)], outs)


@lowers("alibi_bias")
def alibi_bias(ctx, op, outs):
    pos = op.inputs[0]
    r = pos.type.rank
    slopes = alibi_slopes(op.attrs["num_heads"]).reshape(-1, 1, 1)
    p = ctx.one("Cast", [ctx.tensor(pos)], to=1)
    p = ctx.one("Unsqueeze", [p, ctx.ints(r - 1, r)])
    ctx.node("Mul", [p, ctx.const(slopes.astype(np.float32), "alibi_slopes")], outs)


def gqa_lengths(ctx: Lowering, past_lens: str, query: str, seq) -> tuple[str, ...]:
    """(seqlens_k i32[b] = tokens after the step - 1, total_sequence_length i32 scalar,
    the same total as i64 [1], query_seqlens i32[b]) for GroupQueryAttention, once per
    past_lens and seq dim."""
    key = ("gqa", past_lens, seq if isinstance(seq, str) else query)
    if key not in ctx.memo:
        total = ctx.one("Add", [past_lens, dim_of(ctx, query, 1)])
        seqlens = ctx.one("Cast", [ctx.one("Sub", [total, ctx.scalar(1, "int64")])], to=6)
        longest = ctx.one("ReduceMax", [total], keepdims=1)
        total_i32 = ctx.one("Cast", [ctx.one("Squeeze", [longest, ctx.ints(0)])], to=6)
        # every row's chunk is whole (seq tokens): stating it lets a batch of multi-token
        # chunks over non-empty caches run (chunked prefill)
        chunk = ctx.one("Cast", [ctx.one("Sub", [total, past_lens])], to=6)
        ctx.memo[key] = (seqlens, total_i32, longest, chunk)
    return ctx.memo[key]


def attention_bias(ctx: Lowering, bias, longest: str, seq: str) -> str:
    """The op's bias (broadcast to [b, hq, seq, max_len], by slot) as GroupQueryAttention's
    attention_bias [b or 1, hq or 1, seq, total_sequence_length]."""
    b = ctx.tensor(bias)
    if bias.type.rank < 4:
        b = ctx.one("Unsqueeze", [b, ctx.ints(*range(4 - bias.type.rank))])
    b = ctx.one("Slice", [b, ctx.ints(0), longest, ctx.ints(-1)])
    tile = ctx.one("Concat", [ctx.ints(1, 1), seq, ctx.ints(1)], axis=0)
    return ctx.one("Expand", [b, tile])


@lowers("cached_attention")
def cached_attention(ctx, op, outs):
    q, k, v, past_k, past_v, lens = op.inputs[:6]
    hq, d = _static_dims(op, q, 2, 3)
    (hk,) = _static_dims(op, k, 2)
    q3, k3, v3 = (ctx.one("Reshape", [ctx.tensor(t), ctx.ints(0, 0, -1)]) for t in (q, k, v))
    seqlens, total, longest, chunk = gqa_lengths(ctx, ctx.tensor(lens), q3, q.type.shape[1])
    args = [q3, k3, v3, ctx.tensor(past_k), ctx.tensor(past_v), seqlens, total, "", "", ""]
    bias = op.inputs[6] if len(op.inputs) == 7 else None
    args.append(attention_bias(ctx, bias, longest, dim_of(ctx, q3, 1)) if bias else "")
    args += [""] * 5 + [chunk]  # head_sink, k/v scales, q/k norm weights, query_seqlens
    scale = op.attrs["scale"] or 1.0 / math.sqrt(d)
    o = ctx.node("GroupQueryAttention", args, [ctx.fresh("attn_out"), outs[1], outs[2]],
                 domain=MS_DOMAIN, num_heads=hq, kv_num_heads=hk, scale=scale)[0]
    ctx.node("Reshape", [o, ctx.ints(0, 0, hq, d)], [outs[0]])
