"""Run the ranks of a tensor-parallel (SPMD) graph in one process, in lockstep.

Every rank gets its own reference `Interpreter` over the same graph and weights. Ops run
one at a time on all ranks; an op with a group kernel (`rank`, the collectives, the MC2
ops: compiler/ops/collective.py) is run once over all ranks' operands, so each collective
sees exactly what every rank computed before it. This is the reference a distributed
runtime is compared with, and how every distributed pass is golden-tested on one CPU.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph, Op
from llmc.compiler.ops import get_op

from .reference import ExecutionError, Interpreter, failed_op


def group_size(graph: Graph, group: str = "tp") -> int:
    """The rank count the graph's ops of `group` were made for (1 if it has none)."""
    sizes = {op.attrs["nranks"] for op in graph.ops
             if get_op(op.kind).group_kernel is not None and op.attrs.get("group") == group}
    if len(sizes) > 1:
        raise LlmcError(f"graph @{graph.name}: group '{group}' has ops for {sorted(sizes)} ranks")
    return sizes.pop() if sizes else 1


class Simulator:
    """`nranks` reference interpreters of one graph stepped together."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], nranks: int, *,
                 check_types: bool = True):
        want = group_size(graph)
        if want not in (1, nranks):
            raise LlmcError(f"graph @{graph.name} is sharded for {want} ranks, not {nranks}")
        self.graph = graph
        self.nranks = nranks
        self.ranks = [Interpreter(graph, weights, check_types=check_types)
                      for _ in range(nranks)]

    def run(self, inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]
            ) -> list[list[np.ndarray]]:
        """Run every rank; `inputs` is one mapping for all ranks or one per rank. Returns
        each rank's graph outputs."""
        per_rank = [inputs] * self.nranks if isinstance(inputs, Mapping) else list(inputs)
        if len(per_rank) != self.nranks:
            raise LlmcError(f"simulate: {len(per_rank)} input sets for {self.nranks} ranks")
        states = [it.start(x) for it, x in zip(self.ranks, per_rank)]
        for op in self.graph.ops:
            args = [it.operands(op, st) for it, st in zip(self.ranks, states)]
            results = self._step(op, args)
            for it, st, res in zip(self.ranks, states, results):
                it.finish_op(op, res, st)
        return [it.outputs(st) for it, st in zip(self.ranks, states)]

    def _step(self, op: Op, args: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        group_kernel = get_op(op.kind).group_kernel
        if group_kernel is None:
            return [it.call(op, a) for it, a in zip(self.ranks, args)]
        try:
            return [list(r) for r in group_kernel(args, op.attrs)]
        except LlmcError:
            raise
        except Exception as e:  # a kernel failure: report the op
            raise ExecutionError(f"{failed_op(op)}: {type(e).__name__}: {e}") from e


def simulate(graph: Graph, inputs, weights: Mapping[str, np.ndarray],
             nranks: int | None = None) -> list[list[np.ndarray]]:
    """Each rank's outputs of `graph` run over `nranks` simulated ranks (default: the
    rank count its collectives were made for)."""
    n = nranks or group_size(graph)
    return Simulator(graph, weights, n).run(inputs)
