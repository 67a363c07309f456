"""Generation benchmark: llmc on ONNX Runtime against HF transformers, llama.cpp (F32 GGUF)
and onnxruntime-genai, on the same random-weight llama checkpoints, with the physical floor
(memory bandwidth and sgemm FLOP/s measured in the same run).

    python benchmarks/generate.py                # 134M + 1.1B, prompt 128/1024, batch 1/8
    python benchmarks/generate.py --quick        # 134M, prompt 128, batch 1
    python benchmarks/generate.py --peers hf,llamacpp --models llama-134m
    python benchmarks/generate.py --check        # GGUF conversion agrees with transformers

Each peer runs in its own process (peak RSS separable); progress goes to stderr; results to
benchmarks/results/generate-<timestamp>.{json,md} and benchmarks/results/latest.md.
Peers need the bench extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.checkpoint import hf_config, tensor_shapes, write_checkpoint  # noqa: E402
from peers.common import (BENCH_DIR, MODEL_CONFIGS, RESULTS_DIR, THREADS, Case,  # noqa: E402
                          PeerUnavailable, pin_threads, progress)
from peers.floor import floor_rates  # noqa: E402
from peers.report import leading_agreement, markdown, metrics  # noqa: E402

GENERATION_PEERS = ["hf", "llamacpp", "ortgenai", "llmc"]
ALL_PEERS = GENERATION_PEERS + ["floor"]
BENCH_MODELS = ["llama-134m", "llama-1.1b"]
# OpenMP pools (llama.cpp's, torch's) spin at their barriers: fastest on idle cores, up to
# ~30x slower when another process takes a core (llama.cpp, measured here on the shared
# machine). Each case keeps the better of default and passive waiting, so the comparison
# is with the peer at its best in the conditions of the moment.
PASSIVE_OMP = {"OMP_WAIT_POLICY": "passive"}
ENV_VARIANTS = {"llamacpp": [{}, PASSIVE_OMP], "hf": [{}, PASSIVE_OMP]}
PACKAGES = ["numpy", "torch", "transformers", "onnxruntime", "onnxruntime-genai",
            "llama_cpp_python", "gguf"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    summary, _, usage = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(description=summary, epilog=usage,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="134M only, prompt 128, batch 1 (a fast same-run comparison)")
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help=f"comma-separated subset of {','.join(ALL_PEERS)} (default: all)")
    ap.add_argument("--models", default=None,
                    help=f"comma-separated subset of {','.join(BENCH_MODELS)} "
                    "(or tiny, a 2-layer model for trying the harness)")
    ap.add_argument("--prompts", default=None, help="prompt lengths, e.g. 128,1024")
    ap.add_argument("--batches", default=None, help="batch sizes, e.g. 1,8")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per row (64)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="back-to-back runs per case inside a peer's process, best kept (1)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="times the whole peer sequence runs, interleaved, best kept (1)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    ap.add_argument("--check", action="store_true",
                    help="only verify the F32 GGUF conversion against transformers (tiny model)")
    args = ap.parse_args(argv)
    args.peers = _choose(args.peers, ALL_PEERS, "--peers")
    default_models = "llama-134m" if args.quick else ",".join(BENCH_MODELS)
    args.models = _choose(args.models or default_models, list(MODEL_CONFIGS), "--models")
    prompts = args.prompts or ("128" if args.quick else "128,1024")
    args.prompts = [int(x) for x in prompts.split(",")]
    args.batches = [int(x) for x in (args.batches or ("1" if args.quick else "1,8")).split(",")]
    return args


def _choose(text: str, allowed: list[str], flag: str) -> list[str]:
    picked = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in picked if x not in allowed]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return picked


def worker_env(peer: str) -> dict[str, str]:
    """Threads pinned; the floor's numpy runs without the OpenBLAS core-type override (it
    slows a current OpenBLAS; the peers keep the machine's environment as it is)."""
    env = pin_threads()
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(BENCH_DIR), str(BENCH_DIR.parent), env.get("PYTHONPATH", "")] if p)
    if peer == "floor":
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def run_worker(peer: str, hf_dir: Path | None, cases: list[Case], repeat: int,
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``peers.worker`` for one peer and model in a fresh process; its JSON result, each
    case tagged with ``extra_env``."""
    cmd = [sys.executable, "-m", "peers.worker", peer, str(hf_dir or ""),
           json.dumps([c.__dict__ for c in cases]), str(repeat)]
    env = {**worker_env(peer), **(extra_env or {})}
    proc = subprocess.run(cmd, cwd=BENCH_DIR, env=env, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"worker exited {proc.returncode} (killed? out of memory?)"}
    result = json.loads(lines[-1])
    for entry in result.get("results", []):
        entry["env"] = extra_env or {}
    return result


def prepare(peer: str, hf_dir: Path) -> None:
    """Convert the checkpoint for ``peer`` in this process, so the peer's own process only
    loads (its RSS is then generation, not conversion)."""
    try:
        if peer == "llamacpp":
            from peers.llamacpp import gguf_path

            gguf_path(hf_dir)
        elif peer == "ortgenai":
            from peers.ort_genai import build

            build(hf_dir, hf_dir.parent / "ort-genai")
        elif peer == "llmc":
            from peers.llmc_ort import build as build_llmc

            build_llmc(hf_dir)
    except ImportError as e:
        raise PeerUnavailable(f"conversion package missing ({e})") from e


def cases_for(args: argparse.Namespace) -> list[Case]:
    """Every prompt length × batch of the run."""
    return [Case(p, args.new_tokens, b) for p in args.prompts for b in args.batches]


def measure_floor(best: dict[str, Any] | None) -> dict[str, Any] | None:
    """Measure bandwidth and FLOP/s once more; keep the best of each figure so far (the
    floor is what the machine can do, contention only ever lowers a measurement)."""
    progress("floor: measuring gemv bandwidth and sgemm FLOP/s")
    new = run_worker("floor", None, [], 1).get("measured")
    if not new or not best:
        return new or best
    keys = ("gemv_gb_s", "copy_gb_s", "sgemm_gflop_s")
    return {**best, **{k: max(best[k], new[k]) for k in keys}}


def bench_model(model: str, args: argparse.Namespace, run: dict[str, Any]) -> list[dict]:
    """All peers on one model, ``--rounds`` times interleaved with a floor measurement (best
    per case kept, so drift on a shared machine hits every peer alike); rows with metrics,
    ratios to the best floor so far, HF agreement."""
    hf_dir = write_checkpoint(model)
    cfg, cases = hf_config(model), cases_for(args)
    peers = [p for p in GENERATION_PEERS if p in args.peers]
    results: dict[str, dict[str, Any]] = {}
    for peer in peers:
        try:
            prepare(peer, hf_dir)
        except PeerUnavailable as e:
            results[peer] = {"unavailable": str(e)}
    for rnd in range(args.rounds):
        if "floor" in args.peers:
            run["floor_measured"] = measure_floor(run.get("floor_measured"))
        for peer in [p for p in peers if "unavailable" not in results.get(p, {})]:
            for extra_env in ENV_VARIANTS.get(peer, [{}]):
                tag = "".join(f"{k}={v} " for k, v in extra_env.items())
                progress(f"{model}: {peer} {tag}(round {rnd + 1}/{args.rounds})")
                results[peer] = keep_best(results.get(peer), run_worker(
                    peer, hf_dir, cases, args.repeat, extra_env))
    for peer, res in results.items():
        if "results" not in res:
            progress(f"{model}: {peer} skipped: {res.get('unavailable') or res.get('error')}")
    return assemble_rows(model, cfg, cases, {p: results[p] for p in peers},
                         run.get("floor_measured"))


def keep_best(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Merge two worker results of the same cases, keeping each case's faster timing."""
    if not old or "results" not in old:
        return new
    if "results" not in new:
        return old
    def total(entry: dict[str, Any]) -> float:
        return entry["ttft_s"] + entry["decode_s"]

    old["results"] = [n if total(n) < total(o) else o
                      for o, n in zip(old["results"], new["results"])]
    return old


def assemble_rows(model: str, cfg: dict, cases: list[Case], results: dict[str, dict],
                  floor: dict | None) -> list[dict]:
    """One row per case and peer (plus the floor's), ratios filled in."""
    rows = []
    weights_mb = 4 * sum(math.prod(s) for s in tensor_shapes(cfg).values()) / 2**20
    for i, case in enumerate(cases):
        rates = floor_rates(cfg, case, floor) if floor else None
        by_peer = {p: r["results"][i] for p, r in results.items() if "results" in r}
        llmc = metrics(by_peer["llmc"]) if "llmc" in by_peer else None
        for peer, res in results.items():
            row = {"model": model, "case": case.label, "peer": peer, "llmc_metrics": llmc,
                   "floor": rates, "weights_mb": weights_mb}
            if peer not in by_peer:
                row["status"] = "not run: " + (res.get("unavailable") or res.get("error", "?"))
            else:
                row.update(metrics=metrics(by_peer[peer]), raw=by_peer[peer],
                           load_s=res["load_s"], rss_after_load_mb=res["rss_after_load_mb"])
                if "hf" in by_peer:
                    row["agree_hf"] = leading_agreement(by_peer[peer]["tokens"],
                                                       by_peer["hf"]["tokens"])
            rows.append(row)
        if rates:
            rows.append({"model": model, "case": case.label, "peer": "floor", "floor": rates,
                         "llmc_metrics": llmc, "note": f"{rates['weight_bytes'] / 1e6:.0f} MB "
                         "weights/step", "metrics": {**rates, "ttft_ms": 1000 * rates["ttft_s"],
                                                     "ms_per_step": 1000 / rates["decode_tok_s"]
                                                     * case.batch, "peak_rss_mb": None}})
    return rows


def run_mode(args: argparse.Namespace) -> str:
    """quick, full (the issue's whole matrix) or custom."""
    if args.quick:
        return "quick"
    full = (args.models == BENCH_MODELS and args.prompts == [128, 1024]
            and args.batches == [1, 8] and args.new_tokens == 64)
    return "full" if full else "custom"


def environment() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, versions, BLAS variables."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    blas_env = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_kb / 2**20),
            "loadavg_1m_at_start": os.getloadavg()[0],
            "python": platform.python_version(), "packages": versions, "blas_env": blas_env}


