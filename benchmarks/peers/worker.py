"""One peer on one model in its own process, so its peak RSS is its own:

    python -m peers.worker PEER MODEL_DIR CASES_JSON   (cwd-independent; PYTHONPATH=benchmarks)

Prints one JSON object on stdout: per case the timings, generated ids and peak RSS during
generation (VmHWM reset after loading), or ``unavailable``/``error`` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .common import (Case, PeerUnavailable, Timing, peak_rss_mb, progress, prompt_ids,
                     reset_peak_rss, rss_mb)

WARMUP = Case(prompt_len=8, new_tokens=2, batch=1)


def peer_loader(peer: str) -> Callable[..., Callable[[list[list[int]], int], Timing]]:
    """The ``load`` function of a generation peer."""
    from . import hf_transformers, llamacpp, llmc_ort, ort_genai

    loaders = {"llmc": llmc_ort.load, "hf": hf_transformers.load,
               "llamacpp": llamacpp.load, "ortgenai": ort_genai.load}
    return loaders[peer]


def time_case(generate, case: Case, vocab: int, repeat: int) -> dict[str, Any]:
    """Best-of-``repeat`` (by total time) timing of one case plus its generation peak RSS."""
    prompts = prompt_ids(case, vocab)
    best: Timing | None = None
    reset_ok = reset_peak_rss()
    for _ in range(repeat):
        t = generate(prompts, case.new_tokens)
        if best is None or t.ttft_s + t.decode_s < best.ttft_s + best.decode_s:
            best = t
    assert best is not None
    return {
        "case": case.__dict__, "ttft_s": best.ttft_s, "decode_s": best.decode_s,
        "tokens": best.tokens, "peak_rss_mb": peak_rss_mb(),
        "peak_is_generation_only": reset_ok,
        # 1-minute load average right after the case: above the core count, other
        # processes competed for the cores (spinning thread pools suffer most)
        "loadavg_1m": os.getloadavg()[0],
    }


def run_generation(peer: str, model_dir: Path, cases: list[Case], repeat: int) -> dict[str, Any]:
    """Load ``peer`` once, warm it up, then time every case."""
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    max_len = max(c.prompt_len + c.new_tokens for c in cases)
    t0 = time.perf_counter()
    generate = peer_loader(peer)(model_dir, max_len, max(c.batch for c in cases))
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0, "rss_after_load_mb": rss_mb()}
    out["results"] = []
    warmed: set[int] = set()
    for case in cases:
        if case.batch not in warmed:  # first-call allocations of a batch size stay untimed
            warm = dataclasses.replace(WARMUP, batch=case.batch)
            generate(prompt_ids(warm, vocab), warm.new_tokens)
            warmed.add(case.batch)
        progress(f"  {peer}: {case.label}")
        out["results"].append(time_case(generate, case, vocab, repeat))
    return out


def run_floor() -> dict[str, Any]:
    """The floor's measurements (bandwidth, FLOP/s) in this process."""
    from .floor import measure

    return {"measured": measure()}


def main(argv: list[str]) -> int:
    """Entry point: ``PEER MODEL_DIR CASES_JSON [REPEAT]``; the JSON result goes to stdout."""
    peer, model_dir, cases_json = argv[0], Path(argv[1]), argv[2]
    repeat = int(argv[3]) if len(argv) > 3 else 1
    cases = [Case(**c) for c in json.loads(cases_json)]
    try:
        result = run_floor() if peer == "floor" else run_generation(peer, model_dir, cases, repeat)
    except PeerUnavailable as e:
        result = {"unavailable": str(e)}
    except Exception as e:  # a crashing peer gets a row saying why, the run goes on
        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
