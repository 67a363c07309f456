"""What a rank of a sharded graph needs to know about its parameters.

* `param_shards`: the parameters read only through `shard(@w, %rank)`: the runtime creates
  them from this rank's slice (the checkpoint is never resharded on disk).
* `partial_params`: replicated parameters (read whole) whose op has a rank-dependent
  operand, e.g. a norm weight on a sequence-parallel (seq-sharded) activation: each rank's
  gradient is its share, and the true gradient is their sum over the tp group. A parameter
  on replicated activations gets the same, whole gradient on every rank and needs nothing.

A value is rank-dependent ("partitioned") when it comes from `rank`, `shard` or a
`reduce_scatter`, or from an op with a partitioned operand; `all_reduce` and `all_gather`
(and their MC2 forms) make it replicated again.
"""

from __future__ import annotations

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph, Value

REPLICATING = {"all_reduce", "all_gather", "matmul_all_reduce"}
PARTITIONING = {"rank", "shard", "reduce_scatter", "matmul_reduce_scatter"}
SHARD_ATTRS = ("axis", "parts", "replicas", "blocks")


def param_shards(graph: Graph) -> dict[str, dict]:
    """Parameter name → the attrs of the `shard` ops that read it, for parameters read
    only by shard ops (with the same attrs); a parameter read both ways is refused."""
    uses: dict[str, list] = {}
    for op in graph.ops:
        for v in op.inputs:
            if v.is_param:
                uses.setdefault(v.name, []).append((op, v))
    out: dict[str, dict] = {}
    for name, reads in uses.items():
        sharded = [op for op, v in reads if op.kind == "shard" and op.operand("x") is v]
        if not sharded:
            continue
        if len(sharded) != len(reads):
            raise LlmcError(f"parameter @{name} is read both whole and through `shard`; a "
                            "rank holds one or the other")
        attrs = [{k: op.attrs[k] for k in SHARD_ATTRS} for op in sharded]
        if any(a != attrs[0] for a in attrs[1:]):
            raise LlmcError(f"parameter @{name} is sharded two different ways")
        out[name] = attrs[0]
    return out


def partitioned_values(graph: Graph) -> set[Value]:
    """The values that differ from rank to rank (see the module doc)."""
    out: set[Value] = set()
    for op in graph.ops:
        if op.kind in REPLICATING:
            continue
        if op.kind == "all_gather_matmul":
            hit = op.operand("w") in out
        else:
            hit = op.kind in PARTITIONING or any(v in out for v in op.inputs)
        if hit:
            out.update(op.outputs)
    return out


def partial_params(graph: Graph) -> set[str]:
    """Replicated parameters whose gradient each rank holds only a share of."""
    parts = partitioned_values(graph)
    shards = param_shards(graph)
    out = set()
    for op in graph.ops:
        if op.kind == "shard":
            continue
        params = [v for v in op.inputs if v.is_param and v.name not in shards]
        if params and any(v in parts for v in op.inputs):
            out.update(v.name for v in params)
    return out