def write_results(run: dict[str, Any], out: Path) -> Path:
    """generate-<stamp>.json/.md in ``out`` plus latest.md; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run["started_epoch"]))
    page = markdown(run)
    (out / f"generate-{stamp}.json").write_text(json.dumps(run, indent=1) + "\n")
    (out / f"generate-{stamp}.md").write_text(page)
    (out / "latest.md").write_text(page)
    return out / f"generate-{stamp}.md"


def check_conversion() -> int:
    """--check: the F32 GGUF of a tiny random llama gives transformers' logits and greedy
    tokens in llama.cpp. Exit 0 when they agree, 1 when not, 2 when a package is missing."""
    from peers.check import compare_gguf_with_transformers

    try:
        report = compare_gguf_with_transformers(BENCH_DIR / ".cache")
    except PeerUnavailable as e:
        print(f"check skipped: {e}")
        return 2
    print(json.dumps(report, indent=1))
    return 0 if report["agree"] else 1


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the results files."""
    args = parse_args(argv)
    if args.check:
        return check_conversion()
    started = time.time()
    run: dict[str, Any] = {
        "mode": run_mode(args), "started_epoch": started,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "threads": THREADS, "environment": environment(), "peers": args.peers,
        "cases": [c.__dict__ for c in cases_for(args)], "rows": [],
    }
    run["floor_measured"] = None
    for model in args.models:
        run["rows"] += bench_model(model, args, run)
    run["wall_s"] = time.time() - started
    path = write_results(run, args.out)
    print(markdown(run))
    progress(f"wrote {path} and {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
