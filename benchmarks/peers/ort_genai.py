"""onnxruntime-genai: its own model builder (fp32, cpu) on the same HF checkpoint, then
``og.Generator`` greedy with 2 intra-op threads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .common import THREADS, PeerUnavailable, Timing, pin_threads, progress


def build(hf_dir: Path, out_dir: Path) -> Path:
    """Run ``onnxruntime_genai.models.builder`` (fp32, cpu) once; pin its session to THREADS
    intra-op threads in genai_config.json."""
    config_path = out_dir / "genai_config.json"
    weights = hf_dir / "model.safetensors"
    if not (config_path.exists() and config_path.stat().st_mtime >= weights.stat().st_mtime):
        progress(f"onnxruntime-genai model builder: {hf_dir} -> {out_dir}")
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
               "-o", str(out_dir), "-p", "fp32", "-e", "cpu", "-c", str(out_dir.parent / "og-tmp")]
        run = subprocess.run(cmd, capture_output=True, text=True, env=pin_threads())
        if run.returncode != 0 or not config_path.exists():
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PeerUnavailable(f"onnxruntime-genai builder failed: {tail[0]}")
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"]["session_options"]
    if options.get("intra_op_num_threads") != THREADS:
        options.update(intra_op_num_threads=THREADS, inter_op_num_threads=1)
        config_path.write_text(json.dumps(config, indent=4))
    return out_dir


def load(model_dir: Path, max_len: int, max_batch: int) -> Callable[[list[list[int]], int], Timing]:
    """Build (if needed) and load the model; return ``generate(prompts, new_tokens)``."""
    try:
        import numpy as np
        import onnxruntime_genai as og
    except ImportError as e:
        raise PeerUnavailable(f"onnxruntime-genai not installed ({e})") from e
    model = og.Model(str(build(model_dir, model_dir.parent / "ort-genai")))

    def generate(prompts: list[list[int]], new_tokens: int) -> Timing:
        total = len(prompts[0]) + new_tokens
        params = og.GeneratorParams(model)
        # min_length keeps a random model from stopping early on eos
        params.set_search_options(max_length=total, min_length=total, do_sample=False,
                                  batch_size=len(prompts))
        gen = og.Generator(model, params)
        steps: list[list[int]] = []
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(prompts, dtype=np.int32))
        gen.generate_next_token()
        steps.append(gen.get_next_tokens().tolist())
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
            steps.append(gen.get_next_tokens().tolist())
        t2 = time.perf_counter()
        return Timing(ttft_s=t1 - t0, decode_s=t2 - t1, tokens=[list(r) for r in zip(*steps)])

    return generate
