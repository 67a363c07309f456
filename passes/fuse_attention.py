"""fuse_attention: HF-eager SDPA (with GQA `repeat_kv`) → `attention(q, k, v[, bias]){causal}`.

Matched chain: transpose q/k/v → (GQA: unsqueeze, concat n_rep copies, reshape) →
matmul(q, k^T) → mul by a constant scale → add mask → softmax → matmul v → transpose.
The mask must be HF's index-causal mask `where(less(i[:, None], i[None, :]), -inf, 0)`
broadcast to [1, 1, n, n], where `i = seq_index(x){axis}` is 0..n-1 and n is provably the
sequence dim of both q and k (the same int, or the same named symbol); optionally plus an
additive bias (ALiBi), which becomes the op's bias. A mask built from position ids is not
matched: it equals the causal mask only when the ids increase along each row.
The scale must be one finite, non-zero value (the op reads scale 0 as 1/sqrt(d)), and
neither it nor the mask may broadcast the scores to another shape.
"""

from __future__ import annotations

import math

from llmc.compiler.ir import Graph, Value
from llmc.compiler.passmanager import PassContext, register_pass
from llmc.compiler.rewrite import P, rule

from .fuse_cached_attention import cached_attention
from .fuse_common import (
    RulePass,
    const_scalar,
    const_size1,
    known_equal,
    known_shape,
    per_layer_or_count,
)

BSHD = {"perm": (0, 2, 1, 3)}
ATTN = P(
    "transpose",
    P(
        "matmul",
        P(
            "softmax",
            P(
                "add",
                P(
                    "mul",
                    P(
                        "matmul",
                        P("transpose", P.var("q"), attrs=BSHD),
                        P.var("kr"),
                        attrs={"transpose_a": False, "transpose_b": True},
                    ),
                    P("constant", name="scale"),
                    name="scaled",
                ),
                P.var("mask"),
                name="masked",
            ),
            name="sm",
        ),
        P.var("vr"),
        attrs={"transpose_a": False, "transpose_b": False},
    ),
    attrs=BSHD,
)


def unrepeat(v: Value, b, hq: int, n) -> Value | None:
    """The [b, n, kv_heads, d] tensor behind `v` = transpose (→ HF repeat_kv), or None.

    `v` must provably be [b, hq, n, d]: either the transpose itself (then kv_heads = hq) or
    reshape(concat(unsqueeze(transpose, [2]) × hq/kv_heads copies, axis 2), [0, hq, -1, d]),
    which repeats each kv head hq/kv_heads times in a row, as the attention op reads them."""
    op, copies, target = v.producer, 1, None
    if op is not None and op.kind == "reshape":
        cat = op.inputs[0].producer
        if (
            cat is None
            or cat.kind != "concat"
            or cat.attrs["axis"] != 2
            or len(set(cat.inputs)) != 1
        ):
            return None
        un = cat.inputs[0].producer
        if un is None or un.kind != "unsqueeze" or un.attrs["axes"] != (2,):
            return None
        copies, target = len(cat.inputs), tuple(op.attrs["shape"])
        op = un.inputs[0].producer
    if op is None or op.kind != "transpose" or op.attrs["perm"] != BSHD["perm"]:
        return None
    k = op.inputs[0]
    if k.type.rank != 4 or v.type.rank != 4:
        return None
    kb, kn, hk, d = k.type.shape
    if not (isinstance(hk, int) and hk * copies == hq):
        return None
    if target is not None and target != (0, hq, -1, d):
        return None
    if not (known_equal(kb, b) and known_equal(kn, n) and known_shape(v.type.shape, (b, hq, n, d))):
        return None
    return k


SEQ_INDEX = P("seq_index", P.var(), name="idx")
CAUSAL_MASK = P(
    "unsqueeze",
    P(
        "where",
        P(
            "less",
            P("unsqueeze", SEQ_INDEX, attrs={"axes": (1,)}),
            P("unsqueeze", SEQ_INDEX, attrs={"axes": (0,)}),
        ),
        P.var("neg_inf"),
        P.var("zero"),
    ),
    attrs={"axes": (0, 1)},
)


def is_causal_mask(v: Value, n) -> bool:
    """unsqueeze(where(less(unsqueeze(i, [1]), unsqueeze(i, [0])), -inf, 0), [0, 1])
    with i = seq_index(x) of length n (both unsqueezes read the same i)."""
    m: dict = {}
    if not CAUSAL_MASK.match(v, m):
        return False
    i = m["idx"].output
    return (
        const_scalar(m["neg_inf"]) == -math.inf
        and const_scalar(m["zero"]) == 0.0
        and i.type.rank == 1
        and known_equal(i.type.shape[0], n)
    )


def split_mask(mask: Value, n) -> tuple[bool, Value | None]:
    """(is causal over a length-n sequence, additive bias or None) for the scores' mask."""
    if is_causal_mask(mask, n):
        return True, None
    op = mask.producer
    if op is not None and op.kind == "add":
        for m, bias in (op.inputs, op.inputs[::-1]):
            if is_causal_mask(m, n):
                return True, bias
    return False, None


def scale_of(c) -> float | None:
    """The scale a constant multiplies the [b, h, n, n] scores by, or None. The attention
    op reads scale 0 as 1/sqrt(head_dim), so a zero (or non-finite) scale is not matched."""
    s = const_size1(c.output, 4)
    return s if s is not None and s != 0.0 and math.isfinite(s) else None


@rule(ATTN, check=lambda m: m["sm"].attrs["axis"] in (-1, 3) and scale_of(m["scale"]) is not None)
def attention(rw, q, kr, scale, scaled, mask, masked, sm, vr):
    if q.type.rank != 4:
        return None
    b, n, hq, _ = q.type.shape
    if not isinstance(hq, int):
        return None
    k, v = unrepeat(kr, b, hq, n), unrepeat(vr, b, hq, n)
    if k is None or v is None:
        return None
    scores = scaled.inputs[0].type
    if not scaled.output.type == masked.output.type == sm.output.type == scores:
        return None  # the scale or the mask broadcast the scores to another shape or dtype
    causal, bias = split_mask(mask, n)
    if not causal:
        return None
    return rw.op("attention", q, k, v, bias, causal=True, scale=scale_of(scale))


@register_pass
class FuseAttention(RulePass):
    """Decomposed causal SDPA/GQA (optionally with an ALiBi bias) → attention; over the
    cache form's KV buffers → cached_attention."""

    name = "fuse_attention"
    rules = (attention, cached_attention)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return per_layer_or_count(ctx, g, "softmax")
