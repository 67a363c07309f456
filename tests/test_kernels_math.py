"""Elementwise, reduction, matmul, norm and loss kernels against values written from each
op's formula (exact known values where one exists), never against another in-repo kernel.

The norm cases cover the scales where eps placement shows: hidden states of 1e-2 and an eps
comparable to mean(x^2). With N(0, 1) inputs and eps 1e-5, `sqrt(ms) + eps` and
`sqrt(ms + eps)` differ by ~5e-6 and every tolerance passes both.
"""

import math

import numpy as np
import pytest

from llmc.compiler.ops import get_op

LN3 = math.log(3.0)


def k(kind, *arrays, **attrs):
    """One op's reference kernel, attrs defaulted as in the IR."""
    op = get_op(kind)
    return op.run([np.asarray(a) for a in arrays], op.normalize_attrs(attrs))


def f32(*xs):
    return np.asarray(xs, np.float32)


FORMULA_OPS = (
    "add", "sub", "mul", "div", "maximum", "minimum", "neg", "exp", "sqrt", "rsqrt", "tanh",
    "sin", "cos", "sigmoid", "silu", "pow", "gelu", "swiglu", "less", "equal", "where",
    "reduce_sum", "reduce_mean", "reduce_max", "argmax", "cumsum", "softmax", "matmul", "linear",
    "rms_norm", "layer_norm", "l2_normalize", "cross_entropy", "add_rms_norm", "lm_head",
    "fused_rms_norm", "fused_bias_residual_layernorm", "fused_bias_act",
)


