"""Paddle inference ops: inferred types vs kernels, and semantics checked against the
core ops (rope, attention, rms_norm, swiglu) through independent computations."""

import numpy as np
import pytest

from llmc.compiler.ir import DType, TensorType
from llmc.compiler.ops import OpError, get_op
from llmc.compiler.ops.nn import alibi_slopes


def k(kind, *arrays, **attrs):
    """Run one op's reference kernel with schema-defaulted attrs."""
    op = get_op(kind)
    return op.run(list(arrays), op.normalize_attrs(attrs))


def infer(kind, *arrays, **attrs):
    op = get_op(kind)
    types = [TensorType(DType.from_np(np.asarray(a).dtype), np.asarray(a).shape) for a in arrays]
    return op.infer_types(types, op.normalize_attrs(attrs))


def assert_types_match(kind, *arrays, **attrs):
    """Inferred types equal the kernel's results (symbolic dims bound consistently)."""
    inferred, results = infer(kind, *arrays, **attrs), k(kind, *arrays, **attrs)
    assert len(inferred) == len(results)
    bound = {}
    for t, r in zip(inferred, results):
        r = np.asarray(r)
        assert r.dtype == t.dtype.np, (kind, t, r.dtype)
        assert r.ndim == t.rank, (kind, t, r.shape)
        for d, n in zip(t.shape, r.shape):
            if isinstance(d, int):
                assert d == n, (kind, t, r.shape)
            elif d != "?":
                assert bound.setdefault(d, n) == n, (kind, d, n)


def i32(*xs):
    return np.asarray(xs, np.int32)


def packing(ids, lens):
    """get_padding_offset's operands, computed the way the inference graph does."""
    max_len = ids.shape[1]
    cum = np.cumsum(max_len - lens).astype(np.int32)
    return k("get_padding_offset", ids, cum, np.asarray(lens.sum(), np.int32), lens)


IDS = np.arange(100, 112, dtype=np.int64).reshape(3, 4)
LENS = i32(3, 1, 2)


def test_get_padding_offset_packs_prefixes():
    packed, cum_out, pad, cu_q, cu_k = packing(IDS, LENS)
    want, want_pad, start = [], [], []
    padding_before = 0
    for b, n in enumerate(LENS):
        start.append(len(want))
        want += list(IDS[b, :n])
        want_pad += [padding_before] * n
        padding_before += IDS.shape[1] - n
    np.testing.assert_array_equal(packed, want)
    np.testing.assert_array_equal(pad, want_pad)
    np.testing.assert_array_equal(cum_out, [0, 1, 4])
    np.testing.assert_array_equal(cu_q, start + [len(want)])
    np.testing.assert_array_equal(cu_k, cu_q)
    # padding_offset maps a packed index back to its padded one: t + pad[t]
    np.testing.assert_array_equal(IDS.reshape(-1)[np.arange(len(want)) + pad], want)


def test_rebuild_padding_takes_last_prompt_token_or_the_decode_token():
    h = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)
    _, cum_out, _, _, _ = packing(IDS, LENS)
    enc, dec = i32(3, 0, 0), i32(0, 7, 0)  # seq 0 prefill, seq 1 decode, seq 2 stopped
    out = k("rebuild_padding", h, cum_out, dec, enc, np.asarray(4, np.int64))[0]
    np.testing.assert_array_equal(out, [h[2], h[3], [0, 0]])
    enc = i32(3, 1, 2)
    out = k("rebuild_padding", h, cum_out, i32(0, 0, 0), enc, np.asarray(4, np.int64))[0]
    np.testing.assert_array_equal(out, [h[2], h[3], h[5]])


def test_blha_get_max_len():
    enc, dec = k("blha_get_max_len", i32(3, 0, 5), i32(0, 9, 2), i32(0, 0, 0))
    assert enc.tolist() == [5] and dec.tolist() == [9]
    enc, dec = k("blha_get_max_len", i32(3, 0, 5), i32(0, 9, 2), i32(0, 0))
    assert enc.tolist() == [3] and dec.tolist() == [9]


def test_fused_rms_norm_and_residual_layernorm():
    rng = np.random.default_rng(0)
    shapes = ((5, 8), (5, 8), (8,), (8,))
    x, r, w, bias = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    out, res = k("fused_rms_norm", x, w, r, epsilon=1e-5)
    np.testing.assert_array_equal(res, x + r)
    np.testing.assert_allclose(out, k("rms_norm", x + r, w, epsilon=1e-5)[0], rtol=1e-6)
    out, res = k("fused_rms_norm", x, w, epsilon=1e-5)
    np.testing.assert_array_equal(res, x)
    np.testing.assert_allclose(out, k("rms_norm", x, w, epsilon=1e-5)[0], rtol=1e-6)
    out, res = k("fused_bias_residual_layernorm", x, r)
    np.testing.assert_array_equal(out, x + r)
    np.testing.assert_array_equal(res, x + r)
    out, res = k("fused_bias_residual_layernorm", x, r, w, bias, residual_alpha=0.5)
    np.testing.assert_allclose(out, k("layer_norm", x + 0.5 * r, w, bias)[0], rtol=1e-5)


