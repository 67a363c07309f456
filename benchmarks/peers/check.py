"""The conversion check: on a tiny random llama, llama.cpp running the F32 GGUF written by
gguf_convert gives transformers' last-position logits and greedy tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import write_checkpoint
from .common import PeerUnavailable

PROMPT = [1, 300, 17, 42, 99, 260, 7, 500, 3, 280, 123, 64]
GREEDY_TOKENS = 16
LOGIT_TOL = 1e-5  # fp32 end to end; an unpermuted q/k is off by ~1e-2


def _transformers_reference(hf_dir: Path) -> tuple[Any, list[int]]:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        logits = model(ids).logits[0, -1].numpy()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                             pad_token_id=0)
    return logits, out[0, len(PROMPT):].tolist()


def compare_gguf_with_transformers(cache: Path) -> dict[str, Any]:
    """Write the tiny checkpoint and its GGUF under ``cache``; compare llama.cpp (F32 KV
    cache, no flash attention) with transformers. Raises PeerUnavailable when a package is
    missing."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"needs gguf, llama-cpp-python and transformers ({e})") from e
    import numpy as np

    from .llamacpp import LlamaCpp, gguf_path

    hf_dir = write_checkpoint("tiny", cache)
    ref_logits, ref_tokens = _transformers_reference(hf_dir)
    runner = LlamaCpp(gguf_path(hf_dir), len(PROMPT) + GREEDY_TOKENS, exact=True)
    logits = runner.logits(PROMPT)
    tokens = runner.generate([PROMPT], GREEDY_TOKENS).tokens[0]
    diff = float(np.abs(logits - ref_logits).max())
    return {
        "max_abs_logit_diff": diff, "logit_scale": float(np.abs(ref_logits).max()),
        "transformers_tokens": ref_tokens, "llamacpp_tokens": tokens,
        "agree": diff < LOGIT_TOL and tokens == ref_tokens,
    }
