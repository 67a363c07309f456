"""The collectives of shard_tensor_parallel and the graph surgery around them: Megatron's
f/g pair around each parallel region (grad_all_reduce before column-parallel linears,
all_reduce after row-parallel ones; with sequence parallelism all_gather and
reduce_scatter along the sequence), the vocabulary-parallel embedding and lm_head, and
the head-count edits outside the linears (ALiBi bias and slopes, block attention, KV cache
inputs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmc.compiler.builder import make_op
from llmc.compiler.ir import DType, Graph, Op, Value
from llmc.compiler.ops.nn import alibi_slopes

from .shard_tp_plan import Heads, fail

SEQ_AXIS = 1  # [batch, seq, hidden]: the full form's residual stream


@dataclass
class Comm:
    """The group the collectives run over and what has been inserted already."""

    g: Graph
    rank: Value
    tp: int
    sequence_parallel: bool
    entered: dict[Value, Value] = field(default_factory=dict)

    def op(self, kind: str, inputs: list[Value], name: str | None = None, **attrs) -> Op:
        """A collective of this group (not yet placed)."""
        return make_op(self.g, kind, inputs, {**attrs, "nranks": self.tp}, name=name)


def insert_after(g: Graph, op: Op, new: list[Op]) -> None:
    """Place `new` right after `op` in program order."""
    ops = g.ops
    i = ops.index(op)
    if i + 1 < len(ops):
        g.insert_before(ops[i + 1], new)
    else:
        for o in new:
            g.append(o)


def rewire(g: Graph, old: Value, new: Value, keep: Op | None = None) -> None:
    """Every reader of `old` but `keep` (graph outputs too) reads `new`; unlike
    Graph.replace_all_uses the types may differ: the pass re-infers them afterwards."""
    for user in list(old.users):
        if user is keep:
            continue
        user.inputs = [new if v is old else v for v in user.inputs]
        del old.users[user]
        new.users[user] = None
    g.outputs.replace(old, new)


def set_operand(op: Op, name: str, new: Value) -> None:
    """Point operand `name` of `op` at `new`."""
    old = op.operand(name)
    op.inputs = [new if v is old else v for v in op.inputs]
    old.users.pop(op, None)
    new.users[op] = None


def enter_column(c: Comm, lin: Op) -> None:
    """The input of a column-parallel linear: grad_all_reduce(x) (identity forward, its
    gradient summed over the ranks), or with sequence parallelism all_gather(x) along the
    sequence. Sibling linears reading one x (q/k/v, gate/up) share it."""
    x = lin.operand("x")
    entered = c.entered.get(x)
    if entered is None:
        if c.sequence_parallel:
            _check_seq(x, "all_gather")
            op = c.op("all_gather", [x], name="sp_gather", axis=SEQ_AXIS)
        else:
            op = c.op("grad_all_reduce", [x], name="tp_in")
        c.g.insert_before(lin, [op])
        entered = c.entered[x] = op.output
    set_operand(lin, "x", entered)


def _check_seq(x: Value, what: str) -> None:
    if x.type.rank != 3:
        raise fail(f"sequence_parallel: {what} along the sequence needs [batch, seq, hidden] "
                   f"activations, got {x.ref}: {x.type}")


def leave_row(c: Comm, op: Op, out: Value) -> None:
    """The partial sums of a row-parallel linear (or vocab-parallel embedding): all_reduce,
    or reduce_scatter along the sequence with sequence parallelism."""
    if c.sequence_parallel:
        _check_seq(out, "reduce_scatter")
        red = c.op("reduce_scatter", [out], name="sp_scatter", axis=SEQ_AXIS)
    else:
        red = c.op("all_reduce", [out], name="tp_sum")
    insert_after(c.g, op, [red])
    rewire(c.g, out, red.output, keep=red)


def parallel_embedding(c: Comm, emb: Op) -> None:
    """embedding(ids, table shard) → sum over ranks of parallel_embedding(ids, shard, rank)."""
    pe = make_op(c.g, "parallel_embedding",
                 [emb.operand("ids"), emb.operand("table"), c.rank], {}, name="embed_part")
    c.g.insert_before(emb, [pe])
    rewire(c.g, emb.output, pe.output)
    c.g.erase(emb)
    leave_row(c, pe, pe.output)


def gather_logits(c: Comm, lin: Op) -> None:
    """The vocabulary-parallel logits of every rank, concatenated on the last axis."""
    gat = c.op("all_gather", [lin.output], name="logits_gather", axis=-1)
    insert_after(c.g, lin, [gat])
    rewire(c.g, lin.output, gat.output, keep=gat)


def shard_alibi(c: Comm) -> int:
    """This rank's heads of every ALiBi bias and of block attention's ALiBi slopes: its
    slopes are those of the model's heads."""
    n = 0
    for op in c.g.ops:
        if op.kind == "alibi_bias":
            sh = make_op(c.g, "shard", [op.output, c.rank], {"axis": -3, "parts": c.tp},
                         name="alibi_shard")
            insert_after(c.g, op, [sh])
            rewire(c.g, op.output, sh.output, keep=sh)
            n += 1
    return n + _shard_block_slopes(c)


