"""ONNX lowerings of the norms, rotary embedding, ALiBi and attention ops, on ONNX Runtime's
fused kernels where it has them: RMSNormalization, SkipSimplifiedLayerNormalization
(com.microsoft; its 4th output is the residual sum), RotaryEmbedding and
GroupQueryAttention (com.microsoft; the KV buffers are its past and present, shared when
the caller binds one buffer to both)."""

from __future__ import annotations

import math

import numpy as np

from llmc.compiler.ir import Value
from llmc.compiler.ops.nn import alibi_slopes, rope_cos_sin
from llmc.compiler.rewrite import P

from .core_ops import dim_of
from .lower import MS_DOMAIN, Lowering, LoweringError, lowers


def _static_dims(op, v, *axes) -> list[int]:
    dims = [v.type.shape[a] for a in axes]
    if not all(isinstance(d, int) for d in dims):
        raise LoweringError(f"op '{op.kind}': {v.ref} needs static head dims, got {v.type}")
    return dims


@lowers("rms_norm")
def _rms_norm(ctx, op, outs):
    x, w = (ctx.tensor(v) for v in op.inputs)
    ctx.node("RMSNormalization", [x, w], outs, axis=-1, epsilon=op.attrs["epsilon"])


@lowers("add_rms_norm")
def _add_rms_norm(ctx, op, outs):
    x, r, w = (ctx.tensor(v) for v in op.inputs)
    eps = op.attrs["epsilon"]
    if op.inputs[0].type.rank in (2, 3) and op.inputs[0].type == op.inputs[1].type:
        ctx.node("SkipSimplifiedLayerNormalization", [x, r, w], [outs[0], "", "", outs[1]],
                 domain=MS_DOMAIN, epsilon=eps)
        return
    s = ctx.one("Add", [x, r], outs[1])
    ctx.node("RMSNormalization", [s, w], [outs[0]], axis=-1, epsilon=eps)


@lowers("lm_head")
def _lm_head(ctx, op, outs):
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
def _rope(ctx, op, outs):
    x, pos = op.inputs
    heads, d = _static_dims(op, x, 2, 3)
    cos, sin = rope_caches(ctx, d, op.attrs["theta"], op.attrs["scaling_factor"])
    xn = ctx.tensor(x)
    p = ctx.tensor(pos)
    if pos.type.rank == 1:
        lead = ctx.one("Shape", [xn], start=0, end=2)
        p = ctx.one("Expand", [ctx.one("Unsqueeze", [p, ctx.ints(0)]), lead])
    x3 = flat3(ctx, x)
    y = ctx.one("RotaryEmbedding", [x3, cos, sin, p], num_heads=heads,
                interleaved=int(op.attrs["style"] == "interleaved"))
    ctx.node("Reshape", [y, ctx.ints(0, 0, heads, d)], outs)


@lowers("alibi_bias")
def _alibi_bias(ctx, op, outs):
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


CACHE_POSITIONS = P("add", P("unsqueeze", P.var("lens"), attrs={"axes": (1,)}),
                    P("unsqueeze", P("seq_index", P.var(), attrs={"axis": 1}, name="idx"),
                      attrs={"axes": (0,)}))


def folded_rotary(op, hq: int, hk: int, d: int) -> tuple[Value, Value, dict] | None:
    """(q, k before rope, rope attrs) when q and k are neox `rope`s at the cache positions
    (past_lens + sequence index), which GroupQueryAttention's own rotary computes (for
    head sizes that are a multiple of 16, which its CPU kernel requires)."""
    if d % 16:
        return None
    rq, rk = op.inputs[0].producer, op.inputs[1].producer
    if rq is None or rk is None or rq.kind != "rope" or rk.kind != "rope":
        return None
    if rq.attrs != rk.attrs or rq.attrs["style"] != "neox" or rq.inputs[1] is not rk.inputs[1]:
        return None
    m: dict = {}
    if not CACHE_POSITIONS.match(rq.inputs[1], m) or m["lens"] is not op.inputs[5]:
        return None
    if m["idx"].output.type.shape[0] != op.inputs[0].type.shape[1]:
        return None
    return rq.inputs[0], rk.inputs[0], rq.attrs


