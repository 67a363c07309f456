"""`llmc train`: the command over llmc/training.py (the loop) and the Paddle runtime.

Typer only at import time: numpy and paddle load when the command runs.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional

import typer

from .options import Force, JsonOut, echo_json

Mode = Literal["pretrain", "sft", "lora"]
Device = Literal["cpu", "gpu", "npu", "mlu", "iluvatar_gpu"]
Schedule = Literal["cosine", "linear", "constant"]
OnError = Literal["fail", "skip"]
DType = Literal["fp32", "bf16"]
SaveFormat = Literal["hf", "pdparams", "both"]


@contextmanager
def progress_bar(total: int, enabled: bool):
    """A rich progress bar on stderr (loss, lr, tokens/s, ETA); a no-op callback when off."""
    if not enabled:
        yield lambda m: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=False)
    with bar:
        task = bar.add_task("train", total=total, info="")

        def on_step(m: dict) -> None:
            info = f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['tokens_per_s']:.0f} tok/s"
            bar.update(task, completed=m["step"], info=info)

        yield on_step


def _summary(result) -> str:
    from llmc.train_plot import MISSING

    last = result.metrics[-1] if result.metrics else {}
    first = result.metrics[0] if result.metrics else {}
    lines = [f"trained steps {result.first_step + 1}..{result.steps}: loss "
             f"{first.get('loss', float('nan')):.4f} -> {last.get('loss', float('nan')):.4f}",
             f"metrics: {result.out / 'metrics.jsonl'}"]
    lines += [f"checkpoint: {c}" for c in result.checkpoints[-1:]]
    lines.append(f"loss curve: {result.plot}" if result.plot else MISSING)
    return "\n".join(lines)


def train(
    model_dir: Path = typer.Argument(..., help="Model directory (config.json, weights, tokenizer)."),
    data: Path = typer.Option(..., "--data", help="SFT {src,tgt} jsonl, or a pretraining corpus: PREFIX of .bin/.idx or _ids.npy/_idx.npz, text, {text} jsonl."),
    mode: Mode = typer.Option("sft", "--mode", help="pretrain: every token; sft: loss on tgt only; lora: sft on low-rank adapters only."),
    steps: int = typer.Option(..., "--steps", help="Optimizer steps in all (a resumed run counts the earlier ones)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory: checkpoint-STEP/, metrics.jsonl, loss.png."),
    device: Device = typer.Option("cpu", "--device", help="Paddle device."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak learning rate."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW weight decay (matrices only)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear warmup steps."),
    schedule: Schedule = typer.Option("cosine", "--schedule", help="Learning-rate schedule after warmup."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Clip gradients to this global norm (0: no clipping)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Sequences per optimizer step."),
    seq_len: int = typer.Option(512, "--seq-len", help="Window length (pretrain) or longest example (sft; longer ones are truncated and counted)."),
    accumulation_steps: int = typer.Option(1, "--accumulation-steps", help="Micro-batches per step (the batch's rows split)."),
    seed: int = typer.Option(0, "--seed", help="Seed of data order, adapter init and Paddle's RNG."),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps (0: only at the end)."),
    save_total_limit: Optional[int] = typer.Option(None, "--save-total-limit", help="Keep only the newest K checkpoints."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in -o (optimizer, schedule, data position, random generators)."),
    on_error: OnError = typer.Option("fail", "--on-error", help="Bad data lines: fail, or skip and count them."),
    lora_targets: str = typer.Option("q,k,v,o,gate,up,down", "--lora-targets", help="LoRA: adapted projections."),
    lora_rank: int = typer.Option(8, "--lora-rank", help="LoRA rank r."),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha", help="LoRA alpha (update scaled by alpha/r)."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="LoRA dropout on each adapter's input during training (as PEFT); off in eval, merge and inference."),
    pack: bool = typer.Option(False, "--pack", help="sft/lora: pack several examples per --seq-len row; attention is masked across them."),
    dtype: DType = typer.Option("fp32", "--dtype", help="fp32, or bf16 autocast (Paddle's auto_cast O1) where the device runs bf16 matmuls (not Paddle's CPU build)."),
    save_format: SaveFormat = typer.Option("hf", "--save-format", help="Checkpoint layout: hf (model.safetensors), pdparams (PaddleNLP's model_state.pdparams), or both (PaddleNLP's in checkpoint-N/paddlenlp/)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel ranks: the model's layers split over them (one process each, launched by paddle.distributed.launch)."),
    sequence_parallel: bool = typer.Option(False, "--sequence-parallel", help="With --tp: norms and residuals on each rank's slice of the sequence (all_gather / reduce_scatter instead of all_reduce)."),
    dp: int = typer.Option(1, "--dp", help="Data-parallel ranks: each trains on --batch-size rows, gradients averaged (--dp 2 = one process with --batch-size doubled)."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes of a --tp/--dp job (the launcher's --nnodes; run the same command on each)."),
    master: Optional[str] = typer.Option(None, "--master", metavar="IP:PORT", help="With --nnodes > 1: the rendezvous node (the launcher's --master)."),
    json_out: bool = JsonOut,
    force: bool = Force,
):
    """Train a checkpoint on the Paddle runtime: pretraining, SFT or LoRA, with AdamW, a
    schedule, clipping and accumulation. Writes atomic checkpoints (HF safetensors layout,
    and/or PaddleNLP's model_state.pdparams; PEFT layout for LoRA) that `llmc compile` and
    transformers load, metrics.jsonl and a loss curve; a NaN/inf loss stops the run and keeps
    the last good checkpoint."""
    from llmc.distributed import launch_or_join
    from llmc.overwrite import refuse_overwriting_inputs
    from llmc.training import TrainOptions

    refuse_overwriting_inputs([output], files=[data], dirs=[model_dir], force=force)

    opts = TrainOptions(
        model_dir=model_dir, data=data, out=output, mode=mode, steps=steps, device=device, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule,
        max_grad_norm=max_grad_norm or None, batch_size=batch_size, seq_len=seq_len,
        accumulation_steps=accumulation_steps, seed=seed, save_every=save_every,
        save_total_limit=save_total_limit, resume=resume, on_error=on_error,
        lora_targets=lora_targets, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, pack=pack, dtype=dtype, save_format=save_format,
        tp=tp, dp=dp, sequence_parallel=sequence_parallel)
    opts.check()
    world = launch_or_join(tp, dp, nnodes, master, device)
    if world is not False:  # False: this process launched the ranks, which did the work
        _run(opts, world, json_out)


def _run(opts, world, json_out: bool) -> None:
    """Train in this process (one rank of a --tp/--dp job when `world` is set); print."""
    from llmc.distributed_train import train_parallel
    from llmc.training import train as run_training

    with progress_bar(opts.steps, sys.stderr.isatty() and not json_out) as on_step:
        result = (run_training(opts, on_step) if world is None
                  else train_parallel(opts, world, on_step))
    if json_out:
        echo_json(result.as_dict())
    else:
        typer.echo(_summary(result))


def register(app: typer.Typer) -> None:
    """Add `llmc train` to the app."""
    app.command(name="train")(train)
