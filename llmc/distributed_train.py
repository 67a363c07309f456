"""`llmc train --tp N --dp M`: one rank's part of the training loop of llmc/training.py.

* Model: with tp > 1 the checkpoint's full-form graph goes through shard_tensor_parallel;
  every rank builds its parameters from its slices of the memory-mapped checkpoint
  (runtime/paddle/dist_program.py). LoRA runs with --dp only.
* Data: every rank draws the same global batch of `--batch-size × dp` rows (so the data
  position is one for the job) and trains on its dp rank's share of the rows: `--dp 2` is
  exactly one process with `--batch-size` doubled.
* Checkpoints: every rank gathers the whole weights and AdamW moments, then, after a
  barrier, rank 0 writes the usual unsharded checkpoint (HF layout, atomically), which
  transformers loads and which resumes at any tp and dp. Metrics and the loss curve are
  rank 0's to write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from llmc.compiler.errors import LlmcError

from . import train_checkpoint as ckpts
from . import training as tr


def shard_graph(graph, tp: int, sequence_parallel: bool = False,
                gather_logits: bool = True) -> None:
    """Shard `graph` in place for `tp` ranks with the shard_tensor_parallel pass (logits left
    as each rank's vocabulary slice unless `gather_logits`)."""
    from llmc.compiler.passmanager import PASSES
    from llmc.pipeline import run_pipeline

    if "shard_tensor_parallel" not in PASSES:
        raise LlmcError("--tp needs the shard_tensor_parallel pass, which this llmc lacks")
    sp = "true" if sequence_parallel else "false"
    gather = "true" if gather_logits else "false"
    run_pipeline(graph, f"shard_tensor_parallel{{tp={tp}, sequence_parallel={sp}, "
                        f"gather_logits={gather}}}")


class GraphWeights(Mapping):
    """The checkpoint's tensors of a graph's parameters, memory-mapped, read on access
    (`raw`: in the stored dtype, so that a rank slices before converting)."""

    def __init__(self, store, names):
        self.store, self.names = store, list(names)

    def __getitem__(self, name: str):
        if name not in self.names:
            raise KeyError(name)
        return self.store[name]

    def raw(self, name: str):
        """The tensor as stored (see frontends/weights.WeightStore.raw)."""
        return self.store.raw(name)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def load_model(opts: tr.TrainOptions, world) -> tr.Model:
    """The graph this rank trains, with the checkpoint's (memory-mapped) weights."""
    if world.tp == 1:
        return tr.load_model(opts)
    if opts.mode == "lora":
        raise LlmcError("--mode lora runs with --dp only, not --tp")
    from llmc.compile import build_graph
    from llmc.frontends.loader import open_checkpoint

    ckpt = open_checkpoint(opts.model_dir)
    g = build_graph(ckpt.config, ckpt.naming, "full", last_token_only=False)
    if opts.save_format == "pdparams" and not tr.invertible(ckpt.config, ckpt.naming):
        raise LlmcError("--save-format pdparams: this model's NormHead rows are stored "
                        "normalised in PaddleNLP's layout; use --save-format both")
    ckpt.validate({n: tuple(v.type.shape) for n, v in g.params.items()})
    shard_graph(g, world.tp, opts.sequence_parallel, gather_logits=False)
    tr.mask_or_fuse(g, opts, ckpt.config)
    return tr.Model(ckpt, g, GraphWeights(ckpt.weights, g.params))


class RankRows(tr.DataSource):
    """The job's batches (`batch_size × dp` rows), of which this rank takes its share."""

    def __init__(self, opts: tr.TrainOptions, tokenizer, vocab_size: int, world):
        super().__init__(replace(opts, batch_size=opts.batch_size * world.dp), tokenizer,
                         vocab_size)
        self.world = world
        self.sequence_parallel = opts.sequence_parallel

    def next_batch(self) -> dict:
        """This dp rank's rows of the next global batch."""
        batch = super().next_batch()
        if self.sequence_parallel:
            batch = pad_columns(batch, self.world.tp, self.pad_id)
        return {k: np.array_split(v, self.world.dp)[self.world.dp_rank] for k, v in batch.items()}


def pad_columns(batch: dict, multiple: int, pad_id: int, ignore_index: int = -100) -> dict:
    """The batch with masked columns appended up to a length divisible by `multiple` (sequence
    parallel splits the sequence over the tp ranks); causal attention keeps the real tokens'
    logits as they were, and the masked labels keep the loss."""
    extra = -batch["input_ids"].shape[1] % multiple
    if not extra:
        return batch
    rows = batch["input_ids"].shape[0]
    fill = {"input_ids": pad_id, "labels": ignore_index}
    out = {}
    for k, v in batch.items():
        if k == "position_ids":
            tail = v[:, -1:] + np.arange(1, extra + 1)
        else:
            tail = np.full((rows, extra), fill[k], dtype=v.dtype)
        out[k] = np.concatenate([v, tail], axis=1)
    return out


def make_trainer(opts: tr.TrainOptions, model: tr.Model, world):
    """The DistTrainer of this rank (LoRA: only the adapters trainable)."""
    from llmc.runtime.paddle.dist_program import DistProgram
    from llmc.runtime.paddle.dist_train import DistTrainer

    config = replace(tr.train_config(opts, model), device=str(world.device))
    config.check()
    program = DistProgram(model.graph, model.weights, world)
    if model.lora is not None:
        from llmc.passes.lora import lora_params

        adapters = set(lora_params(model.graph))
        for name, p in program.params.items():
            p.stop_gradient = name not in adapters
    return DistTrainer(model.graph, model.weights, config, world, program=program,
                       vocab_parallel=True)


@dataclass
class Gathered:
    """A trainer's whole state, taken once, for training.save."""

    state: dict
    step_count: int

    def state_dict(self) -> dict:
        """The state gathered before."""
        return self.state


def saver(world) -> Callable:
    """training.save for a rank: every rank gathers, rank 0 writes after a barrier."""

    def save(opts, model, trainer, data) -> Path | None:
        gathered = Gathered(trainer.state_dict(), trainer.step_count)
        world.barrier()
        return tr.save(opts, model, gathered, data) if world.is_writer else None

    return save


def resume_point(opts: tr.TrainOptions, model: tr.Model, trainer, data) -> int:
    """training.resume_point for a sharded model: whole tensors from the checkpoint, each
    rank keeping its part (the checkpoint holds every parameter: no LoRA here)."""
    if not opts.resume:
        return 0
    found = ckpts.checkpoints(opts.out)
    if not found:
        raise LlmcError(f"--resume: no checkpoint-* with {ckpts.STATE_FILE} in {opts.out}")
    state, weights, optimizer = ckpts.load_checkpoint(found[-1][1], model.fingerprint,
                                                      tr.from_pdparams(model))
    trainer.load_state_dict({"step": state["step"], "weights": weights, "optimizer": optimizer,
                             "rng": state.get("rng")})
    data.sampler.load_state_dict(state["data"])
    return int(state["step"])


def train_parallel(opts: tr.TrainOptions, world, on_step: Callable[[dict], None]
                   ) -> tr.TrainResult:
    """training.train as one rank of a tp × dp job (module doc)."""
    from llmc.frontends.tokenizer import load_tokenizer

    opts.check()
    model = load_model(opts, world)
    data = RankRows(opts, load_tokenizer(opts.model_dir), model.ckpt.config.vocab_size, world)
    trainer = make_trainer(opts, model, world)
    if world.is_writer:
        opts.out.mkdir(parents=True, exist_ok=True)
    world.barrier()
    start = (tr.resume_point if world.tp == 1 else resume_point)(opts, model, trainer, data)
    if start >= opts.steps:
        raise LlmcError(f"--resume: {opts.out} is already at step {start} of --steps {opts.steps}")
    metrics = None if world.is_writer else Path(os.devnull)
    result = tr.run_steps(opts, model, trainer, data, start, on_step, save_fn=saver(world),
                          metrics_path=metrics)
    result.kernels = trainer.describe()["kernels"]
    if world.is_writer:
        result.plot = tr.plot_loss(opts.out / "metrics.jsonl", opts.out / "loss.png")
    return result
