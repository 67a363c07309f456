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

from llmc.compiler.ir import Op, Value
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_cached_attention import cached_attention
from .fuse_common import (
    BSHD,
    SDPA,
    const_scalar,
    const_size1,
    known_equal,
    known_shape,
    per_layer,
)

ATTN = SDPA


def unrepeat(v: Value, b, hq: int, n) -> Value | None:
    """The [b, n, kv_heads, d] tensor behind `v` = transpose (→ HF repeat_kv), or None.

    `v` must provably be [b, hq, n, d]: either the transpose itself (then kv_heads = hq) or
    reshape(concat(unsqueeze(transpose, [2]) × hq/kv_heads copies, axis 2), [0, hq, -1, d]),
    which repeats each kv head hq/kv_heads times in a row, as the attention op reads them."""
    op, copies, target = v.producer, 1, None
    if op is not None and op.kind == "reshape":
        cat = op.operand("x").producer
        if cat is None or cat.kind != "concat" or cat.attrs["axis"] != 2:
            return None
        pieces = cat.operands("xs")
        un = pieces[0].producer
        if len(set(pieces)) != 1 or un is None or un.kind != "unsqueeze" or un.attrs["axes"] != (2,):
            return None
        copies, target = len(pieces), tuple(op.attrs["shape"])
        op = un.operand("x").producer
    if op is None or op.kind != "transpose" or op.attrs["perm"] != BSHD["perm"]:
        return None
    k = op.operand("x")
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
        lhs, rhs = op.operand("lhs"), op.operand("rhs")
        for m, bias in ((lhs, rhs), (rhs, lhs)):
            if is_causal_mask(m, n):
                return True, bias
    return False, None


def scale_of(c: Op) -> float | None:
    """The scale a constant multiplies the [b, h, n, n] scores by, or None. The attention
    op reads scale 0 as 1/sqrt(head_dim), so a zero (or non-finite) scale is not matched."""
    s = const_size1(c.output, 4)
    return s if s is not None and s != 0.0 and math.isfinite(s) else None


def _plain_softmax(sm: Op, scale: Op) -> bool:
    return sm.attrs["axis"] in (-1, 3) and scale_of(scale) is not None


@rule(ATTN, check=_plain_softmax)
def attention(rw, q, kr, vr, scale, scaled, mask, masked, sm):
    if q.type.rank != 4:
        return None
    b, n, hq, _ = q.type.shape
    if not isinstance(hq, int):
        return None
    k, v = unrepeat(kr, b, hq, n), unrepeat(vr, b, hq, n)
    if k is None or v is None:
        return None
    scores = scaled.operand("lhs").type
    if not scaled.output.type == masked.output.type == sm.output.type == scores:
        return None  # the scale or the mask broadcast the scores to another shape or dtype
    causal, bias = split_mask(mask, n)
    if not causal:
        return None
    return rw.op("attention", q, k, v, bias, causal=True, scale=scale_of(scale))


rule_pass("fuse_attention",
          "Decomposed causal SDPA/GQA (optionally with an ALiBi bias) → attention; over the "
          "cache form's KV buffers → cached_attention.",
          [attention, cached_attention], expected=per_layer("softmax"))
