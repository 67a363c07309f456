"""Time dce+cse+canonicalize (and parse/print) on 40- and 80-layer llama-shaped graphs.

Run: .venv/bin/python benchmarks/generic_passes.py  (writes benchmarks/results/generic_passes.md)
The graph is llama2-13b-shaped (hidden 5120, 40 heads, ffn 13824, vocab 32000); no weights exist:
compiling never reads parameter data.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from llmc import api
from llmc.demo import llama_shaped_graph

PIPELINE = "dce,cse,canonicalize"


def measure(layers: int, repeats: int = 5) -> dict:
    times = {"build": [], "pipeline": [], "print": [], "parse": []}
    ops = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = llama_shaped_graph(layers=layers, hidden=5120, heads=40, kv_heads=40, ffn=13824,
                               vocab=32000)
        t1 = time.perf_counter()
        ops = len(g)
        api.run_pipeline(g, PIPELINE)
        t2 = time.perf_counter()
        text = api.print_graph(g)
        t3 = time.perf_counter()
        api.parse(text)
        t4 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[k].append(dt * 1e3)
    return {"layers": layers, "ops": ops, **{k: statistics.median(v) for k, v in times.items()}}


def main() -> None:
    rows = [measure(40), measure(80)]
    ratio = rows[1]["pipeline"] / rows[0]["pipeline"]
    lines = ["| layers | ops | build ms | dce+cse+canonicalize ms | print ms | parse ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['ops']} | {r['build']:.1f} | {r['pipeline']:.1f} | "
                     f"{r['print']:.1f} | {r['parse']:.1f} |")
    lines.append("")
    lines.append(f"80/40-layer pipeline time ratio: {ratio:.2f} (linear scaling = 2.0); "
                 f"median of 5 runs, this machine (2 cores).")
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results" / "generic_passes.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Generic passes on llama2-13b-shaped graphs\n\n" + table + "\n")


if __name__ == "__main__":
    main()
