"""The vendor's three "remove" passes, made meaning-preserving on their own: each
fused helper op is decomposed into core ops that the layer fusions then absorb.

- remove_residual_in_fused_bias_residual_layernorm: the norm-less residual-add mode → `add`.
- remove_residual_in_rms_norm: `fused_rms_norm(x, w, residual)` → `add` + `rms_norm`.
- remove_blha_get_max_len: `blha_get_max_len(enc, dec, bsz)` → `reduce_max` of each (≥ 0),
  when enc and dec provably have bsz's length (the op reads only the first len(bsz) entries).
"""

from __future__ import annotations

from llmc.compiler.ir import DType, Graph
from llmc.compiler.passmanager import PassContext, register_pass
from llmc.compiler.rewrite import P, rule

from .fuse_common import RulePass, known_equal, num_layers, per_layer_or_count

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
class RemoveResidualInFusedBiasResidualLayernorm(RulePass):
    """fused_bias_residual_layernorm used as a plain residual add (no norm weight) → add."""

    name = "remove_residual_in_fused_bias_residual_layernorm"
    rules = (plain_residual_add,)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return per_layer_or_count(ctx, g, "fused_bias_residual_layernorm", lambda n: 1)


@register_pass
class RemoveResidualInRmsNorm(RulePass):
    """fused_rms_norm(x, w, residual) → rms_norm(add(x, residual), w), the sum as residual_out."""

    name = "remove_residual_in_rms_norm"
    rules = (split_residual,)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        n = num_layers(ctx)
        if n is not None:
            return 2 * n - 1
        return sum(1 for op in g.ops if op.kind == "fused_rms_norm" and len(op.inputs) == 3)


@register_pass
class RemoveBlhaGetMaxLen(RulePass):
    """blha_get_max_len(enc, dec, bsz) → max(reduce_max(enc), 0), max(reduce_max(dec), 0)."""

    name = "remove_blha_get_max_len"
    rules = (max_lens,)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return per_layer_or_count(ctx, g, "blha_get_max_len", lambda n: 1)
