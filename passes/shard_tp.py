"""shard_tensor_parallel{tp=N, sequence_parallel=false, gather_logits=true}: one rank's
graph of an N-way tensor-parallel model (Megatron-LM's layout), for every rank alike.

Runs first, on the unfused graph a frontend builds (full, cache or inference form):

- q/k/v, gate/up: column-parallel, `linear(grad_all_reduce(x), shard(@w, %r){axis=out})`;
  o, down: row-parallel, `all_reduce(linear(x, shard(@w, %r){axis=in}))`. Baichuan's
  `W_pack` is split per q/k/v block (`blocks`); PaddleNLP's `qkv_proj`, whose features
  are grouped per kv head as [the group's q heads, k, v], is split into whole kv groups.
- Heads: each rank keeps heads/N query heads and kv/N kv heads; when N > kv heads, each kv
  head is replicated over N/kv ranks (`shard{parts=kv, replicas=N/kv}`), as real stacks
  do. Reshapes, GQA repeats, block-attention attrs and the KV cache graph inputs
  (`past_key_i` [b, kv/N, max_len, d], `cache_k_i` [blocks, kv/N, block, d]) follow;
  the ALiBi bias is sharded along its head axis, and block attention's ALiBi slopes (a
  constant of the model's slopes where the op derived them from its num_heads) along
  theirs, so each rank keeps its heads' slopes.
- Embedding: vocabulary-parallel, `all_reduce(parallel_embedding(ids, shard(@E), %r))`;
  lm_head: column-parallel over the vocabulary, then `all_gather` on the last axis when
  `gather_logits` (else each rank returns its vocabulary slice of the logits).
- `sequence_parallel` (full form only): the residual stream is split along the sequence;
  `all_gather` before each column-parallel linear and the lm_head, `reduce_scatter` after
  each row-parallel linear and the embedding.

Weights stay the full checkpoint tensors, sliced by `shard` ops: a runtime that knows its
rank folds `shard(@w, %r)` into a lazily read slice, so no resharded copy is written.

How projections are found: by the parameter's checkpoint name (`*.self_attn.q_proj.weight`,
`W_pack`, `qkv_proj`, `mlp.gate_proj`, `embed_tokens`, `lm_head`, ...), which the frontends
keep verbatim (frontends/naming.py), with the layout read from the linear that uses it.
Names are what a checkpoint guarantees; telling q from k from v or gate from up by graph
structure alone would depend on how each form spells attention. Everything else is
derived from the graph: head counts from its attention ops, and every other op's types
re-inferred from the per-rank operands (passes/shard_tp_types.py), so a structure this pass
does not know fails with an error naming the op instead of computing something else.
Sizes that do not divide (heads, kv heads, intermediate, vocab) are one-line errors.

The match count is the number of parameters sharded; the per-rank parameter bytes go to
`ctx.model["tensor_parallel"]` (see `per_rank_param_bytes`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from llmc.compiler.builder import make_op
from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.passmanager import Option, PassContext, define_pass
from llmc.compiler.text import print_op

from . import shard_tp_comm as comm
from . import shard_tp_plan as plan
from .shard_tp_types import reinfer, snapshot

__all__ = ["param_bytes", "param_bytes_note", "per_rank_param_bytes", "shard_tensor_parallel"]


def _rank_op(g: Graph, tp: int) -> Value:
    op = make_op(g, "rank", [], {"group": "tp", "nranks": tp}, name="tp_rank")
    ops = g.ops
    if ops:
        g.insert_before(ops[0], [op])
    else:
        g.append(op)
    return op.output


def _shard_weights(g: Graph, rank: Value, heads: plan.Heads | None,
                   tp: int) -> dict[Value, str]:
    """Replace every role parameter's uses by this rank's slice; the slices by role.
    The slices go first in the graph, so that fusions merging sibling linears (fuse_qkv,
    fuse_gate_up) find every slice defined before the first linear."""
    sliced: dict[Value, str] = {}
    anchor = _after(g, rank)
    in_group = None  # rank mod kv replicas, made once for all grouped qkv_proj
    for name, role in plan.roles(g).items():
        p = g.params[name]
        s = plan.slice_of(role, p, heads, tp)
        if role == "grouped":
            _check_grouped(p, heads)
        (cut,) = ops = plan.shard_param(g, p, role, s, rank)
        if role == "grouped" and s.replicas > 1:
            if in_group is None:
                ops = plan.group_rank(g, rank, s.replicas) + ops
                in_group = ops[-2].output
            ops += plan.grouped_qkv(g, cut.output, heads, in_group, cut.attrs["axis"])
        _place(g, anchor, ops)
        comm.rewire(g, p, ops[-1].output, keep=cut)
        sliced[ops[-1].output] = role
    return sliced


def _place(g: Graph, anchor: Op | None, ops: list[Op]) -> None:
    if anchor is None:
        for op in ops:
            g.append(op)
    else:
        g.insert_before(anchor, ops)


def _after(g: Graph, v: Value) -> Op | None:
    """The op after v's producer (None: v's producer is the last op)."""
    ops = g.ops
    i = ops.index(v.producer) + 1
    return ops[i] if i < len(ops) else None


def _check_grouped(p: Value, heads: plan.Heads) -> None:
    width = (heads.heads + 2 * heads.kv_heads) * heads.head_dim
    if width not in p.type.shape:
        raise plan.fail(f"{p.ref}: {p.type} is not a grouped qkv_proj of {heads.heads} heads, "
                        f"{heads.kv_heads} kv heads of {heads.head_dim}")


def _add_collectives(c: comm.Comm, sliced: dict[Value, str], gather: bool) -> None:
    """Enter/leave each parallel region; the embedding and lm_head over the vocabulary."""
    done: set[Op] = set()  # a linear on packed weights is reached from each of them
    for w, role in sliced.items():
        for op, slot in plan.weight_users(w):
            if op in done:
                continue
            done.add(op)
            if slot == "linear" and op.operand("bias") is not None:
                raise plan.fail(f"`{print_op(op)}` has a bias, which this pass does not shard")
            if slot == "table" and role == "embed":
                comm.parallel_embedding(c, op)
            elif slot == "table":
                raise plan.fail(f"{w.ref} ({role}) is read as an embedding table")
            elif role in plan.ROW:
                comm.leave_row(c, op, op.output)
            else:
                comm.enter_column(c, op)
                if role in ("lm_head", "embed") and gather:
                    comm.gather_logits(c, op)


def shard_tensor_parallel(g: Graph, ctx: PassContext, tp: int, sequence_parallel: bool,
                          gather_logits: bool) -> int:
    if tp == 1 or not plan.roles(g):
        return 0
    if "rank" in g.op_counts():
        raise plan.fail("the graph is already sharded (it has a rank op)")
    if sequence_parallel:
        comm.check_full_form(g)
    heads = plan.find_heads(g, tp)
    if heads is not None:
        heads.check()
    old = snapshot(g)
    rank = _rank_op(g, tp)
    sliced = _shard_weights(g, rank, heads, tp)
    c = comm.Comm(g, rank, tp, sequence_parallel)
    _add_collectives(c, sliced, gather_logits)
    if heads is not None:
        comm.shard_alibi(c)
        comm.local_attention(c, heads)
    reinfer(g, old, heads)
    g.renumber()
    ctx.model["tensor_parallel"] = {
        "tp": tp, "sequence_parallel": sequence_parallel, "param_bytes": param_bytes(g),
        "param_bytes_per_rank": per_rank_param_bytes(g)}
    return len(sliced)


def _expected(g: Graph, tp: int) -> int:
    """One per parameter with a role (projections, embedding, lm_head); none at tp=1 (the
    graph is left alone then, as it is when no parameter has a role)."""
    return 0 if tp == 1 else len(plan.roles(g))


def _nbytes(v: Value, itemsize: Mapping[str, int] | None, name: str) -> int:
    size = (itemsize or {}).get(name, v.type.dtype.np.itemsize)
    return int(np.prod(v.type.shape, dtype=np.int64)) * size


def param_bytes(g: Graph, itemsize: Mapping[str, int] | None = None) -> int:
    """The bytes of all parameters of `g`, whole. `itemsize` (parameter name → bytes per
    element, e.g. from the checkpoint's stored dtypes) overrides the graph dtype's."""
    return sum(_nbytes(p, itemsize, n) for n, p in g.params.items())


def per_rank_param_bytes(g: Graph, itemsize: Mapping[str, int] | None = None) -> int:
    """The parameter bytes one rank of a sharded graph reads: a parameter used only through
    `shard` ops counts the largest slice taken, any other one whole (on an unsharded graph
    that is `param_bytes`). `itemsize` as for `param_bytes`."""
    total = 0
    for n, p in g.params.items():
        users: list[Op] = list(p.users)
        if users and all(u.kind == "shard" and u.operand("x") is p for u in users):
            total += max(_nbytes(u.output, itemsize, n) for u in users)
        else:
            total += _nbytes(p, itemsize, n)
    return total


def param_bytes_note(ctx: PassContext) -> str | None:
    """The pass log line for the per-rank parameter bytes this pass recorded in `ctx`
    (None when it did not shard anything)."""
    tp = ctx.model.get("tensor_parallel")
    if tp is None:
        return None
    whole, mine = tp["param_bytes"], tp["param_bytes_per_rank"]
    return (f"NOTE: [shard_tensor_parallel] tp={tp['tp']}: parameters {whole:,} bytes whole, "
            f"{mine:,} bytes per rank ({mine / whole:.1%})")


define_pass(
    "shard_tensor_parallel",
    "One rank's graph of N-way tensor parallelism: column/row-parallel projections, "
    "vocab-parallel embedding and lm_head, heads split (kv replicated past kv heads).",
    shard_tensor_parallel,
    expected=_expected,
    options={
        "tp": Option(1, "tensor-parallel ranks (1: leave the graph alone)", min=1),
        "sequence_parallel": Option(False, "split the residual stream along the sequence "
                                    "(full form only)"),
        "gather_logits": Option(True, "all_gather the vocabulary-parallel logits on every rank"),
    },
)