def _shard_block_slopes(c: Comm) -> int:
    """Block attention with use_alibi reads its slopes as an operand: the model's heads'
    slopes (made explicit, once, as a constant where the ops derived them from num_heads),
    of which this rank keeps its heads' share."""
    shards: dict[Value | int, Value] = {}  # by the slopes value, or the num_heads derived from
    for op in c.g.ops:
        if op.kind != "block_multihead_attention" or not op.attrs["use_alibi"]:
            continue
        whole = op.operand("alibi_slopes")
        key = op.attrs["num_heads"] if whole is None else whole
        if key not in shards:
            new = [] if whole is not None else [_model_slopes(c.g, key)]
            whole = new[0].output if whole is None else whole
            new.append(make_op(c.g, "shard", [whole, c.rank],
                               {"axis": 0, "parts": c.tp}, name="alibi_slopes_shard"))
            c.g.insert_before(op, new)
            shards[key] = new[-1].output
        set_or_add_operand(op, "alibi_slopes", shards[key])
    return len(shards)


def _model_slopes(g: Graph, num_heads: int) -> Op:
    values = [float(s) for s in alibi_slopes(num_heads)]
    return make_op(g, "constant", [], {"value": values, "shape": (num_heads,), "dtype": DType.f32},
                   name="alibi_slopes")


def set_or_add_operand(op: Op, name: str, new: Value) -> None:
    """Point operand `name` of `op` at `new`, appending it when it is an absent optional
    (the last one the op declares)."""
    if op.operand(name) is not None:
        set_operand(op, name, new)
        return
    op.inputs = [*op.inputs, new]
    new.users[op] = None
    if op.operand(name) is not new:
        raise fail(f"{op.kind}: operand '{name}' is not its last optional one")


def local_attention(c: Comm, heads: Heads) -> None:
    """Head counts of this rank in block attention attrs and KV cache inputs."""
    for op in c.g.ops:
        if op.kind == "block_multihead_attention":
            op.attrs = {**op.attrs, "num_heads": heads.local, "kv_heads": heads.kv_local}
            caches = [op.operand("cache_k"), op.operand("cache_v")]
        elif op.kind == "kv_cache_update":
            caches = [op.operand("past")]
        elif op.kind == "cached_attention":
            caches = [op.operand("past_k"), op.operand("past_v")]
        else:
            continue
        for v in caches:
            _local_cache(c.g, v, heads)


def _local_cache(g: Graph, v: Value, heads: Heads) -> None:
    """A KV cache graph input [.., kv heads, .., ..] holds this rank's kv heads."""
    if v not in g.inputs:
        raise fail(f"KV cache {v.ref} is not a graph input: cannot give it this rank's heads")
    shape = v.type.shape
    if shape[1] not in (heads.kv_heads, heads.kv_local):
        raise fail(f"KV cache {v.ref}: {v.type} does not hold {heads.kv_heads} kv heads on axis 1")
    v.type = v.type.with_shape((shape[0], heads.kv_local) + tuple(shape[2:]))


def check_full_form(g: Graph) -> None:
    """Sequence parallelism splits the sequence: only the full form has one to split."""
    cached = {"kv_cache_update", "cached_attention", "block_multihead_attention"}
    kinds = cached & set(g.op_counts())
    if kinds:
        raise fail(f"sequence_parallel needs the full form; this graph has {sorted(kinds)[0]} "
                   "(cache/inference form: decode runs one token per sequence)")
