"""fuse_mc2: a linear and the collective next to it → one MC2 op (Ascend's MC2 kernels,
PyTorch's async-TP `micro_pipeline_tp`), so communication overlaps the matmul:

- `all_reduce(linear(x, w))` → `matmul_all_reduce(x, w)` (row-parallel o_proj / down_proj),
- `reduce_scatter(linear(x, w), axis)` → `matmul_reduce_scatter(x, w)` (the same with
  sequence parallel),
- `linear(all_gather(x, axis), w)` → `all_gather_matmul(x, w)` (a sequence-parallel input
  gathered for a column-parallel linear).

It never fires when:
- the linear's result has another user besides the collective (that user needs the
  partial sums, which the fused op does not expose), or the linear has a bias (a bias
  added before an all_reduce would be summed nranks times; MC2 kernels take none);
- the gathered value of an all_gather has another user: the fused op does not expose the
  gathered tensor, and fusing one of several consumers would gather twice. Sequence
  parallel q/k/v (or gate/up) read one gathered value, so all_gather_matmul fires there
  only after fuse_qkv / fuse_gate_up merged them into one linear;
- the weight is a `shard` over another group or rank count than the collective's (a
  weight split across another group is not this group's row/column-parallel matmul, and an
  MC2 kernel runs on one communicator);
- the gather / scatter runs along the feature (last) axis: MC2 kernels split the rows
  (tokens), and a logits all_gather over the vocabulary after lm_head is left alone.

Expected matches: 2 per layer (attention out, ffn down) in a graph that has collectives,
plus the row-axis all_gathers read by exactly one linear (an anchor count: how many exist depends
on whether fuse_qkv / fuse_gate_up ran first).
"""

from __future__ import annotations

from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.passmanager import PassContext
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_common import num_layers

ROW_COLLECTIVES = ("all_reduce", "reduce_scatter")
FUSED_ROW = {"all_reduce": "matmul_all_reduce", "reduce_scatter": "matmul_reduce_scatter"}
x, w = P.var("x"), P.var("w")


def _weight_group(w: Value) -> tuple[str, int] | None:
    """(group, nranks) of the `rank` a sharded weight is split by; None when not a shard."""
    shard = w.producer
    if shard is None or shard.kind != "shard":
        return None
    rank = shard.operand("rank").producer
    if rank is None or rank.kind != "rank":
        return None
    return rank.attrs["group"], rank.attrs["nranks"]


def _same_group(w: Value, coll: Op) -> bool:
    got = _weight_group(w)
    return got is None or got == (coll.attrs["group"], coll.attrs["nranks"])


def _row_axis(coll: Op, v: Value) -> bool:
    """Not a gather / scatter along the last (feature) axis."""
    if "axis" not in coll.attrs:
        return True
    return coll.attrs["axis"] % v.type.rank != v.type.rank - 1


def _fusable(lin: Op, coll: Op, w: Value, v: Value) -> bool:
    return lin.operand("bias") is None and _same_group(w, coll) and _row_axis(coll, v)


@rule(P(ROW_COLLECTIVES, P("linear", x, w, name="lin", one_use=True), name="coll"),
      check=lambda lin, coll, w: _fusable(lin, coll, w, lin.output))
def matmul_collective(rw, x, w, lin, coll):
    extra = {"axis": coll.attrs["axis"]} if coll.kind == "reduce_scatter" else {}
    return rw.op(FUSED_ROW[coll.kind], x, w, transpose_w=lin.attrs["transpose_w"],
                 group=coll.attrs["group"], nranks=coll.attrs["nranks"], **extra,
                 name=coll.output.name)


@rule(P("linear", P("all_gather", x, name="coll", one_use=True), w, name="lin"),
      check=lambda lin, coll, w: _fusable(lin, coll, w, coll.output))
def all_gather_matmul(rw, x, w, lin, coll):
    return rw.op("all_gather_matmul", x, w, axis=coll.attrs["axis"],
                 transpose_w=lin.attrs["transpose_w"], group=coll.attrs["group"],
                 nranks=coll.attrs["nranks"], name=lin.output.name)


def _produced_by(v: Value, kind: str) -> bool:
    return v.producer is not None and v.producer.kind == kind


def _gathers_into_one_linear(g: Graph) -> int:
    n = 0
    for op in g.ops:
        if op.kind == "all_gather":
            user = g.single_user(op.output)
            n += (user is not None and user.kind == "linear" and user.operand("x") is op.output
                  and _row_axis(op, op.output))
    return n


def _expected(g: Graph, ctx: PassContext) -> int:
    row = [op for op in g.ops if op.kind in ROW_COLLECTIVES]
    layers = num_layers(ctx)
    if layers is not None:
        rows = 2 * layers if row else 0
    else:
        rows = sum(_produced_by(op.operand("x"), "linear") for op in row)
    return rows + _gathers_into_one_linear(g)


rule_pass("fuse_mc2", "linear + all_reduce / reduce_scatter and all_gather + linear → "
          "matmul_all_reduce / matmul_reduce_scatter / all_gather_matmul (MC2).",
          [matmul_collective, all_gather_matmul], expected=_expected)