def packed_qkv(q: Value, k: Value, v: Value, hq: int, hk: int, d: int) -> Value | None:
    """x when q, k, v are reshapes to heads of split(x [b, seq, (hq + 2 hk) d]) on the last
    axis: GroupQueryAttention reads x as its packed QKV input."""
    srcs = [t.producer.inputs[0] if t.producer is not None and t.producer.kind == "reshape"
            else None for t in (q, k, v)]
    if any(s is None for s in srcs):
        return None
    split = srcs[0].producer
    if (split is None or split.kind != "split" or list(split.outputs) != srcs
            or split.attrs["sizes"] != (hq * d, hk * d, hk * d)
            or split.inputs[0].type.rank != 3 or split.attrs["axis"] not in (-1, 2)):
        return None
    return split.inputs[0]


def flat3(ctx: Lowering, v: Value) -> str:
    """[b, seq, heads, d] `v` as [b, seq, heads * d]: the 3-D tensor it was reshaped from
    when there is one, else a Reshape."""
    src = v.producer.inputs[0] if v.producer is not None and v.producer.kind == "reshape" else None
    if src is not None and src.type.rank == 3 and src.type.shape[:2] == v.type.shape[:2]:
        return ctx.tensor(src)
    return ctx.one("Reshape", [ctx.tensor(v), ctx.ints(0, 0, -1)])


@lowers("cached_attention")
def _cached_attention(ctx, op, outs):
    q, k, v, past_k, past_v, lens = op.inputs[:6]
    hq, d = _static_dims(op, q, 2, 3)
    (hk,) = _static_dims(op, k, 2)
    rotary = folded_rotary(op, hq, hk, d)
    attrs = {}
    cos = sin = ""
    if rotary is not None:
        q, k, r = rotary
        cos, sin = rope_caches(ctx, d, r["theta"], r["scaling_factor"])
        attrs = {"do_rotary": 1, "rotary_interleaved": 0}
    packed = packed_qkv(q, k, v, hq, hk, d)
    qkv = [ctx.tensor(packed), "", ""] if packed is not None else [flat3(ctx, t) for t in (q, k, v)]
    seqlens, total, longest, chunk = gqa_lengths(ctx, ctx.tensor(lens), qkv[0], q.type.shape[1])
    args = [*qkv, ctx.tensor(past_k), ctx.tensor(past_v), seqlens, total, cos, sin, ""]
    bias = op.inputs[6] if len(op.inputs) == 7 else None
    args.append(attention_bias(ctx, bias, longest, dim_of(ctx, qkv[0], 1)) if bias else "")
    args += [""] * 5 + [chunk]  # head_sink, k/v scales, q/k norm weights, query_seqlens
    scale = op.attrs["scale"] or 1.0 / math.sqrt(d)
    o = ctx.node("GroupQueryAttention", args, [ctx.fresh("attn_out"), outs[1], outs[2]],
                 domain=MS_DOMAIN, num_heads=hq, kv_num_heads=hk, scale=scale, **attrs)[0]
    ctx.memo[("flat3", op.outputs[0])] = o
    ctx.node("Reshape", [o, ctx.ints(0, 0, hq, d)], [outs[0]])


@lowers("attention")
def _attention(ctx, op, outs):
    """Causal self-attention over the whole sequence (the full form): GroupQueryAttention
    with no past, every row `seq` keys long."""
    q, k, v = op.inputs[:3]
    hq, d = _static_dims(op, q, 2, 3)
    (hk,) = _static_dims(op, k, 2)
    if not op.attrs["causal"] or q.type.shape[1] != k.type.shape[1]:
        raise LoweringError(f"op 'attention' lowers only as causal self-attention (queries and "
                            f"keys of one length), got {q.type} and {k.type} (target {ctx.target})")
    q3, k3, v3 = (flat3(ctx, t) for t in (q, k, v))
    seq = dim_of(ctx, q3, 1)
    rows = ctx.one("Expand", [ctx.one("Sub", [seq, ctx.ints(1)]), dim_of(ctx, q3, 0)])
    seqlens = ctx.one("Cast", [rows], to=6)
    total = ctx.one("Cast", [ctx.one("Squeeze", [seq, ctx.ints(0)])], to=6)
    args = [q3, k3, v3, "", "", seqlens, total, "", "", ""]
    if len(op.inputs) == 4:
        args.append(attention_bias(ctx, op.inputs[3], seq, seq))
    scale = op.attrs["scale"] or 1.0 / math.sqrt(d)
    o = ctx.one("GroupQueryAttention", args, domain=MS_DOMAIN, num_heads=hq, kv_num_heads=hk,
                scale=scale)
    ctx.memo[("flat3", op.outputs[0])] = o
    ctx.node("Reshape", [o, ctx.ints(0, 0, hq, d)], outs)
