"""The vendor's three "remove" passes, made meaning-preserving on their own: each
fused helper op is decomposed into core ops that the layer fusions then absorb.

- remove_residual_in_fused_bias_residual_layernorm: the norm-less residual-add mode → `add`.
- remove_residual_in_rms_norm: `fused_rms_norm(x, w, residual)` → `add` + `rms_norm`.
- remove_blha_get_max_len: `blha_get_max_len(enc, dec, bsz)` → `reduce_max` of each (≥ 0),
  when enc and dec provably have bsz's length (the op reads only the first len(bsz) entries).
"""

from __future__ import annotations

from llmc.compiler.ir import DType, Graph, Value
from llmc.compiler.passmanager import PassContext
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_common import known_equal, num_layers, per_layer

x, w, res = P.var("x"), P.var("w"), P.var("res")


def _add_twice(rw, x, res):
    s = rw.op("add", x, res)
    return s, s


plain_residual_add = rule(
    P("fused_bias_residual_layernorm", x, res, name="op"), _add_twice,
    check=lambda op, x, res: op.attrs["residual_alpha"] == 1.0 and x.type == res.type,
    name="plain_residual_add")


@rule(P("fused_rms_norm", x, w, res, name="op"), check=lambda x, res: x.type == res.type)
def split_residual(rw, x, w, res, op):
    s = rw.op("add", x, res)
    return rw.op("rms_norm", s, w, epsilon=op.attrs["epsilon"]), s


def _max_len(rw, lens):
    m = rw.op("reduce_max", lens, axes=[0], keepdims=True)
    return rw.op("maximum", m, rw.op("constant", value=[0.0], dtype=lens.type.dtype))


def _same_batch(enc: Value, dec: Value, bsz: Value) -> bool:
    return (
        enc.type.rank == dec.type.rank == bsz.type.rank == 1
        and known_equal(enc.type.shape[0], bsz.type.shape[0])
        and known_equal(dec.type.shape[0], bsz.type.shape[0])
        and enc.type.dtype is dec.type.dtype is DType.i32
    )


max_lens = rule(P("blha_get_max_len", P.var("enc"), P.var("dec"), P.var("bsz")),
                lambda rw, enc, dec: (_max_len(rw, enc), _max_len(rw, dec)),
                check=_same_batch, name="max_lens")


def _residual_rms_norms(g: Graph, ctx: PassContext) -> int:
    n = num_layers(ctx)
    if n is not None:
        return 2 * n - 1
    return sum(1 for op in g.ops if op.kind == "fused_rms_norm" and op.operand("residual") is not None)


rule_pass("remove_residual_in_fused_bias_residual_layernorm", "fused_bias_residual_layernorm used "
          "as a plain residual add (no norm weight) → add.", [plain_residual_add],
          expected=per_layer("fused_bias_residual_layernorm", lambda n: 1))
rule_pass("remove_residual_in_rms_norm", "fused_rms_norm(x, w, residual) → rms_norm(add(x, "
          "residual), w), the sum as residual_out.", [split_residual], expected=_residual_rms_norms)
rule_pass("remove_blha_get_max_len", "blha_get_max_len(enc, dec, bsz) → max(reduce_max(enc), 0), "
          "max(reduce_max(dec), 0).", [max_lens], expected=per_layer("blha_get_max_len", lambda n: 1))
