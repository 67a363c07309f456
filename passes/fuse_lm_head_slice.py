"""fuse_lm_head_slice: logits for the last token only. A slice of the lm_head's output
along a token axis moves before the matmul (and before a final rms_norm, which is
per token), so the vocabulary projection runs on one token per sequence. A tensor-parallel
lm_head's `all_gather` of the vocabulary slices (last axis) stays after the matmul."""

from __future__ import annotations

from llmc.compiler.ir import Graph, Op
from llmc.compiler.rewrite import P, rule, rule_pass

LOGITS = P("slice", P("linear", P.var("x"), P.var("w"), name="lin", one_use=True), name="sl")
NORMED = P(
    "slice",
    P(
        "linear",
        P("rms_norm", P.var("h"), P.var("nw"), name="norm", one_use=True),
        P.var("w"),
        name="lin",
        one_use=True,
    ),
    name="sl",
)


def _token_axes(lin: Op, sl: Op) -> bool:
    """The slice is a graph output (the logits) and keeps the contracted dim whole."""
    rank = lin.operand("x").type.rank
    return (
        lin.operand("bias") is None
        and sl.output in sl.graph.outputs
        and all(a % rank != rank - 1 for a in sl.attrs["axes"])
    )


@rule(NORMED, check=_token_axes)
def slice_before_norm(rw, h, nw, w, norm, lin, sl):
    x = rw.op("rms_norm", rw.op("slice", h, **sl.attrs), nw, **norm.attrs)
    return rw.op("linear", x, w, **lin.attrs)


ADD_NORMED = P(
    "slice",
    P(
        "linear",
        P("add_rms_norm", P.var("a"), P.var("b"), P.var("nw"), out="out", name="norm", one_use=True),
        P.var("w"),
        name="lin",
        one_use=True,
    ),
    name="sl",
)


@rule(
    ADD_NORMED,
    check=lambda lin, sl, norm, a, b: (
        _token_axes(lin, sl) and not norm.result("sum").users and a.type == b.type
    ),
)
def slice_before_add_norm(rw, a, b, nw, w, norm, lin, sl):
    x, _ = rw.op(
        "add_rms_norm",
        rw.op("slice", a, **sl.attrs),
        rw.op("slice", b, **sl.attrs),
        nw,
        **norm.attrs,
    )
    return rw.op("linear", x, w, **lin.attrs)


@rule(LOGITS, check=_token_axes)
def slice_before_lm_head(rw, x, w, lin, sl):
    return rw.op("linear", rw.op("slice", x, **sl.attrs), w, **lin.attrs)


GATHERED = P("slice", P("all_gather", P("linear", P.var("x"), P.var("w"), name="lin", one_use=True),
                         name="gat", one_use=True), name="sl")


def _gathered_token_axes(lin: Op, gat: Op, sl: Op) -> bool:
    """As _token_axes, and the gather concatenates the vocabulary (last) axis."""
    return _under_vocab_gather(gat.output) is lin.output and _token_axes(lin, sl)


@rule(GATHERED, check=_gathered_token_axes)
def slice_before_parallel_lm_head(rw, x, w, lin, gat, sl):
    y = rw.op("linear", rw.op("slice", x, **sl.attrs), w, **lin.attrs)
    return rw.op("all_gather", y, **gat.attrs)


def _producer_kind(v, kind: str):
    op = v.producer
    return op if op is not None and op.kind == kind else None


def _under_vocab_gather(v):
    """The operand of an all_gather of `v`'s last axis, else `v`."""
    gat = _producer_kind(v, "all_gather")
    last = gat is not None and gat.attrs["axis"] % v.type.rank == v.type.rank - 1
    return gat.operand("x") if last else v


def _sliced_logits(g: Graph) -> int:
    """How many graph outputs are a slice of a linear (or of a vocabulary all_gather of one)."""
    n = 0
    for v in g.outputs:
        sl = _producer_kind(v, "slice")
        n += sl is not None and _producer_kind(_under_vocab_gather(sl.operand("x")), "linear") is not None
    return n


rule_pass("fuse_lm_head_slice", "slice(linear(rms_norm(h), W)) on token axes → "
          "linear(rms_norm(slice(h)), W).",
          [slice_before_norm, slice_before_add_norm, slice_before_lm_head,
           slice_before_parallel_lm_head], expected=_sliced_logits)
