"""llmc on ONNX Runtime: the one adapter the benchmark calls for llmc.

``llmc_onnxruntime(model_dir, prompt_ids, new_tokens, batch) -> Timing`` is the whole
contract. Until llmc's ONNX Runtime runtime and generation engine land it raises
PeerUnavailable, and the llmc row of the table says why instead of a number.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from .common import PeerUnavailable, Timing

RUNTIME_MODULE = "llmc.runtime.onnx"


def runtime_module():
    """Import llmc's ONNX Runtime runtime, or raise PeerUnavailable naming what is missing."""
    try:
        return importlib.import_module(RUNTIME_MODULE)
    except ImportError as e:
        raise PeerUnavailable(f"llmc ONNX Runtime runtime not available yet ({e})") from e


def llmc_onnxruntime(
    model_dir: Path, prompt_ids: list[list[int]], new_tokens: int, batch: int
) -> Timing:
    """Greedy-generate ``new_tokens`` for ``batch`` rows of ``prompt_ids`` with llmc (cpu
    target, onnxruntime, 2 intra-op threads) on the HF checkpoint in ``model_dir``.

    Wiring left to the runtime's owner: compile ``model_dir`` for the cpu target once
    (cache the session per model_dir), then time prompt-in to first-token-out as ttft_s and
    the remaining new_tokens-1 steps as decode_s, returning the generated ids per row.
    """
    runtime_module()
    raise PeerUnavailable(
        f"{RUNTIME_MODULE} imports, but benchmarks/peers/llmc_ort.py is not wired to it yet"
    )


def load(model_dir: Path, max_len: int, max_batch: int) -> Callable[[list[list[int]], int], Timing]:
    """Worker entry: fail early when the runtime is missing, else call the adapter."""
    runtime_module()

    def generate(prompts: list[list[int]], new_tokens: int) -> Timing:
        return llmc_onnxruntime(model_dir, prompts, new_tokens, len(prompts))

    return generate
