"""`llmc train`: pretraining, SFT and LoRA on a checkpoint's full-form graph, run by the
Paddle runtime's Trainer (runtime/paddle/train.py).

    result = train(TrainOptions(model_dir, data, out, mode="sft", steps=50))

Data: SFT jsonl → `SFTBatcher` (one example per row, or several packed per row with
`pack`: the graph then takes segment_ids and masks attention across examples,
segment_mask.py); pretraining (mmap .bin/.idx, _ids.npy, text or {"text"} jsonl) →
`WindowSampler`. The data readers give labels already shifted (`logits[i]` is scored against
`labels[i]`) while the Trainer shifts inside (transformers' convention), so `trainer_batch`
prepends one masked label and appends one input column: exactly one shift happens.
Paddle is seeded once; its generator (LoRA dropout draws from it) is saved with every
checkpoint and restored by `resume`, so a resumed run repeats the uninterrupted one exactly.
Checkpoints: train_checkpoint.py (HF safetensors and/or PaddleNLP's model_state.pdparams).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llmc.compiler.errors import LlmcError

from . import train_checkpoint as ckpts
from .paddlenlp_export import invertible
from .train_plot import plot_loss

MODES = ("pretrain", "sft", "lora")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # --dtype -> Paddle's autocast dtype


@dataclass
class TrainOptions:
    """Everything `llmc train` takes (see llmc/cli_training.py for the meaning of each)."""

    model_dir: Path
    data: Path
    out: Path
    mode: str = "sft"
    steps: int = 100
    device: str = "cpu"
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
    batch_size: int = 4
    seq_len: int = 512
    accumulation_steps: int = 1
    seed: int = 0
    save_every: int = 0
    save_total_limit: int | None = None
    resume: bool = False
    on_error: str = "fail"
    lora_targets: str = "q,k,v,o,gate,up,down"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    pack: bool = False
    dtype: str = "fp32"
    save_format: str = "hf"
    tp: int = 1
    dp: int = 1
    sequence_parallel: bool = False

    def check(self) -> None:
        """Refuse options that cannot run, naming the flag."""
        if self.mode not in MODES:
            raise LlmcError(f"--mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size),
                            ("--seq-len", self.seq_len), ("--tp", self.tp), ("--dp", self.dp)):
            if value < 1:
                raise LlmcError(f"{flag} must be at least 1, got {value}")
        if self.save_every < 0 or (self.save_total_limit is not None and self.save_total_limit < 1):
            raise LlmcError("--save-every must be >= 0 and --save-total-limit >= 1")
        if self.dtype not in DTYPES:
            raise LlmcError(f"--dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.save_format not in ckpts.SAVE_FORMATS:
            raise LlmcError(f"--save-format must be one of {', '.join(ckpts.SAVE_FORMATS)}, "
                            f"got '{self.save_format}'")
        if self.save_format != "hf" and self.mode == "lora":
            raise LlmcError("--save-format: lora mode saves PEFT adapters only; `llmc merge` "
                            "them, or train sft/pretrain for a pdparams checkpoint")
        if self.sequence_parallel and (self.tp < 2 or self.seq_len % self.tp or self.pack):
            raise LlmcError("--sequence-parallel needs --tp > 1 dividing --seq-len, without "
                            f"--pack (got --tp {self.tp}, --seq-len {self.seq_len})")
        if self.pack and self.mode == "pretrain":
            raise LlmcError("--pack is for sft and lora data: pretraining windows are already "
                            "full rows of the token stream")


@dataclass
class TrainResult:
    """What a run did: the metrics of every step run here, the checkpoints written."""

    out: Path
    first_step: int
    steps: int
    metrics: list[dict] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    plot: str | None = None
    kernels: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready summary (final loss, checkpoints, plot)."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["final_loss"] = self.metrics[-1]["loss"] if self.metrics else None
        return d


def trainer_batch(batch: dict, pad_id: int, ignore_index: int = -100,
                  segments: bool = False) -> dict:
    """A data batch (labels already shifted) as the Trainer's (labels aligned with inputs,
    shifted inside): input_ids gain one column, labels one masked column in front;
    position_ids continue by one, and with `segments` the segment_ids repeat their last
    column (that extra column's logits are dropped, and causal attention hides it)."""
    ids, labels = np.asarray(batch["input_ids"]), np.asarray(batch["labels"])
    last = labels[:, -1:]
    extra = np.where(last == ignore_index, pad_id, last)
    masked = np.full((len(labels), 1), ignore_index, dtype=np.int64)
    out = {"input_ids": np.concatenate([ids, extra], axis=1).astype(np.int64),
           "labels": np.concatenate([masked, labels], axis=1).astype(np.int64)}
    if batch.get("position_ids") is not None:
        pos = np.asarray(batch["position_ids"], dtype=np.int64)
        out["position_ids"] = np.concatenate([pos, pos[:, -1:] + 1], axis=1)
    if segments:
        seg = np.asarray(batch["segment_ids"], dtype=np.int64)
        out["segment_ids"] = np.concatenate([seg, seg[:, -1:]], axis=1)
    return out


class DataSource:
    """Batches for a mode: `next_batch()` gives the Trainer's dict; resumable."""

    def __init__(self, opts: TrainOptions, tokenizer, vocab_size: int):
        from llmc.frontends.data import (SFTBatcher, WindowSampler, default_pad_id, load_sft,
                                         open_corpus)

        self.pad_id = default_pad_id(tokenizer)
        if opts.mode == "pretrain":
            corpus = open_corpus(opts.data, tokenizer, on_error=opts.on_error,
                                 vocab_size=vocab_size)
            self.sampler = WindowSampler(corpus, opts.seq_len, opts.batch_size, seed=opts.seed)
            self.stats = {"tokens": int(corpus.num_tokens),
                          "windows": self.sampler.windows_per_epoch}
        else:
            ds = load_sft(opts.data, tokenizer, opts.seq_len, on_error=opts.on_error)
            self.sampler = SFTBatcher(ds, opts.batch_size, self.pad_id, seed=opts.seed,
                                      pack=opts.pack)
            self.stats = {**ds.stats.as_dict(), "rows": len(self.sampler.rows)}
        self.windows = opts.mode == "pretrain"
        self.pack = opts.pack

    def next_batch(self) -> dict:
        """The next batch, in the Trainer's convention."""
        from llmc.frontends.data import windows_to_batch

        raw = self.sampler.next_batch()
        return trainer_batch(windows_to_batch(raw) if self.windows else raw, self.pad_id,
                             segments=self.pack)


@dataclass
class Model:
    """The graph to train, its starting weights, and (LoRA) what the pass recorded."""

    ckpt: object
    graph: object
    weights: dict
    lora: dict | None = None

    @property
    def fingerprint(self) -> str:
        shapes = {n: tuple(v.type.shape) for n, v in self.graph.params.items()}
        return ckpts.fingerprint(shapes) + ("-lora" if self.lora else "")

    def lora_config(self):
        from llmc.lora import lora_config

        return None if self.lora is None else lora_config(self.lora, str(self.ckpt.model_dir))


# The per-op fusions of the cpu/cuda pipelines that still apply to a graph that computes every
# position's logits: the fused ops run Paddle's kernels (SDPA, swiglu) and cheaper composites,
# 0.58x -> 0.84x torch eager's training tokens/s (benchmarks/train.py); gradients reach the
# same parameters (merged q/k/v and gate/up weights are concats of them).
TRAINING_FUSIONS = "fuse_rms_norm,fuse_rope,fuse_attention,fuse_swiglu,fuse_gate_up,fuse_qkv"


def fuse_for_training(g, config) -> None:
    """Run TRAINING_FUSIONS on a full-form graph in place (passes whose pattern is absent,
    e.g. attention under a LoRA adapter or a packing mask, match nothing)."""
    from llmc.compile import model_facts
    from llmc.compiler.passmanager import PassContext
    from llmc.pipeline import run_pipeline

    run_pipeline(g, TRAINING_FUSIONS, log=lambda line: None,
                 ctx=PassContext(model=model_facts(config, "full")))


def mask_or_fuse(g, opts: TrainOptions, config) -> None:
    """The last step of every training graph: a packed run's segment mask (the attention
    fusion would not match it), else TRAINING_FUSIONS."""
    if opts.pack:
        from llmc.segment_mask import add_segment_mask

        add_segment_mask(g)
    else:
        fuse_for_training(g, config)


def load_model(opts: TrainOptions) -> Model:
    """The checkpoint's full-form graph (every position's logits), with adapters in LoRA mode."""
    from llmc.compile import build_graph
    from llmc.frontends.loader import open_checkpoint

    ckpt = open_checkpoint(opts.model_dir)
    g = build_graph(ckpt.config, ckpt.naming, "full", last_token_only=False)
    recorded = None
    extra = {}
    if opts.mode == "lora":
        from llmc.lora import add_lora
        from llmc.passes.lora import init_lora_weights

        recorded = add_lora(g, opts.lora_targets, opts.lora_rank, opts.lora_alpha,
                            opts.lora_dropout, num_layers=ckpt.config.num_layers)
        extra = init_lora_weights(g, seed=opts.seed)
    mask_or_fuse(g, opts, ckpt.config)
    if opts.save_format == "pdparams" and not invertible(ckpt.config, ckpt.naming):
        raise LlmcError("--save-format pdparams: this model's NormHead rows are stored "
                        "normalised in PaddleNLP's layout, which --resume cannot undo; use "
                        "--save-format both")
    base = [n for n in g.params if n not in extra]
    ckpt.validate({n: tuple(g.params[n].type.shape) for n in base})
    weights = {n: np.asarray(ckpt.weights[n], dtype=np.float32) for n in base}
    return Model(ckpt, g, {**weights, **extra}, recorded)


def train_config(opts: TrainOptions, model: Model):
    """The Trainer's config: optimizer and schedule, --dtype as Paddle's autocast dtype, and
    in LoRA mode the dropout on each adapter's input (as PEFT: lora_B(lora_A(dropout(x))))."""
    from llmc.runtime.paddle import TrainConfig

    dropout = {}
    if model.lora is not None and model.lora["dropout"]:
        from llmc.passes.lora import lora_params

        dropout = {n: model.lora["dropout"] for n in lora_params(model.graph)
                   if n.endswith(".lora_A.weight")}
    return TrainConfig(lr=opts.lr, weight_decay=opts.weight_decay, schedule=opts.schedule,
                       warmup_steps=opts.warmup_steps, total_steps=opts.steps,
                       max_grad_norm=opts.max_grad_norm, seed=opts.seed, device=opts.device,
                       accumulation_steps=opts.accumulation_steps, dtype=DTYPES[opts.dtype],
                       input_dropout=dropout)


def make_trainer(opts: TrainOptions, model: Model):
    """The Paddle Trainer; in LoRA mode only the adapter parameters are trainable."""
    from llmc.runtime.paddle import PaddleProgram, Trainer

    config = train_config(opts, model)
    config.check()
    program = PaddleProgram(model.graph, model.weights, device=opts.device)
    if model.lora is not None:
        from llmc.passes.lora import lora_params

        adapters = set(lora_params(model.graph))
        for name, p in program.params.items():
            p.stop_gradient = name not in adapters
    return Trainer(model.graph, model.weights, config, program=program)


def resume_point(opts: TrainOptions, model: Model, trainer, data: DataSource) -> int:
    """Load the newest checkpoint in OUT when --resume; returns the step to start from."""
    if not opts.resume:
        return 0
    found = ckpts.checkpoints(opts.out)
    if not found:
        raise LlmcError(f"--resume: no checkpoint-* with {ckpts.STATE_FILE} in {opts.out}")
    step, path = found[-1]
    state, weights, optimizer = ckpts.load_checkpoint(path, model.fingerprint,
                                                      from_pdparams(model))
    trainer.load_state_dict({"step": state["step"], "weights": {**model.weights, **weights},
                             "optimizer": optimizer, "rng": state.get("rng")})
    data.sampler.load_state_dict(state["data"])
    return int(state["step"])


def from_pdparams(model: Model):
    """state (PaddleNLP names) -> the graph's weights, for resuming from a pdparams-only
    checkpoint."""
    from .paddlenlp_export import from_paddlenlp

    cfg, naming = model.ckpt.config, model.ckpt.naming
    return lambda state: from_paddlenlp(state, cfg, naming, list(model.weights))


def save(opts: TrainOptions, model: Model, trainer, data: DataSource) -> Path:
    """Checkpoint the trainer at its current step, then prune old checkpoints."""
    state = trainer.state_dict()
    meta = {"fingerprint": model.fingerprint, "data": data.sampler.state_dict(),
            "mode": opts.mode, "rng": state["rng"],
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}}
    path = ckpts.save_checkpoint(opts.out, trainer.step_count, state["weights"],
                                 state["optimizer"], meta, model.ckpt.model_dir,
                                 list(model.ckpt.tokenizer_files), model.lora_config(),
                                 save_format=opts.save_format, model=model.ckpt)
    ckpts.prune(opts.out, opts.save_total_limit)
    return path


