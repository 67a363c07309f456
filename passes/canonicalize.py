"""Canonicalization: algebraic no-ops removed, chains of layout ops composed."""

from __future__ import annotations

from llmc.compiler.ir import Op, Value
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_common import const_scalar

x = P.var("x")


def neutral(x: Value, c: Op, a: Op, target: float) -> bool:
    """The constant `c` holds only `target` (and at least one element), and the op `a`
    applying it leaves x's type alone."""
    return const_scalar(c.output) == target and x.type == a.output.type


@rule(P("reshape", P("reshape", x, name="inner"), name="outer"))
def reshape_reshape(rw, x, inner, outer):
    """reshape(reshape(x)) -> reshape(x) when the outer 0s can be resolved."""
    mid = inner.output.type.shape
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


def _reshape_keeps(x: Value, r: Op) -> bool:
    return x.type == r.output.type and (x.type.is_static or all(d == 0 for d in r.attrs["shape"]))


@rule(P("transpose", P("transpose", x, name="inner"), name="outer"))
def transpose_transpose(rw, x, inner, outer):
    perm = [inner.attrs["perm"][i] for i in outer.attrs["perm"]]
    return x if perm == list(range(len(perm))) else rw.op("transpose", x, perm=perm)


def _sorted_perm(t: Op) -> bool:
    return list(t.attrs["perm"]) == sorted(t.attrs["perm"])


CONST = P("constant", name="c")
# add/mul commute, so x + 0, 0 + x, x - 0 (and x * 1, 1 * x, x / 1) match; 0 - x, 1 / x do not.
CANONICAL_RULES = (
    reshape_reshape,
    rule(P("reshape", x, name="r"), lambda x: x, check=_reshape_keeps, name="reshape_identity"),
    transpose_transpose,
    rule(P("transpose", x, name="t"), lambda x: x, check=_sorted_perm, name="transpose_identity"),
    rule(P(("add", "sub"), x, CONST, name="a"), lambda x: x,
         check=lambda x, c, a: neutral(x, c, a, 0.0), name="add_sub_zero"),
    rule(P(("mul", "div"), x, CONST, name="a"), lambda x: x,
         check=lambda x, c, a: neutral(x, c, a, 1.0), name="mul_one"),
    rule(P("cast", x, name="c"), lambda x: x, check=lambda x, c: c.attrs["dtype"] is x.type.dtype,
         name="cast_identity"),
    rule(P("neg", P("neg", x)), lambda x: x, name="neg_neg"),
)

rule_pass("canonicalize", "Remove algebraic no-ops (add 0, mul 1, identity cast/reshape/"
          "transpose) and compose layout chains.", CANONICAL_RULES)
