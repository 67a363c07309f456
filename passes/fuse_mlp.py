"""fuse_swiglu: mul(silu(g), u) → swiglu(g, u); fuse_gate_up: swiglu of two sibling
linears → one linear on the concatenated [gate | up] weight and one-operand swiglu."""

from __future__ import annotations

from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import PassContext, register_pass
from llmc.compiler.rewrite import P, rule

from .fuse_common import RulePass, num_layers, per_layer_or_count, weight_concat_axis

x = P.var("x")


@rule(P("mul", P("silu", P.var("g")), P.var("u")), check=lambda m: m["g"].type == m["u"].type)
def swiglu(rw, g, u):
    return rw.op("swiglu", g, u)


def _siblings(m) -> bool:
    lg, lu = m["lg"], m["lu"]
    return (
        lg.attrs["transpose_w"] == lu.attrs["transpose_w"]
        and lg.output.type == lu.output.type
        and m["wg"].type == m["wu"].type
        and all(o.graph.single_user(o.output) is not None for o in (lg, lu))
    )


@rule(
    P("swiglu", P("linear", x, P.param("wg"), name="lg"), P("linear", x, P.param("wu"), name="lu")),
    check=_siblings,
)
def gate_up(rw, x, wg, wu, lg, lu):
    tw = lg.attrs["transpose_w"]
    w = rw.op("concat", wg, wu, axis=weight_concat_axis(tw))
    return rw.op("swiglu", rw.op("linear", x, w, transpose_w=tw))


@register_pass
class FuseSwiglu(RulePass):
    """mul(silu(gate), up) → swiglu(gate, up)."""

    name = "fuse_swiglu"
    rules = (swiglu,)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return per_layer_or_count(ctx, g, "silu")


@register_pass
class FuseGateUp(RulePass):
    """swiglu(linear(x, Wg), linear(x, Wu)) → swiglu(linear(x, concat(Wg, Wu)))."""

    name = "fuse_gate_up"
    rules = (gate_up,)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        n = num_layers(ctx)
        return (
            n
            if n is not None
            else sum(1 for op in g.ops if op.kind == "swiglu" and len(op.inputs) == 2)
        )
