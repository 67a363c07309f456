"""Paddle lowerings of the normalisation, position and attention ops and of the fused ops
the per-op target pipelines make (add_rms_norm, rope, attention, swiglu, lm_head), plus
the Paddle inference form's elementwise fused ops. Fused Paddle kernels are used where
env.Kernels says the device has them; composites otherwise."""

from __future__ import annotations

import math

import numpy as np

from llmc.compiler.ops.nn import alibi_slopes

from .lower import Lowering, LoweringError, lowers, operand_reader


def rms_norm_fn(ctx: Lowering, kind: str, eps: float):
    """fn(x, w) -> rms_norm(x) * w, by the device's kernel choice (recorded under `kind`)."""
    if ctx.kernels.fused_rms_norm:
        ctx.kernels.note(kind, "paddle.incubate fused_rms_norm")
        return lambda x, w: ctx.IF.fused_rms_norm(x, w, None, eps, begin_norm_axis=x.ndim - 1)[0]
    ctx.kernels.note(kind, "composite x * rsqrt(mean(x^2) + eps) * w")
    p = ctx.paddle
    # w expanded to x's shape rather than broadcast: Paddle's CPU multiply backward reduces
    # a broadcast [hidden] operand slowly (fwd+bwd 28 ms vs 14.5 ms at [4, 256, 768]).
    return lambda x, w: x * p.rsqrt((x * x).mean(axis=-1, keepdim=True) + eps) * w.expand(x.shape)


@lowers("rms_norm")
def _rms_norm(op, ctx):
    norm = rms_norm_fn(ctx, op.kind, op.attrs["epsilon"])
    args = operand_reader(op, "x", "w")
    return lambda env: [norm(*args(env))]


@lowers("add_rms_norm")
def _add_rms_norm(op, ctx):
    norm = rms_norm_fn(ctx, op.kind, op.attrs["epsilon"])
    args = operand_reader(op, "x", "residual", "w")

    def run(env):
        x, r, w = args(env)
        s = x + r
        return [norm(s, w), s]

    return run


@lowers("fused_rms_norm")
def _fused_rms_norm(op, ctx):
    norm = rms_norm_fn(ctx, op.kind, op.attrs["epsilon"])
    args = operand_reader(op, "x", "w", "residual")

    def run(env):
        x, w, r = args(env)
        s = x if r is None else x + r
        return [norm(s, w), s]

    return run


@lowers("lm_head")
def _lm_head(op, ctx):
    norm = rms_norm_fn(ctx, op.kind, op.attrs["epsilon"])
    tw = op.attrs["transpose_w"]
    args = operand_reader(op, "x", "norm_w", "w")

    def run(env):
        x, nw, w = args(env)
        return [ctx.paddle.matmul(norm(x, nw), w, transpose_y=tw)]

    return run


@lowers("layer_norm")
def _layer_norm(op, ctx):
    eps = op.attrs["epsilon"]
    args = operand_reader(op, "x", "w", "bias")

    def run(env):
        x, w, b = args(env)
        return [ctx.F.layer_norm(x, [x.shape[-1]], weight=w, bias=b, epsilon=eps)]

    return run


@lowers("fused_bias_residual_layernorm")
def _fbrl(op, ctx):
    eps, alpha = op.attrs["epsilon"], op.attrs["residual_alpha"]
    args = operand_reader(op, "x", "residual", "norm_weight", "norm_bias")
    ctx.kernels.note(op.kind, "composite x + alpha * residual, paddle layer_norm")

    def run(env):
        x, r, w, b = args(env)
        s = x + r * alpha
        if w is None:
            return [s, s]
        return [ctx.F.layer_norm(s, [s.shape[-1]], weight=w, bias=b, epsilon=eps), s]

    return run


@lowers("l2_normalize")
def _l2_normalize(op, ctx):
    axis, eps = op.attrs["axis"], op.attrs["epsilon"]
    args = operand_reader(op, "x")

    def run(env):
        (x,) = args(env)
        n = ctx.paddle.sqrt((x * x).sum(axis=axis, keepdim=True))
        return [x / (ctx.paddle.clip(n, min=eps) if eps else n)]

    return run


