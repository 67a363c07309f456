"""Packed training rows: restrict a full-form graph's causal mask to segments.

`llmc train --pack` lays several SFT examples end to end in one row (frontends/data/packing.py).
Each must attend only to itself, so the graph gains an input `%segment_ids: i64[batch, seq]`
and its causal mask `where(less(i, j), -inf, 0)` [1, 1, seq, seq] gets a second term,
`where(equal(seg[i], seg[j]), 0, -inf)` [batch, 1, seq, seq]: query i sees key j iff
j <= i and both are in the same segment. Every query still sees itself, so no softmax row is
empty (padding is segment 0 and sees only earlier padding). RoPE reads the packed rows'
position_ids, which restart at every example; ALiBi scores slope * key position, and within a
segment that differs from slope * (key - query) by a per-query constant, which softmax ignores.
"""

from __future__ import annotations

from llmc.compiler.builder import make_op
from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType, Graph, Op, TensorType, Value

SEGMENT_INPUT = "segment_ids"


def _is_causal_mask(op: Op) -> bool:
    """`where(less(a, b), -inf, 0)` over a [seq, seq] grid: the full form's causal mask."""
    if op.kind != "where" or len(op.output.type.shape) != 2:
        return False
    cond = op.operand("cond").producer
    fill = op.operand("a").producer
    return (cond is not None and cond.kind == "less" and fill is not None
            and fill.kind == "constant" and fill.attrs["value"] == (float("-inf"),))


def causal_mask_value(g: Graph) -> Value:
    """The [1, 1, seq, seq] causal mask the attention of every layer adds (exactly one)."""
    found = []
    for op in g.ops:
        reader = g.single_user(op.output) if _is_causal_mask(op) else None
        if reader is not None and reader.kind == "unsqueeze":
            found.append(reader.output)
    if len(found) != 1:
        raise LlmcError(f"--pack: graph @{g.name} has {len(found)} causal masks, not one; "
                        "packing needs the full form's single where(less(i, j), -inf, 0) mask")
    return found[0]


def add_segment_mask(g: Graph) -> Value:
    """Give `g` the `segment_ids` input and the segment-restricted mask (module docstring);
    returns the new input."""
    if SEGMENT_INPUT in {v.name for v in g.inputs}:
        raise LlmcError(f"--pack: graph @{g.name} already takes {SEGMENT_INPUT}")
    mask = causal_mask_value(g)
    seg = g.add_input(SEGMENT_INPUT, TensorType(DType.i64, ("batch", "seq")))
    rows = make_op(g, "unsqueeze", [seg], {"axes": [2]}, name="segment_q")
    cols = make_op(g, "unsqueeze", [seg], {"axes": [1]}, name="segment_k")
    same = make_op(g, "equal", [rows.output, cols.output], {}, name="same_segment")
    zero = make_op(g, "constant", [], {"value": [0.0]}, name="segment_open")
    shut = make_op(g, "constant", [], {"value": [float("-inf")]}, name="segment_shut")
    where = make_op(g, "where", [same.output, zero.output, shut.output], {},
                    name="segment_mask")
    heads = make_op(g, "unsqueeze", [where.output], {"axes": [1]}, name="segment_mask4")
    both = make_op(g, "add", [mask, heads.output], {}, name="packed_mask")
    readers = list(mask.users)
    following = g.ops[g.ops.index(mask.producer) + 1]
    g.insert_before(following, [rows, cols, same, zero, shut, where, heads, both])
    # by hand, not replace_all_uses: the mask widens from [1, ...] to [batch, ...], which
    # each reader (an add onto [batch, heads, seq, seq] scores) broadcasts the same way
    for reader in readers:
        reader.inputs[:] = [both.output if v is mask else v for v in reader.inputs]
        mask.users.pop(reader, None)
        both.output.users[reader] = None
    g.renumber()
    return seg
