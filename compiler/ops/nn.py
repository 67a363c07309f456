"""Transformer building blocks: rotary embedding, ALiBi and attention."""

from __future__ import annotations

import math

import numpy as np

from ..ir import DType, TensorType
from .registry import AttrSpec, OpError, defop
from .shapes import expect_dim, expect_float, expect_int, expect_rank, same_dtype

ROPE_STYLES = ("neox", "interleaved")


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float, scaling_factor: float):
    """cos/sin tables [..., head_dim/2] in f32, positions divided by the linear scaling factor."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    pos = positions.astype(np.float32) / np.float32(scaling_factor)
    freqs = pos[..., None] * inv_freq.astype(np.float32)
    return np.cos(freqs), np.sin(freqs)


def _rope_infer(x: TensorType, pos: TensorType, theta, scaling_factor, style):
    expect_rank("rope", "x", x, 4)
    expect_int("rope", "positions", pos)
    expect_float("rope", x)
    if style not in ROPE_STYLES:
        raise OpError(f"op 'rope': style must be one of {', '.join(ROPE_STYLES)}, got '{style}'")
    if isinstance(x.shape[-1], int) and x.shape[-1] % 2:
        raise OpError(f"op 'rope': head dim {x.shape[-1]} is odd")
    expect_dim("rope", "positions length", pos.shape[-1], x.shape[1])
    return x


@defop("rope", ("x", "positions"),
       attrs={"theta": AttrSpec("float", 10000.0), "scaling_factor": AttrSpec("float", 1.0),
              "style": AttrSpec("str", "neox")},
       infer=_rope_infer)
def rope(x, positions, theta, scaling_factor, style):
    """Rotary embedding on x [batch, seq, heads, head_dim] at positions [batch, seq] or [seq].

    neox pairs dim i with i + d/2 (HF llama `rotate_half`); interleaved pairs 2i with 2i+1.
    """
    cos, sin = rope_cos_sin(np.broadcast_to(positions, x.shape[:2]), x.shape[-1], theta,
                            scaling_factor)
    return rotate(x, cos[:, :, None, :], sin[:, :, None, :], style == "neox")


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Apply rotary tables (broadcastable to x[..., d/2]) to x in f32; neox pairs i with
    i + d/2, interleaved pairs 2i with 2i+1."""
    d = x.shape[-1]
    xf = x.astype(np.float32)
    if neox:
        x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
        out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    else:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = np.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)
    return out.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi slopes: geometric for a power-of-two head count, else the closest lower
    power of two followed by every other slope of the doubled count (Press et al.)."""

    def pow2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return np.asarray(pow2(num_heads), dtype=np.float32)
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = pow2(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(pow2(closest) + extra, dtype=np.float32)


def _alibi_infer(pos: TensorType, num_heads):
    expect_int("alibi_bias", "positions", pos)
    if num_heads < 1:
        raise OpError(f"op 'alibi_bias': num_heads must be positive, got {num_heads}")
    return TensorType(DType.f32, pos.shape[:-1] + (num_heads, 1, pos.shape[-1]))


@defop("alibi_bias", ("key_positions",), attrs={"num_heads": AttrSpec("int")}, infer=_alibi_infer)
def alibi_bias(pos, num_heads):
    """ALiBi additive bias slope[h] * key_position, shaped [..., heads, 1, keys].

    Per query row this differs from slope * (key - query) by a constant, which
    softmax ignores."""
    slopes = alibi_slopes(num_heads)
    return (slopes[:, None, None] * pos[..., None, None, :].astype(np.float32)).astype(np.float32)


def _attn_infer(q: TensorType, k: TensorType, v: TensorType, bias: TensorType | None = None,
                causal=True, scale=0.0):
    for name, t in (("q", q), ("k", k), ("v", v)):
        expect_rank("attention", name, t, 4)
    same_dtype("attention", q, k, v)
    expect_dim("attention", "k head dim", k.shape[3], q.shape[3])
    expect_dim("attention", "v heads", v.shape[2], k.shape[2])
    expect_dim("attention", "v length", v.shape[1], k.shape[1])
    hq, hk = q.shape[2], k.shape[2]
    if isinstance(hq, int) and isinstance(hk, int) and hq % hk:
        raise OpError(f"op 'attention': {hq} query heads not divisible by {hk} kv heads")
    return q.with_shape(q.shape[:3] + (v.shape[3],))


@defop("attention", ("q", "k", "v", "bias?"),
       attrs={"causal": AttrSpec("bool", True), "scale": AttrSpec("float", 0.0)},
       infer=_attn_infer)
def attention(q, k, v, bias=None, causal=True, scale=0.0):
    """Scaled dot-product attention on [batch, seq, heads, head_dim] tensors.

    Grouped-query: query head h reads kv head h // (hq / hkv). Causal masking
    aligns the last query with the last key (decode-friendly). scale 0 means
    1/sqrt(head_dim). `bias` is added to the scores ([.., heads, q, k] broadcast).
    """
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    rep = hq // hk
    qf = q.astype(np.float32).transpose(0, 2, 1, 3)
    kf = np.repeat(k.astype(np.float32).transpose(0, 2, 1, 3), rep, axis=1)
    vf = np.repeat(v.astype(np.float32).transpose(0, 2, 1, 3), rep, axis=1)
    s = np.matmul(qf, kf.transpose(0, 1, 3, 2)) * np.float32(scale or 1.0 / math.sqrt(d))
    if bias is not None:
        s = s + bias.astype(np.float32)
    if causal:
        allowed = np.arange(sk)[None, :] <= (np.arange(sq)[:, None] + (sk - sq))
        s = np.where(allowed, s, np.float32(-np.inf))
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.matmul(p, vf).transpose(0, 2, 1, 3).astype(q.dtype)
