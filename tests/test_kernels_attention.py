"""rope, ALiBi and the attention kernels (core, paged block attention) against numpy written
from the formulas, with queries shorter than keys (decode: query i of sq sees keys
j <= i + sk - sq) and exact values where the formula gives one (a zero query attends
uniformly, so its output is the mean of the values it may see)."""

import math

import numpy as np
import pytest

from llmc.compiler.ir import DType, TensorType
from llmc.compiler.ops import get_op
from llmc.compiler.ops.registry import OpError


def k(kind, *arrays, **attrs):
    """One op's reference kernel, attrs defaulted as in the IR."""
    op = get_op(kind)
    return op.run([np.asarray(a) for a in arrays], op.normalize_attrs(attrs))


FORMULA_OPS = ("rope", "alibi_bias", "attention", "block_multihead_attention")
RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---- formulas -----------------------------------------------------------------------------
def rope_formula(x, pos, theta=10000.0, factor=1.0, neox=True):
    """Rotate pair i of each head (i with i + d/2 for neox, 2i with 2i + 1 interleaved) by the
    angle pos / factor * theta^(-2i/d). x [..., n, heads, d], pos [n]."""
    x = np.asarray(x, np.float64)
    out = x.copy()
    d = x.shape[-1]
    for i in range(d // 2):
        a, b = (i, i + d // 2) if neox else (2 * i, 2 * i + 1)
        angle = (np.asarray(pos, np.float64) / factor * theta ** (-2 * i / d))[:, None]
        out[..., a] = x[..., a] * np.cos(angle) - x[..., b] * np.sin(angle)
        out[..., b] = x[..., b] * np.cos(angle) + x[..., a] * np.sin(angle)
    return out


def attention_formula(q, keys, vals, qpos, kpos, bias=None, scale=None):
    """softmax(q.k * scale + bias) . v over keys with kpos <= qpos, one query at a time.
    q [n, H, D]; keys, vals [m, KV, D]; query head h reads kv head h // (H / KV).
    bias(h, i, j) is added to the score of query i, key j."""
    n, heads, d = q.shape
    rep = heads // keys.shape[1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = np.zeros((n, heads, vals.shape[2]))
    for h in range(heads):
        for i in range(n):
            allowed = [j for j in range(len(kpos)) if kpos[j] <= qpos[i]]
            s = np.array([float(q[i, h] @ keys[j, h // rep]) * scale
                          + (bias(h, i, j) if bias else 0.0) for j in allowed])
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ vals[allowed, h // rep]
    return out


# ---- rope ---------------------------------------------------------------------------------
def test_rope_at_known_angles():
    # d = 2: one pair rotated by pos radians
    (y,) = k("rope", np.array([1, 0], np.float32).reshape(1, 1, 1, 2), np.array([3]))
    np.testing.assert_allclose(y.reshape(2), [math.cos(3), math.sin(3)], rtol=1e-6)
    # d = 4, theta 16: frequencies 1 and 16^-1/2 = 1/4; position 2 -> angles 2 and 1/2
    x = np.array([1, 1, 0, 0], np.float32).reshape(1, 1, 1, 4)
    want = [math.cos(2), math.cos(0.5), math.sin(2), math.sin(0.5)]  # neox: pairs (0,2), (1,3)
    np.testing.assert_allclose(k("rope", x, np.array([2]), theta=16.0)[0].reshape(4), want,
                               rtol=1e-6, atol=1e-7)
    x = np.array([1, 0, 1, 0], np.float32).reshape(1, 1, 1, 4)
    want = [math.cos(2), math.sin(2), math.cos(0.5), math.sin(0.5)]  # interleaved: (0,1), (2,3)
    got = k("rope", x, np.array([2]), theta=16.0, style="interleaved")[0]
    np.testing.assert_allclose(got.reshape(4), want, rtol=1e-6, atol=1e-7)
    # linear scaling divides the position: position 4 at factor 2 is position 2
    got = k("rope", x, np.array([4]), theta=16.0, style="interleaved", scaling_factor=2.0)[0]
    np.testing.assert_allclose(got.reshape(4), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("theta,factor,neox", [(10000.0, 1.0, True), (500000.0, 1.0, True),
                                               (10000.0, 4.0, False)])
def test_rope_matches_the_formula(theta, factor, neox):
    x, pos = randn(2, 5, 3, 8), np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 100]])
    style = "neox" if neox else "interleaved"
    (y,) = k("rope", x, pos, theta=theta, scaling_factor=factor, style=style)
    for b in range(2):
        np.testing.assert_allclose(y[b], rope_formula(x[b], pos[b], theta, factor, neox),
                                   rtol=1e-5, atol=1e-5)


# ---- ALiBi --------------------------------------------------------------------------------
# Press et al. / BLOOM / Baichuan2-13B: for n heads a power of two, slope_h = 2^(-8 h / n),
# h = 1..n; otherwise the slopes of the largest power of two p < n, then the odd-numbered
# slopes of 2p heads (2^(-8 h / 2p), h = 1, 3, 5, ...), n - p of them.
SLOPES = {
    8: [2.0 ** -h for h in range(1, 9)],
    4: [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8],
    6: [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3],
    12: [2.0 ** -h for h in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5],
    40: [2.0 ** (-h / 4) for h in range(1, 33)] + [2.0 ** (-h / 8) for h in range(1, 16, 2)],
    1: [2.0 ** -8],
}


@pytest.mark.parametrize("heads", sorted(SLOPES))
def test_alibi_bias_is_slope_times_key_position(heads):
    keys = np.array([[0, 1, 2, 5]])
    (bias,) = k("alibi_bias", keys, num_heads=heads)
    assert bias.shape == (1, heads, 1, 4) and bias.dtype == np.float32
    want = np.array(SLOPES[heads])[:, None] * np.array([0, 1, 2, 5])
    np.testing.assert_allclose(bias[0, :, 0], want, rtol=1e-6)


# ---- core attention -----------------------------------------------------------------------
@pytest.mark.parametrize("sq,sk", [(1, 6), (2, 5), (4, 4)])
def test_zero_queries_average_the_keys_they_may_see(sq, sk):
    """Query i sees keys 0 .. i + sk - sq; with q = 0 every visible key weighs the same."""
    q, kk, v = np.zeros((1, sq, 4, 8), np.float32), randn(1, sk, 2, 8), randn(1, sk, 2, 8)
    (out,) = k("attention", q, kk, v)
    for i in range(sq):
        seen = i + sk - sq + 1
        for h in range(4):
            np.testing.assert_allclose(out[0, i, h], v[0, :seen, h // 2].mean(0), rtol=1e-5,
                                       atol=1e-6)


@pytest.mark.parametrize("sq,sk,causal", [(1, 7, True), (3, 7, True), (5, 5, True), (3, 6, False)])
def test_attention_matches_the_formula(sq, sk, causal):
    q, kk, v = randn(2, sq, 4, 8), randn(2, sk, 2, 8), randn(2, sk, 2, 8)
    bias = randn(1, 4, sq, sk)
    qpos = np.arange(sk - sq, sk) if causal else np.full(sq, sk)
    for scale in (None, 0.3):
        attrs = dict(causal=causal) if scale is None else dict(causal=causal, scale=scale)
        (out,) = k("attention", q, kk, v, bias, **attrs)
        for b in range(2):
            want = attention_formula(q[b], kk[b], v[b], qpos, np.arange(sk),
                                     lambda h, i, j: float(bias[0, h, i, j]), scale)
            np.testing.assert_allclose(out[b], want, rtol=1e-5, atol=1e-5)


# ---- block_multihead_attention: a paged cache continued by several tokens --------------------
H, KV, D, BS = 4, 2, 8, 2
ATTRS = dict(num_heads=H, kv_heads=KV, head_dim=D, block_size=BS, max_seq_len=16)


def blha(qkv, caches, enc, dec, this_time, tables, *slopes, **kw):
    """Block attention for sequences packed in order; packing values written by hand."""
    this_time = np.asarray(this_time, np.int32)
    cu = np.concatenate([[0], np.cumsum(this_time)]).astype(np.int32)
    width = max(int(this_time.max()), 1)
    cum_before = np.concatenate([[0], np.cumsum(width - this_time)[:-1]]).astype(np.int32)
    pad = np.repeat(cum_before, this_time).astype(np.int32)
    enc, dec = np.asarray(enc, np.int32), np.asarray(dec, np.int32)
    max_enc, max_dec = np.array([enc.max()], np.int32), np.array([dec.max()], np.int32)
    return k("block_multihead_attention", qkv, *caches, enc, dec, this_time, pad, cum_before, cu,
             cu, np.asarray(tables, np.int32), max_enc, max_dec, *slopes, **{**ATTRS, **kw})


def cache_with(past_k, past_v, table, blocks=8, block_size=BS):
    """Caches [blocks, kv heads, block_size, head dim] holding positions 0..len-1 of one
    sequence (past_k/past_v [len, kv heads, head dim]) in the blocks of its table."""
    ck, cv = (np.zeros((blocks, past_k.shape[1], block_size, past_k.shape[2]), np.float32)
              for _ in range(2))
    for p in range(len(past_k)):
        blk, slot = table[p // block_size], p % block_size
        ck[blk, :, slot], cv[blk, :, slot] = past_k[p], past_v[p]
    return ck, cv


TABLE = [5, 2, 7, 0]
PAST, NEW = 3, 2  # 3 cached positions, then 2 new tokens at positions 3 and 4


def test_block_attention_continuation_with_zero_queries():
    past_k, past_v = randn(PAST, KV, D), randn(PAST, KV, D)
    new_k, new_v = randn(NEW, KV, D), randn(NEW, KV, D)
    qkv = np.concatenate([np.zeros((NEW, H * D), np.float32), new_k.reshape(NEW, -1),
                          new_v.reshape(NEW, -1)], axis=1)
    out, ck, cv = blha(qkv, cache_with(past_k, past_v, TABLE), [0], [PAST], [NEW], [TABLE])
    vals = np.concatenate([past_v, new_v])
    out = out.reshape(NEW, H, D)
    for i in range(NEW):
        for h in range(H):  # position PAST + i sees positions 0 .. PAST + i
            np.testing.assert_allclose(out[i, h], vals[: PAST + i + 1, h // 2].mean(0), rtol=1e-5,
                                       atol=1e-6)
    rotated = rope_formula(new_k, np.arange(PAST, PAST + NEW))
    for i, p in enumerate(range(PAST, PAST + NEW)):
        np.testing.assert_allclose(ck[TABLE[p // BS], :, p % BS], rotated[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cv[TABLE[p // BS], :, p % BS], new_v[i])


@pytest.mark.parametrize("kw", [dict(), dict(use_neox_style=False, rope_theta=500.0),
                                dict(rope_scaling_factor=2.0), dict(use_alibi=True)],
                         ids=["neox", "interleaved", "scaled", "alibi"])
def test_block_attention_decode_matches_the_formula(kw):
    check_decode_formula(kw, SLOPES[H] if kw.get("use_alibi") else None)


@pytest.mark.parametrize("rank", [0, 1])
def test_block_attention_alibi_slopes_operand_matches_the_formula(rank):
    """The slopes operand replaces those of num_heads: rank r of 2 holding heads 4r..4r+3
    of an 8-head model uses their slopes, not those of a 4-head model."""
    mine = np.asarray(SLOPES[2 * H][rank * H:(rank + 1) * H], np.float32)
    assert not np.allclose(mine, SLOPES[H])
    check_decode_formula(dict(use_alibi=True), mine, operand=mine)


@pytest.mark.parametrize("slopes,kw,msg", [
    (TensorType(DType.f32, (H,)), {}, "alibi_slopes operand needs use_alibi"),
    (TensorType(DType.f32, (2 * H,)), {"use_alibi": True}, "alibi_slopes length"),
    (TensorType(DType.i32, (H,)), {"use_alibi": True}, "float"),
])
def test_block_attention_alibi_slopes_operand_types(slopes, kw, msg):
    op = get_op("block_multihead_attention")
    vec, table = TensorType(DType.i32, ("batch",)), TensorType(DType.i32, ("batch", 4))
    cache = TensorType(DType.f32, ("n", KV, BS, D))
    types = [TensorType(DType.f32, (3, (H + 2 * KV) * D)), cache, cache, *[vec] * 7, table,
             TensorType(DType.i32, (1,)), TensorType(DType.i32, (1,))]
    attrs = op.normalize_attrs({**ATTRS, **kw})
    assert op.infer_types(types, attrs)[0] == TensorType(DType.f32, (3, H * D))
    with pytest.raises(OpError, match=msg):
        op.infer_types(types + [slopes], attrs)


def check_decode_formula(kw, slopes, operand=None):
    """Two sequences in one batch: one continues a cache by 2 tokens (sq 2 < sk 5), the
    other decodes one token after 4 cached positions (sq 1 < sk 5); `slopes` for the
    formula (ALiBi), `operand` the alibi_slopes operand given to the op (if any)."""
    tables = [TABLE, [1, 3, 4, 6]]
    past = [randn(PAST, KV, D), randn(PAST, KV, D)], [randn(4, KV, D), randn(4, KV, D)]
    ck0, cv0 = cache_with(*past[0], tables[0])
    ck1, cv1 = cache_with(*past[1], tables[1])
    caches = (ck0 + ck1, cv0 + cv1)  # disjoint blocks
    qkv = randn(NEW + 1, (H + 2 * KV) * D)
    extra = () if operand is None else (operand,)
    out, _, _ = blha(qkv, caches, [0, 0], [PAST, 4], [NEW, 1], tables, *extra, **kw)
    theta, factor = kw.get("rope_theta", 10000.0), kw.get("rope_scaling_factor", 1.0)
    neox, alibi = kw.get("use_neox_style", True), kw.get("use_alibi", False)
    for rows, (pk, pv), start in ((slice(0, NEW), past[0], PAST), (slice(NEW, NEW + 1), past[1], 4)):
        q = qkv[rows, : H * D].reshape(-1, H, D)
        nk = qkv[rows, H * D: (H + KV) * D].reshape(-1, KV, D)
        nv = qkv[rows, (H + KV) * D:].reshape(-1, KV, D)
        qpos = np.arange(start, start + len(q))
        if not alibi:  # cached keys are stored rotated; the kernel rotates only the new ones
            q, nk = rope_formula(q, qpos, theta, factor, neox), rope_formula(nk, qpos, theta, factor, neox)
        keys, vals = np.concatenate([pk, nk]), np.concatenate([pv, nv])
        kpos = np.arange(len(keys))
        bias = (lambda h, i, j: slopes[h] * (kpos[j] - qpos[i])) if alibi else None
        want = attention_formula(q, keys, vals, qpos, kpos, bias)
        np.testing.assert_allclose(out[rows].reshape(-1, H, D), want, rtol=1e-5, atol=1e-5)