# ---- elementwise -------------------------------------------------------------------------
@pytest.mark.parametrize("kind,a,b,want", [
    ("add", f32(1.5, -2), f32(0.25), f32(1.75, -1.75)),
    ("sub", f32(1.5, -2), f32(0.25, 1), f32(1.25, -3)),
    ("mul", f32(1.5, -2), f32(-4, 0.5), f32(-6, -1)),
    ("div", f32(1, -3), f32(4, 2), f32(0.25, -1.5)),
    ("div", np.array([7, -7, 6]), np.array([2, 2, 3]), np.array([3, -4, 2])),  # ints: floor
    ("maximum", f32(1, -2, 3), f32(0, 0, 4), f32(1, 0, 4)),
    ("minimum", f32(1, -2, 3), f32(0, 0, 4), f32(0, -2, 3)),
    ("less", f32(1, 2, 3), f32(2, 2, 2), np.array([True, False, False])),
    ("equal", np.array([1, 2, 3]), np.array([1, 0, 3]), np.array([True, False, True])),
])
def test_binary(kind, a, b, want):
    (got,) = k(kind, a, b)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind,x,want", [
    ("neg", f32(1.5, -2, 0), f32(-1.5, 2, 0)),
    ("exp", f32(0, 1, math.log(2)), f32(1, math.e, 2)),
    ("sqrt", f32(4, 0.25, 2), f32(2, 0.5, math.sqrt(2))),
    ("rsqrt", f32(4, 0.25, 1e-4), f32(0.5, 2, 100)),
    ("tanh", f32(0, LN3, -LN3), f32(0, 0.8, -0.8)),  # (e^2x - 1) / (e^2x + 1) = 8 / 10
    ("sin", f32(0, math.pi / 6, -math.pi / 2), f32(0, 0.5, -1)),
    ("cos", f32(0, math.pi / 3, math.pi), f32(1, 0.5, -1)),
    ("sigmoid", f32(0, LN3, -LN3), f32(0.5, 0.75, 0.25)),  # 1 / (1 + e^-x)
    ("silu", f32(0, LN3, -LN3), f32(0, 0.75 * LN3, -0.25 * LN3)),  # x * sigmoid(x)
])
def test_unary(kind, x, want):
    (got,) = k(kind, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_pow():
    np.testing.assert_allclose(k("pow", f32(2, 9, 4), exponent=3.0)[0], f32(8, 729, 64))
    np.testing.assert_allclose(k("pow", f32(2, 9, 4), exponent=0.5)[0], f32(math.sqrt(2), 3, 2),
                               rtol=1e-6)


def test_gelu_exact_and_tanh():
    x = f32(-1, 0, 1, 2)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    np.testing.assert_allclose(k("gelu", x)[0], x * phi, rtol=1e-6)
    np.testing.assert_allclose(k("gelu", f32(1))[0], f32(0.8413447460685429), rtol=1e-7)
    inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    np.testing.assert_allclose(k("gelu", x, approximate="tanh")[0], 0.5 * x * (1 + np.tanh(inner)),
                               rtol=1e-6)
    assert abs(k("gelu", f32(1), approximate="tanh")[0][0] - 0.8411920) < 1e-6


def test_swiglu_one_and_two_operands():
    gate, up = f32(0, LN3, -LN3), f32(2, 4, 4)
    want = f32(0, 3 * LN3, -LN3)  # silu(gate) * up
    np.testing.assert_allclose(k("swiglu", gate, up)[0], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(k("swiglu", np.concatenate([gate, up]))[0], want, rtol=1e-6,
                               atol=1e-7)


def test_where():
    got = k("where", np.array([True, False, True]), f32(1, 2, 3), f32(-1))[0]
    np.testing.assert_array_equal(got, f32(1, -1, 3))


# ---- reductions, matmul -------------------------------------------------------------------
X23 = f32([1, 2, 3], [4, 5, 9])


def test_reductions():
    np.testing.assert_array_equal(k("reduce_sum", X23, axes=(1,))[0], f32(6, 18))
    np.testing.assert_array_equal(k("reduce_sum", X23)[0], f32(24))
    np.testing.assert_array_equal(k("reduce_mean", X23, axes=(0,), keepdims=True)[0],
                                  f32([2.5, 3.5, 6]))
    np.testing.assert_array_equal(k("reduce_max", X23, axes=(-1,))[0], f32(3, 9))


def test_argmax_takes_the_first_of_ties():
    x = f32([1, 3, 3, 0], [7, 7, 2, 7])
    np.testing.assert_array_equal(k("argmax", x)[0], np.array([1, 0]))
    np.testing.assert_array_equal(k("argmax", x, axis=0, keepdims=True)[0], [[1, 1, 0, 1]])
    np.testing.assert_array_equal(k("argmax", f32([2, 5, 5, 5]))[0], [1])


def test_cumsum_inclusive_and_exclusive():
    x = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    np.testing.assert_array_equal(k("cumsum", x)[0], [[1, 3, 6], [4, 9, 15]])
    np.testing.assert_array_equal(k("cumsum", x, exclusive=True)[0], [[0, 1, 3], [0, 4, 9]])
    np.testing.assert_array_equal(k("cumsum", x, axis=0)[0], [[1, 2, 3], [5, 7, 9]])


def test_softmax_known_values():
    x = np.log(f32([1, 2, 5], [3, 3, 2]))  # softmax(log p) = p / sum(p)
    np.testing.assert_allclose(k("softmax", x)[0], f32([1, 2, 5], [3, 3, 2]) / f32([8], [8]),
                               rtol=1e-6)
    big = f32(1000, 1000 + LN3)  # shift invariance: exp(1000) would overflow
    d = float(big[1]) - 1000.0  # ln 3 as far as f32 near 1000 holds it
    want = np.array([1, math.exp(d)]) / (1 + math.exp(d))
    np.testing.assert_allclose(k("softmax", big)[0], want, rtol=1e-6)
    np.testing.assert_allclose(k("softmax", np.log(f32([1, 3], [1, 1])), axis=0)[0],
                               f32([0.5, 0.75], [0.5, 0.25]), rtol=1e-6)


def test_matmul_and_linear():
    a, b = f32([1, 2], [3, 4]), f32([5, 6], [7, 8])
    np.testing.assert_array_equal(k("matmul", a, b)[0], f32([19, 22], [43, 50]))
    np.testing.assert_array_equal(k("matmul", a, b, transpose_b=True)[0], f32([17, 23], [39, 53]))
    np.testing.assert_array_equal(k("matmul", a, b, transpose_a=True)[0], f32([26, 30], [38, 44]))
    x, w_out_in, bias = f32([1, 2]), f32([1, 0], [1, 1], [0, -1]), f32(0.5, 0, 0)
    np.testing.assert_array_equal(k("linear", x, w_out_in)[0], f32([1, 3, -2]))
    np.testing.assert_array_equal(k("linear", x, w_out_in.T, bias, transpose_w=False)[0],
                                  f32([1.5, 3, -2]))


# ---- norms ------------------------------------------------------------------------------
def rms_norm_formula(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w, in float64."""
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


@pytest.mark.parametrize("x,eps,want", [
    (f32(3, 4), 3.5, f32(0.75, 1.0)),  # ms 12.5, + eps = 16
    (f32(0.03, 0.04), 3.5e-4, f32(0.75, 1.0)),  # ms 1.25e-3, + eps = 1.6e-3 = 0.04^2
    (f32(0, 0), 0.25, f32(0, 0)),
    (f32(1, -1), 0.0, f32(1, -1)),
])
def test_rms_norm_exact_values(x, eps, want):
    np.testing.assert_allclose(k("rms_norm", x, f32(1, 1), epsilon=eps)[0], want, rtol=1e-6)
    np.testing.assert_allclose(k("rms_norm", x, f32(2, -1), epsilon=eps)[0], want * f32(2, -1),
                               rtol=1e-6)


@pytest.mark.parametrize("scale,eps", [(1e-2, 1e-5), (1e-2, 1e-6), (1e-3, 1e-6), (1.0, 0.5),
                                       (1.0, 4.0)])
def test_rms_norm_small_inputs_and_large_eps(scale, eps):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 64)) * scale).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    np.testing.assert_allclose(k("rms_norm", x, w, epsilon=eps)[0], rms_norm_formula(x, w, eps),
                               rtol=2e-5, atol=1e-7)


def test_fused_norms_exact_values():
    x, r, w = f32([1, 2]), f32([2, 2]), f32(1, 2)  # x + r = [3, 4]
    out, s = k("add_rms_norm", x, r, w, epsilon=3.5)
    np.testing.assert_array_equal(s, f32([3, 4]))
    np.testing.assert_allclose(out, f32([0.75, 2.0]), rtol=1e-6)
    out, s = k("fused_rms_norm", x * 1e-2, w, r * 1e-2, epsilon=3.5e-4)
    np.testing.assert_allclose(s, f32([0.03, 0.04]), rtol=1e-6)
    np.testing.assert_allclose(out, f32([0.75, 2.0]), rtol=1e-5)
    out, s = k("fused_rms_norm", f32([3, 4]), w, epsilon=3.5)  # no residual: sum is x
    np.testing.assert_array_equal(s, f32([3, 4]))
    np.testing.assert_allclose(out, f32([0.75, 2.0]), rtol=1e-6)


def test_layer_norm_exact_values():
    x, w, b = f32([1, 3], [5, 5]), f32(2, 1), f32(0.5, -0.5)
    # row 0: mean 2, var 1, + eps 3 = 4 -> (x - 2) / 2; row 1: var 0 -> 0 / sqrt(3)
    want = f32([-0.5 * 2 + 0.5, 0.5 * 1 - 0.5], [0.5, -0.5])
    np.testing.assert_allclose(k("layer_norm", x, w, b, epsilon=3.0)[0], want, rtol=1e-6)
    np.testing.assert_allclose(k("layer_norm", x, w, epsilon=3.0)[0], want - b, rtol=1e-6,
                               atol=1e-7)
    out, res = k("fused_bias_residual_layernorm", f32([0, 2]), f32([2, 2]), w, b, epsilon=3.0,
                 residual_alpha=0.5)  # residual_out = x + 0.5 * r = [1, 3]
    np.testing.assert_array_equal(res, f32([1, 3]))
    np.testing.assert_allclose(out, want[:1], rtol=1e-6)
    out, res = k("fused_bias_residual_layernorm", f32([0, 2]), f32([2, 2]))
    np.testing.assert_array_equal(out, f32([2, 4]))
    np.testing.assert_array_equal(res, f32([2, 4]))


def test_l2_normalize():
    np.testing.assert_allclose(k("l2_normalize", f32([3, 4], [0, 2]))[0],
                               f32([0.6, 0.8], [0, 1]), rtol=1e-6)
    # eps bounds the norm from below: ||[0.03, 0.04]|| = 0.05 < 0.1
    np.testing.assert_allclose(k("l2_normalize", f32([0.03, 0.04]), epsilon=0.1)[0],
                               f32([0.3, 0.4]), rtol=1e-6)
    np.testing.assert_allclose(k("l2_normalize", f32([3, 0], [4, 1]), axis=0)[0],
                               f32([0.6, 0], [0.8, 1]), rtol=1e-6)


def test_lm_head_exact_values():
    x, nw = f32([3, 4]), f32(1, 1)
    w = f32([1, 0], [0, 1], [1, 1])  # [vocab, hidden]
    # rms_norm([3, 4], eps 3.5) = [0.75, 1]
    np.testing.assert_allclose(k("lm_head", x, nw, w, epsilon=3.5)[0], f32([0.75, 1, 1.75]),
                               rtol=1e-6)
    np.testing.assert_allclose(k("lm_head", x, nw, w.T, epsilon=3.5, transpose_w=False)[0],
                               f32([0.75, 1, 1.75]), rtol=1e-6)


def test_cross_entropy_known_values():
    logits = np.log(f32([1, 3], [1, 1], [2, 2]))  # probabilities [1/4, 3/4], [1/2, 1/2], ...
    labels = np.array([1, 0, -100])
    each = [-math.log(0.75), -math.log(0.5), 0.0]
    np.testing.assert_allclose(k("cross_entropy", logits, labels, reduction="none")[0], each,
                               rtol=1e-6)
    np.testing.assert_allclose(k("cross_entropy", logits, labels, reduction="sum")[0], sum(each),
                               rtol=1e-6)
    np.testing.assert_allclose(k("cross_entropy", logits, labels)[0], sum(each) / 2, rtol=1e-6)
    np.testing.assert_allclose(k("cross_entropy", logits, np.array([-100] * 3))[0], 0.0)


@pytest.mark.parametrize("act,want", [
    # x + bias = [0, ln3, 2, 4]; gated ones split it into gate [0, ln3] and up [2, 4]
    ("swiglu", f32(0, 3 * LN3)),
    ("geglu", f32(0, 4 * LN3 * 0.5 * (1 + math.erf(LN3 / math.sqrt(2))))),
    ("silu", f32(0, 0.75 * LN3, 2 / (1 + math.exp(-2)), 4 / (1 + math.exp(-4)))),
    ("relu", f32(0, LN3, 2, 4)),
    ("gelu", f32(*[v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (0, LN3, 2, 4)])),
])
def test_fused_bias_act(act, want):
    x, bias = f32(-1, LN3 - 1, 2, 5), f32(1, 1, 0, -1)
    np.testing.assert_allclose(k("fused_bias_act", x, bias, act_method=act)[0], want, rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(k("fused_bias_act", x + bias, act_method=act)[0], want,
                               rtol=1e-6, atol=1e-7)
    if act == "relu":
        np.testing.assert_array_equal(k("fused_bias_act", f32(-2, 3), act_method=act)[0], f32(0, 3))