@lowers("cross_entropy")
def _cross_entropy(op, ctx):
    ignore, reduction = op.attrs["ignore_index"], op.attrs["reduction"]
    args = operand_reader(op, "logits", "labels")
    p = ctx.paddle

    def run(env):
        logits, labels = args(env)
        valid = labels != ignore
        safe = p.where(valid, labels, p.zeros_like(labels)).astype("int64")
        picked = p.take_along_axis(logits, safe.unsqueeze(-1), axis=-1).squeeze(-1)
        loss = (p.logsumexp(logits, axis=-1) - picked) * valid.astype(logits.dtype)
        if reduction == "none":
            return [loss]
        if reduction == "sum":
            return [loss.sum()]
        return [loss.sum() / p.clip(valid.astype(logits.dtype).sum(), min=1.0)]

    return run


def swiglu_fn(ctx: Lowering, kind: str):
    """fn(x) -> silu(x's first half) * its second half, by the device's kernel choice
    (recorded under `kind`)."""
    if ctx.kernels.swiglu:
        ctx.kernels.note(kind, "paddle.nn.functional.swiglu")
        return ctx.F.swiglu
    ctx.kernels.note(kind, "composite silu(gate) * up")

    def composite(x):
        gate, up = ctx.paddle.chunk(x, 2, axis=-1)
        return ctx.F.silu(gate) * up

    return composite


@lowers("fused_bias_act")
def _fused_bias_act(op, ctx):
    act = op.attrs["act_method"]
    args = operand_reader(op, "x", "bias")
    p, F = ctx.paddle, ctx.F
    acts = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu,
            "swiglu": swiglu_fn(ctx, op.kind) if act == "swiglu" else None}
    if act != "swiglu":
        ctx.kernels.note(op.kind, f"composite {act}(x + bias)")

    def run(env):
        x, b = args(env)
        y = x if b is None else x + b
        if act == "geglu":
            gate, up = p.chunk(y, 2, axis=-1)
            return [F.gelu(gate) * up]
        return [acts[act](y)]

    return run


def rope_tables(ctx: Lowering, pos, head_dim: int, theta: float, factor: float):
    """cos, sin [.., head_dim/2] (f32) at integer positions `pos`, as rope_cos_sin makes them."""
    exps = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
    inv_freq = ctx.const((1.0 / (theta ** exps)).astype(np.float32))
    freqs = (pos.astype("float32") / np.float32(factor)).unsqueeze(-1) * inv_freq
    return ctx.paddle.cos(freqs), ctx.paddle.sin(freqs)


def rotate(ctx: Lowering, x, cos, sin, neox: bool):
    """x rotated by tables broadcastable to x[..., d/2] (neox: i with i + d/2)."""
    p = ctx.paddle
    if neox:
        x1, x2 = p.chunk(x, 2, axis=-1)
        return p.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return p.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)


@lowers("rope")
def _rope(op, ctx):
    a = op.attrs
    neox = a["style"] == "neox"
    args = operand_reader(op, "x", "positions")
    p = ctx.paddle
    if ctx.kernels.fused_rope:
        ctx.kernels.note("rope", "paddle.incubate fused_rotary_position_embedding")

        def fused(env):
            # The kernel takes tables [1, n, 1, d] over positions 0..n-1 and gathers each
            # row's positions itself (position_ids [batch, seq]).
            x, pos = args(env)
            pos = p.broadcast_to(pos, x.shape[:2]).astype("int64")
            n = max(int(pos.max()) + 1, x.shape[1])
            cos, sin = rope_tables(ctx, p.arange(n, dtype="int64"), x.shape[-1], a["theta"],
                                   a["scaling_factor"])
            full = (lambda t: p.concat([t, t], -1)) if neox else (
                lambda t: p.repeat_interleave(t, 2, axis=-1))
            out = ctx.IF.fused_rotary_position_embedding(
                x, None, None, sin=full(sin).reshape([1, n, 1, -1]),
                cos=full(cos).reshape([1, n, 1, -1]), position_ids=pos,
                use_neox_rotary_style=neox)
            return [out[0]]

        return fused
    ctx.kernels.note("rope", "composite x * cos + (x @ quarter turn) * sin")

    def run(env):
        x, pos = args(env)
        cos, sin, turn = full_rope_tables(ctx, pos, x.shape, a["theta"], a["scaling_factor"],
                                          neox)
        return [x * cos + p.matmul(x, turn) * sin]

    return run