def _metrics_lines(path: Path, keep_until: int) -> None:
    """Keep the metrics of steps <= keep_until (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= keep_until]
    path.write_text("".join(ln + "\n" for ln in kept))


def run_steps(opts: TrainOptions, model: Model, trainer, data: DataSource, start: int,
              on_step: Callable[[dict], None], save_fn: Callable = save,
              metrics_path: Path | None = None) -> TrainResult:
    """Steps start+1..opts.steps with metrics (to `metrics_path`, default OUT/metrics.jsonl)
    and checkpoints (`save_fn`); a non-finite loss stops with the last good checkpoint kept."""
    from llmc.runtime.paddle import TrainingError

    result = TrainResult(opts.out, start, opts.steps, data=data.stats)
    metrics_path = metrics_path or opts.out / "metrics.jsonl"
    _metrics_lines(metrics_path, start)
    with metrics_path.open("a") as log:
        for step in range(start, opts.steps):
            try:
                m = trainer.step(data.next_batch())
            except TrainingError as e:
                last = ckpts.checkpoints(opts.out)
                kept = f"last good checkpoint: {last[-1][1]}" if last else "no checkpoint saved"
                raise LlmcError(f"{e}; {kept}") from None
            log.write(json.dumps(m) + "\n")
            log.flush()
            result.metrics.append(m)
            on_step(m)
            done = trainer.step_count
            if done == opts.steps or (opts.save_every and done % opts.save_every == 0):
                result.checkpoints.append(str(save_fn(opts, model, trainer, data)))
    return result


def train(opts: TrainOptions, on_step: Callable[[dict], None] = lambda m: None) -> TrainResult:
    """Run `llmc train` (see the module docstring); `on_step(metrics)` after every step.
    One rank of a --tp/--dp run trains with llmc/distributed_train.py instead."""
    from llmc.frontends.tokenizer import load_tokenizer

    opts.check()
    model = load_model(opts)
    tokenizer = load_tokenizer(opts.model_dir)
    data = DataSource(opts, tokenizer, model.ckpt.config.vocab_size)
    trainer = make_trainer(opts, model)
    opts.out.mkdir(parents=True, exist_ok=True)
    start = resume_point(opts, model, trainer, data)
    if start >= opts.steps:
        raise LlmcError(f"--resume: {opts.out} is already at step {start} of --steps {opts.steps}")
    result = run_steps(opts, model, trainer, data, start, on_step)
    result.kernels = trainer.describe()["kernels"]
    result.plot = plot_loss(opts.out / "metrics.jsonl", opts.out / "loss.png")
    return result
