"""fuse_qkv: three bias-free linears reading the same value (q, k, v projections) →
one linear on the concatenated weights + split."""

from __future__ import annotations

from llmc.compiler.builder import make_op
from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.passmanager import PassContext, define_pass

from .fuse_common import is_weight, num_layers, weight_concat_axis


def plain_linear(op: Op) -> bool:
    """A bias-free linear whose weight is a graph parameter (or a rank's slice of one)."""
    return op.kind == "linear" and op.operand("bias") is None and is_weight(op.operand("w"))


def merge_linears(g: Graph, lins: list[Op]) -> Value:
    """One linear on the concatenated weights of `lins` (same input, same layout).

    The new ops go before the earliest of `lins`; returns the merged output.
    """
    tw = lins[0].attrs["transpose_w"]
    first = min(lins, key=lambda o: o.seq)
    ws = [o.operand("w") for o in lins]
    cat = make_op(g, "concat", ws, {"axis": weight_concat_axis(tw)})
    lin = make_op(g, "linear", [lins[0].operand("x"), cat.output], {"transpose_w": tw})
    g.insert_before(first, [cat, lin])
    return lin.output


def sibling_groups(g: Graph, size: int) -> list[list]:
    """Groups of exactly `size` plain linears (same layout) that read one value."""
    groups = []
    seen = set()
    for op in g.ops:
        if not plain_linear(op) or op.operand("x") in seen:
            continue
        x = op.operand("x")
        seen.add(x)
        lins = [u for u in x.users if plain_linear(u) and u.operand("x") is x]
        layouts = {u.attrs["transpose_w"] for u in lins}
        if len(lins) == size and len(layouts) == 1:
            groups.append(sorted(lins, key=lambda o: o.seq))
    return groups


def fuse_qkv(g: Graph) -> int:
    n = 0
    for lins in sibling_groups(g, 3):
        sizes = [o.output.type.shape[-1] for o in lins]
        if not all(isinstance(s, int) for s in sizes):
            continue
        merged = merge_linears(g, lins)
        split = make_op(g, "split", [merged], {"axis": -1, "sizes": sizes})
        g.insert_before(min(lins, key=lambda o: o.seq), [split])
        for old, new in zip(lins, split.outputs):
            g.replace_all_uses(old.output, new)
            g.erase(old)
        n += 1
    g.renumber()
    return n


def _layers_unless_packed(ctx: PassContext) -> int | None:
    n = num_layers(ctx)
    return None if n is None else 0 if ctx.model.get("qkv_packed") else n


define_pass("fuse_qkv", "Three sibling projections (q, k, v) → one linear on concat(Wq, Wk, Wv) "
            "+ split.", fuse_qkv, expected=_layers_unless_packed)