def full_rope_tables(ctx: Lowering, pos, shape: list[int], theta: float, factor: float,
                     neox: bool):
    """(cos, sin, turn) for x of `shape` [b, s, heads, head_dim] at positions `pos`: the
    tables at x's full shape and a [d, d] matrix with x @ turn = x's pairs turned a quarter
    ((-x2, x1)), so that x * cos + (x @ turn) * sin is the rotation, bit for bit (turn has one
    +-1 a column: the matmul is exact; this composite runs only on CPU, where training is
    f32). Made once per positions tensor and shape: every layer's q and k share them.
    Measured at [4, 256, 12, 64], fwd+bwd: broadcast [b, s, 1, d/2] tables with chunk and
    concat 22 ms a call, full-shape tables 6.5 ms, this matmul form 4 ms (Paddle's CPU
    multiply backward is slow with a broadcast operand; concat's backward copies)."""
    if ctx.memo.get("rope_pos") is not pos:
        ctx.memo.clear()
        ctx.memo["rope_pos"] = pos
    key = ("rope", tuple(shape), theta, factor, neox)
    if key not in ctx.memo:
        p = ctx.paddle
        d = shape[-1]
        cos, sin = rope_tables(ctx, p.broadcast_to(pos, shape[:2]), d, theta, factor)
        widen = (lambda t: p.concat([t, t], -1)) if neox else (
            lambda t: p.repeat_interleave(t, 2, axis=-1))
        tables = (p.expand(widen(t).unsqueeze(2), shape).clone() for t in (cos, sin))
        ctx.memo[key] = (*tables, ctx.const(quarter_turn(d, neox)))
    return ctx.memo[key]


def quarter_turn(d: int, neox: bool) -> np.ndarray:
    """[d, d] f32 with x @ it = (-x2, x1) by halves (neox) or by pairs (interleaved)."""
    turn = np.zeros((d, d), np.float32)
    i = np.arange(d // 2)
    first, second = (i, i + d // 2) if neox else (2 * i, 2 * i + 1)
    turn[second, first] = -1.0
    turn[first, second] = 1.0
    return turn


@lowers("alibi_bias")
def _alibi_bias(op, ctx):
    slopes = ctx.const(alibi_slopes(op.attrs["num_heads"])[:, None, None])
    args = operand_reader(op, "key_positions")

    def run(env):
        (pos,) = args(env)
        return [slopes * pos.astype("float32").unsqueeze(-2).unsqueeze(-3)]

    return run


def causal_mask(ctx: Lowering, sq: int, sk: int):
    """0 where query i may see key j (j <= i + sk - sq), -inf elsewhere: [sq, sk] f32."""
    p = ctx.paddle
    allowed = p.arange(sk).unsqueeze(0) <= (p.arange(sq).unsqueeze(1) + (sk - sq))
    return p.where(allowed, p.zeros([sq, sk]), p.full([sq, sk], float("-inf")))


@lowers("attention")
def _attention(op, ctx):
    causal, scale = op.attrs["causal"], op.attrs["scale"]
    args = operand_reader(op, "q", "k", "v", "bias")
    if not ctx.kernels.sdpa:
        raise LoweringError("op 'attention' needs scaled_dot_product_attention on this device")
    # On CPU, SDPA's is_causal builds a [b, h, s, s] triangle mask with triu on every call
    # (18 ms a layer at [4, 12, 256, 256]); one [s, s] mask per shape, kept, does the same.
    cpu = ctx.kernels.device == "cpu"
    masks: dict[tuple, object] = {}
    ctx.kernels.note("attention", "paddle.nn.functional.scaled_dot_product_attention"
                     + (" with a kept causal mask" if cpu and causal else ""))

    def mask_for(sq: int, sk: int, dtype):
        if (sq, sk, dtype) not in masks:
            masks[(sq, sk, dtype)] = causal_mask(ctx, sq, sk).astype(dtype)
        return masks[(sq, sk, dtype)]

    def run(env):
        q, k, v, bias = args(env)
        sq, sk = q.shape[1], k.shape[1]
        mask = bias
        if causal and (bias is not None or sq != sk or cpu):
            cm = mask_for(sq, sk, q.dtype)
            mask = cm if bias is None else bias + cm
        if mask is not None and mask.ndim < 4:
            mask = mask.reshape([1] * (4 - mask.ndim) + mask.shape)
        out = ctx.F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, training=False,
            scale=scale or 1.0 / math.sqrt(q.shape[-1]))
        return [out]

    return run
