"""Prefill and decode speed of llmc's ONNX Runtime path alone, with an ORT per-op profile.

    python benchmarks/onnx_decode.py [--hidden 768 --layers 12 --heads 12 --kv-heads 12
        --inter 2048 --vocab 32000] [--prompt 128] [--new 64] [--repeat 3] [--profile]

Random fp32 weights (numpy, seed 0); the cpu target's cache-form graph; batch 1.
The full comparison against llama.cpp / HF / onnxruntime-genai is benchmarks/generate.py.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from llmc import api
from llmc.compile import build_graph, model_facts
from llmc.compiler.passmanager import PassContext
from llmc.frontends.config import parse_config
from llmc.frontends.naming import naming_for
from llmc.passes.pipelines import pipeline_for
from llmc.runtime.onnx.session import OrtCausalLM
from peers.checkpoint import dims_config as config  # benchmarks/ is the script dir


def random_weights(g, seed: int = 0) -> dict[str, np.ndarray]:
    """N(0, 0.02) fp32 weights for every parameter of g."""
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(p.type.shape, np.float32) * 0.02) for n, p in g.params.items()}


def time_generation(m: OrtCausalLM, prompt: int, new: int, seed: int = 0) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) for one greedy generation."""
    ids = np.random.default_rng(seed).integers(3, m.vocab_size, (1, prompt))
    cache = m.new_cache(1, prompt + new)
    t0 = time.perf_counter()
    logits = m.forward(cache, [0], ids, np.array([0]))
    t1 = time.perf_counter()
    for step in range(new):
        tok = np.argmax(logits, axis=-1).reshape(1, 1)
        logits = m.forward(cache, [0], tok, np.array([prompt + step]))
    t2 = time.perf_counter()
    return prompt / (t1 - t0), new / (t2 - t1)


def profile_summary(path: str, top: int = 12) -> list[tuple[str, float]]:
    """Share of kernel time per op type in an ORT profile (json trace)."""
    per: dict[str, float] = defaultdict(float)
    for ev in json.loads(Path(path).read_text()):
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per[ev["args"]["op_name"]] += ev["dur"]
    total = sum(per.values()) or 1.0
    return sorted(((k, v / total) for k, v in per.items()), key=lambda kv: -kv[1])[:top]


def main() -> None:
    """Parse the flags, compile, export, time, and print the profile when asked."""
    ap = argparse.ArgumentParser()
    for name, default in (("hidden", 768), ("layers", 12), ("heads", 12), ("kv-heads", 12),
                          ("inter", 2048), ("vocab", 32000), ("prompt", 128), ("new", 64),
                          ("repeat", 3), ("threads", 2)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    cfg = parse_config(config(a))
    g = build_graph(cfg, naming_for(cfg.source_format), "cache")
    api.run_pipeline(g, pipeline_for("cpu"), ctx=PassContext(model=model_facts(cfg, "cache")))
    w = random_weights(g)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        m = OrtCausalLM.from_graph(g, w, max_positions=4096, workdir=d, threads=a.threads)
        print(f"export + session: {time.perf_counter() - t0:.1f} s")
        del w
        runs = [time_generation(m, a.prompt, a.new, seed=i) for i in range(a.repeat)]
        pre, dec = max(r[0] for r in runs), max(r[1] for r in runs)
        print(f"prefill {a.prompt}: {pre:.1f} tok/s (runs {[round(r[0]) for r in runs]})")
        print(f"decode  {a.new}: {dec:.2f} tok/s (runs {[round(r[1], 1) for r in runs]})")
        if a.profile:
            pm = OrtCausalLM(Path(d) / "model.onnx", threads=a.threads,
                             profile_prefix=str(Path(d) / "prof"))
            time_generation(pm, a.prompt, a.new)
            trace = pm.session.end_profiling()
            for op, share in profile_summary(trace):
                print(f"  {op:36s} {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
