"""Metrics, ratios and the markdown/JSON report of a generation benchmark run."""

from __future__ import annotations

from typing import Any

from .common import Case

PEER_TITLES = {
    "llmc": "llmc (onnxruntime)",
    "hf": "HF transformers generate",
    "llamacpp": "llama.cpp F32",
    "ortgenai": "onnxruntime-genai fp32",
    "floor": "floor (bandwidth / sgemm)",
}
PEER_NOTES = {
    "hf": "torch eager mode, default (sdpa) attention, DynamicCache",
    "llamacpp": "llama.cpp defaults: flash attention auto, F16 KV cache",
    "ortgenai": "model builder fp32 cpu: GQA, shared past/present buffer",
}


def metrics(entry: dict[str, Any]) -> dict[str, float]:
    """Throughput figures of one timed case: decode tok/s over all rows for the
    new_tokens-1 steps after the first token, prefill tok/s = prompt tokens ÷ time to first
    token, ms per decode step."""
    case = Case(**entry["case"])
    steps = case.new_tokens - 1
    return {
        "decode_tok_s": case.batch * steps / entry["decode_s"],
        "prefill_tok_s": case.batch * case.prompt_len / entry["ttft_s"],
        "ttft_ms": 1000 * entry["ttft_s"],
        "ms_per_step": 1000 * entry["decode_s"] / steps,
        "peak_rss_mb": entry["peak_rss_mb"],
    }


def leading_agreement(tokens: list[list[int]], reference: list[list[int]]) -> str:
    """Leading greedy tokens equal to the reference's, summed over rows, as ``k/n``."""
    same = total = 0
    for mine, ref in zip(tokens, reference):
        k = 0
        while k < min(len(mine), len(ref)) and mine[k] == ref[k]:
            k += 1
        same, total = same + k, total + len(ref)
    return f"{same}/{total}"


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def _note(row: dict[str, Any]) -> str:
    note = row.get("note") or PEER_NOTES.get(row["peer"], "")
    raw = row.get("raw") or {}
    if raw.get("env"):
        note += "; " + " ".join(f"{k}={v}" for k, v in raw["env"].items())
    load = raw.get("loadavg_1m")
    return note if load is None else f"{note}; load avg {load:.1f}"


def table_rows(run: dict[str, Any]) -> list[str]:
    """Markdown rows: one per model, case and peer, with ratios to the floor and llmc."""
    rows = []
    for row in run["rows"]:
        m, floor, llmc = row.get("metrics"), row.get("floor"), row.get("llmc_metrics")
        title = PEER_TITLES.get(row["peer"], row["peer"])
        head = f"| {row['model']} | {row['case']} | {title} |"
        if m is None:
            rows.append(head + f" {row['status']} |" + " |" * 10)
            continue
        rows.append(head + " " + " | ".join([
            _fmt(m["decode_tok_s"]), _fmt(m["prefill_tok_s"]), _fmt(m["ttft_ms"], 0),
            _fmt(m["ms_per_step"], 2), _fmt(m.get("peak_rss_mb"), 0),
            _ratio(m.get("peak_rss_mb"), row.get("weights_mb")),
            _ratio(m["decode_tok_s"], floor and floor["decode_tok_s"]),
            _ratio(llmc and llmc["decode_tok_s"], m["decode_tok_s"]),
            _ratio(llmc and llmc["prefill_tok_s"], m["prefill_tok_s"]),
            row.get("agree_hf", "—"), _note(row),
        ]) + " |")
    return rows


def context_scaling(run: dict[str, Any]) -> list[str]:
    """Per model, peer and batch: decode ms/step at the longest prompt ÷ at the shortest."""
    steps: dict[tuple[str, str, int], dict[int, float]] = {}
    for row in run["rows"]:
        if row.get("metrics") and row["peer"] != "floor":
            case = Case(**row["raw"]["case"])
            key = (row["model"], row["peer"], case.batch)
            steps.setdefault(key, {})[case.prompt_len] = row["metrics"]["ms_per_step"]
    lines = []
    for (model, peer, batch), by_len in steps.items():
        if len(by_len) > 1:
            lo, hi = min(by_len), max(by_len)
            lines.append(f"- {model} {PEER_TITLES.get(peer, peer)} batch {batch}: decode "
                         f"ms/step at prompt {hi} ÷ at prompt {lo} = "
                         f"{by_len[hi] / by_len[lo]:.2f}×")
    return lines


def markdown(run: dict[str, Any]) -> str:
    """The results page: environment, floor measurement, the table, and how to read it."""
    env, floor = run["environment"], run.get("floor_measured") or {}
    lines = [
        f"# Generation benchmark ({run['mode']}) — {run['started']}",
        "",
        f"machine: {env['cpu']}, {env['cores']} cores, {env['mem_gb']} GiB; "
        f"{run['threads']} threads per peer; python {env['python']}; 1-minute load average "
        f"at start {env.get('loadavg_1m_at_start', 0):.1f} (the note column gives it after "
        "each case: above the core count, other processes competed)",
        f"packages: {', '.join(f'{k} {v}' for k, v in env['packages'].items())}",
        f"env: {env['blas_env']}",
        "",
        f"floor, measured in this run (best of its rounds): gemv {_fmt(floor.get('gemv_gb_s'))} GB/s, "
        f"copy {_fmt(floor.get('copy_gb_s'))} GB/s, sgemm {_fmt(floor.get('sgemm_gflop_s'))} "
        f"GFLOP/s (numpy, BLAS {floor.get('blas')}, OPENBLAS_CORETYPE unset for this "
        "measurement only)",
        "",
        "| model | case | peer | decode tok/s | prefill tok/s | TTFT ms | ms/step | "
        "peak RSS MiB | RSS ÷ weights | decode ÷ floor | llmc ÷ peer decode | "
        "llmc ÷ peer prefill | greedy = HF | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *table_rows(run),
        "",
        *context_scaling(run),
        "",
        "Case pP/nN/bB: prompt P tokens, N new tokens greedy, batch B (equal-length rows).",
        "decode tok/s: all rows, the N-1 steps after the first token; prefill tok/s: prompt "
        "tokens ÷ time to first token; peak RSS: VmHWM of the peer's own process, reset after "
        "loading (so: generation only), ÷ all fp32 weight bytes (embedding included). Floor: decode streams the non-embedding fp32 weights "
        "once per step at the gemv bandwidth (or its FLOPs at sgemm rate if larger); prefill "
        "does its unavoidable FLOPs at sgemm rate. greedy = HF: leading tokens equal to "
        "transformers', summed over rows. The machine is shared: figures drift run to run, "
        "only same-run ratios count.",
        "",
    ]
    return "\n".join(lines)
