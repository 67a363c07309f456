"""Training one rank of a tensor- × data-parallel run: the Trainer on a DistProgram.

    world = init_world(tp, dp, device)
    trainer = DistTrainer(sharded_graph, weights, config, world)
    metrics = trainer.step(this_ranks_rows)      # the loss is the global batch's

Loss: every tp rank computes the loss on the gathered logits, so each gradient comes out
tp times the true one; the dp ranks see different rows and DataParallel averages their
gradients. Each rank's loss is therefore scaled by `local_tokens * dp / (global_tokens *
tp)` before backward: the update is exactly that of one process on the dp ranks' rows
together, normalized by their unmasked tokens (the metrics report that global loss).
Gradient clipping and `grad_norm` take the norm over the whole model: the squares of the
sharded parameters are summed over the tp group, a replicated one is counted once.
`state_dict` gathers weights and AdamW moments into whole tensors (every rank calls it;
rank 0 writes them), and `load_state_dict` takes whole tensors and keeps this rank's part,
so a run resumes at any tp.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from llmc.compiler.ir import Graph

from .dist import World
from .dist_program import DistProgram
from .train import TrainConfig, Trainer


def param_of(key: str, names) -> str | None:
    """The parameter an optimizer accumulator (`<param>_moment1_0`...) belongs to."""
    owners = [n for n in names if key.startswith(n + "_")]
    return max(owners, key=len) if owners else None


def squared_norm(program: DistProgram, grads: Mapping[str, object]) -> float:
    """The squared global L2 norm of `grads` (param name → gradient) over the tp group."""
    sharded = replicated = 0.0
    for name, g in grads.items():
        sq = float((g.astype("float32") * g.astype("float32")).sum())
        spec = program.shards.get(name)
        if spec is None:
            replicated += sq
        else:
            sharded += sq / spec.replicas
    return replicated + program.world.sum_over("tp", [sharded])[0]


def make_clip(paddle, clip_norm: float, program: DistProgram):
    """paddle's ClipGradByGlobalNorm, with the norm taken over all tp ranks."""

    class TensorParallelClip(paddle.nn.ClipGradByGlobalNorm):
        def _dygraph_clip(self, params_grads):
            grads = {p.name: g for p, g in params_grads if g is not None}
            norm = math.sqrt(squared_norm(program, grads))
            scale = self.clip_norm / max(norm, self.clip_norm)
            return [(p, g if g is None or getattr(p, "need_clip", True) is False else g * scale)
                    for p, g in params_grads]

    return TensorParallelClip(clip_norm)


class DistTrainer(Trainer):
    """The Trainer of one rank (see the module doc); `world.is_writer` says whether this
    rank writes checkpoints and metrics."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], config: TrainConfig,
                 world: World, program: DistProgram | None = None, vocab_parallel: bool = False):
        program = program or DistProgram(graph, weights, world)
        super().__init__(graph, weights, config, program=program)
        self.world = world
        self._scale = 1.0
        # vocab_parallel: the graph's logits are this rank's vocabulary slice (sharded with
        # gather_logits=false) and the loss is the parallel cross-entropy (dist_loss.py)
        self.vocab_parallel = vocab_parallel and world.tp > 1
        self._tp_factor = 1 if self.vocab_parallel else world.tp
        self._tp_comm = None
        if self.vocab_parallel:
            from .dist_ops import Comm

            self._tp_comm = Comm(self.paddle, world, world.group("tp", world.tp), world.tp)
        if config.max_grad_norm is not None and world.tp > 1:
            self.optimizer._grad_clip = make_clip(self.paddle, config.max_grad_norm, program)

    def loss_sum(self, input_ids, labels, **inputs):
        """Trainer.loss_sum scaled for tp and dp (module doc)."""
        total, count = super().loss_sum(input_ids, labels, **inputs)
        return total * self._scale, count

    def loss_of(self, logits, labels):
        """Trainer.loss_of, or the vocabulary-parallel cross-entropy on sliced logits."""
        if not self.vocab_parallel:
            return super().loss_of(logits, labels)
        from .dist_loss import parallel_loss_sum

        return parallel_loss_sum(self.paddle, logits, labels, self._tp_comm,
                                 self.config.ignore_index)

    def step(self, batch: Mapping[str, np.ndarray]) -> dict:
        """One update on this rank's rows of the global batch; the metrics are global, and
        `collectives` counts what this rank issued (kind → calls, bytes)."""
        self.world.comm.reset()
        ids = np.asarray(batch["input_ids"])
        labels = np.asarray(batch.get("labels", ids))
        local = int((labels[:, 1:] != self.config.ignore_index).sum())
        tokens = self.world.sum_over("dp", [local, ids.size])
        world_tokens = max(tokens[0], 1.0)
        self._scale = local * self.world.dp / (world_tokens * self._tp_factor)
        m = super().step(batch)
        m["loss"] = self.world.sum_over("dp", [m["loss"]])[0] * self._tp_factor / self.world.dp
        m["tokens"] = int(tokens[1])
        m["tokens_per_s"] = m["tokens"] / m["seconds"]
        m["collectives"] = self.world.comm.summary()
        return m

    def grad_norm(self) -> float:
        """The global L2 norm of the gradients over every rank's parameters."""
        grads = {n: p.grad for n, p in self.program.params.items()
                 if not p.stop_gradient and p.grad is not None}
        return math.sqrt(squared_norm(self.program, grads))

    def state_dict(self) -> dict:
        """Trainer.state_dict with every tensor whole (collective over the tp group)."""
        state = super().state_dict()
        names = list(self.program.params)
        weights = {n: self.program.gather_param(n, a) for n, a in state["weights"].items()}
        optimizer = {}
        for key, value in state["optimizer"].items():
            owner = param_of(key, names)
            if owner is not None and isinstance(value, np.ndarray) and \
                    value.shape == state["weights"][owner].shape:
                value = self.program.gather_param(owner, value)
            optimizer[key] = value
        return {**state, "weights": weights, "optimizer": optimizer}

    def load_state_dict(self, state: Mapping) -> None:
        """Trainer.load_state_dict from whole tensors: this rank keeps its part."""
        names = list(self.program.params)
        whole = {n: np.asarray(a) for n, a in state["weights"].items()}
        optimizer = {}
        for key, value in state["optimizer"].items():
            owner = param_of(key, names)
            if owner is not None and isinstance(value, np.ndarray) and owner in whole and \
                    value.shape == whole[owner].shape:
                value = self.program.local_part(owner, value)
            optimizer[key] = value
        weights = {n: self.program.local_part(n, a) for n, a in whole.items()}
        super().load_state_dict({**state, "weights": weights, "optimizer": optimizer})
