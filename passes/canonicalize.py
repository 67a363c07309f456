"""Canonicalization: algebraic no-ops removed, chains of layout ops composed."""

from __future__ import annotations

from llmc.compiler.ir import Value
from llmc.compiler.passmanager import register_pass
from llmc.compiler.rewrite import P, Rule, rule

from .fuse_common import RulePass, const_scalar

x = P.var("x")


def neutral(m, target: float) -> bool:
    """The matched constant `c` holds only `target` (and at least one element), and the
    op `a` applying it leaves x's type alone."""
    return const_scalar(m["c"].output) == target and same_type(m["x"], m["a"].output)


def same_type(a: Value, b: Value) -> bool:
    return a.type == b.type


@rule(P("reshape", P("reshape", x, name="inner"), name="outer"))
def reshape_reshape(rw, x, inner, outer):
    """reshape(reshape(x)) -> reshape(x) when the outer 0s can be resolved."""
    mid = inner.outputs[0].type.shape
    shape = []
    for i, d in enumerate(outer.attrs["shape"]):
        if d != 0:
            shape.append(d)
        elif isinstance(mid[i], int):
            shape.append(mid[i])
        elif i < len(inner.attrs["shape"]) and inner.attrs["shape"][i] == 0:
            shape.append(0)
        else:
            return None
    return rw.op("reshape", x, shape=shape)


@rule(
    P("reshape", x, name="r"),
    check=lambda m: (
        same_type(m["x"], m["r"].outputs[0])
        and (m["x"].type.is_static or all(d == 0 for d in m["r"].attrs["shape"]))
    ),
)
def reshape_identity(rw, x, r):
    return x


@rule(P("transpose", P("transpose", x, name="inner"), name="outer"))
def transpose_transpose(rw, x, inner, outer):
    p1, p2 = inner.attrs["perm"], outer.attrs["perm"]
    perm = [p1[i] for i in p2]
    if perm == list(range(len(perm))):
        return x
    return rw.op("transpose", x, perm=perm)


@rule(
    P("transpose", x, name="t"),
    check=lambda m: list(m["t"].attrs["perm"]) == sorted(m["t"].attrs["perm"]),
)
def transpose_identity(rw, x, t):
    return x


@rule(P(("add", "sub"), x, P("constant", name="c"), name="a"), check=lambda m: neutral(m, 0.0))
def add_sub_zero(rw, x, c, a):
    """x + 0, 0 + x (add commutes), x - 0 → x; 0 - x stays."""
    return x


@rule(P(("mul", "div"), x, P("constant", name="c"), name="a"), check=lambda m: neutral(m, 1.0))
def mul_one(rw, x, c, a):
    """x * 1, 1 * x (mul commutes), x / 1 → x; 1 / x stays."""
    return x


@rule(P("cast", x, name="c"), check=lambda m: m["c"].attrs["dtype"] is m["x"].type.dtype)
def cast_identity(rw, x, c):
    return x


@rule(P("neg", P("neg", x)))
def neg_neg(rw, x):
    return x


CANONICAL_RULES: tuple[Rule, ...] = (
    reshape_reshape,
    reshape_identity,
    transpose_transpose,
    transpose_identity,
    add_sub_zero,
    mul_one,
    cast_identity,
    neg_neg,
)


@register_pass
class Canonicalize(RulePass):
    """Remove algebraic no-ops (add 0, mul 1, identity cast/reshape/transpose) and compose layout chains."""

    name = "canonicalize"
    rules = CANONICAL_RULES
