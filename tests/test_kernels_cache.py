"""The cache-form kernels (compiler/ops/cache.py) against values written from their formulas."""

import math

import numpy as np
import pytest

from llmc.compiler.ops import get_op

FORMULA_OPS = ("kv_cache_update", "cached_attention")


def kernel(name):
    """The op's reference kernel as the interpreter calls it (attrs defaulted)."""
    op = get_op(name)

    def call(*arrays, **attrs):
        out = op.run([np.asarray(a) for a in arrays], op.normalize_attrs(attrs))
        return out[0] if len(out) == 1 else out

    return call


def test_kv_cache_update_writes_each_row_at_its_length():
    past = np.zeros((2, 1, 4, 1), np.float32)
    new = np.array([[[[7], [8]]], [[[5], [6]]]], np.float32)  # [b=2, kv=1, seq=2, d=1]
    out = kernel("kv_cache_update")(past, new, np.array([0, 2]))
    assert out[:, 0, :, 0].tolist() == [[7, 8, 0, 0], [0, 0, 5, 6]]
    assert not past.any(), "the input buffer is not changed"


def test_kv_cache_update_refuses_overflow():
    with pytest.raises(ValueError, match="overflow"):
        kernel("kv_cache_update")(np.zeros((1, 1, 2, 1), np.float32),
                                  np.zeros((1, 1, 2, 1), np.float32), np.array([1]))


def test_cached_attention_decode_step_is_the_softmax_weighted_mean():
    """One query (d=1) over a cache of 2 values plus the new one: scores q*k/sqrt(1)."""
    past_k = np.array([[[[1.0], [2.0], [0.0], [0.0]]]], np.float32)  # [b, kv, max_len=4, d]
    past_v = np.array([[[[10.0], [20.0], [0.0], [0.0]]]], np.float32)
    q = np.array([[[[1.0]]]], np.float32)  # [b, seq=1, hq=1, d=1]
    k = np.array([[[[3.0]]]], np.float32)
    v = np.array([[[[30.0]]]], np.float32)
    out, pk, pv = kernel("cached_attention")(q, k, v, past_k, past_v, np.array([2]))
    w = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    assert out[0, 0, 0, 0] == pytest.approx(float(w @ [10.0, 20.0, 30.0]), rel=1e-6)
    assert pk[0, 0, :, 0].tolist() == [1, 2, 3, 0] and pv[0, 0, :, 0].tolist() == [10, 20, 30, 0]


def test_cached_attention_prefill_is_causal_and_scaled():
    """Two new tokens on an empty cache: token 0 sees only itself, token 1 both (scale 0.5)."""
    z = np.zeros((1, 1, 3, 1), np.float32)
    q = np.array([[[[2.0]], [[2.0]]]], np.float32)  # [b, seq=2, hq=1, d=1]
    k = np.array([[[[1.0]], [[3.0]]]], np.float32)
    v = np.array([[[[4.0]], [[8.0]]]], np.float32)
    out, _, _ = kernel("cached_attention")(q, k, v, z, z, np.array([0]), scale=0.5)
    s = np.array([2 * 1 * 0.5, 2 * 3 * 0.5])
    w = np.exp(s) / np.exp(s).sum()
    assert out[0, 0, 0, 0] == pytest.approx(4.0)
    assert out[0, 1, 0, 0] == pytest.approx(float(w @ [4.0, 8.0]), rel=1e-6)


def test_cached_attention_groups_heads_and_adds_bias():
    """Two query heads share one kv head; a bias of -inf on slot 0 hides it for head 1."""
    past_k = np.array([[[[1.0], [0.0]]]], np.float32)
    past_v = np.array([[[[6.0], [0.0]]]], np.float32)
    q = np.ones((1, 1, 2, 1), np.float32)
    k, v = np.full((1, 1, 1, 1), 1.0, np.float32), np.full((1, 1, 1, 1), 2.0, np.float32)
    bias = np.zeros((1, 2, 1, 2), np.float32)
    bias[0, 1, 0, 0] = -np.inf
    out, _, _ = kernel("cached_attention")(q, k, v, past_k, past_v, np.array([1]), bias)
    assert out[0, 0, 0, 0] == pytest.approx(4.0)  # equal scores: mean of 6 and 2
    assert out[0, 0, 1, 0] == pytest.approx(2.0)
    assert math.isfinite(float(out.sum()))
