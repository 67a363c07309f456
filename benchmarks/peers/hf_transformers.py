"""HF transformers ``generate`` (torch eager mode, default attention, fp32, 2 threads)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .common import THREADS, PeerUnavailable, Timing


def load(model_dir: Path, max_len: int, max_batch: int) -> Callable[[list[list[int]], int], Timing]:
    """Load the checkpoint once; return ``generate(prompts, new_tokens) -> Timing``."""
    try:
        import torch
        from transformers import LlamaForCausalLM, LogitsProcessor, LogitsProcessorList
    except ImportError as e:
        raise PeerUnavailable(f"transformers/torch not installed ({e})") from e
    torch.set_num_threads(THREADS)
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    class StepClock(LogitsProcessor):
        """Stamps the time each step's logits arrive (once per new token)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores):  # noqa: D102
            self.stamps.append(time.perf_counter())
            return scores

    def generate(prompts: list[list[int]], new_tokens: int) -> Timing:
        ids = torch.tensor(prompts, dtype=torch.long)
        clock = StepClock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                logits_processor=LogitsProcessorList([clock]),
            )
        return Timing(
            ttft_s=clock.stamps[0] - t0,
            decode_s=clock.stamps[-1] - clock.stamps[0],
            tokens=out[:, ids.shape[1]:].tolist(),
        )

    return generate
