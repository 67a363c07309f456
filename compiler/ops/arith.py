"""Elementwise, reduction and matmul ops."""

from __future__ import annotations

import math

import numpy as np

from ..ir import DType, TensorType
from .registry import AttrSpec, OpError, defop
from .shapes import (
    broadcast_shapes,
    elementwise,
    expect_dim,
    expect_float,
    reduce_shape,
    same_dtype,
    unary,
)

EW = ("pure", "elementwise")


def _binary(name: str, fn, commutative: bool = False):
    traits = EW + (("commutative",) if commutative else ())
    defop(name, ("lhs", "rhs"), infer=elementwise(name), traits=traits)(
        lambda a, b: np.asarray(fn(a, b)).astype(np.result_type(a, b), copy=False)
    )


_binary("add", np.add, commutative=True)
_binary("mul", np.multiply, commutative=True)
_binary("sub", np.subtract)
_binary("div", lambda a, b: a / b if np.issubdtype(a.dtype, np.floating) else a // b)
_binary("maximum", np.maximum, commutative=True)
_binary("minimum", np.minimum, commutative=True)


def _unary(name: str, fn, doc: str):
    def kernel(x):
        return np.asarray(fn(x.astype(np.float32) if x.dtype.kind == "V" else x)).astype(
            x.dtype, copy=False
        )

    kernel.__doc__ = doc
    defop(name, ("x",), infer=unary, traits=EW)(kernel)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_unary("neg", np.negative, "Negation.")
_unary("exp", np.exp, "Exponential.")
_unary("sqrt", np.sqrt, "Square root.")
_unary("rsqrt", lambda x: 1.0 / np.sqrt(x), "Reciprocal square root.")
_unary("tanh", np.tanh, "Hyperbolic tangent.")
_unary("sin", np.sin, "Sine.")
_unary("cos", np.cos, "Cosine.")
_unary("sigmoid", _sigmoid, "Logistic sigmoid.")
_unary("silu", lambda x: x * _sigmoid(x), "SiLU (swish): x * sigmoid(x).")


def _pow_infer(x: TensorType, exponent):
    expect_float("pow", x)
    return x


@defop("pow", ("x",), attrs={"exponent": AttrSpec("float")}, infer=_pow_infer, traits=EW)
def pow_(x, exponent):
    """x ** exponent (float tensors)."""
    return np.power(x.astype(np.float32), np.float32(exponent)).astype(x.dtype)


def _gelu_infer(x: TensorType, approximate):
    if approximate not in ("none", "tanh"):
        raise OpError(f"op 'gelu': approximate must be 'none' or 'tanh', got '{approximate}'")
    return x


@defop("gelu", ("x",), attrs={"approximate": AttrSpec("str", "none")}, infer=_gelu_infer, traits=EW)
def gelu(x, approximate):
    """GELU, exact (erf) or tanh approximation."""
    xf = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * xf * (1 + np.tanh(math.sqrt(2 / math.pi) * (xf + 0.044715 * xf**3)))
    else:
        erf = np.vectorize(math.erf, otypes=[np.float64])
        y = 0.5 * xf * (1 + erf(xf / math.sqrt(2)))
    return y.astype(x.dtype)


def _swiglu_infer(x: TensorType, y: TensorType | None = None, **_):
    if y is not None:
        return TensorType(same_dtype("swiglu", x, y), broadcast_shapes("swiglu", x.shape, y.shape))
    last = x.shape[-1]
    if isinstance(last, int) and last % 2:
        raise OpError(f"op 'swiglu': last dim {last} of {x} is odd")
    half = last // 2 if isinstance(last, int) else last
    return x.with_shape(x.shape[:-1] + (half,))


@defop("swiglu", ("x", "y?"), infer=_swiglu_infer)
def swiglu(x, y=None):
    """silu(x) * y; with one operand, x is split in halves [gate | up] on the last dim."""
    if y is None:
        x, y = np.split(x, 2, axis=-1)
    return (x * _sigmoid(x) * y).astype(x.dtype)


def _cmp_infer(a: TensorType, b: TensorType, **_):
    same_dtype("compare", a, b)
    return TensorType(DType.bool, broadcast_shapes("compare", a.shape, b.shape))


defop("less", ("lhs", "rhs"), infer=_cmp_infer)(lambda a, b: np.less(a, b))
defop("equal", ("lhs", "rhs"), infer=_cmp_infer)(lambda a, b: np.equal(a, b))


def _where_infer(c: TensorType, a: TensorType, b: TensorType, **_):
    if c.dtype is not DType.bool:
        raise OpError(f"op 'where': condition must be bool, got {c}")
    return TensorType(same_dtype("where", a, b), broadcast_shapes("where", c.shape, a.shape, b.shape))


@defop("where", ("cond", "a", "b"), infer=_where_infer)
def where(c, a, b):
    """Select a where cond else b."""
    return np.where(c, a, b)


# ---- reductions ---------------------------------------------------------------
RED_ATTRS = {"axes": AttrSpec("ints", ()), "keepdims": AttrSpec("bool", False)}


def _reduce(name: str, fn):
    def infer(x: TensorType, axes, keepdims):
        return x.with_shape(reduce_shape(x.shape, axes, keepdims, name))

    def kernel(x, axes, keepdims):
        ax = tuple(axes) if axes else None
        return np.asarray(fn(x, axis=ax, keepdims=keepdims)).astype(x.dtype)

    defop(name, ("x",), attrs=RED_ATTRS, infer=infer)(kernel)


_reduce("reduce_sum", np.sum)
_reduce("reduce_mean", np.mean)
_reduce("reduce_max", np.max)


def _argmax_infer(x: TensorType, axis, keepdims):
    return TensorType(DType.i64, reduce_shape(x.shape, (axis,), keepdims, "argmax"))


@defop("argmax", ("x",), attrs={"axis": AttrSpec("int", -1), "keepdims": AttrSpec("bool", False)},
       infer=_argmax_infer)
def argmax(x, axis, keepdims):
    """Index of the maximum along `axis` (first on ties)."""
    return np.asarray(np.argmax(x, axis=axis, keepdims=keepdims)).astype(np.int64)


def _cumsum_infer(x: TensorType, axis, exclusive):
    return x


@defop("cumsum", ("x",), attrs={"axis": AttrSpec("int", -1), "exclusive": AttrSpec("bool", False)},
       infer=_cumsum_infer)
def cumsum(x, axis, exclusive):
    """Cumulative sum along `axis` (exclusive: shifted by one, starting at 0)."""
    y = np.cumsum(x, axis=axis).astype(x.dtype)
    return y - x if exclusive else y


@defop("softmax", ("x",), attrs={"axis": AttrSpec("int", -1)}, infer=unary)
def softmax(x, axis):
    """Numerically stable softmax along `axis`."""
    xf = x.astype(np.float32)
    e = np.exp(xf - xf.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


# ---- matmul ------------------------------------------------------------------
def _matmul_infer(a: TensorType, b: TensorType, transpose_a=False, transpose_b=False, op="matmul"):
    dt = same_dtype(op, a, b)
    if a.rank < 2 or b.rank < 2:
        raise OpError(f"op '{op}': operands need rank >= 2, got {a} and {b}")
    m, ka = (a.shape[-1], a.shape[-2]) if transpose_a else (a.shape[-2], a.shape[-1])
    kb, n = (b.shape[-1], b.shape[-2]) if transpose_b else (b.shape[-2], b.shape[-1])
    expect_dim(op, f"contraction dim of {b} (vs {a})", kb, ka)
    batch = broadcast_shapes(op, a.shape[:-2], b.shape[:-2])
    return TensorType(dt, batch + (m, n))


def _mm(a, b, transpose_a, transpose_b):
    if transpose_a:
        a = np.swapaxes(a, -1, -2)
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    if a.dtype.kind == "V" or a.dtype == np.float16:  # bf16/f16: accumulate in f32
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)


@defop("matmul", ("a", "b"),
       attrs={"transpose_a": AttrSpec("bool", False), "transpose_b": AttrSpec("bool", False)},
       infer=_matmul_infer)
def matmul(a, b, transpose_a, transpose_b):
    """Batched matrix product; `transpose_b` reads b as [.., n, k] (HF Linear layout)."""
    return _mm(a, b, transpose_a, transpose_b)


def _linear_infer(x: TensorType, w: TensorType, b: TensorType | None = None, transpose_w=True):
    if w.rank != 2:
        raise OpError(f"op 'linear': weight must have rank 2, got {w}")
    out = _matmul_infer(x if x.rank >= 2 else x.with_shape((1,) + x.shape), w,
                        transpose_b=transpose_w, op="linear")
    out = out.with_shape(x.shape[:-1] + (out.shape[-1],))
    if b is not None:
        expect_dim("linear", "bias length", b.shape[-1], out.shape[-1])
    return out


@defop("linear", ("x", "w", "bias?"), attrs={"transpose_w": AttrSpec("bool", True)},
       infer=_linear_infer)
def linear(x, w, bias=None, transpose_w=True):
    """x @ w^T (+ bias): `transpose_w` true for [out, in] weights (HF), false for [in, out] (Paddle)."""
    y = _mm(x, w, False, transpose_w)
    return y + bias if bias is not None else y


# ---- normalisation -----------------------------------------------------------
def _norm_infer(op):
    def infer(x: TensorType, w: TensorType, b: TensorType | None = None, **_):
        expect_float(op, x)
        expect_dim(op, "weight length", w.shape[-1], x.shape[-1])
        return x

    return infer


@defop("rms_norm", ("x", "w"), attrs={"epsilon": AttrSpec("float", 1e-6)},
       infer=_norm_infer("rms_norm"))
def rms_norm(x, w, epsilon):
    """x / sqrt(mean(x^2, -1) + eps) * w, computed in f32."""
    xf = x.astype(np.float32)
    y = xf / np.sqrt(np.mean(xf * xf, axis=-1, keepdims=True) + np.float32(epsilon))
    return (y.astype(x.dtype) * w).astype(x.dtype)


@defop("layer_norm", ("x", "w", "bias?"), attrs={"epsilon": AttrSpec("float", 1e-5)},
       infer=_norm_infer("layer_norm"))
def layer_norm(x, w, bias=None, epsilon=1e-5):
    """(x - mean) / sqrt(var + eps) * w + bias over the last dim."""
    xf = x.astype(np.float32)
    mu = xf.mean(-1, keepdims=True)
    var = ((xf - mu) ** 2).mean(-1, keepdims=True)
    y = (xf - mu) / np.sqrt(var + np.float32(epsilon)) * w
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


@defop("l2_normalize", ("x",), attrs={"axis": AttrSpec("int", -1), "epsilon": AttrSpec("float", 0.0)},
       infer=unary)
def l2_normalize(x, axis, epsilon):
    """x / max(||x||_2, eps) along `axis` (Baichuan2's NormHead normalises lm_head rows)."""
    n = np.sqrt(np.sum(x.astype(np.float32) ** 2, axis=axis, keepdims=True))
    return (x / np.maximum(n, epsilon) if epsilon else x / n).astype(x.dtype)


def _ce_infer(logits: TensorType, labels: TensorType, ignore_index, reduction):
    if labels.dtype not in (DType.i64, DType.i32):
        raise OpError(f"op 'cross_entropy': labels must be integer, got {labels}")
    if labels.rank != logits.rank - 1:
        raise OpError(f"op 'cross_entropy': labels {labels} must have rank {logits.rank - 1}")
    if reduction not in ("mean", "sum", "none"):
        raise OpError(f"op 'cross_entropy': reduction must be mean, sum or none, got '{reduction}'")
    for i, (a, b) in enumerate(zip(logits.shape[:-1], labels.shape)):
        expect_dim("cross_entropy", f"labels dim {i}", b, a)
    if reduction == "none":
        return TensorType(logits.dtype, labels.shape)
    return TensorType(logits.dtype, ())


@defop("cross_entropy", ("logits", "labels"),
       attrs={"ignore_index": AttrSpec("int", -100), "reduction": AttrSpec("str", "mean")},
       infer=_ce_infer)
def cross_entropy(logits, labels, ignore_index, reduction):
    """Softmax cross entropy over the last dim; labels equal to ignore_index count zero."""
    lf = logits.astype(np.float64)
    lse = np.log(np.exp(lf - lf.max(-1, keepdims=True)).sum(-1)) + lf.max(-1)
    valid = labels != ignore_index
    safe = np.where(valid, labels, 0)
    picked = np.take_along_axis(lf, safe[..., None], axis=-1)[..., 0]
    loss = np.where(valid, lse - picked, 0.0)
    if reduction == "none":
        return loss.astype(logits.dtype)
    if reduction == "sum":
        return np.asarray(loss.sum(), dtype=logits.dtype)
    return np.asarray(loss.sum() / max(int(valid.sum()), 1), dtype=logits.dtype)
