"""The vendor's fusions at the graph's two ends:
llama_fuse_lm_head_with_slice / llama_fuse_lm_head (final rms_norm + vocabulary
projection → `lm_head`) and llama_fuse_get_padding_offset (the padding arithmetic +
`get_padding_offset` → `remove_padding`)."""

from __future__ import annotations

from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.passmanager import PassContext
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_common import count, num_layers, per_layer

x, w, nw, ids, lens = P.var("x"), P.var("w"), P.var("nw"), P.var("ids"), P.var("lens")
NORM = P("rms_norm", x, nw, name="norm", one_use=True)


def _is_logits(lin: Op) -> bool:
    return lin.operand("bias") is None and lin.output in lin.graph.outputs


@rule(P("linear", NORM, w, name="lin"), check=_is_logits)
def lm_head(rw, x, nw, w, norm, lin):
    return rw.op(
        "lm_head", x, nw, w, epsilon=norm.attrs["epsilon"], transpose_w=lin.attrs["transpose_w"]
    )


def _token_slice(x: Value, sl: Op, lin: Op) -> bool:
    rank = x.type.rank
    return _is_logits(lin) and all(a % rank != rank - 1 for a in sl.attrs["axes"])


@rule(P("linear", P("slice", NORM, name="sl", one_use=True), w, name="lin"), check=_token_slice)
def lm_head_with_slice(rw, x, nw, w, norm, sl, lin):
    return rw.op(
        "lm_head",
        rw.op("slice", x, **sl.attrs),
        nw,
        w,
        epsilon=norm.attrs["epsilon"],
        transpose_w=lin.attrs["transpose_w"],
    )


PADDING = P(
    "get_padding_offset",
    ids,
    P(
        "cumsum",
        P("sub", P("cast", P("dim_size", ids, attrs={"axis": 1}), name="cast"), lens),
        attrs={"axis": lambda a: a in (-1, 0), "exclusive": False},
    ),
    P("reduce_sum", lens, attrs={"axes": lambda a: a in ((), (0,), (-1,)), "keepdims": False}),
    lens,
)


remove_padding = rule(
    PADDING,
    lambda rw, ids, lens: rw.op("remove_padding", ids, lens),
    check=lambda cast, lens: cast.attrs["dtype"] is lens.type.dtype and lens.type.rank == 1,
    name="remove_padding",
)


def _output_linears_on(g: Graph, kind: str) -> int:
    """How many graph outputs are a `linear` whose input is produced by a `kind` op."""
    n = 0
    for v in g.outputs:
        op = v.producer
        if op is not None and op.kind == "linear":
            src = op.operand("x").producer
            n += src is not None and src.kind == kind
    return n


def _one_lm_head(g: Graph, ctx: PassContext) -> int:
    if num_layers(ctx) is not None:
        return max(1 - count(g, "lm_head"), 0)
    return _output_linears_on(g, "rms_norm")


rule_pass("llama_fuse_lm_head_with_slice", "linear(slice(rms_norm(x)), W) producing the logits → "
          "lm_head(slice(x), norm_w, W).", [lm_head_with_slice],
          expected=lambda g: _output_linears_on(g, "slice"))
rule_pass("llama_fuse_lm_head", "linear(rms_norm(x, norm_w), W) producing the logits → "
          "lm_head(x, norm_w, W).", [lm_head], expected=_one_lm_head)
rule_pass("llama_fuse_get_padding_offset", "cumsum(max_len - seq_lens), reduce_sum(seq_lens), "
          "get_padding_offset → remove_padding.", [remove_padding],
          expected=per_layer("get_padding_offset", lambda n: 1))
