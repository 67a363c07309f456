"""KV-cache ops of the cache graph form (docs/graph-forms.md): a functional write of new
keys/values into a preallocated max-length buffer, and the attention that reads it.

Buffers are [batch, kv_heads, max_len, head_dim]; row r holds its tokens at slots
0 .. past_lens[r] + seq - 1 after the step, and a query at sequence index i of row r sits
at position past_lens[r] + i and sees every slot up to that position.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from .registry import AttrSpec, OpError, defop
from .shapes import expect_dim, expect_float, expect_int, expect_rank, same_dtype


def _update_infer(past: TensorType, new: TensorType, past_lens: TensorType):
    expect_rank("kv_cache_update", "past", past, 4)
    expect_rank("kv_cache_update", "new", new, 4)
    expect_rank("kv_cache_update", "past_lens", past_lens, 1)
    expect_int("kv_cache_update", "past_lens", past_lens)
    same_dtype("kv_cache_update", past, new)
    for i, what in ((0, "batch"), (1, "kv heads"), (3, "head dim")):
        expect_dim("kv_cache_update", f"new {what}", new.shape[i], past.shape[i])
    expect_dim("kv_cache_update", "past_lens length", past_lens.shape[0], past.shape[0])
    return past


@defop("kv_cache_update", ("past", "new", "past_lens"), infer=_update_infer)
def kv_cache_update(past, new, past_lens):
    """past [b, kv, max_len, d] with new [b, kv, seq, d] written at slots
    past_lens[r] .. past_lens[r] + seq - 1 of each row r (a copy; past is not changed)."""
    seq, max_len = new.shape[2], past.shape[2]
    out = past.copy()
    for r, start in enumerate(np.asarray(past_lens).tolist()):
        if start < 0 or start + seq > max_len:
            raise ValueError(f"row {r}: {start} cached + {seq} new tokens overflow the "
                             f"{max_len}-slot cache")
        out[r, :, start:start + seq] = new[r]
    return out


def _cached_attn_infer(q: TensorType, k: TensorType, v: TensorType, past_k: TensorType,
                       past_v: TensorType, past_lens: TensorType, bias: TensorType | None = None,
                       scale=0.0):
    for name, t in (("q", q), ("k", k), ("v", v)):
        expect_rank("cached_attention", name, t, 4)
    expect_float("cached_attention", q)
    same_dtype("cached_attention", q, k, v, past_k, past_v)
    hq, hk = q.shape[2], k.shape[2]
    if isinstance(hq, int) and isinstance(hk, int) and hq % hk:
        raise OpError(f"op 'cached_attention': {hq} query heads not divisible by {hk} kv heads")
    expect_dim("cached_attention", "k head dim", k.shape[3], q.shape[3])
    present_k = _update_infer(past_k, k.with_shape((k.shape[0], k.shape[2], k.shape[1],
                                                    k.shape[3])), past_lens)
    present_v = _update_infer(past_v, v.with_shape((v.shape[0], v.shape[2], v.shape[1],
                                                    v.shape[3])), past_lens)
    return q.with_shape(q.shape[:3] + (v.shape[3],)), present_k, present_v


@defop("cached_attention", ("q", "k", "v", "past_k", "past_v", "past_lens", "bias?"),
       outputs=("out", "present_k", "present_v"), attrs={"scale": AttrSpec("float", 0.0)},
       infer=_cached_attn_infer)
def cached_attention(q, k, v, past_k, past_v, past_lens, bias=None, scale=0.0):
    """Causal attention of q [b, seq, hq, d] over the cache after writing k, v
    ([b, seq, hkv, d]) at each row's past length: (out [b, seq, hq, d], present_k, present_v).

    Query i of row r sees slots 0 .. past_lens[r] + i; grouped-query heads read kv head
    h // (hq / hkv); scale 0 means 1/sqrt(d); `bias` (broadcast to [b, hq, seq, max_len],
    indexed by slot) is added to the scores."""
    pk = kv_cache_update(past_k, k.transpose(0, 2, 1, 3), past_lens)
    pv = kv_cache_update(past_v, v.transpose(0, 2, 1, 3), past_lens)
    b, seq, hq, d = q.shape
    rep = hq // k.shape[2]
    qf = q.astype(np.float32).transpose(0, 2, 1, 3)
    kf = np.repeat(pk.astype(np.float32), rep, axis=1)
    vf = np.repeat(pv.astype(np.float32), rep, axis=1)
    s = np.matmul(qf, kf.transpose(0, 1, 3, 2)) * np.float32(scale or 1.0 / math.sqrt(d))
    if bias is not None:
        s = s + bias.astype(np.float32)
    pos = np.asarray(past_lens)[:, None] + np.arange(seq)[None, :]  # [b, seq]
    allowed = np.arange(pk.shape[2])[None, None, :] <= pos[:, :, None]  # [b, seq, max_len]
    s = np.where(allowed[:, None], s, np.float32(-np.inf))
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    out = np.matmul(p, vf).transpose(0, 2, 1, 3).astype(q.dtype)
    return out, pk, pv
