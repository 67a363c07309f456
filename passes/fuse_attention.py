"""fuse_attention: HF-eager SDPA (with GQA `repeat_kv`) → `attention(q, k, v[, bias]){causal}`.

Matched chain: transpose q/k/v → (GQA: unsqueeze, concat n_rep copies, reshape) →
matmul(q, k^T) → mul by a constant scale → add mask → softmax → matmul v → transpose.
The mask must be HF's index-causal mask `where(less(i[:, None], i[None, :]), -inf, 0)`
broadcast to [1, 1, n, n], where `i = seq_index(x){axis}` is 0..n-1 and n is provably the
sequence dim of both q and k (the same int, or the same named symbol); optionally plus an
additive bias (ALiBi), which becomes the op's bias. A mask built from position ids is not
matched: it equals the causal mask only when the ids increase along each row.
"""

from __future__ import annotations

import math

from llmc.compiler.ir import Graph, Value
from llmc.compiler.passmanager import Pass, PassContext, register_pass
from llmc.compiler.rewrite import P, apply_rules, rule

from .fuse_common import const_scalar, count, num_layers

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
                ),
                P.var("mask"),
            ),
            name="sm",
        ),
        P.var("vr"),
        attrs={"transpose_a": False, "transpose_b": False},
    ),
    attrs=BSHD,
)


def unrepeat(v: Value) -> Value | None:
    """The [batch, seq, kv_heads, d] tensor behind `transpose` (→ HF repeat_kv), or None."""
    op = v.producer
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
        shape = op.attrs["shape"]
        if len(shape) != 4 or shape[0] != 0 or shape[2] != -1:
            return None
        op = un.inputs[0].producer
    if op is None or op.kind != "transpose" or op.attrs["perm"] != BSHD["perm"]:
        return None
    return op.inputs[0]


def known_equal(a, b) -> bool:
    """Two dims provably equal: the same int or the same named symbol (not "?")."""
    return a == b and a != "?"


def is_causal_mask(v: Value, n) -> bool:
    """unsqueeze(where(less(unsqueeze(i, [1]), unsqueeze(i, [0])), -inf, 0), [0, 1])
    with i = seq_index(x) of length n."""
    un = v.producer
    if un is None or un.kind != "unsqueeze" or un.attrs["axes"] != (0, 1):
        return False
    wh = un.inputs[0].producer
    if wh is None or wh.kind != "where":
        return False
    lt = wh.inputs[0].producer
    if (
        lt is None
        or lt.kind != "less"
        or const_scalar(wh.inputs[1]) != -math.inf
        or const_scalar(wh.inputs[2]) != 0.0
    ):
        return False
    a, b = (x.producer for x in lt.inputs)
    if not (
        a is not None
        and b is not None
        and a.kind == b.kind == "unsqueeze"
        and a.inputs[0] is b.inputs[0]
        and a.attrs["axes"] == (1,)
        and b.attrs["axes"] == (0,)
    ):
        return False
    idx = a.inputs[0].producer
    return (
        idx is not None
        and idx.kind == "seq_index"
        and idx.output.type.rank == 1
        and known_equal(idx.output.type.shape[0], n)
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


@rule(
    ATTN,
    check=lambda m: (
        m["sm"].attrs["axis"] in (-1, 3) and const_scalar(m["scale"].output) is not None
    ),
)
def attention(rw, q, kr, scale, mask, sm, vr):
    k, v = unrepeat(kr), unrepeat(vr)
    if k is None or v is None or q.type.rank != 4 or k.type.rank != 4:
        return None
    n = q.type.shape[1]
    causal, bias = split_mask(mask, n)
    if not causal or not known_equal(k.type.shape[1], n):
        return None
    hq, hk = q.type.shape[2], k.type.shape[2]
    if not (isinstance(hq, int) and isinstance(hk, int) and hq % hk == 0) or v.type.shape[2] != hk:
        return None
    if kr.type.shape[1] != hq or vr.type.shape[1] != hq:
        return None
    return rw.op("attention", q, k, v, bias, causal=True, scale=const_scalar(scale.output))


@register_pass
class FuseAttention(Pass):
    """Decomposed causal SDPA/GQA (optionally with an ALiBi bias) → attention."""

    name = "fuse_attention"

    def run(self, g: Graph, ctx: PassContext) -> int:
        return apply_rules(g, [attention])

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        n = num_layers(ctx)
        return n if n is not None else count(g, "softmax")
