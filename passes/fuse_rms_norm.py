"""fuse_rms_norm: HF's decomposed RMSNorm → `rms_norm`, or `add_rms_norm` when a
residual add feeds it (the add's other users then read the fused op's sum)."""

from __future__ import annotations

from functools import partial

from llmc.compiler.ir import Graph, Value
from llmc.compiler.passmanager import Pass, PassContext, register_pass
from llmc.compiler.rewrite import P, Rule, apply_rules

from .fuse_common import const_size1, known_shape, per_layer_or_count, users_after

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


def _eps(m) -> float | None:
    """eps: one value whose rank is at most the mean's, so adding it keeps the mean's shape."""
    return const_size1(m["eps"].output, m["mean"].output.type.rank)


def _check(m) -> bool:
    xv: Value = m["x"]
    axes = m["mean"].attrs["axes"]
    return (
        xv.type.dtype.is_float
        and xv.type.rank >= 1
        and axes in ((-1,), (xv.type.rank - 1,))
        and _eps(m) is not None
        and known_shape(m["w"].type.shape, (xv.type.shape[-1],))
        and m["inner"].output.type == m["root"].output.type == xv.type
    )


def _fuse(rw, x, w, eps, sq, mean, inner, root, residual: bool):
    epsilon = _eps({"eps": eps, "mean": mean})
    add = x.producer
    if (
        residual
        and add is not None
        and add.kind == "add"
        and x not in rw.graph.outputs
        and add.inputs[0].type == add.inputs[1].type == x.type
        and users_after(x, root, {sq, inner})
    ):
        out, s = rw.op(
            "add_rms_norm", add.inputs[0], add.inputs[1], w, epsilon=epsilon, name=root.output.name
        )
        rw.graph.replace_all_uses(x, s)
        rw.graph.erase(add)
        return out
    return rw.op("rms_norm", x, w, epsilon=epsilon, name=root.output.name)


@register_pass
class FuseRmsNorm(Pass):
    """Decomposed RMSNorm (mean of squares, eps, rsqrt, scale) → rms_norm / add_rms_norm."""

    name = "fuse_rms_norm"
    residual: bool = True

    def run(self, g: Graph, ctx: PassContext) -> int:
        return apply_rules(
            g, [Rule(NORM, partial(_fuse, residual=self.residual), _check, "rms_norm")]
        )

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return per_layer_or_count(ctx, g, "rsqrt", lambda n: 2 * n + 1)
