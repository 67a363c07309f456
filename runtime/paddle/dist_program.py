"""One rank of a sharded (SPMD) graph on Paddle: a PaddleProgram that knows its World.

    world = init_world(tp=2, dp=1, device="cpu")      # inside paddle.distributed.launch
    program = DistProgram(sharded_graph, weights, world)
    logits = program.logits(input_ids)                # every rank: the whole logits

Parameters read through `shard(@w, %rank)` are created from this rank's slice only (a
memory-mapped checkpoint is sliced before anything is copied or converted), and `shard`
of them is the parameter itself. For training, gradients are made whole where a rank
holds only a share: replicated parameters on rank-dependent activations (dist_graph)
and kv-head shards replicated over several ranks are summed over the tp group by a
gradient hook; with dp > 1 the program runs inside `paddle.DataParallel`, which
all-reduces (averages) every gradient over the dp group. `gather_param`/`local_part`
convert between this rank's part and the whole tensor, for unsharded checkpoints.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Mapping

import numpy as np

from llmc.compiler.ir import Graph, Value

from .dist import World
from .dist_graph import param_shards, partial_params
from .dist_ops import DistKernels
from .dist_shard import ShardSpec, unshard
from .env import choose_kernels
from .lower import LoweringError, PaddleProgram


def stored(weights: Mapping, name: str) -> np.ndarray:
    """The tensor `name` as stored (a WeightStore's memory map, before any dtype
    conversion), so that slicing it reads only the slice."""
    try:
        raw = getattr(weights, "raw", None)
        return raw(name) if raw is not None else np.asarray(weights[name])
    except KeyError:
        raise LoweringError(f"no weight for parameter @{name}") from None


class DistProgram(PaddleProgram):
    """A sharded graph lowered for the rank `world.tp_rank` of `world` (see module doc)."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], world: World, *,
                 trainable: bool = True):
        self.world = world
        self.shards = {name: ShardSpec.of(attrs, world.tp_rank)
                       for name, attrs in param_shards(graph).items()}
        base = choose_kernels(world.device, inference=not trainable)
        kernels = DistKernels(**{f.name: getattr(base, f.name) for f in fields(base)},
                              world=world, folded=frozenset(self.shards))
        super().__init__(graph, weights, device=world.device, trainable=trainable,
                         kernels=kernels)
        self.partial = partial_params(graph) if world.tp > 1 else set()
        self._data_parallel = None
        if trainable:
            self._sum_shares()

    def _param(self, v: Value, weights: Mapping[str, np.ndarray], trainable: bool):
        spec = self.shards.get(v.name)
        if spec is None:
            return super()._param(v, weights, trainable)
        whole = stored(weights, v.name)
        if tuple(whole.shape) != tuple(v.type.shape):
            raise LoweringError(f"parameter {v.ref}: expected shape {list(v.type.shape)}, got "
                                f"{list(whole.shape)}")
        from paddle.base.framework import EagerParamBase

        part = np.ascontiguousarray(spec.take(whole), dtype=v.type.dtype.np)
        return EagerParamBase.from_tensor(self.paddle.to_tensor(part), name=v.name,
                                          trainable=trainable and v.type.dtype.is_float)

    def _sum_shares(self) -> None:
        """Gradient hooks: the tp-sum of partial gradients, the sum of replicated shards."""
        for name, p in self.params.items():
            if p.stop_gradient:
                continue
            spec = self.shards.get(name)
            if name in self.partial:
                p.register_hook(self._summed)
            elif spec is not None and spec.replicas > 1:
                p.register_hook(lambda g, s=spec: self._replica_sum(g, s))

    def _tp(self):
        from .dist_ops import Comm

        return Comm(self.paddle, self.world, self.world.groups["tp"], self.world.tp)

    def _summed(self, grad):
        return self._tp().all_reduce(grad, backward=True)

    def _replica_sum(self, grad, spec: ShardSpec):
        parts = self.paddle.split(self._tp().all_gather(grad, 0, backward=True), self.world.tp)
        peers = [parts[r] for r in range(self.world.tp) if r // spec.replicas == spec.piece]
        return self.paddle.add_n(peers)

    def __call__(self, inputs: Mapping[str, object], recompute: bool = False) -> list:
        """As PaddleProgram's; with dp > 1 and autograd on, through paddle.DataParallel."""
        if self.world.dp > 1 and self.paddle.is_grad_enabled():
            return self._dp_model()(inputs, recompute)
        return super().__call__(inputs, recompute)

    def _dp_model(self):
        if self._data_parallel is None:
            program, run = self, super().__call__

            class ProgramLayer(self.paddle.nn.Layer):
                def __init__(self):
                    super().__init__()
                    for i, p in enumerate(program.params.values()):
                        self.add_parameter(f"p{i}", p)

                def forward(self, inputs, recompute):
                    return run(inputs, recompute)

            # DataParallel starts by broadcasting global rank 0's parameters to every rank,
            # whatever its group: with tp > 1 that would overwrite the other tp ranks' shards
            mine = {n: p.clone() for n, p in self.params.items()}
            self._data_parallel = self.paddle.DataParallel(ProgramLayer(),
                                                           group=self.world.groups["dp"])
            for name, value in mine.items():
                self.params[name].set_value(value)
        return self._data_parallel

    def gather_param(self, name: str, part: np.ndarray) -> np.ndarray:
        """The whole tensor of parameter `name` (or of a state shaped like it) from every
        tp rank's `part`; collective: every rank of the tp group calls it in turn."""
        spec = self.shards.get(name)
        if spec is None:
            return part
        whole = self._tp().all_gather(self.paddle.to_tensor(np.ascontiguousarray(part)), 0)
        return unshard([t.numpy() for t in self.paddle.split(whole, self.world.tp)], spec)

    def local_part(self, name: str, whole: np.ndarray) -> np.ndarray:
        """This rank's part of the whole tensor `whole` of parameter `name`."""
        spec = self.shards.get(name)
        return whole if spec is None else np.ascontiguousarray(spec.take(np.asarray(whole)))