@pytest.mark.parametrize("act", ["swiglu", "geglu", "gelu", "silu", "relu"])
def test_fused_bias_act(act):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    got = k("fused_bias_act", x, bias, act_method=act)[0]
    y = x + bias
    gate, up = y[:, :4], y[:, 4:]
    want = {"swiglu": k("swiglu", gate, up)[0], "geglu": k("gelu", gate)[0] * up,
            "gelu": k("gelu", y)[0], "silu": k("silu", y)[0], "relu": np.maximum(y, 0)}[act]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert_types_match("fused_bias_act", x, bias, act_method=act)


# ---- block_multihead_attention ---------------------------------------------------------
H, KV, D, BS = 4, 2, 8, 2


def attn_attrs(**kw):
    base = dict(num_heads=H, kv_heads=KV, head_dim=D, block_size=BS, max_seq_len=64)
    return {**base, **kw}


def blha(qkv, caches, enc, dec, this_time, tables, **kw):
    """Run block attention with the packing values derived from seq_lens_this_time."""
    width = max(int(this_time.max()), 1)
    ids = np.zeros((len(this_time), width), np.int64)
    _, cum_out, pad, cu_q, cu_k = packing(ids, this_time)
    max_enc, max_dec = k("blha_get_max_len", enc, dec, this_time)
    args = (qkv, *caches, enc, dec, this_time, pad, cum_out, cu_q, cu_k, tables, max_enc, max_dec)
    assert_types_match("block_multihead_attention", *args, **attn_attrs(**kw))
    return k("block_multihead_attention", *args, **attn_attrs(**kw))


def reference_attention(qkv, n, **kw):
    """Prefill of one sequence through the core rope + causal attention ops."""
    q = qkv[:, : H * D].reshape(1, n, H, D)
    kk = qkv[:, H * D: (H + KV) * D].reshape(1, n, KV, D)
    v = qkv[:, (H + KV) * D:].reshape(1, n, KV, D)
    pos = np.arange(n, dtype=np.int64)
    bias = None
    if kw.get("use_alibi"):
        bias = k("alibi_bias", pos[None], num_heads=H)[0]
    else:
        rope = dict(theta=kw.get("rope_theta", 10000.0),
                    scaling_factor=kw.get("rope_scaling_factor", 1.0),
                    style="neox" if kw.get("use_neox_style", True) else "interleaved")
        q, kk = k("rope", q, pos, **rope)[0], k("rope", kk, pos, **rope)[0]
    out = k("attention", q, kk, v, *([bias] if bias is not None else []))[0]
    return out.reshape(n, H * D), kk[0], v[0]


def empty_caches(num_blocks):
    return [np.zeros((num_blocks, KV, BS, D), np.float32) for _ in range(2)]


VARIANTS = [dict(), dict(rope_theta=500.0, rope_scaling_factor=2.0), dict(use_neox_style=False),
            dict(use_alibi=True)]


