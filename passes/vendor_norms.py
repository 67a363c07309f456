"""The vendor's three "remove" passes, made meaning-preserving on their own: each
fused helper op is decomposed into core ops that the layer fusions then absorb.

- remove_residual_in_fused_bias_residual_layernorm: the norm-less residual-add mode → `add`.
- remove_residual_in_rms_norm: `fused_rms_norm(x, w, residual)` → `add` + `rms_norm`.
- remove_blha_get_max_len: `blha_get_max_len(enc, dec, bsz)` → `reduce_max` of each (≥ 0),
  when enc and dec provably have bsz's length (the op reads only the first len(bsz) entries).
"""

from __future__ import annotations

from llmc.compiler.ir import DType, Graph
from llmc.compiler.passmanager import Pass, PassContext, register_pass
from llmc.compiler.rewrite import P, apply_rules, rule

from .fuse_common import count, known_equal, num_layers

x, res = P.var("x"), P.var("res")


@rule(
    P("fused_bias_residual_layernorm", x, res, name="op"),
    check=lambda m: m["op"].attrs["residual_alpha"] == 1.0 and m["x"].type == m["res"].type,
)
def plain_residual_add(rw, x, res, op):
    s = rw.op("add", x, res)
    return s, s


@rule(
    P("fused_rms_norm", x, P.var("w"), res, name="op"), check=lambda m: m["x"].type == m["res"].type
)
def split_residual(rw, x, w, res, op):
    s = rw.op("add", x, res)
    return rw.op("rms_norm", s, w, epsilon=op.attrs["epsilon"]), s


def _max_len(rw, lens):
    m = rw.op("reduce_max", lens, axes=[0], keepdims=True)
    return rw.op("maximum", m, rw.op("constant", value=[0.0], dtype=lens.type.dtype))


@rule(
    P("blha_get_max_len", P.var("enc"), P.var("dec"), P.var("bsz")),
    check=lambda m: (
        m["enc"].type.rank == m["dec"].type.rank == m["bsz"].type.rank == 1
        and known_equal(m["enc"].type.shape[0], m["bsz"].type.shape[0])
        and known_equal(m["dec"].type.shape[0], m["bsz"].type.shape[0])
        and m["enc"].type.dtype is m["dec"].type.dtype is DType.i32
    ),
)
def max_lens(rw, enc, dec, bsz):
    return _max_len(rw, enc), _max_len(rw, dec)


@register_pass
class RemoveResidualInFusedBiasResidualLayernorm(Pass):
    """fused_bias_residual_layernorm used as a plain residual add (no norm weight) → add."""

    name = "remove_residual_in_fused_bias_residual_layernorm"

    def run(self, g: Graph, ctx: PassContext) -> int:
        return apply_rules(g, [plain_residual_add])

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return 1 if num_layers(ctx) else count(g, "fused_bias_residual_layernorm")


@register_pass
class RemoveResidualInRmsNorm(Pass):
    """fused_rms_norm(x, w, residual) → rms_norm(add(x, residual), w), the sum as residual_out."""

    name = "remove_residual_in_rms_norm"

    def run(self, g: Graph, ctx: PassContext) -> int:
        return apply_rules(g, [split_residual])

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        n = num_layers(ctx)
        if n is not None:
            return 2 * n - 1
        return sum(1 for op in g.ops if op.kind == "fused_rms_norm" and len(op.inputs) == 3)


@register_pass
class RemoveBlhaGetMaxLen(Pass):
    """blha_get_max_len(enc, dec, bsz) → max(reduce_max(enc), 0), max(reduce_max(dec), 0)."""

    name = "remove_blha_get_max_len"

    def run(self, g: Graph, ctx: PassContext) -> int:
        return apply_rules(g, [max_lens])

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return 1 if num_layers(ctx) else count(g, "blha_get_max_len")
