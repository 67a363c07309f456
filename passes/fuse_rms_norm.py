"""fuse_rms_norm: HF's decomposed RMSNorm → `rms_norm`, or `add_rms_norm` when a
residual add feeds it (the add's other users then read the fused op's sum)."""

from __future__ import annotations

from llmc.compiler.ir import Op, Value
from llmc.compiler.passmanager import Option
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_common import const_size1, known_shape, per_layer, users_after

x = P.var("x")
NORM = P(
    "mul",
    P(
        "mul",
        x,
        P(
            "rsqrt",
            P(
                "add",
                P("reduce_mean", P("mul", x, x, name="sq"), name="mean", attrs={"keepdims": True}),
                P("constant", name="eps"),
            ),
        ),
        name="inner",
    ),
    P.var("w"),
    name="root",
)


def _eps(eps: Op, mean: Op) -> float | None:
    """eps: one value whose rank is at most the mean's, so adding it keeps the mean's shape."""
    return const_size1(eps.output, mean.output.type.rank)


def _check(x: Value, w: Value, eps: Op, mean: Op, inner: Op, root: Op) -> bool:
    axes = mean.attrs["axes"]
    return (
        x.type.dtype.is_float
        and x.type.rank >= 1
        and axes in ((-1,), (x.type.rank - 1,))
        and _eps(eps, mean) is not None
        and known_shape(w.type.shape, (x.type.shape[-1],))
        and inner.output.type == root.output.type == x.type
    )


def _residual_add(rw, x: Value, root: Op, ignore: set[Op]) -> Op | None:
    """The `add` producing x when it can fold into add_rms_norm (its other users then read
    the fused op's sum, which is defined before each of them)."""
    add = x.producer
    if (
        add is not None
        and add.kind == "add"
        and x not in rw.graph.outputs
        and add.operand("lhs").type == add.operand("rhs").type == x.type
        and users_after(x, root, ignore)
    ):
        return add
    return None


@rule(NORM, check=_check)
def rms_norm(rw, x, w, eps, sq, mean, inner, root, residual):
    epsilon = _eps(eps, mean)
    add = _residual_add(rw, x, root, {sq, inner}) if residual else None
    if add is None:
        return rw.op("rms_norm", x, w, epsilon=epsilon, name=root.output.name)
    out, s = rw.op("add_rms_norm", add.operand("lhs"), add.operand("rhs"), w, epsilon=epsilon,
                   name=root.output.name)
    rw.graph.replace_all_uses(x, s)
    rw.graph.erase(add)
    return out


rule_pass("fuse_rms_norm", "Decomposed RMSNorm (mean of squares, eps, rsqrt, scale) → "
          "rms_norm / add_rms_norm.", [rms_norm], expected=per_layer("rsqrt", lambda n: 2 * n + 1),
          options={"residual": Option(True, "fold a residual add into add_rms_norm")})
