"""fused_blha_layer (the whole decoder layer over the paged KV cache) against the layer
written out in numpy from its formula, for the three flags, on a batch where one sequence
decodes after cached positions (queries shorter than keys) and one prefills."""

import numpy as np
import pytest
from test_kernels_attention import attention_formula, cache_with, rope_formula

from llmc.compiler.ops import get_op

FORMULA_OPS = ("fused_blha_layer",)
H, KV, D, BS, HIDDEN, FFN, EPS = 4, 2, 4, 2, 16, 8, 1e-2
TABLES = np.array([[5, 2, 7, 0], [1, 3, 4, 6]], np.int32)
PAST = 3  # sequence 0: 3 cached positions, then decodes position 3; sequence 1: prefill of 2
ENC, DEC, THIS_TIME = [0, 2], [PAST, 0], [1, 2]
ATTRS = dict(num_heads=H, kv_heads=KV, head_dim=D, block_size=BS, max_seq_len=8,
             epsilon=EPS)


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    w = dict(norm=rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32),
             qkv=randn(rng, (H + 2 * KV) * D, HIDDEN, scale=0.3),
             out=randn(rng, HIDDEN, H * D, scale=0.3),
             post=rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32),
             gate_up=randn(rng, 2 * FFN, HIDDEN, scale=0.3),
             down=randn(rng, HIDDEN, FFN, scale=0.3))
    past_k, past_v = randn(rng, PAST, KV, D), randn(rng, PAST, KV, D)
    # small hidden states (0.05): the scale at which rms_norm's eps placement shows
    return w, past_k, past_v, randn(rng, 3, HIDDEN, scale=0.05), randn(rng, 3, HIDDEN, scale=0.05)


def rms(x, w):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def layer_formula(x, s0, w, past_k, past_v):
    """(down, residual sum, new k rows rotated, new v rows) for packed tokens x [3, HIDDEN]
    added to s0 (None for none): rows 0 = sequence 0 at position PAST, rows 1-2 = sequence 1."""
    s1 = x if s0 is None else x.astype(np.float64) + s0
    qkv = rms(s1, w["norm"]) @ w["qkv"].T
    q = qkv[:, : H * D].reshape(3, H, D)
    kk = qkv[:, H * D: (H + KV) * D].reshape(3, KV, D)
    v = qkv[:, (H + KV) * D:].reshape(3, KV, D)
    pos = np.array([PAST, 0, 1])
    q, kk = rope_formula(q, pos), rope_formula(kk, pos)
    a = np.concatenate([
        attention_formula(q[:1], np.concatenate([past_k, kk[:1]]), np.concatenate([past_v, v[:1]]),
                          pos[:1], np.arange(PAST + 1)),
        attention_formula(q[1:], kk[1:], v[1:], pos[1:], np.arange(2))]).reshape(3, H * D)
    s2 = a @ w["out"].T + s1
    gu = rms(s2, w["post"]) @ w["gate_up"].T
    gate, up = gu[:, :FFN], gu[:, FFN:]
    return (gate / (1 + np.exp(-gate)) * up) @ w["down"].T, s2, kk, v


def run_layer(flag, x, residual, w, past_k, past_v):
    i32 = lambda xs: np.asarray(xs, np.int32)  # noqa: E731
    ck, cv = cache_with(past_k, past_v, TABLES[0])
    # packing of widths [1, 2] in a [2, 2] id matrix: padding before each row 0, 1
    batch = [i32(ENC), i32(DEC), i32(THIS_TIME), i32([0, 1, 1]), i32([0, 1]), i32([0, 1, 3]),
             i32([0, 1, 3]), TABLES]
    args = [x, residual, w["norm"], w["qkv"], w["out"], w["post"], w["gate_up"], w["down"], ck, cv,
            *batch] + ([np.array(2)] if flag == 2 else [])
    op = get_op("fused_blha_layer")
    return op.run(args, op.normalize_attrs(dict(ATTRS, flag=flag)))


def check_cache(ck, cv, kk, v):
    for (b, p), row in zip([(0, PAST), (1, 0), (1, 1)], range(3)):
        blk, slot = TABLES[b, p // BS], p % BS
        np.testing.assert_allclose(ck[blk, :, slot], kk[row], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cv[blk, :, slot], v[row], rtol=1e-5, atol=1e-6)


def test_middle_layer(case):
    w, past_k, past_v, x, residual = case
    d, s2, ck, cv = run_layer(0, x, residual, w, past_k, past_v)
    want_d, want_s2, kk, v = layer_formula(x, residual, w, past_k, past_v)
    np.testing.assert_allclose(s2, want_s2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d, want_d, rtol=1e-4, atol=1e-5)
    check_cache(ck, cv, kk, v)
    np.testing.assert_array_equal(ck[TABLES[0, 0], :, 0], past_k[0])  # earlier positions kept


def test_begin_layer_embeds_the_ids(case):
    w, past_k, past_v, x, _ = case
    table = np.concatenate([np.zeros((5, HIDDEN), np.float32), x])  # ids 5, 6, 7 -> rows of x
    d, s2, ck, cv = run_layer(1, np.array([5, 6, 7]), table, w, past_k, past_v)
    want_d, want_s2, kk, v = layer_formula(x, None, w, past_k, past_v)
    np.testing.assert_allclose(s2, want_s2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d, want_d, rtol=1e-4, atol=1e-5)
    check_cache(ck, cv, kk, v)


def test_end_layer_adds_the_residual_and_keeps_each_sequences_last_token(case):
    w, past_k, past_v, x, residual = case
    last, ck, cv = run_layer(2, x, residual, w, past_k, past_v)
    want_d, want_s2, kk, v = layer_formula(x, residual, w, past_k, past_v)
    h = want_d + want_s2
    np.testing.assert_allclose(last, h[[0, 2]], rtol=1e-4, atol=1e-5)  # decode token, prefill end
    check_cache(ck, cv, kk, v)
