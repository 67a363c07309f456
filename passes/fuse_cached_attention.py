"""The cache-form attention rule of fuse_attention: HF-eager SDPA over KV buffers →
`cached_attention(q, k, v, past_k, past_v, past_lens[, bias]){scale}`.

Matched chain (frontends/cache_form.py): k and v transposed to [b, kv, seq, d] and written
by `kv_cache_update(past, ·, past_lens)` (each a graph output), GQA `repeat_kv` of the
written buffers, matmul(transpose(q), k^T) → mul by a constant scale → add mask → softmax →
matmul v → transpose. The mask must be the cache mask
`unsqueeze(where(less(unsqueeze(pos, [2]), unsqueeze(seq_index(buf){axis=2}, [0, 1])), -inf, 0), [1])`
with `pos = add(unsqueeze(past_lens, [1]), unsqueeze(seq_index(x){axis=1}, [0]))`, reading the
same past_lens as both buffer writes, over q's sequence and the buffers' slots; optionally
plus an additive bias (ALiBi), which becomes the op's bias. The buffers' graph outputs move
to the fused op's present_k / present_v results.
"""

from __future__ import annotations

import math

from llmc.compiler.ir import Value
from llmc.compiler.rewrite import P, rule

from .fuse_common import BSHD, SDPA, const_scalar, const_size1, known_equal

CACHED_ATTN = SDPA
WRITE = P("kv_cache_update", P.var("past"), P("transpose", P.var("new"), attrs=BSHD),
          P.var("past_lens"), name="write")


def written_buffer(v: Value, hq: int) -> dict | None:
    """{past, new, past_lens, write} when `v` is (HF repeat_kv of) a kv_cache_update of a
    BSHD-transposed tensor, repeated to hq heads in a row; else None."""
    op, copies = v.producer, 1
    if op is not None and op.kind == "reshape":
        cat = op.operand("x").producer
        if cat is None or cat.kind != "concat" or cat.attrs["axis"] != 2 or len(set(cat.operands("xs"))) != 1:
            return None
        xs = cat.operands("xs")
        un = xs[0].producer
        if un is None or un.kind != "unsqueeze" or un.attrs["axes"] != (2,):
            return None
        copies, v = len(xs), un.operand("x")
        if tuple(op.attrs["shape"]) != (0, hq, -1, v.type.shape[3]):
            return None
    m: dict = {}
    if not WRITE.match(v, m):
        return None
    hk = m["past"].type.shape[1]
    return m if isinstance(hk, int) and hk * copies == hq else None


POSITIONS = P("add", P("unsqueeze", P.var("lens"), attrs={"axes": (1,)}),
              P("unsqueeze", P("seq_index", P.var("ids"), attrs={"axis": 1}, name="qidx"),
                attrs={"axes": (0,)}))
CACHE_MASK = P(
    "unsqueeze",
    P("where",
      P("less", P("unsqueeze", POSITIONS, attrs={"axes": (2,)}),
        P("unsqueeze", P("seq_index", P.var("buf"), attrs={"axis": 2}, name="slot"),
          attrs={"axes": (0, 1)})),
      P.var("neg_inf"), P.var("zero")),
    attrs={"axes": (1,)},
)


def is_cache_mask(mask: Value, past_lens: Value, seq, max_len) -> bool:
    """`mask` is CACHE_MASK over past_lens, a length-seq query and max_len slots."""
    m: dict = {}
    return (
        CACHE_MASK.match(mask, m)
        and m["lens"] is past_lens
        and const_scalar(m["neg_inf"]) == -math.inf
        and const_scalar(m["zero"]) == 0.0
        and known_equal(m["qidx"].output.type.shape[0], seq)
        and known_equal(m["slot"].output.type.shape[0], max_len)
    )


def split_cache_mask(mask: Value, past_lens: Value, seq, max_len) -> tuple[bool, Value | None]:
    """(is the cache mask, additive bias or None)."""
    if is_cache_mask(mask, past_lens, seq, max_len):
        return True, None
    op = mask.producer
    if op is not None and op.kind == "add":
        lhs, rhs = op.operand("lhs"), op.operand("rhs")
        for m, bias in ((lhs, rhs), (rhs, lhs)):
            if is_cache_mask(m, past_lens, seq, max_len):
                return True, bias
    return False, None


def _scale(c) -> float | None:
    s = const_size1(c.output, 4)
    return s if s is not None and s != 0.0 and math.isfinite(s) else None


def _buffers(q: Value, kr: Value, vr: Value):
    """The k and v buffer writes behind kr / vr, checked against q, or None."""
    if q.type.rank != 4 or not isinstance(q.type.shape[2], int):
        return None
    k, v = written_buffer(kr, q.type.shape[2]), written_buffer(vr, q.type.shape[2])
    if k is None or v is None or k["past_lens"] is not v["past_lens"]:
        return None
    b, seq = q.type.shape[:2]
    for w in (k, v):
        nb, nseq = w["new"].type.shape[:2]
        if not (known_equal(nb, b) and known_equal(nseq, seq)):
            return None
    return k, v


@rule(CACHED_ATTN,
      check=lambda sm, scale: sm.attrs["axis"] in (-1, 3) and _scale(scale) is not None)
def cached_attention(rw, q, kr, scale, scaled, mask, masked, sm, vr):
    """The chain → cached_attention; the buffer writes' graph outputs move to its presents."""
    found = _buffers(q, kr, vr)
    if found is None:
        return None
    k, v = found
    if not scaled.output.type == masked.output.type == sm.output.type == scaled.operand("lhs").type:
        return None  # the scale or the mask broadcast the scores to another shape or dtype
    lens = k["past_lens"]
    ok, bias = split_cache_mask(mask, lens, q.type.shape[1], k["past"].type.shape[2])
    if not ok:
        return None
    out, pk, pv = rw.op("cached_attention", q, k["new"], v["new"], k["past"], v["past"], lens,
                        bias, scale=_scale(scale))
    rw.graph.outputs.replace(k["write"].output, pk)
    rw.graph.outputs.replace(v["write"].output, pv)
    return out
