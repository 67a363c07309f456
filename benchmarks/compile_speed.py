"""Compile speed: the full ascend910b pipeline on the llama2-13b and Baichuan2-13B configs
(no weights) at 40 and 80 layers. Prints a table and writes benchmarks/results/compile_speed.md.

    python benchmarks/compile_speed.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

from llmc.compiler.passmanager import PassContext
from llmc.frontends.config import parse_config
from llmc.frontends.naming import naming_for
from llmc.passes.pipelines import get_target

from llmc import api
from llmc.compile import build_graph, model_facts

HERE = Path(__file__).parent
CONFIGS = {
    "llama2-13b": HERE / "configs" / "llama2-13b.json",
    "baichuan2-13b": HERE / "configs" / "baichuan2-13b.json",
}


def time_pipeline(
    cfg, target: str = "ascend910b", repeat: int = 5
) -> tuple[float, float, int, int, dict]:
    """(best pipeline s, best build s, ops in, ops out, matches) over `repeat` fresh graphs."""
    tgt = get_target(target)
    best_run = best_build = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        g = build_graph(cfg, naming_for(cfg.source_format), tgt.form)
        t1 = time.perf_counter()
        ops_in = len(g)
        recs = api.run_pipeline(g, tgt.spec, ctx=PassContext(model=model_facts(cfg, tgt.form)))
        t2 = time.perf_counter()
        best_build, best_run = min(best_build, t1 - t0), min(best_run, t2 - t1)
    matches = {
        r.name: f"{r.matched}/{r.expected}"
        for r in recs
        if r.name.startswith("llama_fuse_attention")
    }
    return best_run, best_build, ops_in, len(g), matches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for model, path in CONFIGS.items():
        base = parse_config(json.loads(path.read_text()), path)
        times = {}
        for layers in (40, 80):
            cfg = dataclasses.replace(base, num_layers=layers)
            run_s, build_s, a, b, m = time_pipeline(cfg, repeat=args.repeat)
            times[layers] = run_s
            rows.append((model, layers, a, b, build_s * 1e3, run_s * 1e3, m))
        rows.append((model, "80/40", "", "", None, times[80] / times[40], {}))
    head = (
        "| model | layers | ops in | ops out | build ms | ascend910b pipeline ms "
        "| layer matches (matched/expected) |"
    )
    lines = [
        f"# Compile speed: ascend910b pipeline (best of {args.repeat})",
        "",
        f"machine: {platform.machine()}, python {platform.python_version()}",
        "",
        head,
        "|" + "---|" * 7,
    ]
    for model, layers, a, b, build, run, m in rows:
        if layers == "80/40":
            lines.append(f"| {model} | 80/40 ratio | | | | {run:.2f}x | |")
        else:
            ms = ", ".join(f"{k.replace('llama_fuse_attention_', '')}={v}" for k, v in m.items())
            lines.append(f"| {model} | {layers} | {a} | {b} | {build:.1f} | {run:.1f} | {ms} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / "compile_speed.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    api.write_atomic(out, text)


if __name__ == "__main__":
    main()
