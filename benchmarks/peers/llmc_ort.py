"""llmc on ONNX Runtime, the way a user runs it: `llmc compile MODEL --target cpu` (the
cache form), `llmc export ART --format onnx`, then the ONNX Runtime backend of the
generation engine (runtime/onnx/session.py `OrtCausalLM`: 2 intra-op threads, KV buffers
bound as past and present through IOBinding) with greedy argmax, like the other peers.

``build`` runs in the benchmark's parent process (as the other peers' converters do), so
the timed process only loads."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .common import THREADS, PeerUnavailable, Timing, progress


def build(hf_dir: Path) -> Path:
    """Compile `hf_dir` for the cpu target and export it to ONNX once; the model path."""
    art, onnx_dir = hf_dir.parent / "llmc-cpu", hf_dir.parent / "llmc-onnx"
    model = onnx_dir / "model.onnx"
    weights = hf_dir / "model.safetensors"
    if model.exists() and model.stat().st_mtime >= weights.stat().st_mtime:
        return model
    progress(f"llmc compile + export: {hf_dir} -> {onnx_dir}")
    for cmd in (["compile", str(hf_dir), "--target", "cpu", "-o", str(art), "--force"],
                ["export", str(art), "--format", "onnx", "-o", str(onnx_dir), "--force"]):
        run = subprocess.run([sys.executable, "-m", "llmc", *cmd], capture_output=True, text=True)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PeerUnavailable(f"llmc {cmd[0]} failed: {tail[0]}")
    return model


def load(model_dir: Path, max_len: int, max_batch: int) -> Callable[[list[list[int]], int], Timing]:
    """Open the exported model; return ``generate(prompts, new_tokens)``."""
    try:
        import numpy as np

        from llmc.runtime.engine import PREFILL_CHUNK
        from llmc.runtime.onnx.session import OrtCausalLM
    except ImportError as e:
        raise PeerUnavailable(f"llmc's ONNX Runtime backend is not importable ({e})") from e
    model = OrtCausalLM(build(model_dir), provider="cpu", threads=THREADS)

    def prefill(cache, row: int, prompt: list[int]) -> int:
        """As the engine does: the prompt alone (no compute on padding), in chunks."""
        for start in range(0, len(prompt), PREFILL_CHUNK):
            ids = np.array([prompt[start:start + PREFILL_CHUNK]], np.int64)
            logits = model.forward(cache, [row], ids, np.array([start], np.int64))
        return int(logits[0].argmax())

    def generate(prompts: list[list[int]], new_tokens: int) -> Timing:
        batch = len(prompts)
        cache = model.new_cache(batch, max(len(p) for p in prompts) + new_tokens)
        t0 = time.perf_counter()
        last = np.array([prefill(cache, i, p) for i, p in enumerate(prompts)], np.int64)
        steps, lens, rows = [last.tolist()], np.array([len(p) for p in prompts], np.int64), \
            list(range(batch))
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            last = model.forward(cache, rows, last[:, None], lens).argmax(-1).astype(np.int64)
            lens += 1
            steps.append(last.tolist())
        t2 = time.perf_counter()
        return Timing(ttft_s=t1 - t0, decode_s=t2 - t1, tokens=[list(r) for r in zip(*steps)])

    return generate
