"""Learning-rate schedules: linear warmup, then cosine, linear or constant (the shapes of
transformers' get_{cosine,linear,constant}_schedule_with_warmup, with an optional floor).
Pure Python, no Paddle."""

from __future__ import annotations

import math

from llmc.compiler.errors import LlmcError

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int,
              min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak learning rate for optimizer step `step` (0-based).

    Warmup rises linearly from 0 (step 0) to 1 (step warmup_steps); then cosine falls as
    half a cosine and linear as a straight line from 1 at the end of warmup to
    `min_lr_ratio` at `total_steps`; constant stays at 1."""
    if schedule not in SCHEDULES:
        raise LlmcError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape
