"""fuse_swiglu: mul(silu(g), u) → swiglu(g, u); fuse_gate_up: swiglu of two sibling
linears → one linear on the concatenated [gate | up] weight and one-operand swiglu."""

from __future__ import annotations

from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.passmanager import PassContext
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_common import is_weight, num_layers, per_layer, weight_concat_axis

x = P.var("x")

swiglu = rule(P("mul", P("silu", P.var("g")), P.var("u")), lambda rw, g, u: rw.op("swiglu", g, u),
              check=lambda g, u: g.type == u.type, name="swiglu")


def _siblings(lg: Op, lu: Op, wg: Value, wu: Value) -> bool:
    return (
        lg.attrs["transpose_w"] == lu.attrs["transpose_w"]
        and lg.output.type == lu.output.type
        and wg.type == wu.type
        and is_weight(wg) and is_weight(wu)
        and all(o.graph.single_user(o.output) is not None for o in (lg, lu))
    )


@rule(
    P("swiglu", P("linear", x, P.var("wg"), name="lg"), P("linear", x, P.var("wu"), name="lu")),
    check=_siblings,
)
def gate_up(rw, x, wg, wu, lg):
    tw = lg.attrs["transpose_w"]
    w = rw.op("concat", wg, wu, axis=weight_concat_axis(tw))
    return rw.op("swiglu", rw.op("linear", x, w, transpose_w=tw))


def _two_operand_swiglus(g: Graph, ctx: PassContext) -> int:
    n = num_layers(ctx)
    return n if n is not None else sum(
        1 for op in g.ops if op.kind == "swiglu" and op.operand("y") is not None)


rule_pass("fuse_swiglu", "mul(silu(gate), up) → swiglu(gate, up).", [swiglu],
          expected=per_layer("silu"))
rule_pass("fuse_gate_up", "swiglu(linear(x, Wg), linear(x, Wu)) → swiglu(linear(x, concat(Wg, Wu))).",
          [gate_up], expected=_two_operand_swiglus)