@pytest.mark.parametrize("kw", VARIANTS, ids=["rope", "theta_scaling", "interleaved", "alibi"])
def test_prefill_matches_core_attention_and_fills_cache(kw):
    n = 5
    qkv = np.random.default_rng(2).standard_normal((n, (H + 2 * KV) * D)).astype(np.float32)
    tables = i32(6, 1, 4).reshape(1, 3)  # scattered, non-contiguous blocks
    out, ck, cv = blha(qkv, empty_caches(8), i32(n), i32(0), i32(n), tables, **kw)
    want, k_rot, v = reference_attention(qkv, n, **kw)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    for p in range(n):
        blk, slot = tables[0, p // BS], p % BS
        np.testing.assert_allclose(ck[blk, :, slot], k_rot[p], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(cv[blk, :, slot], v[p])
    untouched = [b for b in range(8) if b not in tables[0]]
    assert not ck[untouched].any() and not cv[untouched].any()


@pytest.mark.parametrize("kw", VARIANTS, ids=["rope", "theta_scaling", "interleaved", "alibi"])
def test_decode_steps_reproduce_prefill_rows(kw):
    """Prefill 2 tokens, then decode 3 one at a time, next to another sequence in the same
    batch: every decode output equals the corresponding row of a full prefill."""
    n = 5
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((n, (H + 2 * KV) * D)).astype(np.float32)
    other = rng.standard_normal((n, (H + 2 * KV) * D)).astype(np.float32)
    want, _, _ = reference_attention(qkv, n, **kw)
    want_other, _, _ = reference_attention(other, n, **kw)
    tables = i32(5, 0, 3, 2, 7, 1).reshape(2, 3)
    caches = empty_caches(8)
    out, *caches = blha(np.concatenate([qkv[:2], other[:3]]), caches, i32(2, 3), i32(0, 0),
                        i32(2, 3), tables, **kw)
    np.testing.assert_allclose(out[:2], want[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2:], want_other[:3], rtol=1e-5, atol=1e-6)
    for j, p in enumerate(range(2, n)):
        p1 = 3 + j  # seq 1 runs one position ahead and stops (this_time 0) after its 5th token
        live = p1 < n
        rows = [qkv[p]] + ([other[p1]] if live else [])
        out, *caches = blha(np.stack(rows), caches, i32(0, 0), i32(p, p1 if live else 0),
                            i32(1, int(live)), tables, **kw)
        np.testing.assert_allclose(out[0], want[p], rtol=1e-5, atol=1e-6)
        if live:
            np.testing.assert_allclose(out[1], want_other[p1], rtol=1e-5, atol=1e-6)


def test_alibi_uses_the_non_power_of_two_slopes():
    slopes = alibi_slopes(6)
    assert len(slopes) == 6 and slopes[0] == pytest.approx(2 ** -2)
    qkv = np.random.default_rng(4).standard_normal((3, (6 + 2 * 6) * D)).astype(np.float32)
    attrs = dict(num_heads=6, kv_heads=6, head_dim=D, block_size=4, max_seq_len=8, use_alibi=True)
    ids = np.zeros((1, 3), np.int64)
    _, cum_out, pad, cu_q, cu_k = packing(ids, i32(3))
    caches = [np.zeros((1, 6, 4, D), np.float32)] * 2
    out = k("block_multihead_attention", qkv, *caches, i32(3), i32(0), i32(3), pad, cum_out, cu_q,
            cu_k, i32(0).reshape(1, 1), i32(3), i32(0), **attrs)[0]
    q, kk, v = (qkv[:, i * 6 * D: (i + 1) * 6 * D].reshape(1, 3, 6, D) for i in range(3))
    bias = k("alibi_bias", np.arange(3)[None], num_heads=6)[0]
    np.testing.assert_allclose(out, k("attention", q, kk, v, bias)[0].reshape(3, -1), rtol=1e-5,
                               atol=1e-6)


def test_blha_rejects_overflowing_block_table():
    qkv = np.zeros((5, (H + 2 * KV) * D), np.float32)
    with pytest.raises(ValueError, match="needs 5 positions"):
        blha(qkv, empty_caches(4), i32(5), i32(0), i32(5), i32(0, 1).reshape(1, 2))


@pytest.mark.parametrize("types,attrs,msg", [
    ([TensorType(DType.f32, (3, 40))], {}, "qkv width"),
    ([TensorType(DType.f32, (3, 64))], {"kv_heads": 3}, "not a multiple"),
    ([TensorType(DType.f32, (3, 64))], {"block_size": 4}, "block size"),
])
def test_blha_infer_errors(types, attrs, msg):
    cache = TensorType(DType.f32, ("n", KV, BS, D))
    vec = TensorType(DType.i32, ("batch",))
    rest = [vec] * 7 + [TensorType(DType.i32, ("batch", 4))] + [TensorType(DType.i32, (1,))] * 2
    op = get_op("block_multihead_attention")
    with pytest.raises(OpError, match=msg):
        op.infer_types(types + [cache, cache] + rest, op.normalize_attrs(attn_attrs(**attrs)))


def test_packing_ops_types_match_kernels():
    lens = LENS
    cum = np.cumsum(4 - lens).astype(np.int32)
    assert_types_match("get_padding_offset", IDS, cum, np.asarray(6, np.int32), lens)
    h = np.ones((6, 2), np.float32)
    assert_types_match("rebuild_padding", h, cum, i32(0, 0, 0), lens, np.asarray(4, np.int64))
    assert_types_match("blha_get_max_len", lens, lens, lens)
    x = np.ones((6, 4), np.float32)
    assert_types_match("fused_rms_norm", x, np.ones(4, np.float32), x)
    assert_types_match("fused_rms_norm", x, np.ones(4, np.float32))
    assert_types_match("fused_bias_residual_layernorm", x, x)


def test_fused_bias_act_rejects_unknown_activation():
    with pytest.raises(OpError, match="act_method"):
        infer("fused_bias_act", np.ones((2, 4), np.float32), act_method="tanh")
